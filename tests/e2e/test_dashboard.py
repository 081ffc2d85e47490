"""The dashboard (``GET /``) in a real headless Chromium, driven by Playwright, against the real
service in a subprocess: submit, watch, retry, bulk retry, pause, the token prompt, and a page
that runs under its Content-Security-Policy without a console error.

Chromium is Debian's (``apt-get install chromium``); Playwright's own download is not used.
"""

from __future__ import annotations

import datetime
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Dialog, Error, Locator, Page, expect, sync_playwright

from tests.e2e.service import Service
from tests.helpers import wait_until
from tests.servers import AMQP_URL, postgres_schema, rabbitmq_queue

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
TIMEOUT_MS = 15_000
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TOKEN_KEY = "task-queue.token"  # where dashboard.js keeps the token in sessionStorage
# Records what the Content-Security-Policy blocks; injected by the browser, so not subject to it.
RECORD_CSP_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation',
    (e) => window.__cspViolations.push(`${e.violatedDirective} blocked ${e.blockedURI || 'inline'}`));
"""

# Counts the page's API calls, as they are made.
COUNT_FETCHES = """
window.__fetches = [];
const realFetch = window.fetch;
window.fetch = (...args) => { window.__fetches.push(String(args[0])); return realFetch(...args); };
"""

expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium")
    assert chromium, "the dashboard test needs Debian's chromium: apt-get install chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def start_service(tmp_path: Path, backend: str) -> Iterator[Callable[..., Service]]:
    """Starts the service on a fresh database (with extra environment variables); stops it at the end.
    On the distributed backend, on a PostgreSQL schema and a RabbitMQ queue of the test's own."""
    started: list[Service] = []
    with ExitStack() as servers:
        servers_env: dict[str, str] = {}
        if backend == "distributed":
            url, queue = servers.enter_context(postgres_schema()), servers.enter_context(rabbitmq_queue())
            servers_env = {
                "TASK_QUEUE_STORE_URL": url,
                "TASK_QUEUE_QUEUE_URL": AMQP_URL,
                "TASK_QUEUE_QUEUE_NAME": queue,
            }

        def start(env: dict[str, str] | None = None) -> Service:
            db = str(tmp_path / "data" / "tasks.db")
            service = Service(db, tmp_path / "run.log", "--work-delay-ms", "0", env={**servers_env, **(env or {})})
            started.append(service)
            return service.start()

        yield start
        for service in started:
            service.shut()


@pytest.fixture
def service(start_service: Callable[..., Service]) -> Service:
    return start_service()


@dataclass
class Dashboard:
    """A browser page on the dashboard, with every console error, page error and CSP violation."""

    page: Page
    url: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def open(self) -> None:
        response = self.page.goto(self.url + "/")
        assert response is not None
        assert response.status == 200
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp, csp
        assert "style-src 'self'" in csp, csp

    def problems(self, allowed_http_statuses: tuple[int, ...] = ()) -> list[str]:
        """Everything that went wrong in the page; Chromium logs each API answer of 4xx or 5xx as a
        console error, and those in ``allowed_http_statuses`` are expected."""
        allowed = [f"status of {status} " for status in allowed_http_statuses]
        console = [m for m in self.console_errors if not any(a in m for a in allowed)]
        violations: list[str] = self.page.evaluate("window.__cspViolations")
        return console + self.page_errors + [f"CSP violation: {v}" for v in violations]

    def row(self, task_id: str) -> Locator:
        return self.page.locator(f'[data-testid="task-row"][data-id="{task_id}"]')

    def open_task(self, task_id: str) -> None:
        self.row(task_id).click()
        expect(self.page.locator("#detail-id")).to_have_text(task_id)


@pytest.fixture
def dashboard_for(browser: Browser) -> Iterator[Callable[..., Dashboard]]:
    """Makes a fresh browser context and page on a service's dashboard; closes them at the end."""
    contexts = []

    def make(service: Service, width: int = 1360, height: int = 900) -> Dashboard:
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        dashboard = Dashboard(page, service.url)
        page.add_init_script(RECORD_CSP_VIOLATIONS)

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                dashboard.console_errors.append(f"{message.text} at {message.location.get('url')}")

        def on_page_error(error: Error) -> None:
            dashboard.page_errors.append(f"page error: {error}")

        page.on("console", on_console)
        page.on("pageerror", on_page_error)
        return dashboard

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def dashboard(service: Service, dashboard_for: Callable[..., Dashboard]) -> Dashboard:
    dashboard = dashboard_for(service)
    dashboard.open()
    expect(dashboard.page.locator("#count-queued")).to_have_text("0")
    return dashboard


