"""Configuration: defaults in ``conf/default.toml``, overridden by a file, the environment and flags.

The configuration is loaded once (by ``run.py`` or a test) into a frozen :class:`Config`
and passed down; nothing reads the environment after that.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import textwrap
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Config", "ConfigError", "LogConfig", "describe_settings", "load_config", "unknown_environment_variables"]

DEFAULT_FILE = Path(__file__).with_name("default.toml")
ENV_PREFIX = "TASK_QUEUE_"


class ConfigError(ValueError):
    """Raised when a configuration value is missing, unknown or out of range."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str
    port: int
    threads: int
    connection_limit: int
    listen_backlog: int
    channel_timeout_s: int
    switch_interval_us: int
    max_body_bytes: int
    submit_timeout_ms: int
    auth_token: str
    stall_ms: int
    max_stalled_submits: int


@dataclass(frozen=True, slots=True)
class StoreConfig:
    url: str
    path: str
    synchronous: str
    busy_timeout_ms: int
    max_pages: int
    check_on_start: bool
    idempotency_window_s: int
    retention_s: int


@dataclass(frozen=True, slots=True)
class QueueConfig:
    url: str
    name: str
    prefetch: int
    window: int
    max_attempts: int
    max_backlog: int
    retry_backoff_ms: int
    retry_backoff_max_ms: int


@dataclass(frozen=True, slots=True)
class WorkersConfig:
    count: int
    work_delay_ms: int
    task_timeout_s: int
    max_restarts: int
    restart_window_s: int
    imports: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str
    format: str
    tasks: bool
    requests: bool
    task_data: bool


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    enabled: bool


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig
    store: StoreConfig
    queue: QueueConfig
    workers: WorkersConfig
    log: LogConfig
    metrics: MetricsConfig

    def __post_init__(self) -> None:
        checks = {
            "server.port": 0 <= self.server.port <= 65535,
            "server.threads": self.server.threads >= 1,
            "server.connection_limit": self.server.connection_limit >= 1,
            "server.listen_backlog": self.server.listen_backlog >= 1,
            "server.channel_timeout_s": self.server.channel_timeout_s >= 1,
            "server.switch_interval_us": self.server.switch_interval_us >= 1,
            "server.max_body_bytes": self.server.max_body_bytes >= 1,
            "server.submit_timeout_ms": self.server.submit_timeout_ms >= 1,
            "server.stall_ms": self.server.stall_ms >= 1,
            "server.max_stalled_submits": 1 <= self.server.max_stalled_submits < self.server.threads,
            "store.synchronous": self.store.synchronous.upper() in ("OFF", "NORMAL", "FULL", "EXTRA"),
            "store.busy_timeout_ms": self.store.busy_timeout_ms >= 0,
            "store.max_pages": self.store.max_pages >= 0,
            "store.idempotency_window_s": self.store.idempotency_window_s >= 1,
            "store.retention_s": self.store.retention_s >= 0,
            "queue.prefetch": self.queue.prefetch >= 1,
            "queue.window": self.queue.window >= 1,
            "queue.max_attempts": self.queue.max_attempts >= 1,
            "queue.max_backlog": self.queue.max_backlog >= 1,
            "queue.retry_backoff_ms": self.queue.retry_backoff_ms >= 0,
            "queue.retry_backoff_max_ms": self.queue.retry_backoff_max_ms >= 0,
            "workers.count": self.workers.count >= 1,
            "workers.work_delay_ms": self.workers.work_delay_ms >= 0,
            "workers.task_timeout_s": self.workers.task_timeout_s >= 1,
            "workers.max_restarts": self.workers.max_restarts >= 0,
            "workers.restart_window_s": self.workers.restart_window_s >= 1,
            "log.level": self.log.level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
            "log.format": self.log.format in ("text", "json"),
        }
        bad = [f"{name} ({self._value(name)!r})" for name, ok in checks.items() if not ok]
        if not checks["server.max_stalled_submits"]:  # the one check that depends on another setting
            i = bad.index(f"server.max_stalled_submits ({self.server.max_stalled_submits!r})")
            bad[i] += f", which must be 1 to server.threads - 1 ({self.server.threads - 1})"
        if bad:
            raise ConfigError(f"invalid value for {', '.join(bad)}: see conf/default.toml, or task-queue --help")
        if bool(self.store.url) != bool(self.queue.url):
            raise ConfigError(
                "the distributed mode needs both store.url (PostgreSQL) and queue.url (RabbitMQ); leave both"
                " empty for the embedded mode (SQLite and the in-process queue)"
            )
        if self.store.url and not self.store.url.startswith(("postgresql://", "postgres://")):
            raise ConfigError(f"store.url must be a postgresql:// URL, got {self.store.url!r}")
        if self.queue.url and not self.queue.url.startswith(("amqp://", "amqps://")):
            raise ConfigError(f"queue.url must be an amqp:// URL, got {self.queue.url!r}")
        if not self.queue.name:
            raise ConfigError("queue.name must not be empty")
        token = self.server.auth_token
        if token and not all("!" <= c <= "~" for c in token):
            raise ConfigError(
                "server.auth_token must be printable ASCII without spaces (a blank token would lock every client out;"
                " leave it empty to turn authentication off)"
            )

    @property
    def distributed(self) -> bool:
        """Whether the store is PostgreSQL and the queue RabbitMQ (else SQLite and the in-process queue)."""
        return bool(self.store.url)

    def _value(self, name: str) -> Any:
        section, key = name.split(".")
        return getattr(getattr(self, section), key)

    def replace(self, **sections: Mapping[str, Any]) -> Config:
        """Return a copy with some keys changed: ``config.replace(store={"path": "x.db"})``."""
        return _build(_merge(dataclasses.asdict(self), sections))


