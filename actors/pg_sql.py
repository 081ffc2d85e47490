"""PostgreSQL's schema and the distributed mode's statements (plain SQL: no driver is loaded here).

The schema (:data:`MIGRATIONS`) is SQLite's at version 3, with these differences:

- The outbox: ``publish_after`` is when a queued task is next to be handed to RabbitMQ (NULL:
  it has been, or it is not queued). A trigger sets it from ``available_at`` whenever a task
  becomes queued or its due time changes, in the transaction that does so, so a task answered
  202 is always either in RabbitMQ or due to be published (the transactional outbox).
- Counts: with many writers, counting into one row per (action, status) would make their
  transactions wait on each other and deadlock. Triggers append changes to
  ``task_count_changes`` instead (appends never conflict); the view ``task_counts`` adds them
  to ``task_count_totals``, into which the store folds them now and then.
- Instances (version 4): each instance's row in ``instances`` says when it was last seen; a
  running task names the instance that claimed it (``claimed_by``), and ``cancel_asked`` says
  that another instance was asked to cancel it.
"""

from __future__ import annotations

__all__ = [
    "CANCEL_ASKED",
    "CANCEL_IF_ASKED",
    "CANCEL_OR_ASK",
    "CLAIM",
    "CLAIMED",
    "CLAIM_LOCK",
    "FOLD_COUNTS",
    "FORGET_INSTANCES",
    "LEASE_DUE",
    "MARK_PUBLISHED",
    "MIGRATIONS",
    "NEXT_TO_PUBLISH",
    "ORPHANED",
    "PUBLISH_WHEN_DUE",
    "REPUBLISH_LOST",
    "SEEN",
]