def api_task(service: Service, task_id: str) -> dict[str, Any]:
    status, task = service.request("GET", f"/tasks/{task_id}")
    assert status == 200, task
    return task


def wait_status(service: Service, task_id: str, status: str) -> dict[str, Any]:
    return wait_until(
        lambda: (task := api_task(service, task_id))["status"] == status and task,
        timeout=TIMEOUT_MS / 1000,
        what=f"task {task_id} to be {status}",
    )


def submit_in_page(page: Page, action: str, data: str, priority: str = "", delay_ms: str = "") -> str:
    page.fill("#submit-action", action)
    page.fill("#submit-data", data)
    page.fill("#submit-priority", priority)
    page.fill("#submit-delay", delay_ms)
    page.click("#submit-button")
    result = page.locator("#submit-result")
    expect(result).to_contain_text("Submitted task")
    found = UUID.search(result.inner_text())
    assert found, result.inner_text()
    return found.group(0)


@pytest.mark.backends("embedded", "distributed")
def test_a_task_submitted_in_the_page_completes_and_shows_its_result(service: Service, dashboard: Dashboard) -> None:
    page = dashboard.page
    page.fill("#submit-action", "uppercase")
    page.fill("#submit-data", '{"text": "hi"')  # not JSON: refused in the page, nothing sent
    page.click("#submit-button")
    expect(page.locator("#submit-error")).to_contain_text("not valid JSON")
    page.fill("#submit-data", '["hi"]')
    page.click("#submit-button")
    expect(page.locator("#submit-error")).to_contain_text("must be a JSON object")
    assert service.request("GET", "/tasks")[1]["count"] == 0

    task_id = submit_in_page(page, "uppercase", '{"text": "hi"}')
    expect(page.locator("#submit-error")).to_be_hidden()
    expect(page.locator("#detail-id")).to_have_text(task_id)  # the new task's detail opens
    expect(page.locator("#detail-status")).to_have_text("completed")
    expect(page.locator("#detail-result")).to_contain_text('"output": "HI"')
    expect(page.locator("#detail-data")).to_contain_text('"text": "hi"')
    expect(page.locator("#detail-attempts")).to_have_text("1")
    expect(dashboard.row(task_id)).to_have_attribute("data-status", "completed")
    expect(dashboard.row(task_id).locator("td").nth(1)).to_have_text("uppercase")
    expect(page.locator("#count-completed")).to_have_text("1")
    expect(page.locator("#throughput-last-minute")).to_have_text("1")
    expect(page.locator("#throughput-last-hour")).to_have_text("1")
    expect(page.locator('[data-testid="sparkline"] polyline')).to_have_count(1)
    points = page.locator('[data-testid="sparkline"] polyline').get_attribute("points")
    assert points is not None
    assert len(points.split()) == 60, "a point a minute over the last hour"
    task = api_task(service, task_id)
    assert (task["action"], task["data"], task["result"]) == ("uppercase", {"text": "hi"}, {"output": "HI"})

    # Priority and a delay go with the submit; a delayed task waits as queued, and counts as delayed.
    delayed = submit_in_page(page, "sum", '{"numbers": [1, 2]}', priority="7", delay_ms="600000")
    expect(page.locator("#detail-priority")).to_have_text("7")
    expect(page.locator("#detail-status")).to_have_text("queued")
    expect(page.locator("#stat-delayed")).to_have_text("1")
    task = api_task(service, delayed)
    assert (task["priority"], task["status"]) == (7, "queued")
    page.click("#detail-cancel")
    expect(page.locator("#detail-status")).to_have_text("cancelled")
    expect(page.locator("#detail-cancel")).to_be_hidden()
    expect(page.locator("#detail-retry")).to_be_visible()
    assert api_task(service, delayed)["status"] == "cancelled"
    assert dashboard.problems() == []


