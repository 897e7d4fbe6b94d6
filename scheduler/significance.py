"""Is one variant of an A/B test clearly better? Rates, their intervals and the decision, on counts.

Each variant has `successes` (recipients who tapped, replied or read: the test's metric) out of
`trials` (recipients it was sent to). The formulas, written once here:

- **Interval of a rate: Wilson's score interval** (E. B. Wilson, "Probable inference, the law of
  succession, and statistical inference", JASA 22 (1927) 209-212; recommended over the plain
  normal interval by R. G. Newcombe, Statistics in Medicine 17 (1998) 857-872):
  centre (p + z²/2n) / (1 + z²/n), half-width z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n).
- **Best against another: the two-proportion z-test with a pooled rate** (NIST/SEMATECH
  e-Handbook of Statistical Methods, section 7.3.3, "How can we determine whether two processes
  produce the same proportion of defectives?"): p = (s1 + s2)/(n1 + n2),
  z = (p1 - p2) / sqrt(p(1-p)(1/n1 + 1/n2)), one-sided p-value = P(Z > z) = erfc(z/√2)/2.
- **Large enough for that test**: each sample has at least 5 successes and 5 failures at the
  pooled rate (n·p >= 5 and n·(1-p) >= 5), the usual condition for the normal approximation
  (e.g. Moore, McCabe & Craig, Introduction to the Practice of Statistics, section 8.2).

The decision: the variant with the best rate wins only when it beats **every** other at 95 %, i.e.
each one-sided p-value is below 0.05 / (k - 1) (Bonferroni: with three variants, two comparisons
share the 5 % chance of a false winner). Otherwise there is no clear winner: a tie at the top,
a difference that chance explains, or a sample too small to judge.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Mapping

CONFIDENCE = 0.95
Z_95 = 1.959963984540054        # the two-sided 95 % point of the standard normal (Wilson's interval)
MIN_COUNT = 5                   # successes and failures each sample needs at the pooled rate

NO_CLEAR_WINNER = "no clear winner"
TOO_SMALL = "sample too small"
WINNER = "winner"


@dataclass(frozen=True)
class Rate:
    successes: int
    trials: int
    rate: float | None          # None: nothing sent yet
    low: float | None           # Wilson's 95 % interval
    high: float | None


@dataclass(frozen=True)
class Comparison:
    """The leader against one other variant."""

    leader: str
    other: str
    z: float | None
    p_value: float | None        # one-sided: the chance of a lead this large if both were equal
    large_enough: bool


@dataclass
class Verdict:
    outcome: str                # WINNER, NO_CLEAR_WINNER or TOO_SMALL
    winner: str | None
    leader: str | None          # the best rate (a winner only when it beats every other)
    alpha: float                # each comparison's threshold (0.05 / (k - 1))
    rates: dict[str, Rate]
    comparisons: list[Comparison] = field(default_factory=list)
    reason: str = ""

    def as_dict(self) -> dict:
        return {"outcome": self.outcome, "winner": self.winner, "leader": self.leader, "alpha": self.alpha,
                "confidence": CONFIDENCE, "method": "two-proportion z-test (pooled), Bonferroni, one-sided",
                "rates": {k: asdict(v) for k, v in self.rates.items()},
                "comparisons": [asdict(c) for c in self.comparisons], "reason": self.reason}


def wilson(successes: int, trials: int, z: float = Z_95) -> tuple[float, float] | None:
    """Wilson's score interval for successes/trials; None when trials is 0."""
    if trials <= 0:
        return None
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(successes: int, trials: int) -> Rate:
    interval = wilson(successes, trials)
    return Rate(successes, trials, successes / trials if trials else None,
                interval[0] if interval else None, interval[1] if interval else None)


def compare(leader: str, s1: int, n1: int, other: str, s2: int, n2: int) -> Comparison:
    """The one-sided two-proportion z-test of `leader` (s1/n1) over `other` (s2/n2)."""
    if n1 <= 0 or n2 <= 0:
        return Comparison(leader, other, None, None, False)
    pooled = (s1 + s2) / (n1 + n2)
    large = all(n * pooled >= MIN_COUNT and n * (1 - pooled) >= MIN_COUNT for n in (n1, n2))
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if spread == 0:
        return Comparison(leader, other, None, None, large)
    z = (s1 / n1 - s2 / n2) / spread
    return Comparison(leader, other, z, 0.5 * math.erfc(z / math.sqrt(2)), large)


def decide(counts: Mapping[str, tuple[int, int]], confidence: float = CONFIDENCE) -> Verdict:
    """The verdict on {variant: (successes, trials)}: a winner only when its rate beats every other's
    at `confidence` (Bonferroni over the k - 1 comparisons); see the module's text."""
    rates = {name: rate(s, n) for name, (s, n) in sorted(counts.items())}
    alpha = (1 - confidence) / max(1, len(rates) - 1)
    ranked = sorted((r.rate, name) for name, r in rates.items() if r.rate is not None)
    if len(ranked) < len(rates) or not ranked:
        return Verdict(TOO_SMALL, None, None, alpha, rates, reason="a variant has not been sent to anyone yet")
    best_rate, leader = ranked[-1]
    if len(ranked) > 1 and ranked[-2][0] == best_rate:
        tied = sorted(name for r, name in ranked if r == best_rate)
        return Verdict(NO_CLEAR_WINNER, None, None, alpha, rates,
                       reason=f"{' and '.join(tied)} have the same rate ({best_rate:.1%})")
    s1, n1 = counts[leader]
    comparisons = [compare(leader, s1, n1, other, *counts[other]) for other in sorted(rates) if other != leader]
    if not all(c.large_enough for c in comparisons):
        small = [c.other for c in comparisons if not c.large_enough]
        return Verdict(TOO_SMALL, None, leader, alpha, rates, comparisons,
                       reason=f"too few successes or failures to compare {leader} with {', '.join(small)} "
                              f"(each needs at least {MIN_COUNT} of each at the pooled rate)")
    weak = [c for c in comparisons if c.p_value is None or c.p_value >= alpha]
    if weak:
        worst = max(weak, key=lambda c: c.p_value if c.p_value is not None else 1.0)
        p = "n/a" if worst.p_value is None else f"{worst.p_value:.3f}"
        return Verdict(NO_CLEAR_WINNER, None, leader, alpha, rates, comparisons,
                       reason=f"{leader} leads but its lead over {worst.other} could be chance "
                              f"(p = {p}; it must be below {alpha:.3f} for {confidence:.0%})")
    return Verdict(WINNER, leader, leader, alpha, rates, comparisons,
                   reason=f"{leader} beats every other variant at {confidence:.0%} "
                          f"(largest p = {max(c.p_value for c in comparisons):.4f} < {alpha:.3f})")
