"""vydra_nb: notebook-native video, image and audio generation with the Vydra.ai API.

``%load_ext vydra_nb`` must stay fast, so this module imports almost nothing: the public names are
resolved on first use (PEP 562 ``__getattr__``).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from .errors import (  # noqa: E402  (light: the exception family has no dependencies)
    APIConnectionError,
    AuthenticationError,
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

_LAZY = {
    "Client": ("vydra_nb.client", "Client"),
    "Job": ("vydra_nb.jobs", "Job"),
    "Model": ("vydra_nb.models", "Model"),
    "Organization": ("vydra_nb.models", "Organization"),
    "CancelResult": ("vydra_nb.models", "CancelResult"),
    "PollPolicy": ("vydra_nb.polling", "PollPolicy"),
    "Limit": ("vydra_nb.ratelimit", "Limit"),
    "sandbox": ("vydra_nb.sandbox", None),
    "History": ("vydra_nb.history", "History"),
    "Tracker": ("vydra_nb.poller", "Tracker"),
    "models_df": ("vydra_nb.frames", "models_df"),
    "jobs_df": ("vydra_nb.frames", "jobs_df"),
    "spend_summary": ("vydra_nb.frames", "spend_summary"),
    "plan_costs": ("vydra_nb.frames", "plan_costs"),
    "spend_chart": ("vydra_nb.frames", "spend_chart"),
    "expand_params": ("vydra_nb.frames", "expand_params"),
    "styled": ("vydra_nb.frames", "styled"),
    "studio": ("vydra_nb.widgets.studio", "studio"),
    "sweep": ("vydra_nb.sweeps", "sweep"),
    "show_job": ("vydra_nb.widgets", "show_job"),
}


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext vydra_nb``: register ``%vydra``/``%%vydra`` (imports nothing heavy)."""
    from .magics import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """Nothing to undo beyond what IPython does; jobs keep being tracked until they end."""


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'vydra_nb' has no attribute {name!r}")
    import importlib

    if target[0] in ("vydra_nb.client", "vydra_nb.history"):
        # Importing the history store registers its recorder with every Client created after.
        importlib.import_module("vydra_nb.history")
    module = importlib.import_module(target[0])
    value = module if target[1] is None else getattr(module, target[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "APIConnectionError", "AuthenticationError", "CancelResult", "Client", "ConfigurationError",
    "CreditWarning", "DownloadError", "HistoryWarning", "InsufficientCreditsError", "Job", "JobCancelledError",
    "JobFailedError", "JobTimeoutError", "Limit", "Model", "NotFoundError", "Organization",
    "OutcomeUnknownError", "PollPolicy", "RateLimitError", "ResponseError", "ServerError",
    "ValidationError", "VydraError", "sandbox", "History", "Tracker", "models_df", "jobs_df",
    "spend_summary", "plan_costs", "spend_chart", "expand_params", "styled", "studio", "sweep", "show_job",
    "load_ipython_extension",
]