#: The schema: PostgreSQL starts at version 3, the schema SQLite has after its migrations 1 to 3; from
#: version 4 on, the two are numbered apart. Never edit one that has been released: add the next version.
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        3,
        (
            """
            CREATE TABLE tasks (
                seq           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                id            TEXT    NOT NULL UNIQUE,
                action        TEXT    NOT NULL,
                payload       TEXT    NOT NULL,
                status        TEXT    NOT NULL
                              CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
                result        TEXT,
                error         TEXT,
                attempts      INTEGER NOT NULL DEFAULT 0,
                created_at    TEXT    NOT NULL,
                started_at    TEXT,
                processed_at  TEXT,
                available_at  DOUBLE PRECISION NOT NULL,
                priority      INTEGER NOT NULL DEFAULT 0,
                publish_after DOUBLE PRECISION,
                published_at  DOUBLE PRECISION,
                claimed_lease DOUBLE PRECISION
            )
            """,
            "CREATE INDEX tasks_by_created ON tasks (created_at, seq)",
            "CREATE INDEX tasks_by_status_created ON tasks (status, created_at, seq)",
            "CREATE INDEX tasks_ready ON tasks (available_at, seq) WHERE status = 'queued'",
            "CREATE INDEX tasks_by_priority ON tasks (priority DESC, available_at, seq) WHERE status = 'queued'",
            "CREATE INDEX tasks_to_publish ON tasks (publish_after) WHERE publish_after IS NOT NULL",
            # Published and never claimed: the sweep looks here for tasks whose message was lost.
            "CREATE INDEX tasks_published ON tasks (published_at) WHERE status = 'queued' AND publish_after IS NULL",
            """
            CREATE FUNCTION task_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                NEW.publish_after := CASE WHEN NEW.status = 'queued' THEN NEW.available_at END;
                RETURN NEW;
            END $$
            """,
            """
            CREATE TRIGGER tasks_outbox BEFORE INSERT OR UPDATE OF status, available_at ON tasks
            FOR EACH ROW EXECUTE FUNCTION task_outbox()
            """,
            """
            CREATE TABLE task_errors (
                seq       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                task_id   TEXT    NOT NULL,
                attempt   INTEGER NOT NULL,
                error     TEXT    NOT NULL,
                failed_at TEXT    NOT NULL
            )
            """,
            "CREATE INDEX task_errors_by_task ON task_errors (task_id)",
            """
            CREATE TABLE idempotency_keys (
                key          TEXT PRIMARY KEY,
                request_hash TEXT NOT NULL,
                task_id      TEXT NOT NULL,
                created_at   DOUBLE PRECISION NOT NULL
            )
            """,
            "CREATE INDEX idempotency_keys_by_time ON idempotency_keys (created_at)",
            "CREATE TABLE queue_settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
            """
            CREATE TABLE task_count_totals (
                action TEXT   NOT NULL,
                status TEXT   NOT NULL,
                n      BIGINT NOT NULL,
                PRIMARY KEY (action, status)
            )
            """,
            """
            CREATE TABLE task_count_changes (
                seq    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                action TEXT    NOT NULL,
                status TEXT    NOT NULL,
                n      INTEGER NOT NULL
            )
            """,
            """
            CREATE VIEW task_counts AS
            SELECT action, status, SUM(n)::BIGINT AS n
            FROM (SELECT action, status, n FROM task_count_totals
                  UNION ALL SELECT action, status, n FROM task_count_changes) AS counted
            GROUP BY action, status HAVING SUM(n) <> 0
            """,
            """
            CREATE FUNCTION task_counted() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP <> 'INSERT' THEN
                    INSERT INTO task_count_changes (action, status, n) VALUES (OLD.action, OLD.status, -1);
                END IF;
                IF TG_OP <> 'DELETE' THEN
                    INSERT INTO task_count_changes (action, status, n) VALUES (NEW.action, NEW.status, 1);
                END IF;
                RETURN NULL;
            END $$
            """,
            "CREATE TRIGGER tasks_counted_on_insert AFTER INSERT ON tasks FOR EACH ROW EXECUTE FUNCTION task_counted()",
            "CREATE TRIGGER tasks_counted_on_delete AFTER DELETE ON tasks FOR EACH ROW EXECUTE FUNCTION task_counted()",
            """
            CREATE TRIGGER tasks_counted_on_update AFTER UPDATE OF status ON tasks
            FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION task_counted()
            """,
        ),
    ),
    (
        4,
        (
            """
            CREATE TABLE instances (
                id         TEXT PRIMARY KEY,
                host       TEXT    NOT NULL,
                pid        INTEGER NOT NULL,
                started_at TEXT    NOT NULL,
                seen_at    DOUBLE PRECISION NOT NULL
            )
            """,
            "ALTER TABLE tasks ADD COLUMN claimed_by TEXT",
            "ALTER TABLE tasks ADD COLUMN cancel_asked BOOLEAN NOT NULL DEFAULT false",
            "CREATE INDEX tasks_running_by_instance ON tasks (claimed_by) WHERE status = 'running'",
            # The relay's lease reads the due tasks in its order and stops at its limit, instead of sorting
            # every due task (thousands, under load) in each lease.
            """
            CREATE INDEX tasks_to_publish_in_order ON tasks (priority DESC, publish_after, seq)
            WHERE publish_after IS NOT NULL
            """,
        ),
    ),
)

#: Folds the count changes into the totals. One instance at a time (the others skip it), so
#: the totals' rows are never locked in two orders at once.
FOLD_COUNTS = """
WITH lock AS (SELECT pg_try_advisory_xact_lock(hashtext('task-queue counts ' || current_schema())) AS taken),
moved AS (
    DELETE FROM task_count_changes WHERE (SELECT taken FROM lock) RETURNING action, status, n
)
INSERT INTO task_count_totals AS totals (action, status, n)
SELECT action, status, SUM(n) FROM moved GROUP BY action, status ORDER BY action, status
ON CONFLICT (action, status) DO UPDATE SET n = totals.n + EXCLUDED.n
"""


