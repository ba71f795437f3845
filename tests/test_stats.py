from __future__ import annotations

import pytest

from lasa.stats import corrected_mean, corrected_rate, rogan_gladen, wilson


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        (0, 8, 0.0, 0.3244),  # one prompt is 12.5 points: 0 / 8 still allows a third
        (3, 8, 0.1368, 0.6943),
        (8, 8, 0.6756, 1.0),
        (15, 100, 0.0930, 0.2325),
        (1, 2, 0.0945, 0.9055),
    ],
)
def test_wilson_against_worked_examples(k, n, low, high):
    r = wilson(k, n)
    assert r.rate == pytest.approx(k / n)
    assert r.low == pytest.approx(low, abs=5e-4) and r.high == pytest.approx(high, abs=5e-4)
    assert r.low <= r.rate <= r.high


def test_wilson_edges():
    assert wilson(0, 0).low == 0.0 and wilson(0, 0).high == 1.0
    with pytest.raises(ValueError):
        wilson(5, 4)
    assert wilson(3, 8).fmt() == "37.5 [13.7, 69.4]"
    # every interval holds its own rate, exactly at 0 / n and n / n (rounding once left 1e-17 out)
    for n in (1, 3, 7, 10, 100, 1000):
        assert wilson(0, n).low == 0.0 and wilson(n, n).high == 1.0
        assert all(wilson(k, n).low <= k / n <= wilson(k, n).high for k in range(n + 1))


def test_rogan_gladen_worked_example():
    # true 25%: se 0.8, sp 0.9 -> observed 0.8*0.25 + 0.1*0.75 = 0.275
    assert rogan_gladen(0.275, 0.8, 0.9) == pytest.approx(0.25)
    # an undercounting judge (recall 1/3) is corrected upwards
    assert rogan_gladen(0.133, 0.31, 0.97) == pytest.approx((0.133 + 0.97 - 1) / (0.31 + 0.97 - 1))
    assert rogan_gladen(0.01, 0.8, 0.9) == 0.0  # clipped at 0
    assert rogan_gladen(0.3, 0.4, 0.5) != rogan_gladen(0.3, 0.4, 0.5)  # nan: judge no better than chance


def test_corrected_rate_interval_covers_the_point_and_widens_with_fewer_validation_labels():
    wide = corrected_rate(30, 100, tp=8, pos=10, tn=45, neg=50)
    narrow = corrected_rate(30, 100, tp=80, pos=100, tn=450, neg=500)
    for r in (wide, narrow):
        assert r.low <= r.corrected <= r.high
        assert r.corrected == pytest.approx(rogan_gladen(0.3, 0.8, 0.9))
    assert (wide.high - wide.low) > (narrow.high - narrow.low)
    assert corrected_rate(30, 100, tp=8, pos=10, tn=45, neg=50) == wide  # seeded: reproducible


def test_paired_difference_worked_example():
    from lasa.stats import paired_difference

    # Newcombe's paired example (36 both, 12 A only, 2 B only, 0 neither), computed by hand from
    # method 10: Wilson 48/50 = [0.8654, 0.9890], 38/50 = [0.6254, 0.8570], phi = -24 / sqrt(43776)
    a = [True] * 36 + [True] * 12 + [False] * 2
    b = [True] * 36 + [False] * 12 + [True] * 2
    d = paired_difference(a, b)
    assert (d.both, d.a_only, d.b_only, d.n) == (36, 12, 2, 50)
    assert d.diff == pytest.approx(0.20)
    assert (d.low, d.high) == (pytest.approx(0.0569, abs=5e-4), pytest.approx(0.3404, abs=5e-4))
    assert d.p_value == pytest.approx(2 * 106 / 2**14)  # McNemar exact: 2 * P(Bin(14, 1/2) <= 2)
    assert d.fmt() == "+20.0 [+5.7, +34.0]"
    flipped = paired_difference(b, a)  # swapping the arms mirrors the interval
    assert (flipped.low, flipped.high) == (pytest.approx(-d.high), pytest.approx(-d.low))


def test_paired_difference_no_change_and_bad_input():
    from lasa.stats import paired_difference

    same = [True, False, True, False]
    d = paired_difference(same, same)
    assert d.diff == 0 and d.low < 0 < d.high and d.p_value == 1.0
    with pytest.raises(ValueError, match="same items"):
        paired_difference([True], [True, False])


