"""pandas helpers: the model price list, the job history, spend, a what-if planner and a chart.

Every function returns a plain ``DataFrame`` (or matplotlib ``Axes``) so results compose with the
rest of pandas; ``styled(df)`` turns any of them into a tidy notebook table. This module imports
pandas at the top, so it is itself only ever imported lazily (``vydra_nb.models_df`` and friends
resolve on first use) and ``%load_ext vydra_nb`` stays fast.

Money: credits are integers (nullable ``Int64``, because a job the server never priced has no
charge); dollars are ``credits * rate`` computed exactly and rounded half up to the cent, once (a
total is converted from its credits, never summed from rounded parts). The rate is the account's
plan's (``vydra_nb.api.money``), or ``usd_per_credit`` given here, or the session's setting
(``%config VydraMagics.usd_per_credit``); every frame says which in ``df.attrs["usd_rate"]``, and
``styled(df)`` puts that in the table's caption.
Times are UTC (``datetime64[..., UTC]``), because the history stores epoch seconds and a notebook
may be shared across time zones.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from os import PathLike
from typing import Any

import numpy as np
import pandas as pd

from vydra_nb.api.jobs import CANCELLED, COMPLETED, FAILED, PENDING, RUNNING
from vydra_nb.api.money import Rate, as_rate, rate_for, to_usd
from vydra_nb.session import current as current_session
from vydra_nb.tracking.history import History

__all__ = [
    "STATUSES", "models_df", "jobs_df", "expand_params", "spend_summary", "plan_costs", "spend_chart",
    "price_history_df", "styled", "usd_rate",
]

# The five documented statuses, in lifecycle order; statuses seen in the store are appended.
STATUSES: tuple[str, ...] = (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED)

MODEL_COLUMNS = (
    "slug", "name", "provider", "variant", "credits_per_unit", "pricing_unit", "usd_per_unit", "is_active",
    "description",
)

# What jobs_df reads: one SQL query, only the columns it shows (each column costs ~30 ms per 100k rows).
_JOB_SQL_COLUMNS = (
    "id", "created_at", "model", "status", "progress", "prompt", "params", "credits_charged",
    "credits_refunded", "started_at", "completed_at", "media_url", "local_path", "error_code",
    "error_message", "backend", "host", "notebook", "session", "verdict", "note", "tag", "catalog_credits",
    "pricing_unit",
)
JOB_COLUMNS = (
    "id", "created_at", "model", "status", "verdict", "tag", "progress", "prompt", "note", "params",
    "credits_charged", "credits_refunded", "net_credits", "usd", "catalog_credits", "charged_vs_catalog",
    "pricing_unit", "started_at", "completed_at", "duration_s", "media_url", "local_path", "error_code",
    "error_message", "backend", "host", "notebook", "session",
)
_STR_COLUMNS = ("id", "model", "prompt", "media_url", "local_path", "error_code", "error_message", "backend", "host",
                "notebook", "session", "verdict", "note", "tag", "pricing_unit")
_TIME_COLUMNS = ("created_at", "started_at", "completed_at")
_INT_COLUMNS = ("progress", "credits_charged", "credits_refunded", "catalog_credits")
# Pricing units whose charge scales with the input's length (a 3-minute file costs 3 units).
_SCALING_UNITS = ("minute", "second", "minutes", "seconds")
KEPT, REJECTED = "kept", "rejected"

SUMMARY_COLUMNS = (
    "jobs", "credits_charged", "credits_refunded", "net_credits", "usd", "failure_rate", "mean_duration_s",
    "kept", "rejected", "keep_rate", "credits_per_kept", "usd_per_kept",
)
_SUMMARY_BY = ("model", "day", "week", "status", "provider", "tag", "prompt")
# What a group of jobs with no value is called, rather than being dropped from the summary.
_MISSING_LABEL = {"model": "unknown", "tag": "untagged", "prompt": "(no prompt)"}

PLAN_COLUMNS = (
    "model", "variant", "count", "keep_rate", "submissions", "credits_each", "credits", "usd", "balance_after",
    "covered", "short_by",
)
TOTAL_LABEL = "TOTAL"

# Text columns: pandas 3's "str" dtype (missing values are NaN); pandas 2 keeps object, where
# astype("str") would turn None into the text "None".
TEXT_DTYPE: Any = "str" if int(pd.__version__.split(".")[0]) >= 3 else object


# -- helpers ------------------------------------------------------------------------------------
def _client_or_default(client: Any) -> Any:
    """The given client, else the session's (``%vydra sandbox``/``login``), else one from the environment."""
    if client is not None:
        return client
    return current_session().client


def _session_backend() -> str:
    """"sandbox" while this session works on a sandbox (``%vydra sandbox``, or a loopback
    ``VYDRA_BASE_URL``), else "vydra": the backend whose spend a summary should show by default."""
    import os

    from vydra_nb.api.settings import ENV_BASE_URL, is_sandbox_url

    session = current_session()
    if session.sandbox is not None:
        return "sandbox"
    client = session.existing_client
    if client is not None:
        return client.backend
    return "sandbox" if is_sandbox_url(os.environ.get(ENV_BASE_URL) or "https://x") else "vydra"


def _backend_filter(backend: str | None) -> str | None:
    if backend == "auto":
        return _session_backend()
    if backend not in (None, "sandbox", "vydra"):
        raise ValueError(f"backend={backend!r}: choose 'auto', 'vydra', 'sandbox' or None (both).")
    return backend


@contextmanager
def _history(history: History | str | PathLike[str] | None) -> Iterator[History]:
    """The store to read; one opened here from a path is closed again, not left to the GC."""
    if history is None:
        yield current_session().history()
    elif isinstance(history, History):
        yield history
    else:
        store = History(history)
        try:
            yield store
        finally:
            store.close()


