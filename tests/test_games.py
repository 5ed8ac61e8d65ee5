"""Games: generators, validation, exact solvers (LP, KL-regularized), metrics, the `game` CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from inpo.errors import InpoError
from inpo.games import (
    GAMES,
    bt_game,
    duality_gap,
    exploitability,
    make_game,
    random_skew,
    regularized_duality_gap,
    regularized_residual,
    rps,
    solve_nash,
    solve_regularized,
    validate_game,
    win_rate,
)
from inpo.games.cli import game as game_command


# ----------------------------------------------------------------------------- generators / validation
@pytest.mark.parametrize("name", GAMES)
def test_generators_are_valid_games(name: str) -> None:
    P = make_game(name, 6, 4, seed=1)
    Q = validate_game(P, name)
    assert Q.shape == ((4, 3, 3) if name == "rps" else (4, 6, 6))
    np.testing.assert_allclose(Q + np.swapaxes(Q, -1, -2), np.ones_like(Q), rtol=0, atol=1e-15)
    Pt = make_game(name, 6, 4, seed=1, backend="torch")
    assert isinstance(Pt, torch.Tensor) and Pt.dtype == torch.float64
    np.testing.assert_array_equal(Pt.numpy(), P)


def test_generator_properties() -> None:
    # BT from scores: hand value sigmoid(1) for scores (1, 0).
    assert bt_game(np.array([1.0, 0.0]))[0, 1] == pytest.approx(1 / (1 + np.exp(-1)), abs=1e-15)
    # Condorcet: some action beats every other one, and its pure strategy has zero gap.
    P = make_game("condorcet", 7, 5, seed=3)
    for q in P:
        w = np.nonzero((q > 0.5).sum(1) == 6)[0]
        assert len(w) == 1
        assert duality_gap(q, np.eye(7)[w[0]]) == pytest.approx(0.0, abs=1e-15)
    # Cyclic and mixture games are intransitive: no action beats all others.
    for name in ("cyclic", "mixture", "rps"):
        P = make_game(name, 5, 5, seed=0)
        assert ((P > 0.5).sum(-1) < P.shape[-1] - 1).all(), name
    # Mixture: every group is BT (transitive), the mixture has a 3-cycle (Condorcet paradox).
    P = make_game("mixture", 3, 1, seed=0)[0]
    beats = P > 0.5
    assert (beats[0, 1] and beats[1, 2] and beats[2, 0]) or (beats[1, 0] and beats[2, 1] and beats[0, 2])


@pytest.mark.parametrize(
    "bad, fragment",
    [
        (np.ones((2, 3)), "expected shape"),
        (np.full((3, 3), np.nan), "NaN"),
        (np.array([[0.5, 0.9], [0.3, 0.5]]), "P + P^T != 1"),
        (np.array([[0.4, 0.5], [0.5, 0.4]]), "diagonal must be 1/2"),
        (np.array([[0.5, 1.5], [-0.5, 0.5]]), "[0, 1]"),
    ],
)
def test_validate_game_errors(bad: np.ndarray, fragment: str) -> None:
    with pytest.raises(InpoError) as e:
        validate_game(bad, "mygame.npy")
    msg = str(e.value)
    assert fragment in msg and "mygame.npy" in msg and "\n" not in msg


# ----------------------------------------------------------------------------- LP
def test_rps_equilibrium_is_uniform() -> None:
    pi, v = solve_nash(rps()[0])
    np.testing.assert_allclose(pi, np.full(3, 1 / 3), atol=1e-9)
    assert v == pytest.approx(0.5, abs=1e-12)
    assert duality_gap(rps()[0], pi) == pytest.approx(0.0, abs=1e-9)


def test_lp_on_200_random_games() -> None:
    rng = np.random.default_rng(0)
    worst = 0.0
    for k in range(200):
        A = int(rng.integers(2, 12))
        P = random_skew(A, 1, seed=k, scale=float(rng.uniform(0.5, 4)))[0]
        pi, v = solve_nash(P)
        assert pi.min() >= 0 and pi.sum() == pytest.approx(1.0, abs=1e-12)
        assert v == pytest.approx(0.5, abs=1e-8)
        worst = max(worst, duality_gap(P, pi))
    assert worst < 1e-8


def test_duality_gap_hand_values_and_batching() -> None:
    P = rps()[0]
    # pure rock: paper (action 2) beats it with prob 1 -> max_i (P pi)_i = 1, gap = 2*1 - 1 = 1
    assert duality_gap(P, np.array([1.0, 0, 0])) == pytest.approx(1.0)
    assert exploitability(P, np.array([1.0, 0, 0])) == pytest.approx(0.5)
    # (1/2, 1/2, 0): P pi = (1/2, 1/4+... ) computed by hand: row 2 = 0.5*1 + 0.5*0 = 0.5+... -> 0.75
    assert duality_gap(P, np.array([0.5, 0.5, 0])) == pytest.approx(2 * 0.75 - 1)
    assert win_rate(P, np.array([1.0, 0, 0]), np.array([0, 1.0, 0])) == pytest.approx(1.0)
    # batched torch, as the LM loop calls it: [N, A, A] and [N, A] -> tensor [N]
    Pb = make_game("random", 4, 6, seed=2, backend="torch")
    pib = torch.softmax(torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), -1)
    g = duality_gap(Pb, pib)
    assert isinstance(g, torch.Tensor) and g.shape == (6,) and g.dtype == torch.float64
    for x in range(6):
        assert g[x].item() == pytest.approx(duality_gap(Pb[x].numpy(), pib[x].numpy()), abs=1e-15)
        Ppi = Pb[x].numpy() @ pib[x].numpy()
        assert g[x].item() == pytest.approx(2 * Ppi.max() - 1, abs=1e-12)  # symmetric-game identity
    pis, vals = solve_nash(Pb)
    assert pis.shape == (6, 4) and torch.allclose(vals, torch.full((6,), 0.5, dtype=torch.float64), atol=1e-8)


# ----------------------------------------------------------------------------- regularized equilibrium
@pytest.mark.parametrize("name", GAMES)
@pytest.mark.parametrize("tau", [1.0, 0.1, 0.01, 0.001])
def test_regularized_solver_residual(name: str, tau: float) -> None:
    P = make_game(name, 6, 8, seed=4)
    ref = np.random.default_rng(1).dirichlet(np.ones(P.shape[-1]), size=8)
    pi = solve_regularized(P, ref, tau)
    assert np.all(regularized_residual(P, pi, ref, tau) < 1e-9)
    # ... and the closed-form regularized duality gap vanishes there (1e-12 covers rounding)
    assert np.all(np.abs(regularized_duality_gap(P, pi, ref, tau)) < 1e-9)


def test_regularized_gap_positive_elsewhere_and_matches_bruteforce() -> None:
    P = make_game("random", 3, 1, seed=5)[0]
    ref, tau = np.array([0.2, 0.3, 0.5]), 0.3
    pi = np.array([0.6, 0.3, 0.1])

    def f(a: np.ndarray, b: np.ndarray) -> float:
        kl = lambda p: float(np.sum(p * np.log(p / ref)))  # noqa: E731
        return float(a @ P @ b) - tau * kl(a) + tau * kl(b)

    grid = [np.array([i, j, 100 - i - j]) / 100 for i in range(1, 99) for j in range(1, 100 - i)]
    brute = max(f(q, pi) for q in grid) - min(f(pi, q) for q in grid)
    gap = regularized_duality_gap(P, pi, ref, tau)
    assert gap > 0.01 and gap == pytest.approx(brute, abs=2e-3)  # grid step 0.01


def test_regularized_solver_agrees_with_lp_as_tau_vanishes() -> None:
    # 5-action cyclic game with a unique, fully mixed... or partly mixed NE; the regularized NE
    # converges to it. Measured distances: tau=1e-2 -> ~1e-1, tau=1e-4 -> ~3e-3 (max abs).
    P = make_game("cyclic", 5, 1, seed=0)[0]
    pi_ne, _ = solve_nash(P)
    ref = np.full(5, 0.2)
    d = [np.abs(solve_regularized(P, ref, tau) - pi_ne).max() for tau in (1e-2, 1e-3, 1e-4)]
    assert d[0] > d[1] > d[2] and d[2] < 5e-3
    assert duality_gap(P, solve_regularized(P, ref, 1e-4)) < 5e-4


def test_regularized_solver_torch_and_single() -> None:
    P = make_game("cyclic", 5, 3, seed=0, backend="torch")
    ref = torch.full((5,), 0.2, dtype=torch.float64)
    pi = solve_regularized(P, ref, 0.05)
    assert isinstance(pi, torch.Tensor) and pi.shape == (3, 5)
    single = solve_regularized(P[1].numpy(), ref.numpy(), 0.05)
    np.testing.assert_allclose(single, pi[1].numpy(), atol=1e-12)


# ----------------------------------------------------------------------------- CLI
def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("game")(game_command)

    @app.command("other")
    def _other() -> None:  # a second command keeps `game` a sub-command, as in `inpo game`
        pass

    return app


def test_cli_json_one_object_per_algorithm(tmp_path) -> None:
    plot = tmp_path / "g.png"
    res = CliRunner().invoke(
        _app(), ["game", "--game", "rps", "--algo", "inpo,dpo,egpo", "--iterations", "20", "--json",
                 "--ref", "random", "--plot", str(plot)],
    )
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    recs = [json.loads(line) for line in lines]
    assert [r["algo"] for r in recs] == ["inpo", "dpo", "egpo"]
    for r in recs:
        assert {"duality_gap", "regularized_gap"} <= r.keys() and r["duality_gap"] >= 0
    assert plot.stat().st_size > 1000 and not list(tmp_path.glob("*.png.tmp*"))


def test_cli_table_and_user_matrix(tmp_path) -> None:
    f = tmp_path / "game.npy"
    np.save(f, rps()[0])
    res = CliRunner().invoke(_app(), ["game", "--matrix", str(f), "--algo", "inpo", "--iterations", "5"])
    assert res.exit_code == 0, res.output
    assert "inpo" in res.stdout and "0.333" in res.stdout  # LP NE of RPS printed


@pytest.mark.parametrize(
    "content, fragment",
    [(None, "file not found"), (np.ones((3, 4)), "expected shape"), (np.full((2, 2), np.nan), "NaN"),
     (np.array([[0.5, 0.9], [0.3, 0.5]]), "P + P^T != 1"), ("text", "not a readable .npy")],
)
def test_cli_bad_matrix_raises_one_line_inpo_error(tmp_path, content, fragment) -> None:
    f = tmp_path / "bad.npy"
    if isinstance(content, str):
        f.write_text(content)
    elif content is not None:
        np.save(f, content)
    res = CliRunner().invoke(_app(), ["game", "--matrix", str(f)])
    assert isinstance(res.exception, InpoError)
    msg = str(res.exception)
    assert fragment in msg and str(f) in msg and "\n" not in msg


def test_cli_unknown_algo_and_game() -> None:
    res = CliRunner().invoke(_app(), ["game", "--algo", "inpo,foo"])
    assert isinstance(res.exception, InpoError) and "foo" in str(res.exception)
    res = CliRunner().invoke(_app(), ["game", "--game", "chess"])
    assert isinstance(res.exception, InpoError) and "chess" in str(res.exception)


def test_cli_exit_code_2_through_inpo_main(tmp_path) -> None:
    from inpo.cli import app

    if "game" not in {c.name or c.callback.__name__ for c in app.registered_commands}:
        pytest.skip("`inpo game` not registered in inpo.cli yet")
    res = subprocess.run([sys.executable, "-m", "inpo", "game", "--matrix", str(tmp_path / "missing.npy")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "missing.npy" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = CliRunner().invoke(app, ["game", "--algo", "inpo,sppo", "--iterations", "10", "--json"])
    assert res.exit_code == 0 and [json.loads(s)["algo"] for s in res.stdout.splitlines()] == ["inpo", "sppo"]


# ----------------------------------------------------------------------------- input validation (issue 10)
def _rps_payoff() -> np.ndarray:
    return np.array([[0.0, 1.0, -1.0], [-1.0, 0.0, 1.0], [1.0, -1.0, 0.0]])


@pytest.mark.parametrize(
    "bad, fragment",
    [
        (np.array([[0.5, 0.9], [0.3, 0.5]]), "P + P^T != 1"),  # not antisymmetric: silently solved before
        (np.array([[0.5, 0.9, 0.1], [0.1, 0.5, 0.2]]), "expected shape"),  # not square
        (np.array([[0.5, np.nan], [np.nan, 0.5]]), "NaN"),
        (np.array([[0.5, 1.2], [-0.2, 0.5]]), "[0, 1]"),
        (_rps_payoff(), "payoff matrix"),  # +-1 payoff: "infeasible" before
        (rps()[0] - 0.5, "payoff matrix"),  # P - 1/2
    ],
)
def test_solve_nash_rejects_invalid_games(bad: np.ndarray, fragment: str) -> None:
    with pytest.raises(InpoError) as e:
        solve_nash(bad)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_payoff_form_hint_recovers_the_game() -> None:
    pi, _ = solve_nash((_rps_payoff() + 1) / 2)
    np.testing.assert_allclose(pi, np.full(3, 1 / 3), atol=1e-9)


@pytest.mark.parametrize("eps", [1e-3, 3e-8, 1e-9])
def test_solve_nash_is_scale_free_near_one_half(eps: float) -> None:
    """All preferences within eps of 1/2: the equilibrium is that of P - 1/2 whatever its scale (HiGHS' absolute
    tolerances returned the losing action at ~3e-8). The gap is measured relative to the game's own margins."""
    base = make_game("cyclic", 5, 1, seed=0)[0]
    pi_base, _ = solve_nash(base)
    P = 0.5 + (base - 0.5) * eps
    pi, value = solve_nash(P)
    assert duality_gap(P, pi) / eps < 1e-6
    np.testing.assert_allclose(pi, pi_base, atol=1e-6)
    assert value == pytest.approx(0.5, abs=1e-6 * eps)


