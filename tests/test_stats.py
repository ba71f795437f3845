from __future__ import annotations

import pytest

from lasa.stats import corrected_rate, rogan_gladen, wilson


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