# -- dollars ---------------------------------------------------------------------------------------
def usd_rate(usd_per_credit: Any = None, *, client: Any = None, fetch: bool = False) -> Rate:
    """The rate a table converts credits with, and where it comes from.

    ``usd_per_credit`` given here wins; else the client's (``client``, or the session's client if
    one was made: its own setting, the session's ``%config VydraMagics.usd_per_credit``, else its
    plan's rate); else the session's setting, else the Creator rate, labelled as assumed.
    ``fetch`` lets the client ask for its plan (one ``GET /organization``) if no answer named it.
    """
    if usd_per_credit is not None:
        return Rate(as_rate(usd_per_credit), "given as usd_per_credit")
    session = current_session()
    c = client if client is not None else session.existing_client
    if c is not None and hasattr(c, "usd_rate"):
        rate: Rate = c.usd_rate(fetch=fetch)
        return rate
    return rate_for(None, session.settings.usd_per_credit, override_source="set by VydraMagics.usd_per_credit")


def _frame_rate(frame: pd.DataFrame | None, usd_per_credit: Any, client: Any = None) -> Rate:
    """The rate for a table made from ``frame`` (a ``jobs_df()`` result): the one given, else the
    one ``frame`` was made with (so a summary agrees with the jobs it summarises), else the session's."""
    if usd_per_credit is None and frame is not None and frame.attrs.get("usd_per_credit"):
        return Rate(as_rate(frame.attrs["usd_per_credit"]), str(frame.attrs.get("usd_rate_source", "")))
    return usd_rate(usd_per_credit, client=client)


def _usd(credits: pd.Series, rate: Rate) -> pd.Series:
    """Dollars of each credits value, exact and rounded half up to the cent, as float64 (NaN where
    the credits are missing). Whole-number arithmetic, vectorised: ``Decimal`` per row would cost
    a second per 100,000 jobs, and floats round 1.575 down."""
    numerator, denominator = rate.usd_per_credit.as_integer_ratio()
    values = pd.to_numeric(credits, errors="coerce").astype("Float64")
    missing = values.isna().to_numpy()
    whole = values.fillna(0).to_numpy(dtype="float64")
    if len(whole) and float(np.abs(whole).max()) * numerator * 200 >= 2**62:  # would overflow: exact, slowly
        cents_list = [None if m else int(to_usd(int(c), rate.usd_per_credit) * 100) for c, m in zip(whole, missing, strict=True)]
        return pd.Series([np.nan if c is None else c / 100 for c in cents_list], index=credits.index, dtype="float64")
    ints = whole.astype("int64")
    scaled = np.abs(ints) * (numerator * 200)  # 2 x cents x denominator
    cents = (scaled + denominator) // (2 * denominator)  # half up, on the magnitude (away from zero)
    result = np.sign(ints) * cents / 100.0
    result[missing] = np.nan
    return pd.Series(result, index=credits.index, dtype="float64")


def _with_rate(df: pd.DataFrame, rate: Rate) -> pd.DataFrame:
    df.attrs.update(rate.as_attrs())
    return df


# -- models ----------------------------------------------------------------------------------------
def models_df(
    provider: str | None = None,
    active_only: bool = True,
    usd_per_credit: Any = None,
    *,
    client: Any = None,
) -> pd.DataFrame:
    """The price list: one row per model, and one per priced variant where a parameter sets the price.

    Grok Imagine costs 8 credits for an image and 150 for a video, chosen by its ``model``
    parameter; a single row would mislead a budget, so each priced value gets its own row with
    ``variant`` such as ``"model=text-to-image"`` (``variant`` is missing for one-price models).
    That label can be passed to :func:`plan_costs` as ``"grok-imagine:model=text-to-video"``.

    ``client`` is anything with ``.models(provider=, active=)`` (default: the session's client);
    the list is cached by the client for an hour, so calling this again costs no request.
    Sorted by provider, then slug, then price. ``usd_per_unit`` uses the plan's rate (asked for
    once, with the list, if the client does not know the plan yet) unless ``usd_per_credit`` is
    given; ``df.attrs["usd_rate"]`` says which.
    """
    c = _client_or_default(client)
    rate = usd_rate(usd_per_credit, client=c, fetch=True)
    models = c.models(provider=provider, active=True if active_only else None)
    records = []
    for m in models:
        variants = m.price_variants() if hasattr(m, "price_variants") else [(None, m.credits_per_unit)]
        for variant, credits in variants:
            records.append((
                m.slug, m.name, m.provider, variant, credits, m.pricing_unit,
                None, bool(m.is_active), m.description,
            ))
    df = pd.DataFrame.from_records(records, columns=list(MODEL_COLUMNS))
    for col in ("slug", "name", "provider", "variant", "pricing_unit", "description"):
        df[col] = df[col].astype(TEXT_DTYPE)
    df["credits_per_unit"] = df["credits_per_unit"].astype("Int64")
    df["usd_per_unit"] = _usd(df["credits_per_unit"], rate)
    df["is_active"] = df["is_active"].astype("bool")
    df = df.sort_values(["provider", "slug", "credits_per_unit"], na_position="last", kind="stable")
    return _with_rate(df.reset_index(drop=True), rate)


# -- jobs ------------------------------------------------------------------------------------------
_DATE_LIKE = re.compile(r"^\s*\d{4}-\d{2}")


def _since_epoch(since: Any, now: datetime | None = None) -> float | None:
    """``since`` as epoch seconds.

    A datetime, date, ISO string or ``pd.Timestamp`` is a moment (naive means UTC, like every time
    in these frames); a ``timedelta``/``pd.Timedelta`` or a duration string such as ``"7D"``,
    ``"12h"`` or ``"2 weeks"`` means "that long ago". A plain number is epoch seconds.
    """
    if since is None:
        return None
    now = now or datetime.now(timezone.utc)
    if isinstance(since, (timedelta, pd.Timedelta, np.timedelta64)):
        return (now - pd.Timedelta(since)).timestamp()
    if isinstance(since, bool):
        raise TypeError("since must be a datetime, an ISO string or a duration such as '7D'.")
    if isinstance(since, (int, float)):
        return float(since)
    if isinstance(since, str):
        text = since.strip()
        if not _DATE_LIKE.match(text):
            if not re.search(r"[A-Za-z]", text):
                raise ValueError(f"since={since!r}: give a unit, like '7D' or '12h', or an ISO date.")
            try:
                return (now - pd.Timedelta(text)).timestamp()
            except ValueError:
                raise ValueError(
                    f"since={since!r} is neither an ISO date ('2024-05-01') nor a duration ('7D', '12h')."
                ) from None
        since = pd.Timestamp(text)
    if isinstance(since, date) and not isinstance(since, datetime):
        since = datetime(since.year, since.month, since.day)
    if isinstance(since, datetime):  # pd.Timestamp is one too
        ts = pd.Timestamp(since)
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        return ts.timestamp()
    raise TypeError(f"since must be a datetime, an ISO string or a duration such as '7D', not {type(since).__name__}.")