def test_solve_nash_all_ties_returns_uniform() -> None:
    pi, value = solve_nash(np.full((4, 4), 0.5))
    np.testing.assert_allclose(pi, np.full(4, 0.25))
    assert value == 0.5


@pytest.mark.parametrize(
    "pi, fragment",
    [(np.zeros(3), "sum to 1"), (np.full(3, 2 / 3), "sum to 1"), (np.array([1.2, -0.2, 0.0]), ">= 0"),
     (np.array([np.nan, 0.5, 0.5]), "NaN"), (np.full(4, 0.25), "expected shape")],
)
def test_duality_gap_rejects_non_policies(pi: np.ndarray, fragment: str) -> None:
    with pytest.raises(InpoError) as e:
        duality_gap(rps()[0], pi)
    assert fragment in str(e.value)


@pytest.mark.parametrize(
    "ref, tau, P, fragment",
    [
        (np.array([np.nan, 0.5, 0.5]), 0.1, None, "NaN"),
        (np.zeros(3), 0.1, None, "all zeros"),
        (np.array([0.5, -0.1, 0.6]), 0.1, None, ">= 0"),
        (np.full(3, 1 / 3), 0.0, None, "tau must be"),
        (np.full(3, 1 / 3), float("nan"), None, "tau must be"),
        (np.full(3, 1 / 3), 0.1, np.full((3, 3), np.nan), "NaN"),
        (np.full(4, 1 / 4), 0.1, None, "expected shape"),
    ],
)
def test_solve_regularized_rejects_invalid_input(ref, tau, P, fragment) -> None:
    with pytest.raises(InpoError) as e:
        solve_regularized(rps()[0] if P is None else P, ref, tau)
    assert fragment in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["cyclic", "random", "rps"])
