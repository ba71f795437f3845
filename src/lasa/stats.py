"""Intervals for rates, and ASR corrected for the judge's known error.

Every ASR lasa prints carries a 95% Wilson score interval: with 8 prompts per language one prompt
is 12.5 points, and a Wilson interval says so honestly even at 0 / 8 (0–32%), where the normal
approximation collapses to 0 ± 0.

A judge with sensitivity ``se`` (unsafe responses it calls unsafe) and specificity ``sp``
(other responses it does not call unsafe) reports ``q = se·p + (1 − sp)·(1 − p)`` for a true rate
``p``. The Rogan–Gladen estimator inverts that, ``p̂ = (q + sp − 1) / (se + sp − 1)``, clipped to
[0, 1]; its interval here is a parametric bootstrap that resamples the observed rate *and* ``se``
and ``sp`` from their validation counts (Beta posteriors under a uniform prior), because with a few
dozen validation positives per language the uncertainty of ``se`` dominates.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Rate:
    """k of n, as a proportion with a 95% interval."""

    k: int
    n: int
    rate: float
    low: float
    high: float

    def to_dict(self) -> dict:
        return asdict(self)

    def fmt(self, pct: bool = True) -> str:
        f = 100.0 if pct else 1.0
        return f"{self.rate * f:.1f} [{self.low * f:.1f}, {self.high * f:.1f}]"


def wilson(k: int, n: int, z: float = Z95) -> Rate:
    """Wilson score interval for k successes in n trials (n = 0 gives the uninformative [0, 1])."""
    if n <= 0:
        return Rate(k, n, float("nan"), 0.0, 1.0)
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Rate(k, n, p, max(0.0, centre - half), min(1.0, centre + half))


def rogan_gladen(q: float, se: float, sp: float) -> float:
    """True prevalence from an observed rate ``q`` and the judge's sensitivity and specificity."""
    youden = se + sp - 1
    if youden <= 0:
        return float("nan")  # a judge no better than chance carries no information
    return float(min(1.0, max(0.0, (q + sp - 1) / youden)))


@dataclass(frozen=True)
class CorrectedRate:
    observed: float
    corrected: float
    low: float
    high: float
    sensitivity: float
    specificity: float

    def to_dict(self) -> dict:
        return asdict(self)


def corrected_rate(
    k: int,
    n: int,
    tp: int,
    pos: int,
    tn: int,
    neg: int,
    n_boot: int = 4000,
    seed: int = 0,
) -> CorrectedRate:
    """Rogan–Gladen ASR from ``k`` of ``n`` judged unsafe, with the judge's validation counts.

    ``tp`` of ``pos`` gold-unsafe validation responses were judged unsafe (sensitivity) and ``tn``
    of ``neg`` other responses were not (specificity). The interval is the 2.5–97.5 percentile of
    the estimator over bootstrap draws of the observed rate, se and sp.
    """
    if n <= 0 or pos <= 0 or neg <= 0:
        return CorrectedRate(k / n if n else float("nan"), float("nan"), 0.0, 1.0, float("nan"), float("nan"))
    se, sp = tp / pos, tn / neg
    point = rogan_gladen(k / n, se, sp)
    rng = np.random.default_rng(seed)
    q = rng.binomial(n, k / n, n_boot) / n
    se_b = rng.beta(tp + 1, pos - tp + 1, n_boot)
    sp_b = rng.beta(tn + 1, neg - tn + 1, n_boot)
    youden = se_b + sp_b - 1
    ok = youden > 0.05
    est = np.clip((q[ok] + sp_b[ok] - 1) / youden[ok], 0.0, 1.0)
    low, high = np.percentile(est, [2.5, 97.5]) if est.size else (0.0, 1.0)
    return CorrectedRate(k / n, point, float(low), float(high), se, sp)


__all__ = ["Z95", "CorrectedRate", "Rate", "corrected_rate", "rogan_gladen", "wilson"]