def _in_clause(column: str, value: str | Iterable[str] | None, where: list[str], args: list[Any]) -> None:
    if value is None:
        return
    values = [value] if isinstance(value, str) else list(value)
    if not values:
        where.append("0")
        return
    where.append(f"{column} IN ({', '.join('?' for _ in values)})")
    args.extend(str(v) for v in values)


def _status_categorical(values: pd.Series) -> pd.Categorical:
    seen = [s for s in pd.unique(values.dropna()) if s not in STATUSES]
    return pd.Categorical(values, categories=[*STATUSES, *sorted(map(str, seen))])


def jobs_df(
    since: Any = None,
    model: str | Iterable[str] | None = None,
    status: str | Iterable[str] | None = None,
    *,
    history: History | str | PathLike[str] | None = None,
    usd_per_credit: Any = None,
    parse_params: bool = False,
    session: str | None = None,
    backend: str | None = None,
    tag: str | Iterable[str] | None = None,
    verdict: str | Iterable[str] | None = None,
) -> pd.DataFrame:
    """Every recorded job, newest first, with typed columns ready for analysis.

    Columns: ``id``, ``created_at``/``started_at``/``completed_at`` (UTC datetimes), ``model``,
    ``status`` (categorical: the five documented statuses, then any other seen), ``progress``,
    ``credits_charged``, ``credits_refunded``, ``net_credits`` (nullable ``Int64``), ``usd``,
    ``duration_s`` (completed_at - created_at), ``prompt``, ``params``, ``media_url``,
    ``local_path``, ``error_code``, ``error_message``, ``backend``, ``host``, ``notebook``.

    What the user said of each result: ``verdict`` ("kept", "rejected", or missing: not judged;
    ``job.keep()``/``job.reject()`` or the Keep/Reject buttons), ``note`` and ``tag``. What the
    catalog said: ``catalog_credits``, the price listed when the job was submitted, and
    ``pricing_unit``; ``charged_vs_catalog`` is what was charged less that price, so anything but
    0 flags a job charged differently from the catalog (missing when either is unknown; for
    per-minute pricing, what is left over a whole number of units). ``usd`` uses the rate in
    ``df.attrs["usd_rate"]``. ``tag``/``verdict`` filter like ``model``.

    ``since``: a datetime/ISO string, or a duration like ``"7D"`` meaning the last 7 days.
    ``model``/``status``: one value or several. ``session="current"`` keeps only the jobs this
    kernel submitted (the history is shared by every notebook and kernel); any other string is a
    session id from the ``session`` column.

    ``params`` stays the stored JSON text unless ``parse_params=True``: decoding 100,000 small
    JSON objects costs as much as the rest of this function together, and most analyses never
    look at them. :func:`expand_params` turns them into columns when you do.

    One SQL query through a separate read-only connection (a writer in another kernel never waits
    for it); conversions are vectorised, so 100,000 jobs load in a few tenths of a second.
    """
    where: list[str] = []
    args: list[Any] = []
    start = _since_epoch(since)
    if start is not None:
        where.append("created_at >= ?")
        args.append(start)
    _in_clause("model", model, where, args)
    _in_clause("status", status, where, args)
    _in_clause("tag", tag, where, args)
    _in_clause("verdict", verdict, where, args)
    backend = _backend_filter(backend)
    if backend is not None:
        where.append("backend = ?")
        args.append(backend)
    if session is not None:
        from vydra_nb.tracking.history import SESSION_ID

        where.append("session = ?")
        args.append(SESSION_ID if session == "current" else session)
    sql = f"SELECT {', '.join(_JOB_SQL_COLUMNS)} FROM jobs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY created_at DESC, rowid DESC"
    with _history(history) as store:
        conn = store.connection_for_read()
        try:
            rows = conn.execute(sql, args).fetchall()
        finally:
            conn.close()
    raw = pd.DataFrame.from_records(rows, columns=list(_JOB_SQL_COLUMNS), coerce_float=True)
    rate = usd_rate(usd_per_credit)
    return _with_rate(_type_jobs(raw, rate=rate, parse_params=parse_params), rate)


def _type_jobs(raw: pd.DataFrame, *, rate: Rate, parse_params: bool) -> pd.DataFrame:
    """Give the raw SQL columns their types; works the same on an empty result."""
    out: dict[str, Any] = {}
    for col in _TIME_COLUMNS:
        out[col] = pd.to_datetime(pd.to_numeric(raw[col], errors="coerce"), unit="s", utc=True)
    for col in _INT_COLUMNS:
        out[col] = pd.to_numeric(raw[col], errors="coerce").astype("Int64")
    for col in _STR_COLUMNS:
        column = raw[col]
        out[col] = column if column.dtype == TEXT_DTYPE else column.astype(TEXT_DTYPE)
    out["status"] = _status_categorical(raw["status"])
    charged, refunded = out["credits_charged"], out["credits_refunded"]
    net = charged.fillna(0) - refunded.fillna(0)
    net[charged.isna() & refunded.isna()] = pd.NA  # nothing known is not "free"
    out["net_credits"] = net
    out["usd"] = _usd(net, rate)
    out["charged_vs_catalog"] = _charged_vs_catalog(charged, out["catalog_credits"], out["pricing_unit"])
    out["duration_s"] = (out["completed_at"] - out["created_at"]).dt.total_seconds()
    if parse_params:
        out["params"] = pd.Series([_loads(s) for s in raw["params"]], index=raw.index, dtype=object)
    else:
        out["params"] = raw["params"].astype(TEXT_DTYPE)
    return pd.DataFrame({c: out[c] for c in JOB_COLUMNS}, index=raw.index)


