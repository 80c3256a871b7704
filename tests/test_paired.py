"""`evaluate.paired`: a method against its starting model, question by question."""
import math
import random

import pytest
from scipy import stats

from mmalign_jax.evaluate import paired


def test_mcnemar_exact_matches_a_two_sided_binomial_test():
    assert paired.mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    assert paired.mcnemar_exact(3, 3) == 1.0
    assert paired.mcnemar_exact(0, 0) == 1.0
    for gained, lost in [(1, 9), (23, 35), (75, 64), (183, 218), (0, 40)]:
        ref = stats.binomtest(gained, gained + lost, 0.5).pvalue
        assert paired.mcnemar_exact(gained, lost) == pytest.approx(ref, rel=1e-9)
        assert paired.mcnemar_exact(lost, gained) == paired.mcnemar_exact(gained, lost)


def test_difference_of_0_1_answers_by_hand():
    d = paired.difference([1, 1, 0, 0, 1], [1, 0, 1, 1, 1])
    # differences 0, -1, 1, 1, 0: mean 0.2, sample variance 2.8 / 4 = 0.7
    assert d["n"] == 5 and d["base"] == 0.6 and d["other"] == pytest.approx(0.8)
    assert d["diff"] == pytest.approx(0.2)
    assert d["se"] == pytest.approx(math.sqrt(0.7 / 5))
    assert d["ci95"] == pytest.approx([0.2 - 1.959964 * d["se"], 0.2 + 1.959964 * d["se"]])
    assert (d["gained"], d["lost"]) == (2, 1)
    assert d["test"] == "mcnemar_exact" and d["p_value"] == 1.0


def test_paired_standard_error_is_the_t_test_one_and_far_below_the_unpaired_one():
    rng = random.Random(0)
    base = [int(rng.random() < 0.53) for _ in range(2048)]
    # the other model agrees on 93 % of the questions
    other = [b if rng.random() < 0.93 else 1 - b for b in base]
    d = paired.difference(base, other)
    t = stats.ttest_rel(other, base)
    assert d["diff"] / d["se"] == pytest.approx(t.statistic, rel=1e-9)
    unpaired = math.sqrt(0.53 * 0.47 / 2048 * 2)
    assert d["se"] < unpaired / 2


def test_shares_over_several_runs_use_the_paired_z_test():
    base = [1, 0, 1, 0, 1, 1, 0, 0]
    other = [1, 0.5, 1, 2 / 3, 0.5, 1, 1, 0]
    d = paired.difference(base, other)
    assert d["test"] == "paired_z"
    assert (d["gained"], d["lost"]) == (3, 1)
    z = d["diff"] / d["se"]
    assert d["p_value"] == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-9)


def test_comparisons_must_be_over_the_same_questions():
    with pytest.raises(ValueError, match="same questions: 3 vs 2"):
        paired.difference([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match=r"vqa accuracy: .*not asked the same questions.*'q3'"):
        paired.by_id({"q1": 1, "q2": 0}, {"q1": 1, "q3": 0}, where="vqa accuracy")
    d = paired.by_id({"b": 1, "a": 0}, {"a": 1, "b": 1})
    assert (d["gained"], d["lost"], d["diff"]) == (1, 0, 0.5)


def test_format_difference():
    d = paired.difference([1, 1, 0, 0, 1], [1, 0, 1, 1, 1])
    lo, hi = d["ci95"]
    assert paired.format_difference(d) == f"+0.200 [{lo:+.3f}, {hi:+.3f}] p=1.000"
    assert paired.format_difference(None) == "–"
    small = paired.difference([0] * 40, [1] * 39 + [0])
    assert paired.format_difference(small).endswith("p=4e-12")