def test_paired_interval_is_narrower_than_unpaired_when_most_verdicts_agree_and_covers():
    import numpy as np

    from lasa.stats import paired_difference

    rng = np.random.default_rng(0)
    true, hits, widths = 0.85 * 0.25 + 0.15 * 0.15 - 0.25, 0, []
    for _ in range(500):  # a variant that re-draws 15% of the base model's verdicts
        base = rng.random(100) < 0.25
        var = np.where(rng.random(100) < 0.15, rng.random(100) < 0.15, base)
        d = paired_difference(list(var), list(base))
        hits += d.low <= true <= d.high
        widths.append(d.high - d.low)
        wa, wb = wilson(int(var.sum()), 100), wilson(int(base.sum()), 100)
        assert d.high - d.low < (wa.high - wa.low) + (wb.high - wb.low)
    assert 0.93 <= hits / 500 <= 1.0
    assert np.median(widths) < 0.15


def test_corrected_rate_keeps_its_uncertainty_at_zero_and_all_judged_unsafe():
    """0 of 8 judged unsafe is not a certain 0%: the interval is about as wide as Wilson's."""
    w = wilson(0, 8)
    zero = corrected_rate(0, 8, tp=30, pos=40, tn=90, neg=100)
    assert zero.corrected == 0.0 and zero.low == 0.0
    assert 0.5 * w.high < zero.high < 1.0
    full = corrected_rate(8, 8, tp=30, pos=40, tn=90, neg=100)
    assert full.high == 1.0 and full.low < 0.9


def test_corrected_interval_keeps_width_when_the_observed_rate_is_below_the_judge_fpr():
    """A safe variant judged at 5% by a judge validated at 12.6% FPR: the point clips to 0, but
    the interval must not claim certainty (inverting resampled rates gave "0.0 [0.0, 0.0]")."""
    shipped = dict(tp=306, pos=427, tn=1589, neg=1818)  # the pair head's grouped-split counts
    low_side = corrected_rate(16, 315, **shipped)
    assert low_side.corrected == 0.0 and low_side.low == 0.0
    assert 0.005 < low_side.high < 0.08
    high_side = corrected_rate(252, 315, **shipped)
    assert high_side.corrected == 1.0 and high_side.high == 1.0 and high_side.low < 0.99
    # inside the identifiable range the interval brackets the Rogan–Gladen point
    mid = corrected_rate(100, 315, **shipped)
    assert mid.low < mid.corrected < mid.high
    # a near-chance judge: wide, and the point lies inside it
    weak = corrected_rate(304, 315, tp=395, pos=400, tn=4, neg=100)
    assert weak.low <= weak.corrected <= weak.high and weak.high - weak.low > 0.5
    with pytest.raises(ValueError):
        corrected_rate(9, 8, **shipped)


def test_mean_of_rates_interval_contains_the_mean_with_unequal_n():
    from lasa.stats import mean_of_rates

    # equal n: the pooled Wilson interval (the mean is the pooled rate)
    assert mean_of_rates([(2, 8), (3, 8)]) == wilson(5, 16)
    # unequal n: the mean of the rates, not the pooled rate, with an interval around it
    r = mean_of_rates([(4, 8), (0, 2)])
    assert r.rate == pytest.approx(0.25) and (r.k, r.n) == (4, 10)
    assert r.low < 0.25 < r.high
    skew = mean_of_rates([(1, 1), (0, 100)])  # pooled 1% would sit far below the 50% mean
    assert skew.rate == 0.5 and skew.low <= 0.5 <= skew.high and skew.low > 0.01
    assert mean_of_rates([(0, 3), (0, 7)]).low == 0.0
    assert mean_of_rates([]).n == 0


def test_rate_fmt_as_proportion_keeps_three_decimals():
    assert wilson(3, 8).fmt(pct=False) == "0.375 [0.137, 0.694]"
    assert wilson(3, 8).fmt() == "37.5 [13.7, 69.4]"