def _charged_vs_catalog(charged: pd.Series, listed: pd.Series, unit: pd.Series) -> pd.Series:
    """Charged less the catalog price at submission (Int64; missing when either is unknown).

    Per-minute (and per-second) prices scale with the input's length, so there the difference is
    taken from the nearest whole number of units (at least one): a 3-minute transcript charged 3x
    the listed price is as listed."""
    diff = charged - listed
    scaling = unit.isin(_SCALING_UNITS).fillna(False).to_numpy(dtype=bool) & (listed > 0).fillna(False).to_numpy(dtype=bool)
    if scaling.any():
        units = (charged[scaling].astype("float64") / listed[scaling].astype("float64")).round().clip(lower=1)
        diff[scaling] = charged[scaling] - (listed[scaling].astype("float64") * units).round().astype("Int64")
    return diff.astype("Int64")


def _loads(text: Any) -> dict[str, Any]:
    if not isinstance(text, str) or not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def expand_params(jobs: pd.DataFrame, *, prefix: str = "param_") -> pd.DataFrame:
    """``jobs`` with each submitted parameter as its own column (``param_aspect_ratio``, ...).

    Accepts the JSON text column ``jobs_df()`` returns or already parsed dicts. Kept separate from
    ``jobs_df`` because decoding is the slowest step there; run it on the rows you selected.
    """
    parsed = [p if isinstance(p, dict) else _loads(p) for p in jobs["params"]]
    wide = pd.json_normalize(parsed, max_level=0) if parsed else pd.DataFrame()
    wide.index = jobs.index
    wide.columns = [f"{prefix}{c}" for c in wide.columns]
    return jobs.join(wide)


# -- spend -----------------------------------------------------------------------------------------
def _provider_map(models: Mapping[str, str] | Iterable[Any] | None, client: Any) -> dict[str, str]:
    """slug -> provider, from ``models`` (a mapping or Model objects) or a client's cached list."""
    if isinstance(models, Mapping):
        return {str(k): str(v) for k, v in models.items()}
    if models is not None:
        return {m.slug: m.provider or "unknown" for m in models if not isinstance(m, str)}
    if client is None:
        client = current_session().existing_client  # only one the session already made: no surprise request
    if client is None:
        return {}
    try:
        return {m.slug: m.provider or "unknown" for m in client.models()}
    except Exception:  # offline, no key: the summary still works, providers show as unknown
        return {}


def _group_key(df: pd.DataFrame, by: str, providers: dict[str, str]) -> pd.Series:
    if by == "model":
        return df["model"].fillna("unknown").rename("model")
    if by == "status":
        return df["status"].rename("status")
    if by == "provider":
        return df["model"].map(lambda s: providers.get(s, "unknown") if isinstance(s, str) else "unknown").rename("provider")
    if by not in ("day", "week"):  # tag, prompt, or any other column of the jobs
        column = df[by]
        label = _MISSING_LABEL.get(by)
        if label is not None and not isinstance(column.dtype, pd.CategoricalDtype):
            column = column.astype(object).where(column.notna(), label)
        return column.rename(by)
    created = df["created_at"]
    if by == "day":
        return created.dt.floor("D").rename("day")
    # Weeks start on Monday (ISO), labelled by that Monday.
    return (created.dt.floor("D") - pd.to_timedelta(created.dt.day_of_week, unit="D")).rename("week")


