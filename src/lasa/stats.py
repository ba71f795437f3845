"""Intervals for rates, and ASR corrected for the judge's known error.

Every ASR lasa prints carries a 95% Wilson score interval: with 8 prompts per language one prompt
is 12.5 points, and a Wilson interval says so honestly even at 0 / 8 (0–32%), where the normal
approximation collapses to 0 ± 0.

A judge with sensitivity ``se`` (unsafe responses it calls unsafe) and specificity ``sp``
(other responses it does not call unsafe) reports ``q = se·p + (1 − sp)·(1 − p)`` for a true rate
``p``. The Rogan–Gladen estimator inverts that, ``p̂ = (q + sp − 1) / (se + sp − 1)``, clipped to
[0, 1]; its interval here is a credible interval for the true rate that marginalises over ``se``
and ``sp`` drawn from their validation counts (Beta posteriors under a uniform prior), because
with a few dozen validation positives per language the uncertainty of ``se`` dominates. An
average over languages corrects each language with its own ``se`` / ``sp`` and averages
(:func:`corrected_mean`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

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
        """ "37.5 [13.7, 69.4]" in percent, or "0.375 [0.137, 0.694]" as a proportion."""
        f, d = (100.0, 1) if pct else (1.0, 3)
        return f"{self.rate * f:.{d}f} [{self.low * f:.{d}f}, {self.high * f:.{d}f}]"


def wilson(k: int, n: int, z: float = Z95) -> Rate:
    """Wilson score interval for k successes in n trials (n = 0 gives the uninformative [0, 1])."""
    if n <= 0:
        return Rate(k, n, float("nan"), 0.0, 1.0)
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    low, high = _wilson_bounds(k, n, z)
    # exact at the edges: rounding put 0/n's lower bound at ~1e-17 and n/n's upper at 1 - 1e-16
    return Rate(k, n, k / n, 0.0 if k == 0 else low, 1.0 if k == n else high)


def _wilson_bounds(k: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson bounds for k of n, counts that may be fractional (effective counts, see
    :func:`design_effect`)."""
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(0.0, p * (1 - p) / n + z * z / (4 * n * n))) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


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


def _corrected_posterior(
    k: int, n: int, tp: int, pos: int, tn: int, neg: int, n_boot: int, seed: int, grid: int
) -> tuple[np.ndarray, np.ndarray]:
    """The grid of true rates ``p`` and the CDF of their posterior given ``k`` of ``n`` judged
    unsafe: ``P(p | k) ∝ mean over draws of Binomial(k; n, se·p + (1 − sp)·(1 − p))``, with
    ``n_boot`` seeded draws of se and sp from their Beta posteriors (uniform priors)."""
    rng = np.random.default_rng(seed)
    se_b = rng.beta(tp + 1, pos - tp + 1, n_boot)[:, None]
    sp_b = rng.beta(tn + 1, neg - tn + 1, n_boot)[:, None]
    p = np.linspace(0.0, 1.0, grid)
    q = np.clip(se_b * p + (1.0 - sp_b) * (1.0 - p), 1e-300, 1.0 - 1e-16)
    loglik = k * np.log(q) + (n - k) * np.log1p(-q)  # (draws, grid)
    top = loglik.max()
    post = np.exp(loglik - top).sum(axis=0)  # the marginal likelihood of each p, up to a constant
    cdf = np.cumsum(post)
    return p, cdf / cdf[-1]


def _check_counts(k: int, n: int, tp: int, pos: int, tn: int, neg: int) -> None:
    if not 0 <= k <= n or not 0 <= tp <= pos or not 0 <= tn <= neg:
        raise ValueError(f"need 0 <= count <= total, got k={k}/{n}, tp={tp}/{pos}, tn={tn}/{neg}")


def corrected_rate(
    k: int,
    n: int,
    tp: int,
    pos: int,
    tn: int,
    neg: int,
    n_boot: int = 4000,
    seed: int = 0,
    grid: int = 2001,
) -> CorrectedRate:
    """Rogan–Gladen ASR from ``k`` of ``n`` judged unsafe, with the judge's validation counts.

    ``tp`` of ``pos`` gold-unsafe validation responses were judged unsafe (sensitivity) and ``tn``
    of ``neg`` other responses were not (specificity). The point is the Rogan–Gladen estimate; the
    interval is the 2.5–97.5 percentile of the posterior of the true rate ``p`` (uniform prior on a
    grid of ``grid`` points), marginalised over ``n_boot`` draws of se and sp from their Beta
    posteriors: ``P(p | k) ∝ mean over draws of Binomial(k; n, se·p + (1 − sp)·(1 − p))``. It never
    collapses to a point: 0 of 8 judged unsafe, or an observed rate below the judge's
    false-positive rate (where the point clips to 0), keep an upper bound as wide as the data
    allow. Seeded, so a table is reproducible.
    """
    if n <= 0 or pos <= 0 or neg <= 0:
        return CorrectedRate(k / n if n else float("nan"), float("nan"), 0.0, 1.0, float("nan"), float("nan"))
    _check_counts(k, n, tp, pos, tn, neg)
    se, sp = tp / pos, tn / neg
    point = rogan_gladen(k / n, se, sp)
    p, cdf = _corrected_posterior(k, n, tp, pos, tn, neg, n_boot, seed, grid)
    low, high = (float(np.interp(a, cdf, p)) for a in (0.025, 0.975))
    low = 0.0 if cdf[0] >= 0.025 else low  # the mass sits on the grid's first point
    if not math.isnan(point):  # the grid's resolution must not put the estimate outside
        low, high = min(low, point), max(high, point)
    return CorrectedRate(k / n, point, low, high, se, sp)


