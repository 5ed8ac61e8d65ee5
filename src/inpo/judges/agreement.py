"""How well a judge agrees with a known ground-truth preference ``P_true`` on labelled pairs (pure functions).

Used by ``bench/annotators_judges.py`` (a learned or zero-shot judge against the annotators task's exact oracle).
All inputs are 1-D tensors of probabilities ``P(a > b)`` over the same pairs, or ``[K, K]`` preference matrices.

* :func:`sign_agreement`: on the pairs where ``P_true != 1/2``, the fraction where the judge picks the same side
  (``P_judge > 1/2`` iff ``P_true > 1/2``); a judge's exact 1/2 counts 1/2.
* :func:`mean_abs_error`, :func:`pearson`: ``mean |P_judge - P_true|`` and the correlation of the two.
* :func:`position_bias`: from an order-dependent judge's raw ``f(a, b) = P(first shown better)`` in both
  orders: the mean of ``f`` over all presentations minus 1/2 (> 0: the first shown is favoured), and the
  fraction of pairs whose two verdicts name the same position (the verdict followed the position, not the text).
* :func:`cyclic_triples`, :func:`cycle_edges_kept`: the 3-cycles of a preference matrix (``i > j > k > i``, each
  edge ``> 1/2``) and, per cycle, how many of its three edges another matrix orients the same way (a BT judge,
  a scalar reward, keeps at most 2).
"""

from __future__ import annotations

import itertools

import torch


def _check(p_judge: torch.Tensor, p_true: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pj, pt = torch.as_tensor(p_judge, dtype=torch.float64), torch.as_tensor(p_true, dtype=torch.float64)
    if pj.shape != pt.shape or pj.dim() != 1:
        raise ValueError(f"expected two 1-D tensors of the same length, got {tuple(pj.shape)} and {tuple(pt.shape)}")
    return pj, pt


def sign_agreement(p_judge: torch.Tensor, p_true: torch.Tensor) -> tuple[float, int]:
    """``(agreement, n)``: on the ``n`` pairs with ``P_true != 1/2``, the mean of 1 (judge on the same side),
    0 (other side) or 1/2 (judge exactly 1/2). ``nan`` when ``n = 0``."""
    pj, pt = _check(p_judge, p_true)
    decided = pt != 0.5
    n = int(decided.sum())
    if n == 0:
        return float("nan"), 0
    same = ((pj > 0.5) == (pt > 0.5)).double()
    score = torch.where(pj == 0.5, torch.full_like(same, 0.5), same)
    return float(score[decided].mean()), n


def mean_abs_error(p_judge: torch.Tensor, p_true: torch.Tensor) -> float:
    pj, pt = _check(p_judge, p_true)
    return float((pj - pt).abs().mean()) if pj.numel() else float("nan")


def pearson(p_judge: torch.Tensor, p_true: torch.Tensor) -> float:
    """Pearson correlation; ``nan`` when either side is constant (or fewer than 2 pairs)."""
    pj, pt = _check(p_judge, p_true)
    if pj.numel() < 2:
        return float("nan")
    dj, dt = pj - pj.mean(), pt - pt.mean()
    den = float((dj.square().sum() * dt.square().sum()).sqrt())
    return float((dj * dt).sum()) / den if den > 0 else float("nan")


def position_bias(f_ab: torch.Tensor, f_ba: torch.Tensor) -> tuple[float, float]:
    """``(bias, same_position)`` from ``f_ab = f(a, b)`` and ``f_ba = f(b, a)`` (P(first shown better)).

    ``bias = mean((f_ab + f_ba) / 2) - 1/2``: an unbiased judge gives the first position 1/2 on average.
    ``same_position``: fraction of pairs where both orders pick the same position (both ``f > 1/2`` or both
    ``f < 1/2``: the verdict contradicts itself after the swap)."""
    fab, fba = _check(f_ab, f_ba)
    if fab.numel() == 0:
        return float("nan"), float("nan")
    bias = float(((fab + fba) / 2).mean()) - 0.5
    same = (((fab > 0.5) & (fba > 0.5)) | ((fab < 0.5) & (fba < 0.5))).double().mean()
    return bias, float(same)


def cyclic_triples(p: torch.Tensor) -> list[tuple[int, int, int]]:
    """The 3-cycles of a ``[K, K]`` preference matrix: ``(i, j, k)`` with ``P[i,j], P[j,k], P[k,i] > 1/2``, each
    cycle once, starting at its smallest index."""
    m = torch.as_tensor(p, dtype=torch.float64)
    out = []
    for i, j, k in itertools.combinations(range(m.shape[0]), 3):
        if m[i, j] > 0.5 and m[j, k] > 0.5 and m[k, i] > 0.5:
            out.append((i, j, k))
        elif m[i, k] > 0.5 and m[k, j] > 0.5 and m[j, i] > 0.5:
            out.append((i, k, j))
    return out


def cycle_edges_kept(p_judge: torch.Tensor, cycle: tuple[int, int, int]) -> int:
    """How many of the cycle's edges ``i > j``, ``j > k``, ``k > i`` the judge's matrix has ``> 1/2`` (0-3)."""
    m = torch.as_tensor(p_judge, dtype=torch.float64)
    i, j, k = cycle
    return int(m[i, j] > 0.5) + int(m[j, k] > 0.5) + int(m[k, i] > 0.5)