def spend_summary(
    by: str = "model",
    *,
    history: History | str | PathLike[str] | None = None,
    since: Any = None,
    models: Mapping[str, str] | Iterable[Any] | None = None,
    client: Any = None,
    usd_per_credit: Any = None,
    jobs: pd.DataFrame | None = None,
    backend: str | None = "auto",
) -> pd.DataFrame:
    """Where the credits went, and what a result worth keeping cost, grouped ``by`` model, day,
    week (from Monday), status, provider, tag, prompt, or any other column of ``jobs_df()``.

    Columns: ``jobs``, ``credits_charged``, ``credits_refunded``, ``net_credits``, ``usd`` (of the
    net), ``failure_rate`` and ``mean_duration_s``. ``failure_rate`` is failed / (completed +
    failed): a cancellation is the user's choice and says nothing about the model, and a job
    still running has no outcome yet (NaN when none finished). ``mean_duration_s`` is over the
    jobs with a completion time, i.e. the completed ones.

    From the verdicts (``job.keep()``, ``job.reject()``, the Keep/Reject buttons): ``kept``,
    ``rejected``, ``keep_rate`` = kept / (kept + rejected), and ``credits_per_kept`` (and
    ``usd_per_kept``) = the net credits of the judged jobs / kept: what one usable result costs
    once the takes thrown away are paid for. Jobs not judged yet count on neither side (they are
    neither usable nor thrown away yet), so ``credits_per_kept`` is what ``keep_rate`` predicts:
    a 175-credit model kept 2 times in 5 costs 175 / 0.4 = 437.5 credits per kept result. Both are
    NaN while nothing is judged (or nothing kept). Jobs without a tag group as "untagged".

    The provider of a model comes from ``models`` (``{"veo3": "kie-ai"}`` or ``Model`` objects),
    else ``client``'s cached model list, else the session's client if one exists; a model none of
    them knows is "unknown". Nothing here makes a request you did not ask for.
    Pass ``jobs`` (a ``jobs_df()`` result, perhaps filtered) to summarise that instead of the store.
    Rows: models and providers by net credits (largest first), days and weeks in order.

    ``backend="auto"`` summarises the backend this session uses: the real service's jobs, or, while
    a sandbox is in use, the sandbox's, so fake credits never inflate a real spend report. Pass
    ``"vydra"``, ``"sandbox"`` or ``None`` (both) to choose. Dollars use ``usd_per_credit`` if
    given, else the rate ``jobs`` was made with, else the session's (``df.attrs["usd_rate"]``).
    """
    df = jobs if jobs is not None else jobs_df(since=since, history=history, usd_per_credit=usd_per_credit,
                                               backend=backend)
    if by not in _SUMMARY_BY and by not in df.columns:
        raise ValueError(f"by={by!r}: choose one of {', '.join(_SUMMARY_BY)}, or a column of jobs_df().")
    rate = _frame_rate(df, usd_per_credit, client)
    providers = _provider_map(models, client) if by == "provider" else {}
    key = _group_key(df, by, providers)
    finished = df["status"].isin([COMPLETED, FAILED])
    failed = (df["status"] == FAILED).astype("int64")
    verdicts = df["verdict"] if "verdict" in df.columns else pd.Series(pd.NA, index=df.index, dtype=object)
    kept = (verdicts == KEPT).fillna(False).astype("int64")
    judged = verdicts.isin([KEPT, REJECTED]).fillna(False)
    frame = pd.DataFrame({
        "key": key,
        "credits_charged": df["credits_charged"],
        "credits_refunded": df["credits_refunded"],
        "net_credits": df["net_credits"],
        "failed": failed,
        "finished": finished.astype("int64"),
        "duration_s": df["duration_s"],
        "kept": kept,
        "judged": judged.astype("int64"),
        "judged_credits": df["net_credits"].where(judged.to_numpy(), 0).fillna(0).astype("int64"),
    })
    g = frame.groupby("key", observed=True, sort=True, dropna=True)
    out = pd.DataFrame({
        "jobs": g.size().astype("int64"),
        "credits_charged": g["credits_charged"].sum().astype("Int64"),
        "credits_refunded": g["credits_refunded"].sum().astype("Int64"),
        "net_credits": g["net_credits"].sum().astype("Int64"),
    })
    out["usd"] = _usd(out["net_credits"], rate)
    finished_n = g["finished"].sum()
    out["failure_rate"] = (g["failed"].sum() / finished_n.where(finished_n > 0)).astype("float64")
    out["mean_duration_s"] = g["duration_s"].mean().astype("float64")
    kept_n, judged_n = g["kept"].sum().astype("int64"), g["judged"].sum().astype("int64")
    out["kept"] = kept_n
    out["rejected"] = (judged_n - kept_n).astype("int64")
    out["keep_rate"] = (kept_n / judged_n.where(judged_n > 0)).astype("float64")
    per_kept = (g["judged_credits"].sum() / kept_n.where(kept_n > 0)).astype("float64")
    out["credits_per_kept"] = per_kept
    out["usd_per_kept"] = _usd_of_float(per_kept, rate)
    out.index.name = by
    if by in ("model", "provider"):
        out = out.sort_values(["net_credits", "jobs"], ascending=False, kind="stable")
    if by == "status" and len(out):
        out.index = pd.CategoricalIndex(out.index, categories=df["status"].cat.categories, name="status")
    return _with_rate(out[list(SUMMARY_COLUMNS)], rate)


def _usd_of_float(credits: pd.Series, rate: Rate) -> pd.Series:
    """Dollars of a fractional number of credits (a cost per kept result), exact, half up to the cent."""
    from decimal import Decimal

    return pd.Series([np.nan if pd.isna(c) else float(rate.usd(Decimal(repr(float(c)))) or 0) for c in credits],
                     index=credits.index, dtype="float64")


# -- what-if ---------------------------------------------------------------------------------------
def _plan_items(counts: Any) -> list[tuple[str, str | None, dict[str, Any], int]]:
    """Normalise the planner's input forms to (slug, variant value, params, count)."""
    items: list[tuple[str, str | None, dict[str, Any], int]] = []
    if isinstance(counts, pd.DataFrame):
        missing = {"model", "count"} - set(counts.columns)
        if missing:
            raise ValueError(f"plan_costs needs columns 'model' and 'count' (missing {', '.join(sorted(missing))}).")
        for rec in counts.to_dict("records"):
            params = rec.get("params") if isinstance(rec.get("params"), dict) else {}
            slug, variant = _split_key(str(rec["model"]))
            items.append((slug, variant, dict(params), _count(rec["count"], rec["model"])))
        return items
    if isinstance(counts, pd.Series):
        counts = counts.to_dict()
    if not isinstance(counts, Mapping):
        raise TypeError("plan_costs takes a dict like {'veo3': 50, 'grok-imagine:text-to-image': 200} or a DataFrame.")
    for key, value in counts.items():
        slug, variant = _split_key(str(key))
        if isinstance(value, Mapping):
            params = {k: v for k, v in value.items() if k != "count"}
            if "count" not in value:
                raise ValueError(f"plan_costs[{key!r}]: give a 'count', e.g. {{'count': 200, **params}}.")
            items.append((slug, variant, params, _count(value["count"], key)))
        else:
            items.append((slug, variant, {}, _count(value, key)))
    return items


def _split_key(key: str) -> tuple[str, str | None]:
    slug, sep, variant = key.partition(":")
    return slug.strip(), (variant.strip() or None) if sep else None


def _count(value: Any, key: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float, np.floating)) or value != int(value) or value < 0:
        raise ValueError(f"plan_costs[{key!r}]: the count must be a whole number >= 0, not {value!r}.")
    return int(value)


def _variant_params(model: Any, variant: str) -> tuple[dict[str, Any], str]:
    """``"text-to-video"`` or ``"model=text-to-video"`` -> the parameter that sets that price."""
    name, sep, value = variant.partition("=")
    for p in model.parameters:
        if not p.prices:
            continue
        if sep and p.name == name.strip() and value.strip() in p.prices:
            return {p.name: value.strip()}, f"{p.name}={value.strip()}"
        if not sep and variant in p.prices:
            return {p.name: variant}, f"{p.name}={variant}"
    labels = [label for label, _ in model.price_variants() if label]
    hint = f" Priced variants: {', '.join(labels)}." if labels else f" {model.slug} has one price."
    raise ValueError(f"{model.slug} has no priced variant {variant!r}.{hint}")


