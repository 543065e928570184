"""How a measure is summarized over training seeds, everywhere seeds are shown (the README,
``paper_vs_ours.md``, the notebooks' verdicts): each seed's value, the median and the range,
and for a yes/no outcome ("removed": ASR at most ``REMOVED_AT``) "k of n" with the exact
(Clopper-Pearson) binomial interval on the rate. No interval is given from fewer than
``MIN_FOR_INTERVAL`` values, and none reaches outside [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass

REMOVED_AT = 0.10  # "the backdoor is removed": ASR after the defense at most this
MIN_FOR_INTERVAL = 3
# Records hold ratios of counts computed in float32: 900 of 9,000 test images is stored as
# 0.1000000015. A comparison allows that rounding, far below one image in 9,000.
FLOAT32_SLACK = 1e-6


def within(value, bound: float = REMOVED_AT):
    """``value <= bound`` for a recorded ratio (a number or a pandas Series), allowing float32's
    rounding: an ASR of exactly 0.10 counts as removed."""
    return value <= bound + FLOAT32_SLACK


def binomial_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a rate from ``k`` successes in ``n`` trials;
    always inside [0, 1]."""
    from scipy.stats import beta

    if not 0 <= k <= n or n < 1:
        raise ValueError(f"k of n needs 0 <= k <= n and n >= 1, got {k} of {n}")
    tail = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(tail, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - tail, k + 1, n - k))
    return lo, hi


@dataclass(frozen=True)
class OverSeeds:
    """A measure's values by seed (``{seed: value}``, sorted by seed)."""

    values: dict

    @property
    def n(self) -> int:
        return len(self.values)

    def median(self) -> float:
        import statistics

        return float(statistics.median(self.values.values()))

    def range(self) -> tuple[float, float]:
        return min(self.values.values()), max(self.values.values())

    def count(self, at_most: float = REMOVED_AT) -> int:
        """How many seeds' values are at most ``at_most`` (a removed backdoor, for ASR)."""
        return sum(bool(within(v, at_most)) for v in self.values.values())

    def seeds_text(self, spec: str = ".3f") -> str:
        """Each seed's value, in seed order: ``0.051, 0.216, 0.061``."""
        return ", ".join(format(v, spec) for v in self.values.values())

    def median_text(self, spec: str = ".3f") -> str:
        """``0.061 [0.051, 0.216]``: the median and the range; one value alone for one seed."""
        if self.n == 1:
            return format(self.median(), spec)
        lo, hi = self.range()
        return f"{self.median():{spec}} [{lo:{spec}}, {hi:{spec}}]"

    def rate_interval(self, at_most: float = REMOVED_AT) -> tuple[float, float] | None:
        """The exact 95% interval of the rate of values at most ``at_most``; None from fewer
        than ``MIN_FOR_INTERVAL`` values."""
        return binomial_interval(self.count(at_most), self.n) if self.n >= MIN_FOR_INTERVAL else None

    def k_of_n_text(self, at_most: float = REMOVED_AT, noun: str = "seeds") -> str:
        """``2 of 3 seeds (rate 0.09-0.99, exact 95%)``: the interval from three values on."""
        ci = self.rate_interval(at_most)
        tail = f" (rate {ci[0]:.2f}-{ci[1]:.2f}, exact 95%)" if ci else ""
        return f"{self.count(at_most)} of {self.n} {noun}{tail}"


def over_seeds(pairs) -> OverSeeds:
    """``OverSeeds`` of ``(seed, value)`` pairs (NaN and None dropped)."""
    clean = {int(s): float(v) for s, v in pairs if v is not None and v == v}
    return OverSeeds(dict(sorted(clean.items())))
