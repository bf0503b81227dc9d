"""vydra_nb: notebook-native video, image and audio generation with the Vydra.ai API.

``%load_ext vydra_nb`` must stay fast, so this module imports almost nothing: the public names are
resolved on first use (PEP 562 ``__getattr__``).
"""

from __future__ import annotations

from typing import Any

from vydra_nb.api.errors import (  # light: the exception family has no dependencies
    APIConnectionError,
    AuthenticationError,
    BudgetExceededError,
    ConfigurationError,
    CreditWarning,
    DownloadError,
    HistoryWarning,
    InsufficientCreditsError,
    JobCancelledError,
    JobFailedError,
    JobTimeoutError,
    NotFoundError,
    OutcomeUnknownError,
    RateLimitError,
    ResponseError,
    ServerError,
    ValidationError,
    VydraError,
)
from vydra_nb.api.settings import VERSION as __version__  # noqa: F401  (light: stdlib only)

_LAZY = {
    "Client": ("vydra_nb.session.client", "Client"),
    "default_client": ("vydra_nb.session", "default_client"),
    "Session": ("vydra_nb.session", "Session"),
    "session": ("vydra_nb.session", None),
    "Job": ("vydra_nb.api.jobs", "Job"),
    "Model": ("vydra_nb.api.models", "Model"),
    "Organization": ("vydra_nb.api.models", "Organization"),
    "CancelResult": ("vydra_nb.api.models", "CancelResult"),
    "PollPolicy": ("vydra_nb.api.polling", "PollPolicy"),
    "Limit": ("vydra_nb.api.ratelimit", "Limit"),
    "sandbox": ("vydra_nb.sandbox", None),
    "History": ("vydra_nb.tracking.history", "History"),
    "Tracker": ("vydra_nb.tracking.tracker", "Tracker"),
    "models_df": ("vydra_nb.analysis.frames", "models_df"),
    "jobs_df": ("vydra_nb.analysis.frames", "jobs_df"),
    "spend_summary": ("vydra_nb.analysis.frames", "spend_summary"),
    "plan_costs": ("vydra_nb.analysis.frames", "plan_costs"),
    "spend_chart": ("vydra_nb.analysis.frames", "spend_chart"),
    "price_history_df": ("vydra_nb.analysis.frames", "price_history_df"),
    "expand_params": ("vydra_nb.analysis.frames", "expand_params"),
    "styled": ("vydra_nb.analysis.frames", "styled"),
    "studio": ("vydra_nb.notebook.studio", "studio"),
    "Sweep": ("vydra_nb.analysis.sweeps", "Sweep"),
    "sweep": ("vydra_nb.analysis.sweeps", "sweep"),
    "show_job": ("vydra_nb.views.job_view", "show_job"),
}


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext vydra_nb``: register ``%vydra``/``%%vydra`` (imports nothing heavy)."""
    from vydra_nb.notebook.magics import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext vydra_nb``: remove the completer and the Job display hook (jobs keep being
    tracked until they end; ``%reload_ext`` then registers everything once again)."""
    from vydra_nb.notebook.magics import unload

    unload(ipython)


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'vydra_nb' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(target[0])
    value = module if target[1] is None else getattr(module, target[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "APIConnectionError", "AuthenticationError", "BudgetExceededError", "CancelResult", "Client", "ConfigurationError", "Session",
    "Sweep", "default_client", "session", "unload_ipython_extension",
    "CreditWarning", "DownloadError", "HistoryWarning", "InsufficientCreditsError", "Job", "JobCancelledError",
    "JobFailedError", "JobTimeoutError", "Limit", "Model", "NotFoundError", "Organization",
    "OutcomeUnknownError", "PollPolicy", "RateLimitError", "ResponseError", "ServerError",
    "ValidationError", "VydraError", "sandbox", "History", "Tracker", "models_df", "jobs_df",
    "spend_summary", "plan_costs", "spend_chart", "price_history_df", "expand_params", "styled", "studio", "sweep", "show_job",
    "load_ipython_extension",
]
