"""The session: the one owner of a kernel's (or a script's) Vydra state.

Everything that used to hang off module globals lives here, in one object per process: the
backend in use (a logged-in key, a sandbox this session started, or the environment), the client
made for it, the one tracker that polls live jobs, the job history, the registry that keeps one
``Job`` object per job, and the settings that ``%config VydraMagics.*`` changes while the kernel
runs. Whoever needs one of them asks the session for it (``vydra_nb.session.current()``); nothing
is copied at import time, so the order of imports decides nothing.

``vydra_nb.Client`` (``session.client``) belongs to this layer rather than to the API layer because
"no arguments" means "this session's backend" and because every client records its jobs in the
session's history before ``generate()`` returns. The API layer's ``APIClient`` records nothing.

This module imports nothing heavy at import time (``%load_ext vydra_nb`` makes a session and must
stay fast): the tracker, the history and the client are made on first use.
"""

from __future__ import annotations

import collections
import threading
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vydra_nb.api.errors import HistoryWarning
from vydra_nb.api.settings import data_home, host_key, host_matches

if TYPE_CHECKING:
    from vydra_nb.api.jobs import Job, JobRegistry
    from vydra_nb.api.transport import Secret
    from vydra_nb.session.budget import Budgets
    from vydra_nb.session.client import Client
    from vydra_nb.tracking.history import History
    from vydra_nb.tracking.tracker import Tracker

HISTORY_FILE = "history.sqlite3"


@dataclass
class Settings:
    """What ``%config VydraMagics.<name>`` sets for the core, read at the moment it matters.

    The magics copy their traits here when they change (traitlets ``observe``); clients and the
    tracker read these fields on each use, so a change applies to the next job.
    """

    auto_download: bool = False
    low_credit_threshold: int | None = 500
    download_dir: Path | None = None
    usd_per_credit: Any = None
    """USD per credit for dollar figures (None: the plan's rate, see ``vydra_nb.api.money``)."""


