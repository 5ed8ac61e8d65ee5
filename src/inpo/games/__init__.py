"""Finite preference games: generators, exact solvers, metrics and the dynamics of every algorithm.

Contract (DESIGN.md section 5): ``solve_nash(P) -> (pi, value)`` and ``duality_gap(P, pi)`` for a 2-D
P (float), also batched ``P[x, i, j]`` / ``pi[x, i]`` (array of gaps), numpy or torch float64.
"""

from inpo.games.dynamics import (
    ALGORITHMS,
    DynamicsConfig,
    Trajectory,
    run_exact,
    run_sampled,
)
from inpo.games.matrices import (
    GAMES,
    bt,
    bt_game,
    condorcet,
    cyclic,
    make_game,
    mixture,
    random_skew,
    rps,
    validate_game,
)
from inpo.games.metrics import (
    duality_gap,
    exploitability,
    kl_divergence,
    regularized_duality_gap,
    win_rate,
)
from inpo.games.nash import regularized_residual, solve_nash, solve_regularized

__all__ = [
    "ALGORITHMS", "GAMES", "DynamicsConfig", "Trajectory", "bt", "bt_game", "condorcet", "cyclic",
    "duality_gap", "exploitability", "kl_divergence", "make_game", "mixture", "random_skew",
    "regularized_duality_gap", "regularized_residual", "rps", "run_exact", "run_sampled", "solve_nash",
    "solve_regularized", "validate_game", "win_rate",
]
