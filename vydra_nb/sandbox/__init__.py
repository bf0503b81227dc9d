"""A local, offline Vydra server: the documented API, point by point, with real media.

It is a second, independent implementation of the contract in ``vydra-api.md`` (like stripe-mock
or moto): it imports nothing from the client side of :mod:`vydra_nb`, so a misreading of the
docs cannot hide by agreeing with itself. Notebooks, the demo and the tests run against it when no
``VYDRA_API_KEY`` is set.

    from vydra_nb import sandbox
    with sandbox.start(credits=10_000, speed=50) as sb:
        requests.get(f"{sb.url}/models", headers={"Authorization": f"Bearer {sb.api_key}"})

Deterministic failures: a prompt (any string parameter) containing ``[fail]`` makes the job fail
part-way with ``CONTENT_VIOLATION`` and a refund; ``[fail:CODE]`` fails it with ``CODE``.
Faults: see :mod:`vydra_nb.sandbox.faults`. Flavors: ``"spec"`` (the reference, exactly) and
``"live"`` (plus what ``vydra-notes.md`` reports the live service does).
"""
from __future__ import annotations

from .faults import FaultSpec
from .jobs import DURATION_MODES, PROGRESS_MODES
from .ratelimit import PLANS
from .server import Sandbox

__all__ = ["Sandbox", "FaultSpec", "start", "PLANS", "PROGRESS_MODES", "DURATION_MODES"]


def start(credits: int = 10_000, speed: float = 1.0, faults: str | FaultSpec | None = None,
          flavor: str = "spec", port: int = 0, api_key: str | None = None, seed: int | None = None,
          plan: str = "creator", media_limit_mb: float = 512, verbose: bool = False,
          progress: str = "provider", durations: str = "realistic", idempotency: bool = False) -> Sandbox:
    """Start a sandbox on 127.0.0.1 (``port=0``: a free port) in a daemon thread and return it.

    ``speed`` divides job durations and rate-limit windows (speed=60: a 90 s job takes 1.5 s).
    ``faults`` is a spec such as ``"500=0.1,drop=0.05,seed=3"`` (ValueError if malformed).
    Stop it with ``sb.stop()`` or use it as a context manager.

    The defaults are the harder behaviour wherever the reference is silent; ask for the easy one
    by name:

    * ``progress``: ``"provider"`` (no percentage for kie.ai models, coarse steps for the others),
      ``"coarse"``, ``"none"``, ``"erratic"``, or ``"linear"`` (smooth 0-99);
    * ``durations``: ``"realistic"`` (0.6x-1.8x the model's base, skewed long, per job),
      ``"jitter"`` (+-10 %) or ``"exact"``;
    * ``idempotency``: False ignores ``Idempotency-Key`` (a repeated POST charges twice); True
      echoes it, replays a repeated key and answers 409 to a reused one;
    * ``plan``: ``"free"``, ``"starter"``, ``"creator"`` (default), ``"pro"``, ``"enterprise"``:
      per-minute/hour/day generation limits and a concurrent-jobs cap (:data:`PLANS`).
    """
    return Sandbox(credits=credits, speed=speed, faults=faults, flavor=flavor, port=port, api_key=api_key,
                   seed=seed, plan=plan, media_limit_mb=media_limit_mb, verbose=verbose,
                   progress=progress, durations=durations, idempotency=idempotency)