def test_regularized_solver_converges_at_tau_1e_4(name: str) -> None:
    """tau = 1e-4: T is ~1e4-Lipschitz, so returning T(pi) of a 1e-13 Newton iterate read 5e-10; the solver now keeps
    the renormalized iterate. Measured worst residual over the generators (A <= 8, uniform/random ref): 1.05e-12."""
    P = make_game(name, 5, 4, seed=0)
    for ref in (np.full((4, P.shape[-1]), 1 / P.shape[-1]),
                np.random.default_rng(1).dirichlet(2 * np.ones(P.shape[-1]), size=4)):
        pi = solve_regularized(P, ref, 1e-4)
        assert np.max(regularized_residual(P, pi, ref, 1e-4)) < 2e-12


def test_theorem4_schedule_on_a_game() -> None:
    """INPO with eta_t = tau (t+2)/2 (Theorem 4) drives the regularized gap to 0 too, and eta_at is that formula."""
    from inpo.games import DynamicsConfig, run_exact

    cfg = DynamicsConfig(tau=0.05, eta_schedule="theorem4")
    assert cfg.eta_at(1) == pytest.approx(0.075) and cfg.eta_at(10) == pytest.approx(0.3)
    P = make_game("cyclic", 5, 4, seed=0)
    tr = run_exact(P, "inpo", 400, cfg)
    assert tr.reg_gap_max[-1] < 1e-3 and tr.reg_gap_max[-1] < tr.reg_gap_max[10] / 10
    with pytest.raises(ValueError, match="eta_schedule"):
        DynamicsConfig(eta_schedule="cosine")
    with pytest.raises(ValueError, match="tau <= eta"):
        DynamicsConfig(eta=0.01, tau=0.05)
