"""Fault injection: the failures a real network and a real provider produce, on demand.

A client's retry, idempotency and refund handling can only be trusted if it has been exercised,
so the sandbox can be told to misbehave with a spec of comma-separated ``kind=probability``::

    500=0.1,503=0.1,500after=0.05,drop=0.05,dropafter=0.05,slow=0.2,slow_s=2,jobfail=0.1,seed=7

Kinds (each a probability in [0, 1], drawn independently per API request):

- ``500`` / ``503``: answer with that status *before* processing: nothing happened.
- ``drop``: close the connection without any response, before processing.
- ``500after``: process the request fully (a job is created and charged), then answer 500: the
  response is lost, the side effect is not. Retrying without an ``Idempotency-Key`` duplicates.
- ``dropafter``: process the request fully, then close the connection without a response.
- ``slow``: delay the response by ``slow_s`` real seconds (default 1.0).
- ``jobfail``: a job created by this request fails part-way with ``PROVIDER_ERROR`` and a refund.

``seed=N`` makes the sequence of decisions reproducible (for requests made one at a time).
Faults apply to ``/api/v1`` endpoints only, never to ``/health``, ``/media`` or ``/_sandbox``.
"""
from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field

KINDS = ("500", "503", "drop", "500after", "dropafter", "slow", "jobfail")
#: Faults decided before processing, in the order they are tried.
BEFORE = ("drop", "503", "500")
#: Faults decided after processing.
AFTER = ("dropafter", "500after")


@dataclass(frozen=True)
class FaultSpec:
    """A parsed ``--faults`` spec."""

    probabilities: dict[str, float] = field(default_factory=dict)
    slow_s: float = 1.0
    seed: int | None = None

    @classmethod
    def parse(cls, spec: str | None) -> FaultSpec:
        """Parse ``"500=0.2,slow=0.1,slow_s=2,seed=3"``; raise ValueError saying what is wrong."""
        if spec is None or not spec.strip():
            return cls()
        probs: dict[str, float] = {}
        slow_s = 1.0
        seed: int | None = None
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            if "=" not in part:
                raise ValueError(f"bad fault spec item {part!r}: expected kind=probability "
                                 f"(kinds: {', '.join(KINDS)}, plus slow_s=SECONDS and seed=N)")
            name, _, raw = (s.strip() for s in part.partition("="))
            if name == "seed":
                try:
                    seed = int(raw)
                except ValueError:
                    raise ValueError(f"bad fault spec: seed must be an integer, got {raw!r}") from None
                continue
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"bad fault spec: {name} needs a number, got {raw!r}") from None
            if name == "slow_s":
                if value < 0:
                    raise ValueError(f"bad fault spec: slow_s must be >= 0, got {value}")
                slow_s = value
                continue
            if name not in KINDS:
                raise ValueError(f"bad fault spec: unknown fault kind {name!r} "
                                 f"(kinds: {', '.join(KINDS)}, plus slow_s and seed)")
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"bad fault spec: probability for {name} must be in [0, 1], got {value}")
            probs[name] = value
        return cls(probs, slow_s, seed)

    def __bool__(self) -> bool:
        return any(p > 0 for p in self.probabilities.values())


@dataclass(frozen=True)
class Decision:
    """What to do to one request."""

    before: str | None = None  # "drop" | "503" | "500"
    after: str | None = None  # "dropafter" | "500after"
    delay: float = 0.0
    jobfail: bool = False


NO_FAULT = Decision()


class FaultInjector:
    """Draws decisions from a spec with its own seeded generator.

    Every roll draws the same number of random values whatever the spec, so one seed gives one
    sequence of decisions.
    """

    def __init__(self, spec: FaultSpec | str | None = None, default_seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._default_seed = default_seed
        self.configure(spec)

    def configure(self, spec: FaultSpec | str | None) -> None:
        parsed = spec if isinstance(spec, FaultSpec) else FaultSpec.parse(spec)
        with self._lock:
            self.spec = parsed
            seed = parsed.seed if parsed.seed is not None else self._default_seed
            self._rng = random.Random(seed)

    def roll(self) -> Decision:
        with self._lock:
            spec = self.spec
            if not spec:
                return NO_FAULT
            draws = {kind: self._rng.random() for kind in KINDS}
        probs = spec.probabilities
        hit = {kind: draws[kind] < probs.get(kind, 0.0) for kind in KINDS}
        before = next((k for k in BEFORE if hit[k]), None)
        after = next((k for k in AFTER if hit[k]), None)
        return Decision(before=before, after=after,
                        delay=spec.slow_s if hit["slow"] else 0.0, jobfail=hit["jobfail"])
