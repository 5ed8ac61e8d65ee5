"""Dynamics on preference games: exact updates (closed forms, consistency with inpo.losses), convergence
of INPO to the regularized equilibrium, non-convergence of iterative DPO on cyclic games, MNPO(n=1) ==
INPO, and the sampled INPO (pairs + Bernoulli labels + inpo_loss + SGD) reaching the equilibrium."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import log_softmax

from inpo import losses
from inpo.games import GAMES, DynamicsConfig, make_game, run_exact, run_sampled, solve_regularized
from inpo.games.dynamics import (
    ALGORITHMS,
    dpo_update,
    egpo_update,
    inpo_update,
    ipo_update,
    mnpo_update,
    nash_md_update,
)


def test_inpo_update_by_hand() -> None:
    # 2 actions, P = [[.5, .8], [.2, .5]], pi_t = (.5, .5), pi_ref = (.25, .75), eta = 1, tau = .5:
    # log pi' = .5 log(.5) + .5 log(ref) + (P pi_t) = .5 log(.5,.5) + .5 log(.25,.75) + (.65, .35)
    P = np.array([[[0.5, 0.8], [0.2, 0.5]]])
    lp, lr = np.log([[0.5, 0.5]]), np.log([[0.25, 0.75]])
    z = 0.5 * np.log([0.5, 0.5]) + 0.5 * np.log([0.25, 0.75]) + np.array([0.65, 0.35])
    np.testing.assert_allclose(inpo_update(P, lp, lr, eta=1.0, tau=0.5)[0], z - np.log(np.exp(z).sum()), atol=1e-15)


# ----------------------------------------------------------------------------- exact update == loss minimizer
def _expected_loss_minimizer(P: np.ndarray, pair_pi: np.ndarray, loss_fn, init: np.ndarray) -> np.ndarray:
    """argmin over logits of E_{y,y' ~ pair_pi} E_{label ~ P} loss(chosen, rejected): every ordered pair
    (i chosen, j rejected) weighted by pair_pi_i pair_pi_j P_ij. Solved by L-BFGS to ~1e-12."""
    X, A = pair_pi.shape
    ci, ri = np.meshgrid(np.arange(A), np.arange(A), indexing="ij")
    c = torch.as_tensor(np.broadcast_to(ci.reshape(-1), (X, A * A)).copy())
    r = torch.as_tensor(np.broadcast_to(ri.reshape(-1), (X, A * A)).copy())
    w = torch.as_tensor((pair_pi[:, :, None] * pair_pi[:, None, :] * P).reshape(X, -1))
    theta = torch.tensor(init, requires_grad=True)
    opt = torch.optim.LBFGS([theta], lr=1, max_iter=300, tolerance_grad=1e-14, tolerance_change=1e-16,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        lp = torch.log_softmax(theta, -1)
        loss = (loss_fn(lp, c, r) * w).sum()
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    return torch.log_softmax(theta, -1).detach().numpy()


def _g(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return torch.gather(t, 1, idx)


@pytest.mark.parametrize("algo", ["inpo", "ipo", "mnpo", "egpo-half", "nash-md", "dpo"])
def test_exact_update_is_population_minimizer_of_the_loss(algo: str) -> None:
    """The closed-form exact update equals the minimizer of the inpo.losses loss in expectation over
    pairs and labels: the sampled dynamics estimate exactly the exact dynamics."""
    X, A, eta, tau, beta = 3, 4, 1.25, 0.3, 0.5  # INPO eta (1/eta = 0.8 the step), tau/eta = 0.24
    P = make_game("random", A, X, seed=7)
    rng = np.random.default_rng(0)
    ref = rng.dirichlet(np.ones(A), size=X)
    lref = np.log(ref)
    lp = log_softmax(rng.standard_normal((X, A)), -1)
    lp_old = log_softmax(rng.standard_normal((X, A)), -1)
    R, PV, PO = (torch.as_tensor(a) for a in (lref, lp, lp_old))
    pair_pi = np.exp(lp)
    if algo in ("inpo", "egpo-half"):
        target = inpo_update(P, lp, lref, eta=eta, tau=tau)
        fn = losses.inpo_loss if algo == "inpo" else losses.egpo_loss

        def loss(L, c, r):
            return fn(_g(L, c), _g(L, r), _g(R, c), _g(R, r), _g(PV, c), _g(PV, r), eta=eta, tau=tau)
    elif algo == "ipo":
        target = ipo_update(P, lp, lref, beta=beta)

        def loss(L, c, r):
            return losses.ipo_loss(_g(L, c), _g(L, r), _g(R, c), _g(R, r), beta=beta)
    elif algo == "mnpo":
        wts = [0.6, 0.4]
        target = mnpo_update(P, [lp, lp_old], lref, eta=eta, tau=tau, weights=wts)

        def loss(L, c, r):
            hc = torch.stack([_g(PV, c), _g(PO, c)], -1)
            hr = torch.stack([_g(PV, r), _g(PO, r)], -1)
            return losses.mnpo_loss(_g(L, c), _g(L, r), _g(R, c), _g(R, r), hc, hr, eta=eta, tau=tau, weights=wts)
    elif algo == "nash-md":
        target = nash_md_update(P, lp, lref, eta=eta, tau=tau)
        pair_pi = np.exp(log_softmax((1 - tau / eta) * lp + tau / eta * lref, -1))  # pairs from the mixture

        def loss(L, c, r):
            return losses.inpo_loss(_g(L, c), _g(L, r), _g(R, c), _g(R, r), _g(PV, c), _g(PV, r), eta=eta, tau=tau)
    else:
        target = dpo_update(P, lp, lref, beta=beta)

        def loss(L, c, r):
            return losses.dpo_loss(_g(L, c), _g(L, r), _g(R, c), _g(R, r), beta=beta)
    got = _expected_loss_minimizer(P, pair_pi, loss, lp.copy())
    np.testing.assert_allclose(got, target, atol=1e-6)


def test_egpo_full_step_by_hand() -> None:
    P = make_game("cyclic", 5, 2, seed=1)
    lr = np.log(np.full((2, 5), 0.2))
    lp = log_softmax(np.random.default_rng(1).standard_normal((2, 5)), -1)
    # INPO's eta = 1/0.7 (step 0.7), tau = 0.2: anchor weight tau/eta = 0.14
    half = inpo_update(P, lp, lr, eta=1 / 0.7, tau=0.2)
    full = log_softmax(0.86 * lp + 0.14 * lr + 0.7 * np.einsum("xij,xj->xi", P, np.exp(half)), -1)
    np.testing.assert_allclose(egpo_update(P, lp, lr, eta=1 / 0.7, tau=0.2), full, atol=1e-13)


# ----------------------------------------------------------------------------- convergence
@pytest.mark.parametrize("name", GAMES)
def test_exact_inpo_reaches_regularized_equilibrium(name: str) -> None:
    P = make_game(name, 5, 4, seed=2)
    A = P.shape[-1]
    ref = np.random.default_rng(3).dirichlet(2 * np.ones(A), size=4)
    cfg = DynamicsConfig(eta=2.0, tau=0.05)  # eta=1 needs ~2000 iterations on rps (largest margins)
    tr = run_exact(P, "inpo", 1000, cfg, pi_ref=ref)
    assert tr.reg_gap_max[-1] < 1e-6
    # the limit is the Newton solver's equilibrium (two independent methods; rps converges slowest)
    np.testing.assert_allclose(tr.pi, solve_regularized(P, ref, 0.05), atol=1e-5)


@pytest.mark.parametrize("algo", ["egpo", "mnpo", "nash-md"])
def test_other_nash_algorithms_reach_regularized_equilibrium(algo: str) -> None:
    P = make_game("cyclic", 5, 4, seed=0)
    tr = run_exact(P, algo, 400, DynamicsConfig(eta=1.0, tau=0.05))
    # Nash-MD with a constant step has a biased fixed point pi ∝ pi_ref exp(P mix(pi)/tau): measured
    # regularized gap plateau 1.4e-4 here (it shrinks with the step 1/eta, see docs/games.md).
    assert tr.reg_gap_max[-1] < (1e-3 if algo == "nash-md" else 1e-6)


def test_small_tau_gives_small_plain_gap() -> None:
    # With tau -> 0 INPO's limit approaches the Nash equilibrium of the unregularized game.
    # Measured: the tau=0.01 regularized NE has plain gap 0.0032; INPO (eta=1/0.3) is slow at small tau
    # (regularized gap 1.4e-5 after 3000 iterations), plain gap 0.0032 from 0.198 at the start.
    P = make_game("cyclic", 5, 1, seed=0)
    tr = run_exact(P, "inpo", 3000, DynamicsConfig(eta=1 / 0.3, tau=0.01), record_every=3000)
    assert tr.gap_max[0] > 0.19 and tr.reg_gap_max[-1] < 1e-4 and tr.gap_max[-1] < 0.005


def test_iterative_dpo_and_sppo_stay_far_from_equilibrium_on_cyclic_games() -> None:
    P = make_game("cyclic", 5, 4, seed=0)
    cfg = DynamicsConfig(eta=1.0, tau=0.05)
    dpo = run_exact(P, "dpo", 200, cfg)
    inpo = run_exact(P, "inpo", 200, cfg)
    # DPO fits a transitive BT reward to the pairs of pi_t and jumps between near-pure policies
    assert min(dpo.gap_mean[100:]) > 0.3 and inpo.gap_mean[-1] < 0.05
    sppo = run_exact(P, "sppo", 200, cfg)  # multiplicative weights: the last iterate spirals outwards
    assert min(sppo.gap_mean[100:]) > 0.1
    # ... while on a transitive (BT) game both find the top action
    Pbt = make_game("bt", 5, 4, seed=0)
    assert run_exact(Pbt, "dpo", 200, cfg).gap_max[-1] < 1e-3
    assert run_exact(Pbt, "sppo", 200, cfg).gap_max[-1] < 1e-3


def test_mnpo_with_one_opponent_is_inpo_exactly() -> None:
    P = make_game("mixture", 6, 3, seed=1)
    cfg1 = DynamicsConfig(eta=1 / 0.9, tau=0.1, mnpo_weights=(1.0,))
    a, b = run_exact(P, "mnpo", 50, cfg1), run_exact(P, "inpo", 50, cfg1)
    np.testing.assert_array_equal(a.pi, b.pi)
    assert a.gap_mean == b.gap_mean
    cfg1s = DynamicsConfig(eta=1 / 0.9, tau=0.1, mnpo_weights=(1.0,), pairs=64, steps=5)
    a, b = run_sampled(P, "mnpo", 5, cfg1s, seed=3), run_sampled(P, "inpo", 5, cfg1s, seed=3)
    np.testing.assert_array_equal(a.pi, b.pi)
    # with 3 opponents it is a different algorithm
    c = run_exact(P, "mnpo", 50, DynamicsConfig(eta=1 / 0.9, tau=0.1))
    assert np.abs(c.pi - run_exact(P, "inpo", 50, cfg1).pi).max() > 1e-4


# ----------------------------------------------------------------------------- sampled
@pytest.mark.parametrize("algo", ALGORITHMS)
def test_sampled_versions_run_deterministically(algo: str) -> None:
    P = make_game("cyclic", 5, 2, seed=0)
    cfg = DynamicsConfig(pairs=32, k=4, groups=8, steps=3)
    a, b = run_sampled(P, algo, 3, cfg, seed=1), run_sampled(P, algo, 3, cfg, seed=1)
    np.testing.assert_array_equal(a.pi, b.pi)
    assert a.samples > 0 and a.comparisons > 0 and len(a.gap_mean) == 4
    assert np.isfinite(a.pi).all() and np.abs(a.pi.sum(-1) - 1).max() < 1e-12
    assert np.abs(a.pi - 0.2).max() > 1e-3  # the policy moved


def test_sampled_inpo_reaches_the_equilibrium_of_a_cyclic_game() -> None:
    """Sampled INPO (pairs from pi_t, Bernoulli labels from P, inpo_loss, 5 SGD steps per iteration).

    Game: 3 contexts of the 5-action cyclic game (unequal margins), initial gap 0.135 (max over
    contexts); tau = 0.03 whose regularized NE has plain gap <= 0.011. Measured (seed 0): mean gap over
    the last 50 of 300 iterations 0.014, with 16384 pairs per context and iteration, i.e.
    9.8M responses and 4.9M labels per context in total; about 5 s.
    """
    P = make_game("cyclic", 5, 8, seed=0)[[1, 2, 3]]
    cfg = DynamicsConfig(eta=1 / 0.7, tau=0.03, pairs=16384, steps=5, lr=1.0)
    tr = run_sampled(P, "inpo", 300, cfg, seed=0)
    assert tr.gap_max[0] > 0.13
    assert max(tr.gap_mean[-50:]) < 0.02
    assert tr.samples == 300 * 3 * 2 * 16384 and tr.comparisons == 300 * 3 * 16384


def test_sampled_dpo_stays_far_from_equilibrium() -> None:
    P = make_game("cyclic", 5, 4, seed=0)
    tr = run_sampled(P, "dpo", 60, DynamicsConfig(steps=10), seed=0)
    assert min(tr.gap_mean[30:]) > 0.3  # measured 0.40 (sampled INPO on the same game: < 0.07)