@pytest.mark.backends("embedded", "distributed")
def test_a_failed_task_is_retried_from_its_detail_and_all_failed_ones_in_bulk(
    service: Service, dashboard: Dashboard
) -> None:
    page = dashboard.page
    failing = service.submit({"action": "uppercase", "data": {"text": 5}})  # fails at once, not retried
    other = service.submit({"action": "uppercase", "data": {"text": ["a"]}})
    for task_id in (failing, other):
        wait_status(service, task_id, "failed")
    expect(page.locator("#count-failed")).to_have_text("2")  # the page refreshes by itself

    dashboard.open_task(failing)
    expect(page.locator("#detail-status")).to_have_text("failed")
    expect(page.locator("#detail-error")).to_contain_text("uppercase needs data.text")
    expect(page.locator('[data-testid="attempt-error"]')).to_have_count(1)
    expect(page.locator("#detail-cancel")).to_be_hidden()

    # Paused, the retried task stays queued: its new series of attempts starts from 0.
    service.request("POST", "/queue/pause")
    expect(page.locator("#pause-toggle")).to_have_text("Resume")
    page.click("#detail-retry")
    expect(page.locator("#message")).to_contain_text("queued again")
    expect(page.locator("#detail-status")).to_have_text("queued")
    expect(page.locator("#detail-attempts")).to_have_text("0")
    expect(page.locator("#detail-retry")).to_be_hidden()
    task = api_task(service, failing)
    assert (task["status"], task["attempts"], len(task["errors"])) == ("queued", 0, 1)
    service.request("POST", "/queue/resume")
    task = wait_status(service, failing, "failed")
    assert (task["attempts"], len(task["errors"])) == (1, 2), task
    expect(page.locator('[data-testid="attempt-error"]')).to_have_count(2)  # the open detail refreshes

    # "Retry all failed" counts them first and asks; dismissed, nothing happens.
    service.request("POST", "/queue/pause")
    asked: list[tuple[str, str]] = []

    def dismiss(dialog: Dialog) -> None:  # a handler, not expect_event: a click must not wait on an open dialog
        asked.append((dialog.type, dialog.message))
        dialog.dismiss()

    page.once("dialog", dismiss)
    page.click("#retry-failed")  # the button stays disabled until the dialog is answered
    expect(page.locator("#retry-failed")).to_be_enabled()
    assert asked == [("confirm", "Retry 2 failed tasks?")]
    assert service.request("GET", "/tasks?status=failed")[1]["count"] == 2

    # Accepted (by a dialog handler), both are queued again.
    dialogs: list[str] = []

    def accept(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.click("#retry-failed")
    expect(page.locator("#message")).to_have_text("2 failed tasks queued again.")
    assert dialogs == ["Retry 2 failed tasks?"]
    assert service.request("GET", "/tasks?status=queued")[1]["count"] == 2
    expect(page.locator("#count-queued")).to_have_text("2")
    expect(page.locator("#count-failed")).to_have_text("0")

    service.request("POST", "/queue/resume")
    for task_id in (failing, other):
        wait_status(service, task_id, "failed")
    expect(page.locator("#count-failed")).to_have_text("2")
    assert dashboard.problems() == []


@pytest.mark.backends("embedded", "distributed")
def test_pause_and_resume_in_the_page_agree_with_health(service: Service, dashboard: Dashboard) -> None:
    page = dashboard.page
    toggle = page.locator("#pause-toggle")
    expect(toggle).to_have_text("Pause")
    expect(page.locator("#paused-badge")).to_be_hidden()

    toggle.click()
    expect(toggle).to_have_text("Resume")
    expect(page.locator("#paused-badge")).to_be_visible()
    assert service.request("GET", "/health")[1]["paused"] is True
    task_id = service.submit({"action": "uppercase", "data": {"text": "later"}})
    expect(dashboard.row(task_id)).to_have_attribute("data-status", "queued")  # shown by the auto-refresh
    expect(page.locator("#stat-ready")).to_have_text("1")

    toggle.click()
    expect(toggle).to_have_text("Pause")
    expect(page.locator("#paused-badge")).to_be_hidden()
    assert service.request("GET", "/health")[1]["paused"] is False
    expect(dashboard.row(task_id)).to_have_attribute("data-status", "completed")

    service.request("POST", "/queue/pause")  # paused elsewhere: the page follows
    expect(toggle).to_have_text("Resume")
    assert dashboard.problems() == []


def test_the_page_asks_for_the_token_and_refuses_a_wrong_one(
    start_service: Callable[..., Service], dashboard_for: Callable[..., Dashboard]
) -> None:
    service = start_service(env={"TASK_QUEUE_SERVER_AUTH_TOKEN": "secret"})
    auth = {"Authorization": "Bearer secret"}
    status, answer, _ = service.call("POST", "/tasks", {"action": "uppercase", "data": {"text": "x"}}, headers=auth)
    assert status == 202, answer
    wait_until(
        lambda: service.call("GET", "/tasks?status=completed", headers=auth)[1]["count"] == 1,
        what="the task to complete",
    )
    dashboard = dashboard_for(service)
    page = dashboard.page
    dashboard.open()
    dialog = page.locator("#auth-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#auth-error")).to_be_hidden()

    page.fill("#auth-token", "wrong")
    page.click("#auth-submit")
    expect(page.locator("#auth-error")).to_contain_text("That token was refused")
    expect(dialog).to_be_visible()
    expect(page.locator("#count-completed")).to_have_text("\u2013")  # not loaded yet

    page.fill("#auth-token", "secret")
    page.click("#auth-submit")
    expect(dialog).to_be_hidden()
    expect(page.locator("#count-completed")).to_have_text("1")
    expect(page.locator('[data-testid="task-row"]')).to_have_count(1)
    assert page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") == "secret"

    page.reload()  # the token is kept for the browser tab's session
    expect(page.locator("#count-completed")).to_have_text("1")
    expect(dialog).to_be_hidden()

    page.click("#sign-out")  # forgets the token and asks again
    expect(dialog).to_be_visible()
    expect(page.locator("#auth-error")).to_contain_text("Signed out")
    assert page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None
    page.fill("#auth-token", "secret")
    page.click("#auth-submit")
    expect(dialog).to_be_hidden()
    expect(page.locator("#sign-out")).to_be_visible()
    assert dashboard.problems(allowed_http_statuses=(401,)) == []