def plan_costs(
    counts: Mapping[str, Any] | pd.DataFrame | pd.Series,
    *,
    client: Any = None,
    balance: int | None = None,
    check_balance: bool = True,
    usd_per_credit: Any = None,
    keep_rate: float | Mapping[str, float] | str | None = None,
    history: History | str | PathLike[str] | None = None,
    backend: str | None = "auto",
) -> pd.DataFrame:
    """What a batch would cost, line by line and in total, against the remaining balance.

    ``counts`` forms (all may be mixed in one dict):

    - ``{"veo3": 50}``: 50 submissions at the model's default price;
    - ``{"grok-imagine:text-to-video": 20}`` or ``{"grok-imagine:model=text-to-video": 20}``: a
      priced variant, named by its value or by ``models_df()``'s ``variant`` label;
    - ``{"grok-imagine": {"count": 20, "model": "text-to-video", "duration": 10}}``: the
      parameters you would submit, priced exactly as ``client.estimate`` would;
    - a DataFrame with ``model`` and ``count`` columns (and optionally ``params`` dicts).

    ``count`` is in the model's pricing unit (submissions, or minutes for per-minute models).

    With ``keep_rate``, ``count`` is the number of *usable* results wanted, and each line pays for
    the takes that will be thrown away too: ``submissions`` = count / keep rate, rounded up.
    ``keep_rate`` is a share (0.4: two in five kept), a dict of them by model, or ``"history"``:
    each model's keep rate from your verdicts (``spend_summary(by="model")``, on ``backend``, in
    ``history``). So ``plan_costs({"veo3": 100}, keep_rate="history")`` answers "what do 100
    usable Veo clips cost at the rate I keep them?". Without it, ``keep_rate`` is missing and
    ``submissions`` is ``count``.

    Returns one row per line plus a ``TOTAL`` row: ``credits_each``, ``credits``, ``usd``,
    ``balance_after`` (the balance once this line and those above it are paid), ``covered`` and
    ``short_by`` (credits missing, 0 when covered). The balance is ``balance`` if given, else
    ``client.organization().credits_remaining`` (one request) unless ``check_balance=False``.
    The totals are also in ``df.attrs`` (``total_credits``, ``total_usd``, ``balance``, ``short_by``),
    with the dollar rate (``usd_rate``).
    """
    c = _client_or_default(client)
    records = []
    unknown_price = []
    items = _plan_items(counts)
    rates = _keep_rates(keep_rate, sorted({slug for slug, _, _, _ in items}), history=history, backend=backend)
    for slug, variant, params, count in items:
        model = c.model(slug)
        label = None
        if variant is not None:
            vparams, label = _variant_params(model, variant)
            params = {**vparams, **params}
        elif params:
            priced = [p.name for p in model.parameters if p.prices and p.name in params]
            label = ", ".join(f"{n}={params[n]}" for n in priced) or None
        each = model.price(params)
        if each is None:
            unknown_price.append(slug)
        share = rates.get(slug)
        submissions = count if share is None else _takes_needed(count, share)
        records.append({
            "model": slug,
            "variant": label,
            "count": count,
            "keep_rate": share,
            "submissions": submissions,
            "credits_each": each,
            "credits": None if each is None else each * submissions,
        })
    if unknown_price:
        warnings.warn(
            f"No price listed for {', '.join(unknown_price)}; the total leaves them out.", stacklevel=2
        )
    if balance is None and check_balance:
        balance = c.organization().credits_remaining
    rate = usd_rate(usd_per_credit, client=c)  # after the balance: that answer names the plan
    columns = ["model", "variant", "count", "keep_rate", "submissions", "credits_each", "credits"]
    df = pd.DataFrame.from_records(records, columns=columns)
    total_credits = int(pd.to_numeric(df["credits"]).fillna(0).sum()) if len(df) else 0
    total = {
        "model": TOTAL_LABEL, "variant": None, "count": int(df["count"].sum()) if len(df) else 0,
        "keep_rate": None, "submissions": int(df["submissions"].sum()) if len(df) else 0,
        "credits_each": None, "credits": total_credits,
    }
    df = pd.concat([df, pd.DataFrame([total])], ignore_index=True) if len(df) else pd.DataFrame([total])
    for col in ("count", "submissions", "credits_each", "credits"):
        df[col] = pd.to_numeric(df[col]).astype("Int64")
    df["keep_rate"] = pd.to_numeric(df["keep_rate"]).astype("Float64")
    for col in ("model", "variant"):
        df[col] = df[col].astype(TEXT_DTYPE)
    df["usd"] = _usd(df["credits"], rate)
    lines = df["credits"].iloc[:-1].fillna(0).cumsum()
    spent = pd.concat([lines, pd.Series([total_credits], dtype="Int64")], ignore_index=True)
    if balance is None:
        df["balance_after"] = pd.array([pd.NA] * len(df), dtype="Int64")
        df["covered"] = pd.array([pd.NA] * len(df), dtype="boolean")
        df["short_by"] = pd.array([pd.NA] * len(df), dtype="Int64")
    else:
        after = (int(balance) - spent).astype("Int64")
        df["balance_after"] = after
        df["covered"] = (after >= 0).astype("boolean")
        df["short_by"] = (-after).clip(lower=0).astype("Int64")
    df = df[list(PLAN_COLUMNS)]
    df.attrs.update({
        "total_credits": total_credits,
        "total_usd": float(rate.usd(total_credits) or 0),
        "balance": None if balance is None else int(balance),
        "short_by": None if balance is None else max(0, total_credits - int(balance)),
    })
    return _with_rate(df, rate)


def _takes_needed(usable: int, keep_rate: float) -> int:
    """Submissions for ``usable`` kept results at ``keep_rate``: rounded up, exactly (0.4 is 2/5,
    not 0.400000000000000022, so 100 usable results need 250 takes, not 251)."""
    import math
    from fractions import Fraction

    return math.ceil(Fraction(usable) / Fraction(keep_rate).limit_denominator(1_000_000))