#: The relay's lease: queued tasks due to publish, highest priority first, skipping those another
#: instance is leasing right now. (RETURNING does not keep the order: the store sorts them again.)
LEASE_DUE = """
UPDATE tasks SET publish_after = ? WHERE seq IN (
    SELECT seq FROM tasks WHERE publish_after <= ?
    ORDER BY priority DESC, publish_after, seq LIMIT ? FOR UPDATE SKIP LOCKED
) RETURNING id, priority, seq
"""
NEXT_TO_PUBLISH = "SELECT MIN(publish_after) FROM tasks WHERE publish_after > ?"
#: Published: unless the task became due again since (a retry), under a new publish_after.
MARK_PUBLISHED = "UPDATE tasks SET publish_after = NULL, published_at = ? WHERE id = ANY(?) AND publish_after = ?"
#: The sweep: a task published long ago and still queued lost its message (RabbitMQ's delivery limit,
#: a purge, a queue deleted): it is due to publish again. (A second message, if the first was only
#: slow, is skipped at its claim.)
REPUBLISH_LOST = (
    "UPDATE tasks SET publish_after = ? WHERE seq IN (SELECT seq FROM tasks WHERE status = 'queued'"
    " AND publish_after IS NULL AND published_at < ? LIMIT 1000 FOR UPDATE SKIP LOCKED)"
)
#: A claim's tasks, locked in one order (so two claims never wait on each other in a cycle).
CLAIM_LOCK = (
    "SELECT id, status, attempts, available_at, claimed_lease, cancel_asked, started_at IS NOT NULL FROM tasks"
    " WHERE id = ANY(?) ORDER BY id FOR UPDATE"
)
CLAIMED = "SELECT action, payload, attempts - 1, priority, available_at FROM tasks WHERE id = ?"
PUBLISH_WHEN_DUE = "UPDATE tasks SET publish_after = available_at WHERE id = ? AND status = 'queued'"
#: ``claimed_lease``: the publish the running attempt came from, so that only that message, delivered
#: again, takes the task over (its instance died), and a duplicate publish of it does not.
#: ``started_at`` is set once a worker takes the task (it may wait for one): until then, it never ran.
CLAIM = (
    "UPDATE tasks SET status = 'running', attempts = attempts + 1, started_at = NULL, claimed_by = ?,"
    " claimed_lease = claim.lease, cancel_asked = false"
    " FROM unnest(?::text[], ?::double precision[]) AS claim (id, lease) WHERE tasks.id = claim.id"
    " RETURNING tasks.id, action, payload, attempts - 1, priority, available_at"
)

#: The instance's heartbeat, in each relay step.
SEEN = (
    "INSERT INTO instances (id, host, pid, started_at, seen_at) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at"
)
#: Running tasks of this instance that another was asked to cancel.
CANCEL_ASKED = "SELECT id FROM tasks WHERE claimed_by = ? AND status = 'running' AND cancel_asked"
#: A cancel asked of a running task whose attempt ended otherwise (a retry, a claim given back) holds; the
#: attempt's number as it is now, and its instance, fence it as the outcomes are.
CANCEL_IF_ASKED = (
    "UPDATE tasks SET status = 'cancelled', error = ?, processed_at = ? WHERE id = ? AND status = 'queued'"
    " AND cancel_asked AND attempts = ? AND claimed_by IS NOT DISTINCT FROM ?"
)
#: Cancel a queued task, or ask the instance running it to; the status after (no row: neither).
CANCEL_OR_ASK = (
    "UPDATE tasks SET status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END,"
    " processed_at = CASE WHEN status = 'queued' THEN ? ELSE processed_at END, cancel_asked = (status = 'running')"
    " WHERE id = ? AND status IN ('queued', 'running') RETURNING status"
)
#: The sweep: running tasks whose instance has not been seen for a while (it died, and RabbitMQ lost
#: their message too, or another instance would have taken them over when it was delivered again).
ORPHANED = (
    "SELECT id, attempts, cancel_asked, started_at IS NOT NULL FROM tasks"
    " WHERE status = 'running' AND claimed_by IS NOT NULL"
    " AND claimed_by NOT IN (SELECT id FROM instances WHERE seen_at >= ?) LIMIT 1000 FOR UPDATE SKIP LOCKED"
)
#: ... then the instances gone, once nothing they ran is left.
FORGET_INSTANCES = (
    "DELETE FROM instances WHERE seen_at < ? AND NOT EXISTS"
    " (SELECT 1 FROM tasks WHERE status = 'running' AND claimed_by = instances.id)"
)
