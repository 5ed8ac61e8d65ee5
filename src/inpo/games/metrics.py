"""Metrics of a policy on a preference game (DESIGN.md section 3).

All functions take ``P`` as ``[A, A]`` or ``[X, A, A]`` and policies as ``[A]`` or ``[X, A]``
(numpy arrays or torch tensors; mixed shapes broadcast over contexts). For a single 2-D game and a
1-D policy they return a Python float; otherwise an array of shape ``[X]``, as a torch float64
tensor if any input was a tensor (on that tensor's device), else numpy.

Definitions, with ``P(pi > mu) = pi^T P mu`` and the game value 1/2 (P - 1/2 is skew-symmetric):

* duality gap       ``max_{pi'} P(pi' > pi) - min_{pi'} P(pi > pi') = max_i (P pi)_i - min_j (P^T pi)_j``;
  for a symmetric game it equals ``2 * (max_i (P pi)_i - 1/2)``, and it is 0 exactly at a Nash
  equilibrium.
* exploitability    ``max_{pi'} P(pi' > pi) - 1/2`` (half the gap in a symmetric game).
* regularized gap   of the KL-regularized game
  ``f(pi, pi') = P(pi > pi') - tau KL(pi || pi_ref) + tau KL(pi' || pi_ref)`` (INPO, arXiv 2407.00617,
  Eq. 3): ``max_{pi'} f(pi', pi) - min_{pi'} f(pi, pi')``. The best responses are Gibbs policies, so in
  closed form
  ``tau LSE_i(log pi_ref_i + (P pi)_i / tau) + tau LSE_j(log pi_ref_j - (P^T pi)_j / tau) + 2 tau KL(pi||pi_ref)``;
  it is >= 0 and 0 exactly at the regularized equilibrium.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.special import logsumexp

from inpo.games.matrices import check_policy, to_numpy


def _prep(P: Any, *pis: Any) -> tuple[np.ndarray, list[np.ndarray], bool]:
    """numpy [X, A, A] and [X, A] views; ``scalar`` when everything was unbatched."""
    Q = to_numpy(P)
    arrs = [to_numpy(p) for p in pis]
    scalar = Q.ndim == 2 and all(a.ndim == 1 for a in arrs)
    if Q.ndim == 2:
        Q = Q[None]
    arrs = [a[None] if a.ndim == 1 else a for a in arrs]
    if Q.ndim != 3 or any(a.ndim != 2 for a in arrs):
        raise ValueError(f"P must be [A,A] or [X,A,A] and policies [A] or [X,A]; got {Q.shape}, "
                         f"{[a.shape for a in arrs]}")
    return Q, arrs, scalar


def _ret(v: np.ndarray, scalar: bool, *inputs: Any) -> Any:
    if scalar:
        return float(v.reshape(-1)[0])
    for a in inputs:
        if isinstance(a, torch.Tensor):
            return torch.as_tensor(v, dtype=torch.float64, device=a.device)
    return v


def _Ppi(Q: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """(P pi)_i = P(y_i > pi), broadcast over contexts."""
    return np.einsum("...ij,...j->...i", Q, pi)


def _PTpi(Q: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """(P^T pi)_j = P(pi > y_j)."""
    return np.einsum("...ij,...i->...j", Q, pi)


def duality_gap(P: Any, pi: Any) -> Any:
    """``max_{pi'} P(pi' > pi) - min_{pi'} P(pi > pi')`` (0 exactly at a Nash equilibrium). ``pi`` must be a
    policy (finite, >= 0, rows summing to 1 within 1e-6): otherwise :class:`~inpo.errors.InpoError` (e.g. pi = 0
    or 2 x uniform, whose "gap" would read 0)."""
    check_policy(pi, to_numpy(P).shape[-1])
    Q, (p,), scalar = _prep(P, pi)
    return _ret(_Ppi(Q, p).max(-1) - _PTpi(Q, p).min(-1), scalar, P, pi)


def exploitability(P: Any, pi: Any) -> Any:
    """``max_{pi'} P(pi' > pi) - 1/2``: how much a best response beats pi (game value 1/2)."""
    Q, (p,), scalar = _prep(P, pi)
    return _ret(_Ppi(Q, p).max(-1) - 0.5, scalar, P, pi)


def win_rate(P: Any, pi: Any, mu: Any) -> Any:
    """``P(pi > mu) = pi^T P mu``."""
    Q, (p, m), scalar = _prep(P, pi, mu)
    return _ret(np.einsum("...i,...ij,...j->...", p, Q, m), scalar, P, pi, mu)


def _kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return t.sum(-1)


def kl_divergence(pi: Any, mu: Any) -> Any:
    """``KL(pi || mu) = sum_i pi_i log(pi_i / mu_i)`` (``0 log 0 = 0``)."""
    p, m = to_numpy(pi), to_numpy(mu)
    scalar = p.ndim == 1 and m.ndim == 1
    return _ret(np.atleast_1d(_kl(p, m)), scalar, pi, mu)


def regularized_duality_gap(P: Any, pi: Any, pi_ref: Any, tau: float) -> Any:
    """Duality gap of pi in the KL-regularized game (closed form, see the module docstring)."""
    if tau <= 0:
        raise ValueError("tau must be > 0 (use duality_gap for tau = 0)")
    Q, (p, r), scalar = _prep(P, pi, pi_ref)
    with np.errstate(divide="ignore"):
        logr = np.log(r)
    br_row = tau * logsumexp(logr + _Ppi(Q, p) / tau, axis=-1)
    br_col = tau * logsumexp(logr - _PTpi(Q, p) / tau, axis=-1)
    gap = br_row + br_col + 2.0 * tau * _kl(p, r)
    return _ret(gap, scalar, P, pi, pi_ref)