def test_the_page_runs_under_its_csp_and_shows_task_data_as_text(
    service: Service, dashboard_for: Callable[..., Dashboard], tmp_path: Path
) -> None:
    hostile = "<img src=x onerror=\"document.body.dataset.owned='yes'\">"
    completed = service.submit({"action": "uppercase", "data": {"text": "hello world"}})
    failed = service.submit({"action": "uppercase", "data": {"text": 5}})
    html = service.submit({"action": hostile, "data": {"html": hostile}})
    for task_id in (completed, failed, html):
        service.wait_finished(task_id)
    service.request("POST", "/queue/pause")
    queued = [service.submit({"action": "sum", "data": {"numbers": [n, 1]}, "priority": n}) for n in range(3)]
    service.request("POST", f"/tasks/{queued[0]}/cancel")

    dashboard = dashboard_for(service)
    dashboard.open()
    page = dashboard.page
    expect(page.locator('[data-testid="task-row"]')).to_have_count(6)
    expect(page.locator("#count-queued")).to_have_text("2")
    expect(page.locator("#count-cancelled")).to_have_text("1")
    expect(page.locator("#last-updated")).not_to_have_text("never")
    expect(dashboard.row(html).locator("td").nth(1)).to_have_text(hostile)
    dashboard.open_task(html)
    expect(page.locator("#detail-action")).to_have_text(hostile)
    expect(page.locator("#detail-data")).to_contain_text(hostile.replace('"', '\\"'))
    assert page.locator("#task-rows img, #detail img").count() == 0
    assert page.evaluate("document.body.dataset.owned") is None

    # Filters and paging: a page of 2 tasks at a time, Next, Newer, and back to the first page.
    page.select_option("#filter-limit", "10")
    page.select_option("#filter-status", "failed")
    expect(page.locator('[data-testid="task-row"]')).to_have_count(1)
    expect(dashboard.row(failed)).to_be_visible()
    page.select_option("#filter-status", "")
    page.fill("#filter-action", "sum")
    expect(page.locator('[data-testid="task-row"]')).to_have_count(3)
    page.fill("#filter-action", "")
    page.locator('[data-testid="card-queued"]').click()  # a status card filters the list
    expect(page.locator("#filter-status")).to_have_value("queued")
    expect(page.locator('[data-testid="task-row"]')).to_have_count(2)
    page.locator('[data-testid="card-queued"]').click()
    expect(page.locator("#filter-status")).to_have_value("")

    dashboard.open_task(failed)
    shot = tmp_path / "dashboard.png"
    shot.write_bytes(page.screenshot(full_page=True))  # path= would leave a thread of Playwright's behind
    assert shot.stat().st_size > 20_000, "a screenshot of the page with its data is not a few bytes"
    assert shot.read_bytes().startswith(b"\x89PNG")
    assert dashboard.problems() == []