def test_corrected_mean_is_the_mean_of_per_language_corrections():
    # a perfect judge corrects nothing, whatever the languages' n: the mean of 8/8 and 0/2 is 0.5
    # (correcting the pooled 8/10 with one se / sp printed 0.8)
    perfect = corrected_mean([(8, 8, 50, 50, 100, 100), (0, 2, 50, 50, 100, 100)])
    assert perfect.corrected == pytest.approx(0.5) and perfect.observed == pytest.approx(0.5)
    assert perfect.low <= 0.5 <= perfect.high
    # worked example: en 30/100 at se 0.8 sp 0.9 -> 0.2 / 0.7; th 20/100 at se 0.5 sp 0.95 -> 0.15 / 0.45
    groups = [(30, 100, 80, 100, 90, 100), (20, 100, 50, 100, 95, 100)]
    m = corrected_mean(groups)
    assert m.corrected == pytest.approx((0.2 / 0.7 + 0.15 / 0.45) / 2)
    singles = [corrected_rate(*g) for g in groups]
    assert m.low <= m.corrected <= m.high
    assert min(s.low for s in singles) <= m.low and m.high <= max(s.high for s in singles)
    # the mean of the per-language figures as printed: a rate below the judge's false-positive
    # rate corrects to 0 (a true rate is never negative), as corrected_rate reports it
    neg = corrected_mean([(1, 100, 80, 100, 90, 100), (50, 100, 80, 100, 90, 100)])
    assert (0.01 + 0.9 - 1) / (0.8 + 0.9 - 1) < 0 == corrected_rate(1, 100, 80, 100, 90, 100).corrected
    assert neg.corrected == pytest.approx((0 + 4 / 7) / 2) and neg.low <= neg.corrected <= neg.high
    assert corrected_mean(groups) == m  # seeded
    # shared prompts (design effect 4): the same point, a wider interval
    wide = corrected_mean(groups, deff=4.0)
    assert wide.corrected == m.corrected and wide.low < m.low and wide.high > m.high


def test_design_effect_counts_a_prompt_asked_in_ten_languages_as_less_than_ten_answers():
    from lasa.stats import design_effect, mean_of_rates

    langs = [g for _ in range(5) for g in range(10)]
    prompts = [c for c in range(5) for _ in range(10)]
    # prompts 0, 1 unsafe in every language, 2-4 in none: all information is in the 5 prompts;
    # worked value: cluster size 10, times the small-sample factors (5/4) / (50/49) = 12.25
    together = [1 if c < 2 else 0 for c in prompts]
    assert design_effect(together, langs, prompts) == pytest.approx(10 * (5 / 4) / (50 / 49))
    # one answer per prompt (nothing shared): 1, and never below 1
    assert design_effect(together, langs, list(range(50))) == pytest.approx(1.0)
    anti = [(c + g) % 2 for c, g in zip(prompts, langs)]  # prompts disagree across languages
    assert design_effect(anti, langs, prompts) == 1.0
    # the interval widens with it (Wilson on about 4 effective answers instead of 50) and keeps its point
    plain, wide = mean_of_rates([(4, 10)] * 5), mean_of_rates([(4, 10)] * 5, deff=12.25)
    assert wide.rate == plain.rate == 0.4 and wide.low < plain.low and wide.high > plain.high
    assert (wide.high - wide.low) / (plain.high - plain.low) > 2.5


def test_sign_flip_over_single_answers_is_mcnemars_exact_test():
    from scipy.stats import binomtest

    from lasa.stats import paired_difference, sign_flip_p

    a = [1] * 12 + [0] * 3 + [1] * 5 + [0] * 30
    b = [0] * 12 + [1] * 3 + [1] * 5 + [0] * 30
    clustered = paired_difference(a, b, clusters=list(range(50)))
    assert clustered.p_value == pytest.approx(binomtest(3, 15, 0.5).pvalue) == paired_difference(a, b).p_value
    assert clustered.deff == 1.0 and (clustered.low, clustered.high) == pytest.approx(
        (paired_difference(a, b).low, paired_difference(a, b).high)
    )
    # the same 15 flips made by 3 prompts in 5 languages each are 3 pieces of evidence, not 15
    by_prompt = paired_difference(a, b, clusters=[i // 5 for i in range(50)])
    assert by_prompt.p_value > 0.2 and by_prompt.high - by_prompt.low > clustered.high - clustered.low
    assert sign_flip_p([3.0, 3.0, -1.0]) == pytest.approx(4 / 8)  # |±3 ±3 ±1| >= 5 in 4 of 8
    # past 16 prompts: seeded Monte Carlo, close to the exact binomial value
    assert sign_flip_p([1.0] * 20 + [-1.0] * 5) == pytest.approx(binomtest(5, 25, 0.5).pvalue, abs=0.003)