class Session:
    """The process's Vydra state and its one owner. Thread-safe."""

    def __init__(self) -> None:
        self.settings = Settings()
        self._lock = threading.RLock()
        self._registry: JobRegistry | None = None
        self._tracker: Tracker | None = None
        self._client: Client | None = None
        self._login_key: Secret | None = None
        self._sandbox: Any = None
        self._history: History | None = None
        self._unrecorded: set[str] = set()
        self._stores: weakref.WeakKeyDictionary[Job, History] = weakref.WeakKeyDictionary()
        self._retained: dict[str, collections.deque[Any]] = {}
        self._budgets: Budgets | None = None

    def __repr__(self) -> str:
        return f"<vydra_nb Session backend={self.backend_label()}>"

    @property
    def registry(self) -> JobRegistry:
        """Where every client of this session looks its jobs up: one ``Job`` object per job."""
        with self._lock:
            if self._registry is None:
                from vydra_nb.api.jobs import JobRegistry

                self._registry = JobRegistry()
            return self._registry

    @property
    def tracker(self) -> Tracker:
        """The one tracker that polls this session's live jobs."""
        with self._lock:
            if self._tracker is None:
                from vydra_nb.tracking.tracker import Tracker

                self._tracker = Tracker(auto_download=lambda: self.settings.auto_download)
            return self._tracker

    @property
    def budgets(self) -> Budgets:
        """The session's budgets (``%vydra budget``, ``Client(budget=...)``) and the spend they count:
        every client of the session checks them before it sends a generation."""
        with self._lock:
            if self._budgets is None:
                from vydra_nb.session.budget import Budgets
                from vydra_nb.tracking.history import SESSION_ID

                self._budgets = Budgets(self._budget_history, SESSION_ID)
            return self._budgets

    def _budget_history(self) -> History | None:
        """Where day and tag budgets read other kernels' spend: the history in ``VYDRA_NB_HOME``."""
        return self.history()

    # -- the backend --------------------------------------------------------------------------
    @property
    def sandbox(self) -> Any:
        """The sandbox this session started (``%vydra sandbox``), or None."""
        return self._sandbox

    @property
    def logged_in(self) -> bool:
        return self._login_key is not None

    def backend_options(self) -> dict[str, Any]:
        """Arguments for a client of this session's backend: the sandbox it started, else the
        key given to ``login``, else nothing (the environment decides)."""
        with self._lock:
            if self._sandbox is not None:
                box = self._sandbox
                return {"api_key": box.api_key, "base_url": box.url, "time_scale": 1 / box.speed}
            if self._login_key is not None:
                return {"api_key": self._login_key.reveal()}
            return {}

    def backend_label(self) -> str:
        if self._sandbox is not None:
            return "sandbox"
        client = self._client
        return client.backend if client is not None else "environment"

    @property
    def client(self) -> Client:
        """The session's client, made on first use for the current backend."""
        with self._lock:
            if self._client is None:
                from vydra_nb.session.client import Client

                self._client = Client(session=self, **self.backend_options())
            return self._client

    @property
    def existing_client(self) -> Client | None:
        """The session's client if one was made already (asking for it sends no request either way)."""
        return self._client

    def use_client(self, client: Client | None) -> None:
        """Make ``client`` the one the magics, ``studio()``, ``sweep()`` and the pandas helpers use."""
        with self._lock:
            self._client = client

    def login(self, api_key: str) -> Client:
        """Use the real service with this key (kept in memory only) instead of the environment's."""
        from vydra_nb.api.transport import Secret

        with self._lock:
            self._login_key = Secret(api_key)
            self._client = None
            return self.client

    def logout(self) -> None:
        with self._lock:
            self._login_key = None
            self._client = None

    def start_sandbox(self, *, credits: int, speed: float, **options: Any) -> Any:
        """Start a sandbox and make it this session's backend; a sandbox started before is stopped.

        The server runs in a process of its own (``vydra_nb.sandbox.process``), so its media
        rendering and job records do not grow the kernel; it ends with the kernel, even a killed
        one. Returns it (``.url``, ``.api_key``, ``.speed``, ``.flavor``, ``.state()``, ``.stop()``).
        """
        from vydra_nb.sandbox import process

        with self._lock:
            self.stop_sandbox()
            self._sandbox = process.spawn(credits=credits, speed=speed, **options)
            self._client = None
            return self._sandbox

    def stop_sandbox(self) -> int | None:
        """Stop the sandbox this session started; None when there was none, else how many of its
        unfinished jobs the history now marks ``lost`` (they went with it)."""
        with self._lock:
            box, self._sandbox = self._sandbox, None
            if box is None:
                return None
            if self._client is not None and self._client.base_url == box.url:
                self._client = None
            if self._tracker is not None:
                for job in self._tracker.live:
                    if job.host == host_key(box.url):
                        self._tracker.untrack(job)
        box.stop()
        try:
            return self.history().mark_lost(host_key(box.url), "the sandbox that ran it was stopped")
        except Exception:  # the history is a record, not a reason to keep a sandbox running
            return 0

    def retain(self, group: str, closable: Any, limit: int) -> None:
        """Keep at most ``limit`` objects of ``group`` open, closing the oldest (``.close()``): views
        that outlive their job (Keep / Reject buttons) stay bounded in a long session."""
        with self._lock:
            kept = self._retained.setdefault(group, collections.deque())
            kept.append(closable)
            old = [kept.popleft() for _ in range(max(0, len(kept) - limit))]
        for item in old:
            try:
                item.close()
            except Exception:  # closing is housekeeping; it must never break a cell
                pass

    # -- the history --------------------------------------------------------------------------
    def history(self) -> History:
        """The job history in ``VYDRA_NB_HOME`` (opened on first use, and again if that folder changes)."""
        from vydra_nb.tracking.history import History

        path = data_home() / HISTORY_FILE
        with self._lock:
            if self._history is None or self._history.path != path or self._history.closed:
                self._history = History(path)  # the previous store stays open for the jobs written to it
            return self._history

    def record(self, job: Job, history: History | None = None) -> None:
        """Write ``job`` to the history (the session's, or ``history``). Every client's listener.

        If the store cannot be written (disk full, read-only folder, a broken file), the job has
        still been charged: say so once per job, in one line with its id, so the user can keep it
        by hand, rather than a logged traceback that scrolls away.
        """
        try:
            if history is None:
                # A job stays in the store it was first written to, even if VYDRA_NB_HOME changes later.
                history = self._stores.get(job)
                if history is None or history.closed:
                    history = self.history()
                    self._stores[job] = history
            history.record(job)
        except Exception as exc:
            if job.id in self._unrecorded:
                return
            self._unrecorded.add(job.id)
            where = history.path if history is not None else data_home()
            warnings.warn(
                f"Job {job.id} ({job.model}, {job.status}) could not be saved to the history in "
                f"{where} ({type(exc).__name__}: {str(exc)[:120]}). Keep its id: "
                f"`%vydra job {job.id}` shows it while the server keeps it.",
                HistoryWarning,
                stacklevel=2,
            )
        else:
            self._unrecorded.discard(job.id)

    def resume(self, client: Client | None = None) -> int:
        """Track again every unfinished job of ``client``'s server (default: the session's) that
        the history holds; returns how many."""
        from vydra_nb.tracking.history import job_from_row

        client = client or self.client
        count = 0
        for row in self.history().unfinished():
            if not host_matches(row.get("host"), client.base_url):
                continue
            job = client.adopt(job_from_row(row))
            self.tracker.track(job, poll_now=True)
            count += 1
        return count

    # -- life -----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Back to a fresh session: stop tracking (jobs go on on the server), stop the sandbox,
        forget the key and the client. For tests, and for a kernel that starts over."""
        if self._tracker is not None:
            self._tracker.stop()
        self.stop_sandbox()
        with self._lock:
            self._client = None
            self._login_key = None
            self._budgets = None
            if self._history is not None:
                self._history.close()
                self._history = None


_current: Session | None = None
_current_lock = threading.Lock()


def current() -> Session:
    """The process's session (made on first use)."""
    global _current
    with _current_lock:
        if _current is None:
            _current = Session()
        return _current


def default_client() -> Client:
    """The session's client: the sandbox's or the logged-in key's, else one from the environment."""
    return current().client


__all__ = ["HISTORY_FILE", "Session", "Settings", "current", "default_client"]