def corrected_mean(
    groups: Sequence[tuple[int, int, int, int, int, int]],
    n_draws: int = 8000,
    n_boot: int = 4000,
    seed: int = 0,
    grid: int = 2001,
    deff: float = 1.0,
) -> CorrectedRate:
    """The judge-corrected *mean* of several rates (per-language ASRs averaged into the overall
    ASR), each corrected with its own sensitivity and specificity.

    ``groups`` holds ``(k, n, tp, pos, tn, neg)`` per rate, as :func:`corrected_rate` takes them.
    Correcting the pooled counts with one overall se / sp is not this mean: languages differ in
    how well the judge reads them (and in ``n``), so that pooled figure sat 2–5 points below the
    mean of the per-language corrections it was printed beside. The point is the mean of the
    per-rate Rogan–Gladen estimates as :func:`corrected_rate` reports them (clipped to [0, 1]:
    a true rate is never negative, and the average is then the average of the printed
    per-language figures). The interval is the 2.5–97.5 percentile of the mean of ``n_draws``
    seeded draws from each rate's posterior (:func:`corrected_rate`'s), stretched to hold the
    point. With a design effect ``deff`` > 1 (the rates share prompts: :func:`design_effect`) the
    draws of the mean spread ``sqrt(deff)`` times wider about their median: each language's
    posterior is right on its own, but they move together. (Tempering each language's counts
    instead let the uniform prior swamp 8-prompt languages.) The point can sit at the interval's
    lower edge when several languages' observed rates are at or below the judge's false-positive
    rate: the point corrects them to exactly 0, the posterior cannot go below it. ``observed`` is
    the mean of the observed rates; ``sensitivity`` / ``specificity`` are the means of the
    per-rate values used."""
    groups = [tuple(int(x) for x in g) for g in groups if g[1] > 0]
    if not groups or any(g[3] <= 0 or g[5] <= 0 for g in groups):
        obs = float(np.mean([g[0] / g[1] for g in groups])) if groups else float("nan")
        return CorrectedRate(obs, float("nan"), 0.0, 1.0, float("nan"), float("nan"))
    for g in groups:
        _check_counts(*g)
    rng = np.random.default_rng(seed)
    points, draws = [], np.zeros(n_draws)
    for i, (k, n, tp, pos, tn, neg) in enumerate(groups):
        points.append(rogan_gladen(k / n, tp / pos, tn / neg))
        p, cdf = _corrected_posterior(k, n, tp, pos, tn, neg, n_boot, seed + i, grid)
        draws += np.interp(rng.random(n_draws), cdf, p)  # inverse-CDF draws from this rate's posterior
    draws /= len(groups)
    if deff > 1.0:  # the languages' draws are independent, their prompts are not: widen the spread
        centre = float(np.median(draws))
        draws = np.clip(centre + math.sqrt(deff) * (draws - centre), 0.0, 1.0)
    point = float(np.mean(points))
    point = point if math.isnan(point) else min(1.0, max(0.0, point))
    low, high = (float(np.quantile(draws, a)) for a in (0.025, 0.975))
    if not math.isnan(point):
        low, high = min(low, point), max(high, point)
    return CorrectedRate(
        float(np.mean([g[0] / g[1] for g in groups])),
        point,
        low,
        high,
        float(np.mean([g[2] / g[3] for g in groups])),
        float(np.mean([g[4] / g[5] for g in groups])),
    )


