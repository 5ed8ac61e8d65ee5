"""Preference oracles (judges): protocol, ground truth, BT / Scaled-BT, pairwise, GPM."""

from inpo.judges.base import Judge, matrix_from_prob

__all__ = ["Judge", "matrix_from_prob"]