def _keep_rates(keep_rate: float | Mapping[str, float] | str | None, slugs: list[str], *,
                history: History | str | PathLike[str] | None, backend: str | None) -> dict[str, float]:
    """The keep rate of each model of a plan: given, given per model, or from the history."""
    if keep_rate is None:
        return {}
    if isinstance(keep_rate, str):
        if keep_rate != "history":
            raise ValueError(f"keep_rate={keep_rate!r}: give a share like 0.4, a dict by model, or 'history'.")
        summary = spend_summary("model", history=history, backend=backend)
        found: dict[str, float] = {}
        for slug in slugs:
            share = summary["keep_rate"].get(slug) if slug in summary.index else None
            if share is None or pd.isna(share):
                raise ValueError(f"No kept or rejected {slug} results in the history to take a keep rate from; "
                                 "judge some (job.keep(), job.reject()) or give keep_rate=0.5.")
            if share == 0:
                raise ValueError(f"No {slug} result was ever kept, so no number of takes is enough; "
                                 "give keep_rate=... to plan anyway.")
            found[slug] = float(share)
        return found
    rates = dict(keep_rate) if isinstance(keep_rate, Mapping) else {slug: keep_rate for slug in slugs}
    for slug in slugs:
        if slug not in rates:
            raise ValueError(f"keep_rate has no rate for {slug}; give one for every model of the plan.")
    for slug, share in rates.items():
        if isinstance(share, bool) or not isinstance(share, (int, float, np.number)) or not 0 < share <= 1:
            raise ValueError(f"keep_rate for {slug} must be a share above 0 and at most 1, like 0.4, not {share!r}.")
    return {slug: float(share) for slug, share in rates.items()}


# -- price history ---------------------------------------------------------------------------------
PRICE_HISTORY_COLUMNS = (
    "model", "variant", "credits", "pricing_unit", "previous_credits", "change", "first_seen", "last_seen", "jobs",
)


def price_history_df(
    model: str | Iterable[str] | None = None,
    *,
    history: History | str | PathLike[str] | None = None,
    since: Any = None,
    backend: str | None = "auto",
    client: Any = None,
    jobs: pd.DataFrame | None = None,
    session: str | None = None,
) -> pd.DataFrame:
    """Catalog prices seen over time: one row per model (and priced variant) and price, oldest first.

    Every job records the catalog's price and pricing unit when it was submitted, so a later price
    change does not rewrite the past and this table can show each change: ``credits`` (the listed
    price), ``previous_credits`` and ``change`` (missing for a model's first price), ``first_seen``
    and ``last_seen`` (the first and last submission at that price, UTC) and ``jobs`` (how many).
    A price that went back to an earlier value is a new row. Variants (Grok's image and video
    modes) are told apart with the model list of ``client`` (default: the session's client, if one
    was made; no request otherwise), else they show as one. ``backend`` as in ``spend_summary``,
    ``session`` as in ``jobs_df`` (``"current"``: this kernel's jobs only); ``jobs`` a ``jobs_df()``.
    """
    df = jobs if jobs is not None else jobs_df(since=since, model=model, history=history, backend=backend,
                                               session=session)
    # Oldest first; jobs created in the same instant in the order they were recorded.
    known = df[df["catalog_credits"].notna()].iloc[::-1].sort_values("created_at", kind="stable")
    slugs = known["model"].astype(object).where(known["model"].notna(), "unknown")
    # Variants only where a model prices a parameter's values: the parameters of those rows alone
    # are read (decoding every job's JSON would cost more than the rest together).
    catalog = _model_map(client)
    priced = {slug for slug, m in catalog.items() if any(getattr(p, "prices", None) for p in m.parameters)}
    variants = pd.Series("", index=known.index, dtype=object)
    mask = slugs.isin(priced).to_numpy(dtype=bool)
    if mask.any():
        variants[mask] = [_variant_label(catalog[slug], params) or ""
                          for slug, params in zip(slugs[mask], known["params"][mask], strict=True)]
    frame = pd.DataFrame({
        "model": slugs, "variant": variants, "credits": known["catalog_credits"].astype("Int64"),
        "pricing_unit": known["pricing_unit"], "created_at": known["created_at"],
    }).sort_values(["model", "variant"], kind="stable")  # each model's and variant's jobs, oldest first
    same_price = frame["credits"].eq(frame["credits"].shift()).fillna(False)
    same_key = frame["model"].eq(frame["model"].shift()) & frame["variant"].eq(frame["variant"].shift())
    run = (~(same_price & same_key)).cumsum()  # a new run at each price change, and at each model
    g = frame.groupby(run.to_numpy(), sort=False)
    out = pd.DataFrame({
        "model": g["model"].first(), "variant": g["variant"].first(), "credits": g["credits"].first(),
        "pricing_unit": g["pricing_unit"].first(), "first_seen": g["created_at"].first(),
        "last_seen": g["created_at"].last(), "jobs": g.size(),
    }).reset_index(drop=True)
    follows = out["model"].eq(out["model"].shift()) & out["variant"].eq(out["variant"].shift())
    out["previous_credits"] = out["credits"].shift().where(follows.to_numpy())
    out["change"] = out["credits"] - out["previous_credits"]
    out["variant"] = out["variant"].where(out["variant"] != "", None)
    out = out[list(PRICE_HISTORY_COLUMNS)]
    for col in ("credits", "previous_credits", "change", "jobs"):
        out[col] = pd.to_numeric(out[col]).astype("Int64")
    for col in ("model", "variant", "pricing_unit"):
        out[col] = out[col].astype(TEXT_DTYPE)
    for col in ("first_seen", "last_seen"):
        out[col] = pd.to_datetime(out[col], utc=True)
    return out


def _model_map(client: Any) -> dict[str, Any]:
    """slug -> Model from ``client``'s list, or the session's client's if one was made; {} offline."""
    c = client if client is not None else current_session().existing_client
    if c is None:
        return {}
    try:
        return {m.slug: m for m in c.models()}
    except Exception:  # noqa: BLE001 - offline, no key: variants are not told apart, nothing else breaks
        return {}


def _variant_label(model: Any, params: Any) -> str | None:
    if model is None or not hasattr(model, "price_variant"):
        return None
    label: str | None = model.price_variant(params if isinstance(params, dict) else _loads(params))
    return label