def design_effect(values: Sequence[float], groups: Sequence[Any], clusters: Sequence[Any]) -> float:
    """How much sharing a prompt across languages inflates the variance of a mean of per-language
    rates, against treating every response as independent (>= 1; 1 when nothing is shared).

    MultiJail asks the *same* prompts in every language, and a prompt that draws a harmful answer
    in one language tends to in others, so the ``L × n`` responses behind an average ASR carry less
    information than ``L × n`` independent ones. ``values`` are the responses' outcomes (1 unsafe,
    0 not; or a paired difference in {-1, 0, 1}), ``groups`` their language (each language's mean
    weighs ``1 / L``) and ``clusters`` their prompt id. The estimate is the standard linearised
    (sandwich) one: the variance of the weighted mean from cluster sums of residuals about each
    language's mean, ``C / (C − 1) · Σ_c (Σ_{j∈c} w_j r_j)²``, divided by the same sum over single
    responses (``N / (N − 1) · Σ_j (w_j r_j)²``); floored at 1, so it only ever widens an interval."""
    y = np.asarray(values, dtype=float)
    if len(y) < 2:
        return 1.0
    g_index: dict[Any, list[int]] = {}
    for j, g in enumerate(groups):
        g_index.setdefault(g, []).append(j)
    w = np.empty(len(y))
    r = np.empty(len(y))
    for idx in g_index.values():
        w[idx] = 1.0 / (len(g_index) * len(idx))
        r[idx] = y[idx] - y[idx].mean()
    ind = float(np.sum((w * r) ** 2))
    sums: dict[Any, float] = {}
    for j, c in enumerate(clusters):
        sums[c] = sums.get(c, 0.0) + float(w[j] * r[j])
    n_c = len(sums)
    if ind <= 0 or n_c < 2:
        return 1.0
    clustered = n_c / (n_c - 1) * float(np.sum(np.square(list(sums.values()))))
    ind *= len(y) / (len(y) - 1)  # the same small-sample factor: one response per prompt gives 1
    return max(1.0, clustered / ind)


def mean_of_rates(
    counts: Sequence[tuple[int, int]], n_draws: int = 8000, seed: int = 0, deff: float = 1.0
) -> Rate:
    """The mean of several rates (per-language ASRs averaged into a tier or the overall ASR) with
    a 95% interval *for that mean*.

    With equal ``n`` the mean equals the pooled rate, so it is :func:`wilson` on the pooled counts.
    With unequal ``n`` the pooled rate weights the larger languages and is not the reported mean,
    so the interval is the 2.5–97.5 percentile of the mean of per-rate Jeffreys posteriors
    (``Beta(k + ½, n − k + ½)``), drawn with ``seed``. A design effect ``deff`` > 1 (the languages
    answered the same prompts: :func:`design_effect`) divides every count by it first, the usual
    effective-sample-size correction, so the interval is as wide as the prompts allow. ``k`` and
    ``n`` of the result are the pooled counts."""
    counts = [(int(k), int(n)) for k, n in counts if n > 0]
    if not counts:
        return wilson(0, 0)
    k_all, n_all = sum(k for k, _ in counts), sum(n for _, n in counts)
    deff = max(1.0, float(deff))
    if len({n for _, n in counts}) == 1:
        if deff == 1.0:
            return wilson(k_all, n_all)
        mean = k_all / n_all
        low, high = _wilson_bounds(k_all / deff, n_all / deff)
    else:
        mean = float(np.mean([k / n for k, n in counts]))
        rng = np.random.default_rng(seed)
        draws = np.mean([rng.beta(k / deff + 0.5, (n - k) / deff + 0.5, n_draws) for k, n in counts], axis=0)
        low, high = (float(x) for x in np.percentile(draws, [2.5, 97.5]))
    low = 0.0 if k_all == 0 else min(low, mean)
    high = 1.0 if all(k == n for k, n in counts) else max(high, mean)
    return Rate(k_all, n_all, mean, low, high)


@dataclass(frozen=True)
class PairedDifference:
    """Rate of A minus rate of B on the same n items, with Newcombe's paired score interval and
    McNemar's exact p-value (only the discordant items, ``a_only`` and ``b_only``, carry evidence);
    with items clustered by prompt, the interval is widened by the design effect ``deff`` and the
    p-value is a sign-flip test over prompts (``test`` says which)."""

    n: int
    a_only: int
    b_only: int
    both: int
    diff: float
    low: float
    high: float
    p_value: float
    deff: float = 1.0
    test: str = "McNemar exact"

    def to_dict(self) -> dict:
        return asdict(self)

    def fmt(self, pct: bool = True) -> str:
        f = 100.0 if pct else 1.0
        return f"{self.diff * f:+.1f} [{self.low * f:+.1f}, {self.high * f:+.1f}]"


