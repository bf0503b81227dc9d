"""Credits to dollars: one rate per plan, decimal arithmetic, half-up rounding to the cent.

Why decimal: ``525 * 0.003`` is ``1.5749999...`` in binary floating point, so a float rounds it
down to $1.57 while ``175 * 0.003`` rounds up to $0.53: two figures in one table rounded by
different rules. Every dollar figure vydra_nb shows is ``credits * rate`` computed exactly and
rounded half up to the cent once, at the end (a sum is converted, never a sum of rounded parts).

Why a table per plan: a credit does not cost the same on every plan. The reference gives one
figure, "Creator plan rates (1 credit ≈ $0.003)", and its pricing table's dollar column is
exactly ``credits * $0.0029`` rounded half up for all ten rows (175 -> $0.51, 350 -> $1.02,
150 -> $0.44, 10 -> $0.03, 5 -> $0.01), while ``$0.003`` matches none of the rows above $0.10;
so the Creator rate is $0.0029 and "≈ $0.003" is that rate rounded. The reference publishes no
rate for the other plans: theirs below are estimates on a volume-discount ladder around the
Creator rate, said to be estimates wherever they are shown, and meant to be overridden
(``%config VydraMagics.usd_per_credit = 0.0031`` or ``Client(usd_per_credit=...)``) by anyone who
knows their own price. A free plan's credits are valued at the entry plan's rate: what more of
them would cost, which is what a what-if on a free plan is asking.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

CENT = Decimal("0.01")

#: USD per credit by plan (``GET /organization``'s ``plan``). Only ``creator`` comes from the
#: reference; the others are estimates (see the module's docstring).
PLAN_USD_PER_CREDIT: dict[str, Decimal] = {
    "free": Decimal("0.0035"),
    "starter": Decimal("0.0035"),
    "creator": Decimal("0.0029"),
    "pro": Decimal("0.0025"),
    "enterprise": Decimal("0.0020"),
}
#: Plans whose rate the reference documents; the rest are labelled as estimates.
DOCUMENTED_PLANS = frozenset({"creator"})
#: The plan assumed while the account's plan is not known yet (no ``GET /organization`` answer).
DEFAULT_PLAN = "creator"


def as_rate(value: Any) -> Decimal:
    """A USD-per-credit figure as a Decimal (floats go through their shortest text: 0.0029, not
    0.00289999...). Raises ValueError for anything that is not a finite number >= 0."""
    if isinstance(value, bool):
        raise ValueError(f"usd_per_credit must be a number of dollars, not {value!r}.")
    try:
        rate = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise ValueError(f"usd_per_credit must be a number of dollars, like 0.0029, not {value!r}.") from None
    if not rate.is_finite() or rate < 0:
        raise ValueError(f"usd_per_credit must be a finite number >= 0, not {value!r}.")
    return rate


@dataclass(frozen=True)
class Rate:
    """A USD-per-credit rate and where it came from, so every table can say which rate it used.

    ``source`` is a short phrase: "creator plan", "pro plan, estimated", "set by
    VydraMagics.usd_per_credit", "creator plan, assumed: plan not known yet".
    """

    usd_per_credit: Decimal
    source: str

    def usd(self, credits: int | Decimal | None) -> Decimal | None:
        """``credits`` in dollars, exact then rounded half up to the cent (None for None)."""
        return None if credits is None else to_usd(credits, self.usd_per_credit)

    def format(self, credits: int | Decimal | None) -> str:
        """``$0.51`` (``$1,234.57``); ``?`` when the credits are not known."""
        amount = self.usd(credits)
        return "?" if amount is None else f"${amount:,.2f}"

    @property
    def label(self) -> str:
        """What a table caption says: ``USD at $0.0029 per credit (creator plan)``."""
        return f"USD at ${self.usd_per_credit.normalize():f} per credit ({self.source})"

    def as_attrs(self) -> dict[str, Any]:
        """What ``df.attrs`` carries: the rate (as text, exact) and its source."""
        return {"usd_per_credit": f"{self.usd_per_credit.normalize():f}", "usd_rate_source": self.source,
                "usd_rate": self.label}


def to_usd(credits: int | Decimal, usd_per_credit: Decimal) -> Decimal:
    """Exact product, rounded half up (away from zero on a tie) to the cent."""
    return (Decimal(credits) * usd_per_credit).quantize(CENT, rounding=ROUND_HALF_UP)


def rate_for(plan: str | None, override: Any = None, *, override_source: str = "set by usd_per_credit") -> Rate:
    """The rate to use: ``override`` if given, else the plan's from the table, else the Creator
    rate, labelled as assumed (plan not known, or a plan the table does not list)."""
    if override is not None:
        return Rate(as_rate(override), override_source)
    key = (plan or "").strip().lower()
    if key in PLAN_USD_PER_CREDIT:
        estimated = "" if key in DOCUMENTED_PLANS else ", estimated"
        return Rate(PLAN_USD_PER_CREDIT[key], f"{key} plan{estimated}")
    why = "plan not known yet" if not key else f"plan {plan!r} is not in the rate table"
    return Rate(PLAN_USD_PER_CREDIT[DEFAULT_PLAN], f"{DEFAULT_PLAN} plan, assumed: {why}")


__all__ = ["CENT", "DEFAULT_PLAN", "DOCUMENTED_PLANS", "PLAN_USD_PER_CREDIT", "Rate", "as_rate", "rate_for", "to_usd"]
