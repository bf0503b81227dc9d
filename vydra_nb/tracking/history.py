"""The job history: a SQLite file in the data folder that outlives kernels.

The specified API cannot list past jobs, so this store is the user's record of what they paid for.
A job is written the moment the server accepts it (the client calls its listeners before
``generate()`` returns) and again on every change, so a kernel restart or a closed tab never loses
a paid result. WAL mode and a busy timeout let several kernels write at once. The schema carries a
version number and is migrated forward on open. The API key is never stored: only which backend
(sandbox or the real service) and its host.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from vydra_nb.api.jobs import TERMINAL, Job
from vydra_nb.api.settings import data_home, host_key, host_matches  # noqa: F401  (re-exported)

SCHEMA_VERSION = 4

# Version 1 was the first released layout; each later step is a list of statements.
_MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE IF NOT EXISTS jobs (
            id TEXT PRIMARY KEY,
            model TEXT,
            status TEXT NOT NULL,
            progress INTEGER,
            prompt TEXT,
            params TEXT,
            credits_charged INTEGER,
            credits_refunded INTEGER,
            created_at REAL,
            completed_at REAL,
            updated_at REAL NOT NULL,
            output TEXT,
            local_path TEXT,
            error_code TEXT,
            error_message TEXT,
            backend TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created_at)",
    ],
    2: [
        "ALTER TABLE jobs ADD COLUMN started_at REAL",
        "ALTER TABLE jobs ADD COLUMN refund_status TEXT",
        "ALTER TABLE jobs ADD COLUMN media_url TEXT",
        "ALTER TABLE jobs ADD COLUMN host TEXT",
        "ALTER TABLE jobs ADD COLUMN session TEXT",
        "ALTER TABLE jobs ADD COLUMN notebook TEXT",
        "ALTER TABLE jobs ADD COLUMN idempotency_key TEXT",
        "ALTER TABLE jobs ADD COLUMN recorded_at REAL",
        "UPDATE jobs SET recorded_at = COALESCE(created_at, updated_at)",
        "CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status)",
        "CREATE INDEX IF NOT EXISTS jobs_model ON jobs(model)",
    ],
    # 3: how long each completed job took from submission until it was seen done (local clock),
    # from which each model's durations are learnt to aim polls at a job's likely end.
    3: [
        "ALTER TABLE jobs ADD COLUMN duration_s REAL",
    ],
    # 4: what a user says of a result and how they group it (verdict, note, tag), the catalog's
    # price when it was submitted (price history, charges that differ from the catalog), and the
    # files uploaded for use as inputs (so the same content is never uploaded twice).
    4: [
        "ALTER TABLE jobs ADD COLUMN verdict TEXT",
        "ALTER TABLE jobs ADD COLUMN note TEXT",
        "ALTER TABLE jobs ADD COLUMN tag TEXT",
        "ALTER TABLE jobs ADD COLUMN catalog_credits INTEGER",
        "ALTER TABLE jobs ADD COLUMN pricing_unit TEXT",
        "CREATE INDEX IF NOT EXISTS jobs_tag ON jobs(tag)",
        """CREATE TABLE IF NOT EXISTS uploads (
            sha256 TEXT NOT NULL,
            host TEXT NOT NULL,
            url TEXT NOT NULL,
            filename TEXT,
            size INTEGER,
            content_type TEXT,
            uploaded_at REAL NOT NULL,
            PRIMARY KEY (sha256, host)
        )""",
    ],
}

COLUMNS = (
    "id", "model", "status", "progress", "prompt", "params", "credits_charged", "credits_refunded",
    "refund_status", "created_at", "started_at", "completed_at", "updated_at", "output", "media_url",
    "local_path", "error_code", "error_message", "backend", "host", "session", "notebook",
    "idempotency_key", "recorded_at", "duration_s", "verdict", "note", "tag", "catalog_credits", "pricing_unit",
)

# A terminal state recorded by any kernel is never overwritten by a stale non-terminal one.
_TERMINAL_SQL = "('" + "','".join(sorted(TERMINAL)) + "')"
_UPSERT = f"""
INSERT INTO jobs ({", ".join(COLUMNS)}) VALUES ({", ".join("?" for _ in COLUMNS)})
ON CONFLICT(id) DO UPDATE SET
  {", ".join(f"{c} = CASE WHEN jobs.status IN {_TERMINAL_SQL} AND excluded.status NOT IN {_TERMINAL_SQL} THEN jobs.{c} ELSE COALESCE(excluded.{c}, jobs.{c}) END" for c in COLUMNS if c not in ("id", "recorded_at", "session", "notebook"))},
  session = COALESCE(jobs.session, excluded.session),
  notebook = COALESCE(jobs.notebook, excluded.notebook)