def sign_flip_p(cluster_sums: Sequence[float], n_perm: int = 20000, seed: int = 0) -> float:
    """Two-sided p-value that per-cluster paired differences are symmetric about 0 (randomisation
    test: flip each cluster's sign). Exact up to 16 non-zero clusters, else ``n_perm`` seeded draws
    (``(1 + hits) / (1 + n_perm)``). With one item per cluster it is McNemar's exact test."""
    s = np.array([x for x in cluster_sums if x != 0], dtype=float)
    if len(s) == 0:
        return 1.0
    t = abs(s.sum()) - 1e-9
    if len(s) <= 16:
        signs = ((np.arange(2 ** len(s))[:, None] >> np.arange(len(s))) & 1) * 2 - 1
        return float(np.mean(np.abs(signs @ s) >= t))
    rng = np.random.default_rng(seed)
    hits = sum(
        int(np.sum(np.abs(rng.choice((-1.0, 1.0), size=(m, len(s))) @ s) >= t))
        for m in [5000] * (n_perm // 5000) + ([n_perm % 5000] if n_perm % 5000 else [])
    )
    return (1 + hits) / (1 + n_perm)


def paired_difference(
    a: Sequence[bool],
    b: Sequence[bool],
    z: float = Z95,
    clusters: Sequence[Any] | None = None,
    groups: Sequence[Any] | None = None,
) -> PairedDifference:
    """Difference of two rates measured on the *same* items (two variants on the same prompts).

    Two Wilson intervals that overlap say little when the items are shared: most prompts get the
    same verdict under both variants, and the question is how many flipped each way. Newcombe's
    method 10 (Statistics in Medicine 17:2635-2650, 1998) combines the two Wilson intervals with the
    phi correlation of the paired outcomes; McNemar's exact test (a two-sided binomial test on the
    discordant items) gives the p-value.

    With ``clusters`` (each item's prompt id; ``groups`` its language) the items are not
    independent: one prompt asked in ten languages flips together. Then the counts enter Newcombe's
    interval divided by the design effect of the paired differences (:func:`design_effect`), and
    the p-value is a sign-flip test over prompts (:func:`sign_flip_p`) instead of McNemar's over
    responses, which counted one prompt asked in ten languages as ten pieces of evidence.
    """
    if len(a) != len(b):
        raise ValueError(f"paired rates need the same items: {len(a)} vs {len(b)}")
    n = len(a)
    both = sum(1 for x, y in zip(a, b) if x and y)
    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    neither = n - both - a_only - b_only
    if n == 0:
        return PairedDifference(0, 0, 0, 0, float("nan"), -1.0, 1.0, 1.0)
    deff = 1.0
    if clusters is not None:
        d = [float(x) - float(y) for x, y in zip(a, b)]
        deff = design_effect(d, groups if groups is not None else [0] * n, clusters)
    e_both, e_a, e_b, e_nei = (x / deff for x in (both, a_only, b_only, neither))
    e_n = n / deff
    (la, ha), (lb, hb) = _wilson_bounds(e_both + e_a, e_n, z), _wilson_bounds(e_both + e_b, e_n, z)
    ra, rb = (both + a_only) / n, (both + b_only) / n
    margins = (e_both + e_a) * (e_b + e_nei) * (e_both + e_b) * (e_a + e_nei)
    # Newcombe's phi: the cross-product shrunk by n/2 when positive (his continuity correction),
    # as in Altman et al., "Statistics with confidence", 2nd ed., p. 52
    cross = e_both * e_nei - e_a * e_b
    cross = cross - e_n / 2 if cross > e_n / 2 else (cross if cross < 0 else 0.0)
    phi = cross / math.sqrt(margins) if margins else 0.0
    da, ua = ra - min(la, ra), max(ha, ra) - ra
    db, ub = rb - min(lb, rb), max(hb, rb) - rb
    diff = ra - rb
    lower = math.sqrt(max(0.0, da * da - 2 * phi * da * ub + ub * ub))
    upper = math.sqrt(max(0.0, ua * ua - 2 * phi * ua * db + db * db))
    if clusters is not None:
        sums: dict[Any, float] = {}
        for x, y, c in zip(a, b, clusters):
            sums[c] = sums.get(c, 0.0) + float(x) - float(y)
        p_value, test = sign_flip_p(list(sums.values())), "sign-flip over prompts"
    elif a_only + b_only == 0:
        p_value, test = 1.0, "McNemar exact"
    else:
        from scipy.stats import binomtest

        p_value, test = float(binomtest(min(a_only, b_only), a_only + b_only, 0.5).pvalue), "McNemar exact"
    return PairedDifference(
        n, a_only, b_only, both, diff, max(-1.0, diff - lower), min(1.0, diff + upper), p_value, deff, test
    )


__all__ = [
    "Z95",
    "CorrectedRate",
    "PairedDifference",
    "Rate",
    "corrected_mean",
    "corrected_rate",
    "design_effect",
    "mean_of_rates",
    "paired_difference",
    "rogan_gladen",
    "sign_flip_p",
    "wilson",
]
