"""Finite preference games: generators and validation.

A *game* is a preference tensor ``P[x, i, j] = P(y_i > y_j | x)`` over ``A`` candidate responses
(actions) for each of ``X`` contexts (prompts), with ``P + P^T = 1`` and ``P[x, i, i] = 1/2``
(DESIGN.md section 3). Every function here also accepts a single 2-D matrix ``P[i, j]``.

The generators are seeded and return float64 arrays of shape ``[X, A, A]`` (numpy by default,
``backend="torch"`` for a torch tensor). ``P - 1/2`` is skew-symmetric, so each game is a symmetric
constant-sum game with value 1/2.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from inpo.errors import InpoError

Array = np.ndarray
GAMES: tuple[str, ...] = ("cyclic", "rps", "bt", "random", "mixture", "condorcet")


def to_numpy(a: Any) -> np.ndarray:
    """float64 numpy view of a numpy array, torch tensor or nested list (detached, on CPU)."""
    if isinstance(a, torch.Tensor):
        return a.detach().to("cpu", torch.float64).numpy()
    return np.asarray(a, dtype=np.float64)


def _out(P: np.ndarray, backend: str) -> Any:
    if backend == "numpy":
        return P
    if backend == "torch":
        return torch.from_numpy(P)
    raise ValueError(f"backend must be 'numpy' or 'torch', got {backend!r}")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # exact antisymmetry: s(z) + s(-z) == 1 up to rounding


def _symmetrize(P: np.ndarray) -> np.ndarray:
    """Enforce P + P^T = 1 and diag = 1/2 exactly (removes rounding from the generators)."""
    P = 0.5 * (P + 1.0 - np.swapaxes(P, -1, -2))
    idx = np.arange(P.shape[-1])
    P[..., idx, idx] = 0.5
    return P


def bt_game(scores: Any, *, backend: str = "numpy") -> Any:
    """Bradley-Terry (transitive) game from scores ``r[..., i]``: ``P[i, j] = sigmoid(r_i - r_j)``."""
    r = to_numpy(scores)
    P = _sigmoid(r[..., :, None] - r[..., None, :])
    return _out(_symmetrize(P), backend)


def bt(actions: int = 5, contexts: int = 1, *, seed: int = 0, scale: float = 2.0, backend: str = "numpy") -> Any:
    """Random transitive BT game: scores ~ N(0, scale^2) per context; the NE is the pure top action."""
    rng = np.random.default_rng(seed)
    return bt_game(scale * rng.standard_normal((contexts, actions)), backend=backend)


def rps(contexts: int = 1, *, margin: float = 0.5, backend: str = "numpy") -> Any:
    """Rock-paper-scissors: ``P = 1/2 + margin * C`` with C the 3-cycle (0 beats 1 beats 2 beats 0).

    The unique NE is uniform for every margin in (0, 1/2].
    """
    C = np.array([[0.0, 1.0, -1.0], [-1.0, 0.0, 1.0], [1.0, -1.0, 0.0]])
    P = 0.5 + margin * C
    return _out(np.repeat(P[None], contexts, axis=0), backend)


def cyclic(
    actions: int = 5, contexts: int = 1, *, seed: int = 0, low: float = 0.1, high: float = 0.45,
    backend: str = "numpy",
) -> Any:
    """Generalized cyclic game (balanced tournament) with unequal margins.

    Action i beats action ``i + k (mod A)`` for ``k = 1..floor((A-1)/2)`` with probability
    ``1/2 + m`` and margins ``m ~ U[low, high]`` drawn per edge and context (for even A the opposite
    pairs ``k = A/2`` are ties). With equal margins and odd A the NE is uniform; unequal margins make
    it non-uniform, so neither the uniform start nor any pure policy is an equilibrium.
    """
    if actions < 3:
        raise ValueError("a cyclic game needs at least 3 actions")
    rng = np.random.default_rng(seed)
    S = np.zeros((contexts, actions, actions))
    for i in range(actions):
        for k in range(1, (actions - 1) // 2 + 1):
            j = (i + k) % actions
            m = rng.uniform(low, high, size=contexts)
            S[:, i, j] = m
            S[:, j, i] = -m
    return _out(_symmetrize(0.5 + S), backend)


def random_skew(
    actions: int = 5, contexts: int = 1, *, seed: int = 0, scale: float = 2.0, backend: str = "numpy"
) -> Any:
    """Random game ``P = sigmoid(scale * (G - G^T) / sqrt(2))`` with G standard normal: generic,
    intransitive, a unique (usually mixed) NE."""
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((contexts, actions, actions))
    return _out(_symmetrize(_sigmoid(scale * (G - np.swapaxes(G, -1, -2)) / np.sqrt(2.0))), backend)


def mixture(
    actions: int = 5, contexts: int = 1, *, groups: int = 3, seed: int = 0, scale: float = 4.0,
    noise: float = 0.5, backend: str = "numpy",
) -> Any:
    """Mixture of annotator groups: ``P = sum_g w_g sigmoid(r_{g,i} - r_{g,j})``.

    Each group is a transitive BT model whose scores follow a rotated ranking (group g ranks action
    ``(i + g*A//groups) mod A`` highest-first, scores ``scale * linspace(1, 0, A)``) plus N(0, noise^2)
    jitter, with group weights from a Dirichlet(5) draw: the Condorcet voting paradox, so the mixture
    is intransitive although every group is transitive. A context whose mixture still has a Condorcet
    winner (an action beating all others) is redrawn, so every returned context is intransitive.
    """
    if actions < 3:
        raise ValueError("an intransitive mixture needs at least 3 actions")
    rng = np.random.default_rng(seed)
    base = np.linspace(1.0, 0.0, actions)

    def draw(n: int) -> np.ndarray:
        P = np.zeros((n, actions, actions))
        w = rng.dirichlet(5.0 * np.ones(groups), size=n)  # [n, G]
        for g in range(groups):
            r = scale * np.roll(base, g * actions // groups)[None, :] + noise * rng.standard_normal((n, actions))
            P += w[:, g, None, None] * _sigmoid(r[..., :, None] - r[..., None, :])
        return _symmetrize(P)

    P = draw(contexts)
    for _ in range(1000):
        redo = np.nonzero(((P > 0.5).sum(-1) == actions - 1).any(-1))[0]
        if len(redo) == 0:
            break
        P[redo] = draw(len(redo))
    else:
        raise RuntimeError("could not draw an intransitive mixture; increase groups or scale")
    return _out(P, backend)


def condorcet(
    actions: int = 5, contexts: int = 1, *, seed: int = 0, scale: float = 2.0, backend: str = "numpy"
) -> Any:
    """Random intransitive game with a Condorcet winner: a random action beats every other one
    (``P[w, j] = 1/2 + U[0.05, 0.45]``); the rest is :func:`random_skew`. The NE is the pure winner."""
    rng = np.random.default_rng(seed)
    P = random_skew(actions, contexts, seed=seed + 1, scale=scale)
    win = rng.integers(0, actions, size=contexts)
    for x in range(contexts):
        m = rng.uniform(0.05, 0.45, size=actions)
        P[x, win[x], :] = 0.5 + m
        P[x, :, win[x]] = 0.5 - m
    return _out(_symmetrize(P), backend)


_GENERATORS: dict[str, Callable[..., Any]] = {
    "cyclic": cyclic, "bt": bt, "random": random_skew, "mixture": mixture, "condorcet": condorcet,
}


def make_game(name: str, actions: int = 5, contexts: int = 1, *, seed: int = 0, backend: str = "numpy") -> Any:
    """Build a game by name (one of :data:`GAMES`); ``rps`` ignores ``actions`` (always 3)."""
    if name == "rps":
        return rps(contexts, backend=backend)
    if name not in _GENERATORS:
        raise InpoError(f"unknown game {name!r}; choose one of {', '.join(GAMES)}")
    return _GENERATORS[name](actions, contexts, seed=seed, backend=backend)


def validate_game(P: Any, name: str = "P", *, atol: float = 1e-6) -> np.ndarray:
    """Check a preference matrix/tensor and return it as float64 numpy ``[X, A, A]``.

    Raises :class:`InpoError` with a one-line message naming ``name`` if P is not 2-D/3-D square,
    has NaN/inf, entries outside [0, 1], ``P + P^T != 1`` or a diagonal different from 1/2
    (tolerance ``atol``).
    """
    try:
        Q = to_numpy(P)
    except (TypeError, ValueError) as e:
        raise InpoError(f"{name}: not a numeric array ({e})") from None
    if Q.ndim == 2:
        Q = Q[None]
    if Q.ndim != 3 or Q.shape[-1] != Q.shape[-2] or Q.shape[-1] < 2 or Q.shape[0] < 1:
        raise InpoError(f"{name}: expected shape [A, A] or [X, A, A] with A >= 2, got {list(to_numpy(P).shape)}")
    if not np.all(np.isfinite(Q)):
        raise InpoError(f"{name}: contains NaN or inf")
    if Q.min() < -atol or Q.max() > 1 + atol:
        raise InpoError(f"{name}: entries must lie in [0, 1], found range [{Q.min():.4g}, {Q.max():.4g}]")
    diag = np.diagonal(Q, axis1=-2, axis2=-1)
    d = np.abs(diag - 0.5)
    if d.max() > atol:
        x, i = np.unravel_index(int(d.argmax()), d.shape)
        raise InpoError(f"{name}: diagonal must be 1/2, found P[{i},{i}] = {diag[x, i]:.6g} in context {x}")
    err = np.abs(Q + np.swapaxes(Q, -1, -2) - 1.0)
    if err.max() > atol:
        x, i, j = np.unravel_index(int(err.argmax()), err.shape)
        raise InpoError(
            f"{name}: P + P^T != 1 (context {x}, entry [{i}, {j}]: "
            f"P[i,j] + P[j,i] = {Q[x, i, j] + Q[x, j, i]:.6g})"
        )
    return Q


def check_game(P: Any, name: str = "P") -> np.ndarray:
    """A preference game as float64 ``[X, A, A]``, or an :class:`InpoError` naming what is wrong: not square,
    NaN/inf, outside [0, 1], ``P + P^T != 1`` (not a preference matrix), or a payoff-form matrix
    (``P = -P^T``, e.g. ``P - 1/2`` or a +-1 rock-paper-scissors payoff)."""
    try:
        Q = to_numpy(P)
    except (TypeError, ValueError) as e:
        raise InpoError(f"{name}: not a numeric array ({e})") from None
    R = Q[None] if Q.ndim == 2 else Q
    if (R.ndim == 3 and R.shape[-1] == R.shape[-2] and R.size and np.all(np.isfinite(R))
            and np.abs(R).max() > 0 and np.abs(R + np.swapaxes(R, -1, -2)).max() <= 1e-9 * np.abs(R).max()):
        raise InpoError(f"{name}: looks like a payoff matrix (P = -P^T); a preference matrix has P + P^T = 1 and "
                        "P[i, i] = 1/2: pass P + 1/2 for P - 1/2, or (P + 1)/2 for a +-1 payoff")
    return validate_game(Q, name)


def check_policy(pi: Any, A: int, name: str = "pi", *, atol: float = 1e-6) -> np.ndarray:
    """A policy ``[A]`` or ``[X, A]`` on the simplex (finite, >= 0, rows summing to 1 within ``atol``) as float64,
    or an :class:`InpoError` naming ``name`` and what is wrong."""
    p = to_numpy(pi)
    if p.ndim not in (1, 2) or p.shape[-1] != A:
        raise InpoError(f"{name}: expected shape [{A}] or [X, {A}] for a game with {A} actions, got {list(p.shape)}")
    if not np.all(np.isfinite(p)):
        raise InpoError(f"{name}: contains NaN or inf")
    if p.min() < -atol:
        raise InpoError(f"{name}: probabilities must be >= 0, found {p.min():.4g}")
    sums = p.sum(-1)
    bad = np.abs(sums - 1.0) > atol
    if np.any(bad):
        v = float(np.atleast_1d(sums)[np.atleast_1d(bad)][0])
        raise InpoError(f"{name}: a policy must sum to 1, found a row summing to {v:.6g}")
    return p