"""

SESSION_ID = f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _notebook_name() -> str | None:
    """The notebook this kernel serves, when Jupyter tells us (ipykernel sets JPY_SESSION_NAME)."""
    name = os.environ.get("JPY_SESSION_NAME")
    return Path(name).name[:200] if name else None


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def job_row(job: Job) -> tuple[Any, ...]:
    """The database row for a job: nothing secret, everything needed to find and show it again."""
    media = job.media_url
    local = str(job.local_path) if job.local_path else None
    err = job.error or {}
    now = time.time()
    values = {
        "id": job.id,
        "model": job.model,
        "status": job.status,
        "progress": job.progress,
        "prompt": job.prompt,
        "params": json.dumps(job.params, default=str, ensure_ascii=False) if job.params else None,
        "credits_charged": job.credits_charged,
        "credits_refunded": job.credits_refunded,
        "refund_status": job.refund_status,
        "created_at": _ts(job.created_at),
        "started_at": _ts(job.started_at),
        "completed_at": _ts(job.completed_at),
        "updated_at": now,
        "output": json.dumps(job.output, default=str, ensure_ascii=False) if job.output else None,
        "media_url": media,
        "local_path": local,
        "error_code": err.get("code"),
        "error_message": err.get("message"),
        "backend": job.backend,
        "host": job.host,
        "session": SESSION_ID,
        "notebook": _notebook_name(),
        "idempotency_key": job.idempotency_key,
        "recorded_at": now,
        "duration_s": job.duration_seen,
        "verdict": job.verdict,
        "note": job.note_text,
        "tag": job.tag,
        "catalog_credits": job.catalog_credits,
        "pricing_unit": job.pricing_unit,
    }
    return tuple(values[c] for c in COLUMNS)


def _enable_wal(conn: sqlite3.Connection, timeout: float = 30.0) -> None:
    """Switch the file to WAL, retrying while another process is doing the same.

    Kernels that start at once on a new data folder all switch the fresh file from the rollback
    journal to WAL together. Each then holds a shared lock and wants an exclusive one, and SQLite
    breaks that deadlock by answering "database is locked" at once, without calling the busy
    handler, so ``busy_timeout`` does not help. Unhandled, the history fails to open, and the job
    being recorded at that moment (a paid one, just accepted) is silently missing from it: the
    client's listener can only log the error. Retrying after a short pause lets one switch win;
    the others then find the file in WAL mode already (the mode is stored in the file).
    """
    deadline = time.monotonic() + timeout
    pause = 0.002
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
            return
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


class History:
    """The SQLite job store. Thread-safe; several processes may open the same file."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else data_home() / "history.sqlite3"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self.closed = False
        self._conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        _enable_wal(self._conn)
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=30000")
        self._migrate()

    def __repr__(self) -> str:
        return f"History({str(self.path)!r})"

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            self.closed = True

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        with self._tx() as conn:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} was written by a newer vydra-nb (schema {version}); upgrade vydra-nb."
                )
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[step]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {step}")

    # -- writing ----------------------------------------------------------------------------
    def record(self, job: Job) -> None:
        """Insert or update one job (about a millisecond: one small WAL transaction)."""
        row = job_row(job)
        with self._tx() as conn:
            conn.execute(_UPSERT, row)

    def record_many(self, jobs: Iterable[Job]) -> int:
        rows = [job_row(j) for j in jobs]
        with self._tx() as conn:
            conn.executemany(_UPSERT, rows)
        return len(rows)

    def attach(self, client: Any) -> None:
        """Record every job ``client`` creates or sees change, as it happens."""
        client.add_job_listener(self.record)

    def detach(self, client: Any) -> None:
        client.remove_job_listener(self.record)

    # -- reading ----------------------------------------------------------------------------
    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _decode(row) if row else None

    def rows(
        self,
        *,
        since: float | None = None,
        model: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        unfinished: bool = False,
    ) -> list[dict[str, Any]]:
        """Jobs newest first, filtered."""
        sql, args = self._query("SELECT * FROM jobs", since=since, model=model, status=status, unfinished=unfinished)
        sql += " ORDER BY created_at DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        with self._lock:
            return [_decode(r) for r in self._conn.execute(sql, args).fetchall()]

    def unfinished(self) -> list[dict[str, Any]]:
        """Jobs that had not ended when last seen: the ones to pick up again after a restart."""
        return self.rows(unfinished=True)

    def _query(
        self, base: str, *, since: float | None, model: str | None, status: str | None, unfinished: bool = False
    ) -> tuple[str, list[Any]]:
        where: list[str] = []
        args: list[Any] = []
        if since is not None:
            where.append("created_at >= ?")
            args.append(since)
        if model is not None:
            where.append("model = ?")
            args.append(model)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if unfinished:
            where.append(f"status NOT IN {_TERMINAL_SQL}")
        return base + (" WHERE " + " AND ".join(where) if where else ""), args

    def connection_for_read(self) -> sqlite3.Connection:
        """A fresh read-only connection (pandas reads through it without holding our lock)."""
        uri = self.path.resolve().as_uri() + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=30.0)
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def mark_lost(self, host: str | None, reason: str) -> int:
        """Jobs of ``host`` that had not ended, whose server is gone for good (a stopped sandbox):
        ``lost``, not ``pending`` forever; nothing resumes them and spend reports leave them out.
        Returns how many."""
        with self._tx() as conn:
            cursor = conn.execute(
                f"UPDATE jobs SET status = 'lost', error_message = COALESCE(error_message, ?), updated_at = ? "
                f"WHERE host IS ? AND status NOT IN {_TERMINAL_SQL}",
                (reason, time.time(), host),
            )
            return int(cursor.rowcount)

    def durations(self, model: str, host: str | None, *, limit: int = 200) -> list[float]:
        """Seconds the latest completed jobs of ``model`` on ``host`` took (newest first), for the
        polling policy's ``DurationPrior``. Another server (another sandbox, at another speed)
        says nothing of this one."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT duration_s FROM jobs WHERE model = ? AND host IS ? AND status = 'completed' "
                "AND duration_s > 0 ORDER BY completed_at DESC LIMIT ?",
                (model, host, int(limit)),
            ).fetchall()
        return [float(r[0]) for r in rows]

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])

    def net_credits(
        self,
        *,
        since: float | None = None,
        tag: str | None = None,
        backend: str | None = None,
        exclude_session: str | None = None,
    ) -> int:
        """Net credits (charged less refunded) of the jobs created since ``since`` (epoch seconds),
        with ``tag``, on ``backend``, not recorded by process ``exclude_session``: what a day or tag
        budget counts of other kernels' spend. One indexed query."""
        where, args = [], []
        for clause, value in (("created_at >= ?", since), ("tag = ?", tag), ("backend = ?", backend),
                              ("session IS NOT ?", exclude_session)):
            if value is not None:
                where.append(clause)
                args.append(value)
        sql = "SELECT COALESCE(SUM(COALESCE(credits_charged, 0) - COALESCE(credits_refunded, 0)), 0) FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._lock:
            return int(self._conn.execute(sql, args).fetchone()[0])

    # -- uploads: the same content is uploaded once per server --------------------------------
    def upload(self, sha256: str, host: str | None, *, max_age: float | None = None) -> dict[str, Any] | None:
        """The upload of this content to ``host`` (a row: url, filename, size, content_type,
        uploaded_at), if one is recorded and younger than ``max_age`` seconds."""
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM uploads WHERE sha256 = ? AND host = ?", (sha256, host or "")
            ).fetchone()
        if row is None:
            return None
        data = dict(row)
        if max_age is not None and time.time() - float(data["uploaded_at"]) > max_age:
            return None
        return data

    def record_upload(self, sha256: str, host: str | None, url: str, *, filename: str | None = None,
                      size: int | None = None, content_type: str | None = None) -> None:
        """Remember that this content is at ``url`` on ``host`` (a later upload of it replaces the row)."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO uploads (sha256, host, url, filename, size, content_type, uploaded_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(sha256, host) DO UPDATE SET url = excluded.url, "
                "filename = excluded.filename, size = excluded.size, content_type = excluded.content_type, "
                "uploaded_at = excluded.uploaded_at",
                (sha256, host or "", url, filename, size, content_type, time.time()),
            )

    def uploads(self) -> list[dict[str, Any]]:
        """Every recorded upload, newest first."""
        with self._lock:
            return [dict(r) for r in self._conn.execute("SELECT * FROM uploads ORDER BY uploaded_at DESC").fetchall()]


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    data = dict(row)
    for key in ("params", "output"):
        if data.get(key):
            try:
                data[key] = json.loads(data[key])
            except ValueError:
                pass
    return data


def job_from_row(row: dict[str, Any]) -> Job:
    """Rebuild a ``Job`` from a stored row (attach it with ``client.adopt`` to poll it again)."""
    from datetime import timezone

    def dt(v: Any) -> datetime | None:
        return datetime.fromtimestamp(v, tz=timezone.utc) if isinstance(v, (int, float)) else None

    job = Job(
        id=row["id"],
        model=row.get("model"),
        status=row.get("status") or "pending",
        progress=row.get("progress"),
        output=row.get("output") if isinstance(row.get("output"), dict) else None,
        error={"code": row.get("error_code"), "message": row.get("error_message")} if row.get("error_code") or row.get("error_message") else None,
        credits_charged=row.get("credits_charged"),
        credits_refunded=row.get("credits_refunded"),
        refund_status=row.get("refund_status"),
        created_at=dt(row.get("created_at")),
        started_at=dt(row.get("started_at")),
        completed_at=dt(row.get("completed_at")),
        params=params if isinstance(params := row.get("params"), dict) else {},
        local_path=Path(row["local_path"]) if row.get("local_path") else None,
        backend=row.get("backend"),
        host=row.get("host"),
        idempotency_key=row.get("idempotency_key"),
        tag=row.get("tag"),
        catalog_credits=row.get("catalog_credits"),
        pricing_unit=row.get("pricing_unit"),
        verdict=row.get("verdict"),
        note_text=row.get("note"),
    )
    return job