def test_auto_refresh_stops_while_the_page_is_hidden(service: Service, dashboard_for: Callable[..., Dashboard]) -> None:
    dashboard = dashboard_for(service)
    page = dashboard.page
    page.clock.install()
    page.add_init_script(COUNT_FETCHES)
    dashboard.open()
    expect(page.locator("#last-updated")).not_to_have_text("never")  # the first refresh is done
    now_s = page.evaluate("Date.now()") / 1000
    page.clock.pause_at(datetime.datetime.fromtimestamp(now_s + 1, datetime.UTC))  # timers run when the test says
    idle = page.locator("body[data-refreshing=false]")

    def fetches() -> int:
        return page.evaluate("window.__fetches.length")

    def set_hidden(hidden: bool) -> None:
        page.evaluate(
            "(hidden) => { Object.defineProperty(document, 'hidden', {configurable: true, get: () => hidden});"
            " document.dispatchEvent(new Event('visibilitychange')); }",
            hidden,
        )

    expect(idle).to_have_count(1)
    before = fetches()
    page.clock.run_for(3000)
    assert fetches() > before, "the page refreshes every few seconds"
    expect(idle).to_have_count(1)

    set_hidden(True)
    hidden_at = fetches()
    page.clock.run_for(60_000)
    assert fetches() == hidden_at, "no refresh while hidden"
    task_id = service.submit({"action": "uppercase", "data": {"text": "back"}})
    service.wait_finished(task_id)

    set_hidden(False)
    assert fetches() > hidden_at, "visible again, it refreshes at once"
    expect(dashboard.row(task_id)).to_have_attribute("data-status", "completed")
    assert dashboard.problems() == []


def test_paging_through_the_list(service: Service, dashboard: Dashboard) -> None:
    service.request("POST", "/queue/pause")
    ids = [service.submit({"action": "sum", "data": {"numbers": [n]}}) for n in range(25)][::-1]  # newest first
    page = dashboard.page
    page.select_option("#filter-limit", "10")
    rows = page.locator('[data-testid="task-row"]')

    def shown() -> list[str | None]:
        return [rows.nth(i).get_attribute("data-id") for i in range(rows.count())]

    expect(rows).to_have_count(10)
    expect(page.locator("#page-newer")).to_be_disabled()
    assert shown() == ids[:10]
    page.click("#page-next")
    expect(page.locator("#page-info")).to_have_text("Page 2")
    expect(rows.first).to_have_attribute("data-id", ids[10])
    assert shown() == ids[10:20]
    page.click("#page-next")
    expect(page.locator("#page-info")).to_have_text("Page 3")
    expect(rows).to_have_count(5)
    expect(page.locator("#page-next")).to_be_disabled()
    assert shown() == ids[20:]
    page.click("#page-newer")
    expect(page.locator("#page-info")).to_have_text("Page 2")
    expect(rows.first).to_have_attribute("data-id", ids[10])
    page.click("#page-first")
    expect(page.locator("#page-info")).to_have_text("Page 1")
    expect(rows.first).to_have_attribute("data-id", ids[0])
    expect(page.locator("#page-first")).to_be_disabled()
    assert dashboard.problems() == []


def test_the_page_fits_a_narrow_window(
    service: Service, dashboard_for: Callable[..., Dashboard], tmp_path: Path
) -> None:
    task_id = service.submit({"action": "uppercase", "data": {"text": "narrow " * 40}})
    service.wait_finished(task_id)
    dashboard = dashboard_for(service, width=390, height=844)
    dashboard.open()
    page = dashboard.page
    dashboard.open_task(task_id)
    expect(page.locator("#detail-status")).to_have_text("completed")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "the page scrolls sideways"
    (tmp_path / "narrow.png").write_bytes(page.screenshot(full_page=True))
    assert (tmp_path / "narrow.png").stat().st_size > 10_000
    assert dashboard.problems() == []
