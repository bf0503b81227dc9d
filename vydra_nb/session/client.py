"""``vydra_nb.Client``: the API client of a session.

It is ``APIClient`` wired to its session: no ``api_key`` and no ``base_url`` means the session's
backend, every job it meets is recorded in the session's history before the call returns, jobs
come from the session's registry (one object per job), and the download folder and the low-credit
threshold follow the session's live settings.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from vydra_nb.api.client import APIClient
from vydra_nb.api.inputs import UPLOAD_MAX_AGE, Upload
from vydra_nb.api.polling import DurationPrior
from vydra_nb.api.settings import download_home
from vydra_nb.session import Session, current
from vydra_nb.tracking.history import History


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


class Client(APIClient):
    """A Vydra API client that belongs to a session: ``vydra_nb.Client``.

    With no ``api_key`` and no ``base_url`` it uses the session's backend (a sandbox started by
    ``%vydra sandbox``, or the key of ``%vydra login``), then ``VYDRA_API_KEY``/``VYDRA_BASE_URL``.
    Every job it submits or meets is written to the history before the call returns:
    ``history=True`` (the session's, in ``VYDRA_NB_HOME``), a ``History`` or a path for another
    store, or ``history=False`` for none, said explicitly. ``download_dir`` and
    ``credit_warning_threshold`` follow the session's live settings unless given here.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        history: bool | History | str | os.PathLike[str] = True,
        session: Session | None = None,
        credit_warning_threshold: int | None = UNSET,
        download_dir: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> None:
        self.session = session or current()
        if api_key is None and base_url is None:
            backend = self.session.backend_options()
            api_key, base_url = backend.get("api_key"), backend.get("base_url")
            if "time_scale" in backend:
                options.setdefault("time_scale", backend["time_scale"])
        super().__init__(
            api_key, base_url, registry=self.session.registry, download_dir=download_dir,
            credit_warning_threshold=credit_warning_threshold, **options,
        )
        self._own_history: History | None = None
        self._priors: dict[str, tuple[float, DurationPrior | None]] = {}
        self._records = history is not False
        if history is True:
            self.history: History | None = None
            self.add_job_listener(self.session.record)
        elif history is False:
            self.history = None
        else:
            store = history if isinstance(history, History) else History(history)
            if not isinstance(history, History):
                self._own_history = store
            self.history = store
            self.add_job_listener(lambda job: self.session.record(job, store))

    @property
    def credit_warning_threshold(self) -> int | None:
        if self._threshold is UNSET:
            return self.session.settings.low_credit_threshold
        return self._threshold

    @credit_warning_threshold.setter
    def credit_warning_threshold(self, value: int | None) -> None:
        self._threshold: Any = value

    PRIOR_TTL = 60.0  # seconds a model's learnt durations are reused before the history is read again

    def duration_prior(self, model: str | None) -> DurationPrior | None:
        """This model's durations on this server, learnt from the history's completed jobs (None
        below three): the polling policy aims at the window they span."""
        if not model:
            return None
        now = time.monotonic()
        cached = self._priors.get(model)
        if cached is not None and now - cached[0] < self.PRIOR_TTL:
            return cached[1]
        try:
            store = self.history if self.history is not None else self.session.history()
            prior = DurationPrior.from_durations(store.durations(model, self.host))
        except Exception:  # a history that cannot be read only means no prior
            prior = None
        self._priors[model] = (now, prior)
        return prior

    def _store(self) -> History | None:
        """The history this client records in (None with ``history=False``)."""
        if not self._records:
            return None
        return self.history if self.history is not None else self.session.history()

    def known_upload(self, sha256: str) -> Upload | None:
        """An earlier upload of this content to this server: this client's, else the history's
        (so a new kernel, or running the cell again, uploads nothing)."""
        known = super().known_upload(sha256)
        if known is not None:
            return known
        try:
            store = self._store()
            row = store.upload(sha256, self.host, max_age=UPLOAD_MAX_AGE) if store is not None else None
        except Exception:  # a history that cannot be read only means uploading again
            row = None
        if row is None:
            return None
        found = Upload(url=row["url"], sha256=sha256, filename=row.get("filename"), size=row.get("size"),
                       type=row.get("content_type"))
        super().remember_upload(found)
        return found

    def remember_upload(self, upload: Upload) -> None:
        super().remember_upload(upload)
        try:
            store = self._store()
            if store is not None:
                store.record_upload(upload.sha256, self.host, upload.url, filename=upload.filename,
                                    size=upload.size, content_type=upload.type)
        except Exception:  # the upload happened; only the cache is lost
            pass

    def _default_download_dir(self) -> Path:
        configured = self.session.settings.download_dir
        return configured if configured is not None else download_home()

    def close(self) -> None:
        super().close()
        if self._own_history is not None:
            self._own_history.close()
