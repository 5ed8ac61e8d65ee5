"""inpo.judges.agreement against hand-computed values (bench/annotators_judges.py's metrics)."""

import math

import pytest
import torch

from inpo.judges.agreement import (
    cycle_edges_kept,
    cyclic_triples,
    mean_abs_error,
    pearson,
    position_bias,
    sign_agreement,
)
from inpo.tasks.annotators import AnnotatorJudge


def t(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float64)


def test_sign_agreement_skips_true_ties_and_halves_judge_ties():
    p_true = t(1.0, 2 / 3, 0.5, 1 / 3, 0.0)
    p_judge = t(0.9, 0.4, 0.1, 0.5, 0.2)
    # decided: rows 0, 1, 3, 4 -> same side, other side, judge tie (1/2), same side
    assert sign_agreement(p_judge, p_true) == (pytest.approx((1 + 0 + 0.5 + 1) / 4), 4)
    value, n = sign_agreement(t(0.2), t(0.5))
    assert n == 0 and math.isnan(value)


def test_mean_abs_error_and_pearson():
    assert mean_abs_error(t(0.9, 0.4), t(1.0, 0.0)) == pytest.approx((0.1 + 0.4) / 2)
    # x = (0, 1, 2), y = (0, 1, 1): cov = 1, var_x = 2, var_y = 2/3 -> r = 1 / sqrt(4/3) = sqrt(3)/2
    assert pearson(t(0, 1, 2), t(0, 1, 1)) == pytest.approx(math.sqrt(3) / 2)
    assert pearson(t(1, 2, 3), t(3, 2, 1)) == pytest.approx(-1.0)
    assert math.isnan(pearson(t(0.5, 0.5), t(0.0, 1.0)))
    with pytest.raises(ValueError, match="same length"):
        mean_abs_error(t(0.5), t(0.5, 0.5))


def test_position_bias():
    # pair 1: f(a,b)=0.8, f(b,a)=0.6 -> both orders say "first": same position; pair 2: 0.9 / 0.1: consistent
    bias, same = position_bias(t(0.8, 0.9), t(0.6, 0.1))
    assert bias == pytest.approx((0.7 + 0.5) / 2 - 0.5)
    assert same == pytest.approx(0.5)
    assert position_bias(t(0.3), t(0.7)) == (pytest.approx(0.0), 0.0)


def test_cyclic_triples_of_the_annotators_majority_cycle():
    # the annotators task's cycle (its module doc): x short plain, y medium list, z long plain;
    # the sampled annotator gives x > y, y > z, z > x each with P = 2/3
    x = "Paris is nice."
    y = "Here:\n- one two three\n- four five six"
    z = "Paris is a large and very old city with many museums, parks and long streets to walk."
    m = AnnotatorJudge("sampled").matrix("", [x, y, z, ""])
    assert m[0, 1] == pytest.approx(2 / 3) and m[1, 2] == pytest.approx(2 / 3) and m[2, 0] == pytest.approx(2 / 3)
    assert cyclic_triples(m) == [(0, 1, 2)]  # the empty response loses to all: no cycle through it
    assert cycle_edges_kept(m, (0, 1, 2)) == 3
    # a scalar score (BT) orders the three: it keeps exactly 2 of the 3 cycle edges
    score = t(3.0, 2.0, 1.0, 0.0)
    bt = torch.sigmoid(score[:, None] - score[None, :])
    assert cyclic_triples(bt) == []
    assert cycle_edges_kept(bt, (0, 1, 2)) == 2
    # the reversed cycle is found starting at its smallest index
    assert cyclic_triples(m.T.contiguous()) == [(0, 2, 1)]
