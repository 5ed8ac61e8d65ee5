"""Judge training losses and the GPM preference score, as pure tensor functions.

Conventions (DESIGN.md section 6): keyword-only hyperparameters, per-example losses (no ``.mean()``
inside), inputs are already-pooled model outputs.

* BT (Bradley-Terry): ``P(a > b) = sigmoid(r_a - r_b)``; loss ``-log sigmoid(r_c - r_r)``.
* Scaled-BT (HelpSteer2-Preference, Wang et al. 2024, arXiv 2410.01257, the "Scaled Bradley-Terry"
  loss): ``-m * log sigmoid(r_c - r_r)`` with ``m`` = preference strength magnitude in {1, 2, 3}.
* Pair: a classifier logit ``s(a, b)`` on the concatenation "prompt [SEP] a [SEP] b"; trained on both
  presentation orders, ``(-log sigmoid(s(c, r)) - log sigmoid(-s(r, c))) / 2``, and used at inference
  symmetrized as ``P = (sigmoid(s(a,b)) + 1 - sigmoid(s(b,a))) / 2``.
* GPM (Zhang et al. 2024, "Beyond Bradley-Terry Models: A General Preference Model for Language Model
  Alignment", arXiv 2410.02197): ``s(a > b) = <R v_a, v_b>``, ``P = sigmoid(s / temperature)``; loss
  ``-log sigmoid(s(c > r) / temperature)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bt_loss(reward_chosen: torch.Tensor, reward_rejected: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry negative log-likelihood per pair: ``-log sigmoid(r_c - r_r)``."""
    return -F.logsigmoid(reward_chosen - reward_rejected)


def scaled_bt_loss(
    reward_chosen: torch.Tensor, reward_rejected: torch.Tensor, *, strength: torch.Tensor
) -> torch.Tensor:
    """Scaled-BT loss of HelpSteer2-Preference (arXiv 2410.01257): ``-m * log sigmoid(r_c - r_r)``.

    ``strength`` = m, the magnitude of the annotated preference strength (1 = slightly better,
    2 = better, 3 = much better). The model (and hence ``P = sigmoid(r_a - r_b)``) is the BT model; only
    the weighting of the pairs in the likelihood changes.
    """
    return -strength.to(reward_chosen.dtype) * F.logsigmoid(reward_chosen - reward_rejected)


def pair_loss(logit_cr: torch.Tensor, logit_rc: torch.Tensor | None = None) -> torch.Tensor:
    """Pairwise-classifier loss.

    ``logit_cr`` = s(chosen, rejected) (chosen shown first), ``logit_rc`` = s(rejected, chosen).
    With both orders: ``(-log sigmoid(s(c,r)) - log sigmoid(-s(r,c))) / 2`` (order augmentation, the
    label follows the content); with ``logit_rc=None`` only the given order is used
    (``-log sigmoid(s(c,r))``), which lets a raw classifier learn position shortcuts; the symmetrized
    judge is immune either way.
    """
    if logit_rc is None:
        return -F.logsigmoid(logit_cr)
    return 0.5 * (-F.logsigmoid(logit_cr) - F.logsigmoid(-logit_rc))


def skew_operator(eigenvalues: torch.Tensor) -> torch.Tensor:
    """The GPM operator ``R = blockdiag(lambda_1 J, ..., lambda_k J)`` with ``J = [[0, -1], [1, 0]]``.

    ``eigenvalues``: ``[k]`` or ``[B, k]`` (prompt-dependent). Returns ``[2k, 2k]`` or ``[B, 2k, 2k]``.
    ``R^T = -R`` (skew-symmetric), the eigenvalues of R are ``+-i lambda_l``.
    """
    lam = eigenvalues
    k = lam.shape[-1]
    r = lam.new_zeros((*lam.shape[:-1], 2 * k, 2 * k))
    idx = torch.arange(k, device=lam.device)
    r[..., 2 * idx, 2 * idx + 1] = -lam
    r[..., 2 * idx + 1, 2 * idx] = lam
    return r


def gpm_score(v_a: torch.Tensor, v_b: torch.Tensor, eigenvalues: torch.Tensor) -> torch.Tensor:
    """GPM preference score ``s(a > b) = <R v_a, v_b>`` (arXiv 2410.02197, Eq. "preference score").

    Written out block by block, with ``(a_1, a_2) = (v_a[2l], v_a[2l+1])``::

        s(a > b) = sum_l lambda_l * (a_1 * b_2 - a_2 * b_1)

    (``R v_a`` rotates each 2-D block of ``v_a`` by +90 degrees: ``(a_1, a_2) -> (-a_2, a_1)``). This is
    the sign used by the authors' code (``chosen[0] * rejected[1] - chosen[1] * rejected[0]`` is the
    score of chosen over rejected). ``s(a > b) = -s(b > a)`` and ``s(a > a) = 0`` exactly.

    Shapes: ``v_a, v_b``: ``[..., 2k]``; ``eigenvalues``: ``[k]`` or broadcastable ``[..., k]``.
    Returns ``[...]``.
    """
    k = v_a.shape[-1] // 2
    a = v_a.reshape(*v_a.shape[:-1], k, 2)
    b = v_b.reshape(*v_b.shape[:-1], k, 2)
    cross = a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]
    return (eigenvalues * cross).sum(-1)


def gpm_score_matrix(v: torch.Tensor, eigenvalues: torch.Tensor) -> torch.Tensor:
    """All pairwise GPM scores of K embeddings ``v: [K, 2k]``: ``S[i, j] = s(i > j) = <R v_i, v_j>``.

    ``S = (V R^T) V^T``; antisymmetric. ``eigenvalues``: ``[k]`` (one prompt).
    """
    r = skew_operator(eigenvalues)
    return (v @ r.T) @ v.T


def gpm_loss(score_cr: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """GPM negative log-likelihood per pair: ``-log sigmoid(s(c > r) / temperature)``.

    ``score_cr`` = ``gpm_score(v_chosen, v_rejected, lambda)``; the paper's beta is ``temperature``
    (authors' default 0.1 for unit-norm embeddings).
    """
    return -F.logsigmoid(score_cr / temperature)