def load_config(
    file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Load the defaults, then ``file``, then ``TASK_QUEUE_*`` variables of ``env``, then ``overrides``."""
    values = _read_toml(DEFAULT_FILE)
    if file is not None:
        values = _merge(values, _read_toml(Path(file)))
    values = _merge(values, _from_env(values, os.environ if env is None else env))
    values = _merge(values, overrides or {})
    return _build(values)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read configuration file {path}: {e}") from e


def _merge(base: Mapping[str, Any], changes: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    merged = {section: dict(keys) for section, keys in base.items()}
    for section, keys in changes.items():
        if section not in merged or not isinstance(keys, Mapping):
            raise ConfigError(f"unknown configuration section {section!r}")
        for key, value in keys.items():
            if key not in merged[section]:
                raise ConfigError(f"unknown configuration key {section}.{key}")
            merged[section][key] = value
    return merged


def _from_env(values: Mapping[str, Mapping[str, Any]], env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for section, keys in values.items():
        for key, default in keys.items():
            raw = env.get(f"{ENV_PREFIX}{section}_{key}".upper())
            if raw is not None:
                found.setdefault(section, {})[key] = _parse_env(raw, default, f"{section}.{key}")
    return found


def describe_settings() -> str:
    """Every setting with its environment variable, default and comment from ``conf/default.toml``:
    the reference ``task-queue --help`` prints."""
    entries: list[tuple[str, str, list[str]]] = []  # (variable, "section.key = default", comment lines)
    section = ""
    for line in (raw.strip() for raw in DEFAULT_FILE.read_text().splitlines()):
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif section and line.startswith("#") and entries:  # a comment going on from the line above
            entries[-1][2].append(line.lstrip("# "))
        elif section and "=" in line:
            setting, _, rest = line.partition("=")
            value, _, comment = rest.partition("  #")
            key = setting.strip()
            variable = f"{ENV_PREFIX}{section}_{key}".upper()
            entries.append((variable, f"{section}.{key} = {value.strip()}", [comment.strip()] if comment else []))
    lines = []
    for variable, assignment, notes in entries:
        lines += [f"  {variable}", f"      {assignment}"]
        if notes:
            lines.append(textwrap.fill(" ".join(notes), 100, initial_indent=" " * 8, subsequent_indent=" " * 8))
    return "\n".join(lines)


def unknown_environment_variables(env: Mapping[str, str]) -> list[str]:
    """A warning for each ``TASK_QUEUE_*`` variable of ``env`` that names no setting (a typo, say)."""
    settings = [f"{section}_{key}".upper() for section, keys in _read_toml(DEFAULT_FILE).items() for key in keys]
    known = {ENV_PREFIX + setting for setting in settings}
    warnings = []
    for name in sorted(env):
        if name.startswith(ENV_PREFIX) and name not in known:
            close = difflib.get_close_matches(name.removeprefix(ENV_PREFIX), settings, n=1, cutoff=0.75)
            hint = f"; did you mean {ENV_PREFIX}{close[0]}?" if close else ""
            warnings.append(f"environment variable {name} names no setting and is ignored{hint}")
    return warnings


def _parse_env(raw: str, default: Any, name: str) -> Any:
    if isinstance(default, list):
        return [item.strip() for item in raw.split(",") if item.strip()]
    if isinstance(default, bool):
        if raw.lower() not in ("true", "false", "1", "0"):
            raise ConfigError(f"{name} must be true or false, got {raw!r}")
        return raw.lower() in ("true", "1")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    return raw


_SECTION_TYPES = {
    "server": ServerConfig,
    "store": StoreConfig,
    "queue": QueueConfig,
    "workers": WorkersConfig,
    "log": LogConfig,
    "metrics": MetricsConfig,
}


def _build(values: Mapping[str, Mapping[str, Any]]) -> Config:
    sections = {}
    for name, section_type in _SECTION_TYPES.items():
        keys = dict(values.get(name, {}))
        for field in dataclasses.fields(section_type):
            if field.name not in keys:
                raise ConfigError(f"missing configuration key {name}.{field.name}")
            keys[field.name] = _coerce(keys[field.name], field.type, f"{name}.{field.name}")
        sections[name] = section_type(**keys)
    return Config(**sections)


_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "str": str,
    "int": int,
    "bool": bool,
    "tuple[str, ...]": (list, tuple),
}


def _coerce(value: Any, type_name: Any, name: str) -> Any:
    expected = _FIELD_TYPES[str(type_name)]
    if isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
        raise ConfigError(f"{name} has the wrong type: {value!r}")
    return tuple(value) if isinstance(value, list) else value
