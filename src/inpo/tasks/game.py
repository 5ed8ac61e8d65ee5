"""The finite preference game behind the built-in task (pure numpy functions).

A game is a matrix ``P[i, j] = P(y_i > y_j)`` with ``P + P^T = 1`` and ``P[i, i] = 1/2``
(DESIGN.md section 3, "Games"). The built-in task uses, per topic, a game over M styles plus one
extra action "none" (the response does not start with a style word):

* style block ``S = 1/2 + A`` with ``A`` skew-symmetric and ``A @ pi_star = 0`` for a chosen interior,
  non-uniform ``pi_star``. Then ``S^T pi_star = 1/2`` in every coordinate, i.e. every style wins against
  ``pi_star`` with probability exactly 1/2, so ``pi_star`` is a Nash equilibrium of the symmetric
  constant-sum game (Zhang et al. 2024, INPO, Sec. 2: ``pi*`` with ``P(pi > pi*) <= 1/2`` for all ``pi``).
  For M = 3 the only skew matrices with null vector ``pi_star`` are ``s [pi_star]_x`` (cross-product
  matrix): a rock-paper-scissors cycle whose margins are proportional to the equilibrium masses, so
  the equilibrium is unique. For odd M > 3 uniqueness holds generically (a skew matrix of odd size
  has rank M - 1), and the tests check it with an LP.
* "none" loses to every style (``P = 0``) and ties itself (``P = 1/2``); it is strictly dominated, so
  every equilibrium puts zero mass on it.

Exactness: the upper triangle is computed and the lower triangle is ``1 - upper^T``; in IEEE float64
``x + fl(1 - x) == 1`` for ``x`` in [0, 1], so ``P + P^T == 1`` holds bit-exactly.
"""

from __future__ import annotations

import numpy as np


def geometric_profile(m: int, ratio: float) -> np.ndarray:
    """Normalized ``w_i = ratio**i`` for ``i = 0..m-1`` (e.g. m=3, ratio=2: (1, 2, 4) / 7)."""
    w = ratio ** np.arange(m, dtype=np.float64)
    return w / w.sum()


def skewed_profile(m: int, top: float) -> np.ndarray:
    """Mass ``top`` on index 0, the rest ``1 - top`` split geometrically by halves over indices 1..m-1.

    m=3, top=0.7 gives (0.7, 0.2, 0.1).
    """
    if m == 1:
        return np.ones(1)
    rest = 0.5 ** np.arange(m - 1, dtype=np.float64)
    return np.concatenate([[top], (1.0 - top) * rest / rest.sum()])


def cyclic_skew(m: int) -> np.ndarray:
    """The cycle "i+1 beats i" (indices mod m) as a skew matrix: ``C[i, i+1] = -1, C[i+1, i] = +1``."""
    c = np.zeros((m, m))
    for i in range(m):
        c[(i + 1) % m, i] += 1.0
        c[i, (i + 1) % m] -= 1.0
    return c


def style_game(pi_star: np.ndarray, max_margin: float) -> np.ndarray:
    """M x M style game ``S = 1/2 + A`` whose equilibrium is ``pi_star``.

    ``A = Q C Q`` with ``C = cyclic_skew(M)`` and ``Q = I - pi_star pi_star^T / |pi_star|^2`` (the
    projection orthogonal to ``pi_star``), so ``A`` is skew-symmetric and ``A pi_star = Q C Q pi_star = 0``.
    ``A`` is then scaled so that ``max |A_ij| = max_margin`` (the largest win probability is
    ``1/2 + max_margin``). For M = 3, ``Q [u]_x Q = [(u.n) n]_x`` with ``n = pi_star / |pi_star|``, so
    the orientation of the cycle is kept (u = (1, 1, 1) has ``u.n > 0``).
    """
    pi_star = np.asarray(pi_star, dtype=np.float64)
    m = pi_star.shape[0]
    q = np.eye(m) - np.outer(pi_star, pi_star) / float(pi_star @ pi_star)
    a = q @ cyclic_skew(m) @ q
    a = (a - a.T) / 2.0  # exactly skew in floating point
    scale = np.abs(a).max()
    if scale == 0.0:
        raise ValueError("degenerate style game (all ties)")
    a = a * (max_margin / scale)
    return exact_game(0.5 + a)


def exact_game(p: np.ndarray) -> np.ndarray:
    """Keep the strict upper triangle of ``p``, set the diagonal to 1/2 and the lower to ``1 - upper^T``."""
    p = np.asarray(p, dtype=np.float64)
    upper = np.triu(p, k=1)
    out = upper + np.tril(1.0 - upper.T, k=-1)
    np.fill_diagonal(out, 0.5)
    return out


def with_none(style_block: np.ndarray) -> np.ndarray:
    """(M+1) x (M+1) game: the style block plus a last action "none" that loses to every style."""
    m = style_block.shape[0]
    p = np.zeros((m + 1, m + 1))
    p[:m, :m] = style_block
    p[:m, m] = 1.0  # any style beats "none"
    p[m, :m] = 0.0
    p[m, m] = 0.5
    return p