# -- chart -----------------------------------------------------------------------------------------
def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            "spend_chart needs matplotlib, an optional extra: pip install vydra-nb[plot]"
        ) from None
    return plt


def spend_chart(
    by: str = "day",
    *,
    history: History | str | PathLike[str] | None = None,
    since: Any = None,
    ax: Any = None,
    models: Mapping[str, str] | Iterable[Any] | None = None,
    client: Any = None,
    usd_per_credit: Any = None,
    top: int = 8,
    jobs: pd.DataFrame | None = None,
    backend: str | None = "auto",
) -> Any:
    """A bar chart of net dollars spent, for people who would rather look than read; returns the Axes.

    ``by="day"``/``"week"``: bars over time, stacked by model (the ``top`` biggest models, the
    rest as "other"), on a date axis so months of history stay readable. Other groupings
    (model, status, provider) are horizontal bars. ``jobs`` charts a ``jobs_df()`` result (perhaps
    filtered) instead of the whole store. ``backend`` as in :func:`spend_summary`. Needs matplotlib
    (``pip install vydra-nb[plot]``).
    """
    if by not in _SUMMARY_BY:
        raise ValueError(f"by={by!r}: choose one of {', '.join(_SUMMARY_BY)}.")
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4))
    df = jobs if jobs is not None else jobs_df(since=since, history=history, usd_per_credit=usd_per_credit,
                                               backend=backend)
    rate = _frame_rate(df, usd_per_credit, client)
    ax.set_ylabel("USD (net of refunds)" if by in ("day", "week") else "")
    if df.empty:
        ax.text(0.5, 0.5, "No jobs recorded yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"Spend by {by}")
        return ax
    if by in ("day", "week"):
        key = _group_key(df, by, {})
        # Matplotlib's date axis wants naive datetimes; the labels are UTC days.
        frame = pd.DataFrame({"period": key.dt.tz_localize(None), "model": df["model"].fillna("unknown"), "usd": df["usd"].fillna(0.0)})
        table = frame.pivot_table(index="period", columns="model", values="usd", aggfunc="sum", fill_value=0.0)
        order = table.sum().sort_values(ascending=False).index
        keep = list(order[:top])
        if len(order) > top:
            table["other"] = table[list(order[top:])].sum(axis=1)
            keep.append("other")
        width = 0.8 if by == "day" else 5.6
        bottom = np.zeros(len(table))
        x = table.index.to_pydatetime()
        for name in keep:
            values = table[name].to_numpy(dtype=float)
            ax.bar(x, values, width=width, bottom=bottom, label=str(name), align="edge" if by == "week" else "center")
            bottom += values
        ax.legend(fontsize="small", loc="upper left")
        ax.set_title(f"Spend per {by} (USD, UTC)")
        ax.figure.autofmt_xdate()
    else:
        summary = spend_summary(by, jobs=df, models=models, client=client, usd_per_credit=usd_per_credit)
        usd = summary["usd"].iloc[::-1]
        ax.barh([str(i) for i in usd.index], usd.to_numpy(dtype=float))
        ax.set_xlabel("USD (net of refunds)")
        ax.set_title(f"Spend by {by}")
    ax.annotate(rate.label, xy=(1.0, -0.01), xycoords="axes fraction", ha="right", va="top", fontsize="x-small",
                color="#666")
    return ax


# -- display ---------------------------------------------------------------------------------------
def _fmt_time(value: Any) -> str:
    return "" if value is None or value is pd.NaT or pd.isna(value) else pd.Timestamp(value).strftime("%Y-%m-%d %H:%M")


def _fmt_text(limit: int) -> Any:
    def fmt(value: Any) -> str:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return ""
        text = str(value)
        return text if len(text) <= limit else text[: limit - 1] + "…"

    return fmt


def styled(df: pd.DataFrame) -> Any:
    """A notebook rendering of any frame from this module: credits as whole numbers, dollars as
    ``$0.00``, rates as percentages, times as ``YYYY-MM-DD HH:MM`` and long text cut short.

    The functions above return plain DataFrames so they stay usable for analysis; wrap the result
    in ``styled()`` only for display (a Styler cannot be computed with). A frame that carries its
    dollar rate (``df.attrs["usd_rate"]``) says it in the caption.
    """
    formats: dict[str, Any] = {}
    for col in df.columns:
        name = str(col)
        dtype = df[col].dtype
        if isinstance(dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(dtype):
            formats[col] = _fmt_time
        elif name in ("usd", "usd_per_unit") or name.startswith("usd"):
            formats[col] = "${:,.2f}"
        elif name in ("failure_rate",) or name.endswith("_rate"):
            formats[col] = "{:.0%}"
        elif name.endswith("_s"):
            formats[col] = "{:,.1f}"
        elif name in ("charged_vs_catalog", "change"):
            formats[col] = "{:+,.0f}"
        elif name == "credits_per_kept":
            formats[col] = "{:,.1f}"
        elif "credits" in name or name in ("jobs", "count", "progress", "balance_after", "short_by", "kept",
                                           "rejected", "submissions"):
            formats[col] = "{:,.0f}"
        elif name in ("prompt", "description", "error_message", "params", "note"):
            formats[col] = _fmt_text(60)
    # Server text (names, descriptions, prompts) is never markup: escape every cell and label, the
    # columns without a format of their own included.
    styler = df.style.format(na_rep="—", escape="html").format(formats, na_rep="—", escape="html")
    styler = styler.format_index(escape="html", axis=0).format_index(escape="html", axis=1)
    if isinstance(df.index, pd.DatetimeIndex):
        styler = styler.format_index(_fmt_time)
    if "model" in df.columns and TOTAL_LABEL in set(df["model"].astype("str")):
        total_rows = df.index[df["model"].astype("str") == TOTAL_LABEL]
        styler = styler.set_properties(subset=pd.IndexSlice[total_rows, :], **{"font-weight": "bold"})
    if df.attrs.get("usd_rate") and any(str(c).startswith("usd") for c in df.columns):
        import html

        styler = styler.set_caption(html.escape(str(df.attrs["usd_rate"])))
    return styler
