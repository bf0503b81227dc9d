"""``vydra_nb.Client``: the API client of a session.

It is ``APIClient`` wired to its session: no ``api_key`` and no ``base_url`` means the session's
backend, every job it meets is recorded in the session's history before the call returns, jobs
come from the session's registry (one object per job), and the download folder and the low-credit
threshold follow the session's live settings.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vydra_nb.api.client import APIClient, check_tag
from vydra_nb.api.errors import ConfigurationError, ValidationError
from vydra_nb.api.inputs import UPLOAD_MAX_AGE, Upload
from vydra_nb.api.jobs import Job
from vydra_nb.api.models import Model
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
    store, or ``history=False`` for none, said explicitly. ``download_dir``,
    ``credit_warning_threshold`` and ``usd_per_credit`` follow the session's live settings unless
    given here.

    ``budget=2000`` sets the session's budget (as ``%vydra budget 2000`` does; ``budget_per="day"``
    or ``"tag:NAME"`` for the others): every client of the session refuses, before sending
    anything, a submission that would take its net spend past it. See ``vydra_nb.session.budget``.
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
        usd_per_credit: Any = UNSET,
        budget: int | None = None,
        budget_per: str = "session",
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
            credit_warning_threshold=credit_warning_threshold, usd_per_credit=usd_per_credit, **options,
        )
        if budget is not None:
            try:
                self.session.budgets.set(budget, per=budget_per)
            except ValidationError as exc:
                raise ConfigurationError(str(exc)) from None
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

    @property
    def usd_per_credit(self) -> Any:
        """The dollar rate set for this client, else the session's (``%config VydraMagics.usd_per_credit``);
        None: the plan's rate (``usd_rate()``)."""
        if self._usd_per_credit is UNSET:
            return self.session.settings.usd_per_credit
        return self._usd_per_credit

    @usd_per_credit.setter
    def usd_per_credit(self, value: Any) -> None:
        self._usd_per_credit: Any = value

    def _override_source(self) -> str:
        if self._usd_per_credit is UNSET:
            return "set by VydraMagics.usd_per_credit"
        return "set by Client(usd_per_credit=...)"

    # -- budgets ----------------------------------------------------------------------------
    def check_budget(self, credits: int | None, *, tag: str | None = None, what: str = "This") -> None:
        """Raise ``BudgetExceededError`` if ``credits`` more would cross one of the session's budgets
        (a sweep checks its total this way before sending anything); sends nothing."""
        self.session.budgets.check(credits, tag=check_tag(tag), backend=self.backend, what=what)

    def generate(self, model: str | Model, params: Mapping[str, Any] | None = None, /, **kwargs: Any) -> Job:
        """``APIClient.generate`` under the session's budgets: the price is held against every
        budget that applies before the request goes, and a submission that would cross one is
        refused (``BudgetExceededError``) with nothing sent. See ``APIClient.generate``."""
        tag = check_tag(kwargs.get("tag"))
        budgets = self.session.budgets
        price = None
        if budgets.applicable(tag):
            m = model if isinstance(model, Model) else self.model(model)
            names = {p.name for p in m.parameters}
            price = m.price({**(params or {}), **{k: v for k, v in kwargs.items() if k in names}})
            what = f"This {m.slug} job"
        else:
            what = "This job"
        with budgets.reserve(price, tag=tag, backend=self.backend, what=what) as reservation:
            job = super().generate(model, params, **kwargs)
            reservation.commit(job)
        return job

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
