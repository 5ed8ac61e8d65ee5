"""Tests of inpo.losses against independent ground truth.

Four kinds of checks, all in float64:

1. values: every loss against a plain-python loop on random inputs, plus numbers derived by hand
   (the derivation is in the comment next to each number);
2. gradients: torch.autograd.gradcheck for every differentiable loss (Nash-MD-PG is a stop-gradient
   surrogate, so its gradient is checked against the hand-derived REINFORCE gradient instead);
3. identities: MNPO(n=1) == INPO bit for bit, per-token IPO == summed IPO on length-normalized inputs,
   INPO(tau = eta) == IPO(beta = eta), grad INPO at pi_t == (tau/eta) * grad IPO(beta = tau);
4. population minimizers on a tabular game: the *expected* loss over pairs (y, y') ~ mu x mu with
   labels from P (enumerated exactly: every ordered pair and both label outcomes, weight
   mu(y) mu(y') P(y > y')), computed by calling the real loss, is minimized over a softmax table by
   L-BFGS and compared with the closed-form update computed independently in numpy; the gradient of
   the expected loss at the closed form is zero. Also at each paper's own experiment values (INPO eta =
   0.005, tau = eta/3; SPPO eta = 1/beta = 1000 with K = 5 samples; MNPO eta = 0.0075, ratio = 1/3, two
   history iterates with equal weights), compared in log-space.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from scipy.special import lambertw

from inpo import losses as L

DT = torch.float64
K = 5  # responses in the tabular game


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------


def _t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=DT)


def _logps(rng: np.random.Generator, n: int) -> np.ndarray:
    """Plausible summed sequence log-probs (negative, spread over a few nats)."""
    return -rng.uniform(0.5, 30.0, size=n)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _game(seed: int) -> np.ndarray:
    """A random preference matrix: P[i, j] = P(y_i > y_j), P + P^T = 1, diagonal 1/2, with an
    intransitive (rock-paper-scissors) component so that no reward model represents it."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(0.1, 0.9, size=(K, K))
    p = np.triu(u, 1)
    p = p + np.tril(1.0 - p.T, -1)
    np.fill_diagonal(p, 0.5)
    rps = np.zeros((K, K))
    for i in range(K):  # i beats i+1 (cyclically)
        rps[i, (i + 1) % K], rps[(i + 1) % K, i] = 0.3, -0.3
    p = np.clip(p + rps, 0.02, 0.98)
    p = np.triu(p, 1) + np.tril(1.0 - np.triu(p, 1).T, -1)
    np.fill_diagonal(p, 0.5)
    assert np.allclose(p + p.T, 1.0)
    return p


def _policy(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(K)) + 0.05
    return p / p.sum()


def _normalize(w: np.ndarray) -> np.ndarray:
    return w / w.sum()


def _labelled_pairs(mu: np.ndarray, p: np.ndarray, nu: np.ndarray | None = None):
    """All ordered pairs (y, y') ~ mu x nu and both label outcomes, as (chosen, rejected, weight)."""
    nu = mu if nu is None else nu
    ch, rj, w = [], [], []
    for y in range(K):
        for yp in range(K):
            pw = mu[y] * nu[yp]
            ch += [y, yp]
            rj += [yp, y]
            w += [pw * p[y, yp], pw * p[yp, y]]
    return torch.tensor(ch), torch.tensor(rj), _t(w)


def _minimize(f, theta0: torch.Tensor) -> torch.Tensor:
    """L-BFGS to convergence (all the expected losses below are convex in the softmax logits)."""
    theta = theta0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [theta], lr=1.0, max_iter=2000, tolerance_grad=1e-15, tolerance_change=1e-18,
        history_size=50, line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = f(theta)
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    return theta.detach()


def _grad_at(f, theta: torch.Tensor) -> torch.Tensor:
    th = theta.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(th), th)
    return g


def _softmax_np(theta: torch.Tensor) -> np.ndarray:
    return torch.softmax(theta, 0).numpy()


# ----------------------------------------------------------------------------------------------------
# 1. values: random inputs vs plain python loops
# ----------------------------------------------------------------------------------------------------

N = 7


@pytest.fixture
def rnd():
    rng = np.random.default_rng(1234)
    return {k: _logps(rng, N) for k in ["pc", "pr", "rc", "rr", "tc", "tr"]} | {
        "hc": np.stack([_logps(rng, N) for _ in range(3)], -1),
        "hr": np.stack([_logps(rng, N) for _ in range(3)], -1),
        "wc": rng.uniform(0, 1, N),
        "wr": rng.uniform(0, 1, N),
        "lc": rng.integers(1, 40, N).astype(np.float64),
        "lr": rng.integers(1, 40, N).astype(np.float64),
        "pref": rng.uniform(0, 1, N),
    }


def test_inpo_and_egpo_values(rnd):
    eta, tau = 0.4, 0.1
    got = L.inpo_loss(*(_t(rnd[k]) for k in ["pc", "pr", "rc", "rr", "tc", "tr"]), eta=eta, tau=tau)
    got_eg = L.egpo_loss(*(_t(rnd[k]) for k in ["pc", "pr", "rc", "rr", "tc", "tr"]), eta=eta, tau=tau)
    for i in range(N):
        pc, pr, rc, rr, tc, tr = (float(rnd[k][i]) for k in ["pc", "pr", "rc", "rr", "tc", "tr"])
        h = (pc - pr) - tau / eta * (rc - rr) - (1 - tau / eta) * (tc - tr)
        assert got[i].item() == pytest.approx((h - 1 / (2 * eta)) ** 2, rel=1e-12, abs=1e-12)
        assert got_eg[i].item() == pytest.approx((h - 1 / (2 * eta)) ** 2, rel=1e-12, abs=1e-12)


def test_mnpo_values(rnd):
    eta, tau, w = 2.0, 0.2, [0.5, 0.3, 0.2]
    args = [_t(rnd[k]) for k in ["pc", "pr", "rc", "rr", "hc", "hr"]]
    got = L.mnpo_loss(*args, eta=eta, tau=tau, weights=w)
    for i in range(N):
        hist = sum(w[j] * (rnd["hc"][i, j] - rnd["hr"][i, j]) for j in range(3))
        h = (rnd["pc"][i] - rnd["pr"][i]) - tau / eta * (rnd["rc"][i] - rnd["rr"][i]) - (1 - tau / eta) * hist
        assert got[i].item() == pytest.approx((h - 1 / (2 * eta)) ** 2, rel=1e-12, abs=1e-12)


def test_ipo_values_summed_and_per_token(rnd):
    beta = 0.3
    args = [_t(rnd[k]) for k in ["pc", "pr", "rc", "rr"]]
    got = L.ipo_loss(*args, beta=beta)
    got_avg = L.ipo_loss(*args, beta=beta, chosen_lengths=_t(rnd["lc"]), rejected_lengths=_t(rnd["lr"]))
    for i in range(N):
        pc, pr, rc, rr, lc, lr = (float(rnd[k][i]) for k in ["pc", "pr", "rc", "rr", "lc", "lr"])
        assert got[i].item() == pytest.approx(((pc - pr) - (rc - rr) - 1 / (2 * beta)) ** 2, rel=1e-12)
        m = (pc / lc - pr / lr) - (rc / lc - rr / lr)
        assert got_avg[i].item() == pytest.approx((m - 1 / (2 * beta)) ** 2, rel=1e-12, abs=1e-14)


def test_dpo_values(rnd):
    beta = 0.1
    got = L.dpo_loss(*(_t(rnd[k]) for k in ["pc", "pr", "rc", "rr"]), beta=beta)
    for i in range(N):
        z = beta * ((rnd["pc"][i] - rnd["pr"][i]) - (rnd["rc"][i] - rnd["rr"][i]))
        assert got[i].item() == pytest.approx(-math.log(_sigmoid(z)), rel=1e-12)


def test_sppo_values(rnd):
    eta = 5.0
    got = L.sppo_loss(*(_t(rnd[k]) for k in ["pc", "pr", "tc", "tr", "wc", "wr"]), eta=eta)
    got_hard = L.sppo_hard_loss(*(_t(rnd[k]) for k in ["pc", "pr", "tc", "tr"]), eta=eta)
    for i in range(N):
        pc, pr, tc, tr, wc, wr = (float(rnd[k][i]) for k in ["pc", "pr", "tc", "tr", "wc", "wr"])
        exp = ((pc - tc - eta * (wc - 0.5)) ** 2 + (pr - tr - eta * (wr - 0.5)) ** 2) / 2
        assert got[i].item() == pytest.approx(exp, rel=1e-12)
        exp_h = ((pc - tc - eta / 2) ** 2 + (pr - tr + eta / 2) ** 2) / 2
        assert got_hard[i].item() == pytest.approx(exp_h, rel=1e-12)


def test_nash_md_values_and_gradient(rnd):
    beta = 0.05
    lp = _t(rnd["pc"]).requires_grad_(True)
    got = L.nash_md_loss(lp, _t(rnd["rc"]), _t(rnd["pref"]), beta=beta)
    got.sum().backward()
    for i in range(N):
        a = (rnd["pref"][i] - 0.5) - beta * (rnd["pc"][i] - rnd["rc"][i])
        assert got[i].item() == pytest.approx(-a * rnd["pc"][i], rel=1e-12)
        # REINFORCE: d loss / d log pi(y) = -advantage (the advantage is a stop-gradient constant)
        assert lp.grad[i].item() == pytest.approx(-a, rel=1e-12)


# ----------------------------------------------------------------------------------------------------
# hand-derived numbers
# ----------------------------------------------------------------------------------------------------


def test_hand_numbers():
    s = _t
    # INPO: d(pi) = -1 - (-2) = 1, d(ref) = 0, d(pi_t) = -2 - (-1) = -1, tau/eta = 0.4/2 = 0.2
    #   h = 1 - 0.2*0 - 0.8*(-1) = 1.8;  (1.8 - 1/(2*2))^2 = 1.55^2 = 2.4025
    v = L.inpo_loss(s([-1.0]), s([-2.0]), s([-1.5]), s([-1.5]), s([-2.0]), s([-1.0]), eta=2.0, tau=0.4)
    assert v.item() == pytest.approx(2.4025, abs=1e-12)
    # EGPO = the same regression: same number
    v = L.egpo_loss(s([-1.0]), s([-2.0]), s([-1.5]), s([-1.5]), s([-2.0]), s([-1.0]), eta=2.0, tau=0.4)
    assert v.item() == pytest.approx(2.4025, abs=1e-12)
    # MNPO: d(pi) = 1, d(ref) = 0, history margins (1, -1) with weights (3, 1) -> (0.75, 0.25) -> 0.5;
    #   eta = 1, tau = 0.5 (tau/eta = 0.5): h = 1 - 0 - 0.5*0.5 = 0.75; (0.75 - 1/2)^2 = 0.0625
    v = L.mnpo_loss(s([0.0]), s([-1.0]), s([-1.0]), s([-1.0]), s([[-1.0, -2.0]]), s([[-2.0, -1.0]]),
                    eta=1.0, tau=0.5, weights=[3.0, 1.0])
    assert v.item() == pytest.approx(0.0625, abs=1e-12)
    # IPO summed: d(pi) = -3 + 5 = 2, d(ref) = -4 + 4.5 = 0.5, 1/(2*0.5) = 1: (2 - 0.5 - 1)^2 = 0.25
    v = L.ipo_loss(s([-3.0]), s([-5.0]), s([-4.0]), s([-4.5]), beta=0.5)
    assert v.item() == pytest.approx(0.25, abs=1e-12)
    # IPO per token, lengths 2 and 4: (-1.5 + 1.25) - (-2 + 1.125) = 0.625; (0.625 - 1)^2 = 0.140625
    v = L.ipo_loss(s([-3.0]), s([-5.0]), s([-4.0]), s([-4.5]), beta=0.5,
                   chosen_lengths=torch.tensor([2]), rejected_lengths=torch.tensor([4]))
    assert v.item() == pytest.approx(0.140625, abs=1e-12)
    # DPO: beta*(d(pi) - d(ref)) = ln 3 -> sigmoid = 3/4 -> -log(3/4) = ln(4/3) = 0.28768207245178085
    v = L.dpo_loss(s([math.log(3.0)]), s([0.0]), s([0.0]), s([0.0]), beta=1.0)
    assert v.item() == pytest.approx(0.28768207245178085, abs=1e-14)
    # SPPO: eta = 2; chosen: -1 + 1.2 - 2*(0.8 - 0.5) = -0.4; rejected: -2 + 1.9 - 2*(0.3 - 0.5) = 0.3
    #   (0.16 + 0.09)/2 = 0.125
    v = L.sppo_loss(s([-1.0]), s([-2.0]), s([-1.2]), s([-1.9]), s([0.8]), s([0.3]), eta=2.0)
    assert v.item() == pytest.approx(0.125, abs=1e-12)
    # SPPO hard: eta = 0.6; a = 0.5, b = -0.2: ((0.5 - 0.3)^2 + (-0.2 + 0.3)^2)/2 = (0.04 + 0.01)/2 = 0.025
    v = L.sppo_hard_loss(s([-1.0]), s([-2.0]), s([-1.5]), s([-1.8]), eta=0.6)
    assert v.item() == pytest.approx(0.025, abs=1e-12)
    # Nash-MD-PG: P = 0.9, log pi = -1, log pi_ref = -1.5, beta = 0.2: A = 0.4 - 0.2*0.5 = 0.3,
    #   loss = -0.3 * (-1) = 0.3
    v = L.nash_md_loss(s([-1.0]), s([-1.5]), s([0.9]), beta=0.2)
    assert v.item() == pytest.approx(0.3, abs=1e-12)


# ----------------------------------------------------------------------------------------------------
# 2. gradients
# ----------------------------------------------------------------------------------------------------


def _req(rng: np.random.Generator, *shape: int) -> torch.Tensor:
    return torch.tensor(-rng.uniform(0.5, 5.0, size=shape), dtype=DT, requires_grad=True)


@pytest.mark.parametrize(
    "name",
    ["inpo", "egpo", "mnpo", "ipo", "ipo_avg", "dpo", "sppo", "sppo_hard"],
)
def test_gradcheck(name):
    rng = np.random.default_rng(7)
    n = 4
    six = [_req(rng, n) for _ in range(6)]
    lengths = (torch.tensor([1.0, 3.0, 7.0, 2.0], dtype=DT), torch.tensor([5.0, 1.0, 2.0, 9.0], dtype=DT))
    fns = {
        "inpo": (lambda *a: L.inpo_loss(*a, eta=2.0, tau=0.3), six),
        "egpo": (lambda *a: L.egpo_loss(*a, eta=2.0, tau=0.3), six),
        "mnpo": (lambda *a: L.mnpo_loss(*a, eta=2.0, tau=0.3, weights=[0.6, 0.4]),
                 six[:4] + [_req(rng, n, 2), _req(rng, n, 2)]),
        "ipo": (lambda *a: L.ipo_loss(*a, beta=0.4), six[:4]),
        "ipo_avg": (
            lambda *a: L.ipo_loss(*a, beta=0.4, chosen_lengths=lengths[0], rejected_lengths=lengths[1]),
            six[:4],
        ),
        "dpo": (lambda *a: L.dpo_loss(*a, beta=0.4), six[:4]),
        "sppo": (lambda *a: L.sppo_loss(*a, eta=3.0),
                 six[:4] + [torch.tensor(rng.uniform(0, 1, n), dtype=DT, requires_grad=True)
                            for _ in range(2)]),
        "sppo_hard": (lambda *a: L.sppo_hard_loss(*a, eta=3.0), six[:4]),
    }
    fn, inputs = fns[name]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------------------------------
# 3. identities
# ----------------------------------------------------------------------------------------------------


def test_mnpo_n1_equals_inpo_exactly(rnd):
    a = [_t(rnd[k]) for k in ["pc", "pr", "rc", "rr", "tc", "tr"]]
    for eta, tau in [(3.0, 0.1), (0.5, 0.5), (1.0, 0.0)]:
        inpo = L.inpo_loss(*a, eta=eta, tau=tau)
        for w in ([1.0], [2.5], torch.tensor([1.0], dtype=DT)):
            mnpo = L.mnpo_loss(*a[:4], a[4][:, None], a[5][:, None], eta=eta, tau=tau, weights=w)
            assert torch.equal(mnpo, inpo)
    # n = 2 with all the weight on the most recent iterate is INPO too
    hc = torch.stack([a[4], a[0]], -1)
    hr = torch.stack([a[5], a[1]], -1)
    assert torch.allclose(L.mnpo_loss(*a[:4], hc, hr, eta=3.0, tau=0.1, weights=[1.0, 0.0]),
                          L.inpo_loss(*a, eta=3.0, tau=0.1), rtol=1e-14, atol=0)


def test_ipo_per_token_equals_summed_on_normalized_inputs(rnd):
    pc, pr, rc, rr, lc, lr = (_t(rnd[k]) for k in ["pc", "pr", "rc", "rr", "lc", "lr"])
    avg = L.ipo_loss(pc, pr, rc, rr, beta=0.2, chosen_lengths=lc.long(), rejected_lengths=lr.long())
    summed = L.ipo_loss(pc / lc, pr / lr, rc / lc, rr / lr, beta=0.2)
    assert torch.equal(avg, summed)
    # and it is not the summed loss (lengths differ from 1)
    assert not torch.allclose(avg, L.ipo_loss(pc, pr, rc, rr, beta=0.2))


def test_inpo_with_tau_equal_eta_is_ipo(rnd):
    a = [_t(rnd[k]) for k in ["pc", "pr", "rc", "rr", "tc", "tr"]]
    eta = 0.25
    assert torch.allclose(L.inpo_loss(*a, eta=eta, tau=eta), L.ipo_loss(*a[:4], beta=eta), rtol=1e-13, atol=1e-13)


def test_inpo_gradient_at_anchor_is_online_ipo_gradient(rnd):
    """At pi = pi_t, grad INPO = (tau/eta) * grad IPO(beta = tau): EGPO's online-IPO step."""
    eta, tau = 0.5, 0.15
    pc, pr, rc, rr = (_t(rnd[k]) for k in ["pc", "pr", "rc", "rr"])
    x = torch.stack([pc, pr]).requires_grad_(True)
    g_inpo = torch.autograd.grad(L.inpo_loss(x[0], x[1], rc, rr, pc, pr, eta=eta, tau=tau).sum(), x)[0]
    y = torch.stack([pc, pr]).requires_grad_(True)
    g_ipo = torch.autograd.grad(L.ipo_loss(y[0], y[1], rc, rr, beta=tau).sum(), y)[0]
    assert torch.allclose(g_inpo, tau / eta * g_ipo, rtol=1e-12, atol=1e-12)


def test_bad_arguments_raise():
    x = _t([-1.0, -2.0])
    with pytest.raises(ValueError, match="tau must be <= eta"):
        L.inpo_loss(x, x, x, x, x, x, eta=0.5, tau=0.6)
    with pytest.raises(ValueError, match="eta must be"):
        L.inpo_loss(x, x, x, x, x, x, eta=0.0, tau=0.1)
    with pytest.raises(ValueError, match="weights has 1 entries"):
        x2 = x[:, None].repeat(1, 2)
        L.mnpo_loss(x, x, x, x, x2, x2, eta=1.0, tau=0.1, weights=[1.0])
    with pytest.raises(ValueError, match="non-negative"):
        L.mnpo_loss(x, x, x, x, x[:, None], x[:, None], eta=1.0, tau=0.1, weights=[-1.0])
    with pytest.raises(ValueError, match="both"):
        L.ipo_loss(x, x, x, x, beta=0.1, chosen_lengths=torch.tensor([1, 2]))


# ----------------------------------------------------------------------------------------------------
# 4. population minimizers on a tabular game
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def game():
    p = _game(0)
    return {"P": p, "pi_t": _policy(1), "pi_ref": _policy(2), "pi_old": _policy(3)}


def _omd_log(anchor_log: np.ndarray, pi_ref: np.ndarray, p: np.ndarray, opp: np.ndarray, eta: float, tau: float):
    """INPO's Eq. 11, log pi ∝ (1 - tau/eta) anchor_log + (tau/eta) log pi_ref + P opp / eta, normalized, in numpy."""
    r = tau / eta
    z = (1 - r) * anchor_log + r * np.log(pi_ref) + p @ opp / eta
    return z - (z.max() + np.log(np.exp(z - z.max()).sum()))


def _omd(anchor_log: np.ndarray, pi_ref: np.ndarray, p: np.ndarray, opp: np.ndarray, eta: float, tau: float):
    return np.exp(_omd_log(anchor_log, pi_ref, p, opp, eta, tau))


def _inpo_expected(g, eta, tau, mu, anchor):
    ch, rj, w = _labelled_pairs(mu, g["P"])
    lref, lanc = _t(np.log(g["pi_ref"])), _t(np.log(anchor))

    def f(theta):
        lp = torch.log_softmax(theta, 0)
        loss = L.inpo_loss(lp[ch], lp[rj], lref[ch], lref[rj], lanc[ch], lanc[rj], eta=eta, tau=tau)
        return (w * loss).sum()

    return f


def _check_min(f, closed: np.ndarray, tol: float = 1e-7):
    theta = _minimize(f, torch.zeros(K, dtype=DT))
    got = _softmax_np(theta)
    assert np.max(np.abs(got - closed)) < tol, (got, closed)
    g = _grad_at(f, _t(np.log(closed)))
    assert g.abs().max().item() < 1e-10
    return got


@pytest.mark.parametrize("eta,tau", [(1.0, 0.1), (0.25, 0.05), (2.0, 2.0)])
def test_inpo_population_minimizer_is_omd_step(game, eta, tau):
    closed = _omd(np.log(game["pi_t"]), game["pi_ref"], game["P"], game["pi_t"], eta, tau)
    f = _inpo_expected(game, eta, tau, game["pi_t"], game["pi_t"])
    _check_min(f, closed)
    # and the minimizer really moved: it is not pi_t
    assert np.max(np.abs(closed - game["pi_t"])) > 1e-3


def test_egpo_half_and_full_step(game):
    eta, tau = 0.5, 0.2
    pi_t = game["pi_t"]
    half = _omd(np.log(pi_t), game["pi_ref"], game["P"], pi_t, eta, tau)
    ch, rj, w = _labelled_pairs(pi_t, game["P"])
    lref, lanc = _t(np.log(game["pi_ref"])), _t(np.log(pi_t))

    def f_half(theta):
        lp = torch.log_softmax(theta, 0)
        loss = L.egpo_loss(lp[ch], lp[rj], lref[ch], lref[rj], lanc[ch], lanc[rj], eta=eta, tau=tau)
        return (w * loss).sum()

    _check_min(f_half, half)
    # full step: pairs drawn from pi_{t+1/2}, same anchor pi_t
    full = _omd(np.log(pi_t), game["pi_ref"], game["P"], half, eta, tau)
    ch, rj, w = _labelled_pairs(half, game["P"])

    def f_full(theta):
        lp = torch.log_softmax(theta, 0)
        loss = L.egpo_loss(lp[ch], lp[rj], lref[ch], lref[rj], lanc[ch], lanc[rj], eta=eta, tau=tau)
        return (w * loss).sum()

    _check_min(f_full, full)
    assert np.max(np.abs(full - half)) > 1e-3


def test_mnpo_two_past_policies(game):
    eta, tau, lam = 0.5, 0.1, np.array([0.7, 0.3])
    pi_t, pi_old, pi_ref = game["pi_t"], game["pi_old"], game["pi_ref"]
    r = tau / eta
    closed = _normalize(
        pi_ref**r * pi_t ** ((1 - r) * lam[0]) * pi_old ** ((1 - r) * lam[1]) * np.exp(game["P"] @ pi_t / eta)
    )
    ch, rj, w = _labelled_pairs(pi_t, game["P"])
    lref = _t(np.log(pi_ref))
    hist = _t(np.stack([np.log(pi_t), np.log(pi_old)], -1))

    def f(theta):
        lp = torch.log_softmax(theta, 0)
        return (w * L.mnpo_loss(lp[ch], lp[rj], lref[ch], lref[rj], hist[ch], hist[rj],
                                eta=eta, tau=tau, weights=[1.4, 0.6])).sum()  # normalized to (0.7, 0.3)

    _check_min(f, closed)


def test_nash_md_as_inpo_regression_on_mixture_pairs(game):
    """The registry's 'nash-md': INPO's regression with pairs from the geometric mixture
    mu ∝ pi_t^{1-tau/eta} pi_ref^{tau/eta} has minimizer mu * exp(P mu / eta) / Z: the Nash-MD step (Munos et al.'s
    learning rate 1/eta, mixture coefficient tau/eta)."""
    eta, tau = 0.5, 0.2
    mix = _normalize(game["pi_t"] ** (1 - tau / eta) * game["pi_ref"] ** (tau / eta))
    closed = _normalize(mix * np.exp(game["P"] @ mix / eta))
    f = _inpo_expected(game, eta, tau, mix, game["pi_t"])
    _check_min(f, closed)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_ipo_population_minimizer(game, beta):
    mu = game["pi_t"]  # sampling distribution of the pairs
    closed = _normalize(game["pi_ref"] * np.exp(game["P"] @ mu / beta))
    ch, rj, w = _labelled_pairs(mu, game["P"])
    lref = _t(np.log(game["pi_ref"]))

    def f(theta):
        lp = torch.log_softmax(theta, 0)
        return (w * L.ipo_loss(lp[ch], lp[rj], lref[ch], lref[rj], beta=beta)).sum()

    _check_min(f, closed)


def test_dpo_population_minimizer_on_bradley_terry(game):
    beta = 0.5
    rewards = np.array([0.3, -0.5, 1.2, 0.0, -1.0])
    p_bt = 1.0 / (1.0 + np.exp(-(rewards[:, None] - rewards[None, :])))
    closed = _normalize(game["pi_ref"] * np.exp(rewards / beta))
    ch, rj, w = _labelled_pairs(game["pi_t"], p_bt)
    lref = _t(np.log(game["pi_ref"]))

    def f(theta):
        lp = torch.log_softmax(theta, 0)
        return (w * L.dpo_loss(lp[ch], lp[rj], lref[ch], lref[rj], beta=beta)).sum()

    _check_min(f, closed)


def _sppo_pairs(pi_t: np.ndarray):
    ch, rj, w = [], [], []
    for y in range(K):
        for yp in range(K):
            ch.append(y)
            rj.append(yp)
            w.append(pi_t[y] * pi_t[yp])
    return torch.tensor(ch), torch.tensor(rj), _t(w)


@pytest.mark.parametrize("eta", [0.5, 3.0])
def test_sppo_population_minimizer(game, eta):
    pi_t, p = game["pi_t"], game["P"]
    win = p @ pi_t  # exact P(y > pi_t)
    a = eta * (win - 0.5)
    lprev, wr = _t(np.log(pi_t)), _t(win)

    # (a) unnormalized table: minimizer log pi = log pi_t + eta (P(y > pi_t) - 1/2) exactly ...
    ch, rj, w = _sppo_pairs(pi_t)

    def f_free(theta):
        return (w * L.sppo_loss(theta[ch], theta[rj], lprev[ch], lprev[rj], wr[ch], wr[rj], eta=eta)).sum()

    target = np.log(pi_t) + a
    theta = _minimize(f_free, torch.zeros(K, dtype=DT))
    assert np.max(np.abs(theta.numpy() - target)) < 1e-7
    assert _grad_at(f_free, _t(target)).abs().max().item() < 1e-12
    # ... whose normalization is the multiplicative-weights update, but whose mass is Z_t e^{-eta/2} > 1
    mw = _normalize(pi_t * np.exp(eta * win))
    assert np.max(np.abs(_normalize(np.exp(target)) - mw)) < 1e-12
    mass = np.exp(target).sum()
    assert mass == pytest.approx((pi_t * np.exp(eta * win)).sum() * math.exp(-eta / 2), rel=1e-12)
    assert mass > 1.0 + 1e-6

    # (b) softmax table: the pinned normalizer makes the minimizer log pi/pi_t = a + u, u = -W(-S e^a)
    def f_soft(theta):
        lp = torch.log_softmax(theta, 0)
        return (w * L.sppo_loss(lp[ch], lp[rj], lprev[ch], lprev[rj], wr[ch], wr[rj], eta=eta)).sum()

    def closed_for(s: float) -> np.ndarray:
        u = -np.real(lambertw(-s * np.exp(a)))
        return pi_t * np.exp(a + u)

    s_star = brentq(lambda s: closed_for(s).sum() - 1.0, -50.0, 0.0, xtol=1e-15, rtol=1e-15)
    closed = closed_for(s_star)
    got = _check_min(f_soft, closed, tol=1e-7)
    assert np.max(np.abs(got - mw)) > 1e-6  # SPPO's normalized minimizer is not exactly the MW update


def test_sppo_hard_population_minimizer(game):
    eta = 1.5
    pi_t, p = game["pi_t"], game["P"]
    target = np.log(pi_t) + eta * (p @ pi_t - 0.5)
    ch, rj, w = _labelled_pairs(pi_t, p)
    lprev = _t(np.log(pi_t))

    def f(theta):
        return (w * L.sppo_hard_loss(theta[ch], theta[rj], lprev[ch], lprev[rj], eta=eta)).sum()

    theta = _minimize(f, torch.zeros(K, dtype=DT))
    assert np.max(np.abs(theta.numpy() - target)) < 1e-7


def test_nash_md_pg_gradient_and_stationary_point(game):
    beta = 0.3
    mu = _normalize(game["pi_t"] ** 0.8 * game["pi_ref"] ** 0.2)  # a fixed (geometric-mixture) opponent
    p, pi_ref = game["P"], game["pi_ref"]
    lref = _t(np.log(pi_ref))
    yy = torch.arange(K).repeat_interleave(K)  # y
    yp = torch.arange(K).repeat(K)  # y'
    pref = _t(p)[yy, yp]
    mu_t = _t(mu)

    def surrogate(theta):
        lp = torch.log_softmax(theta, 0)
        weight = torch.softmax(theta, 0).detach()[yy] * mu_t[yp]  # y ~ pi (no gradient), y' ~ mu
        return (weight * L.nash_md_loss(lp[yy], lref[yy], pref, beta=beta)).sum()

    def objective(theta):  # P(pi > mu) - beta KL(pi || pi_ref), computed directly
        pi = torch.softmax(theta, 0)
        return pi @ (_t(p) @ mu_t) - beta * (pi * (torch.log(pi) - lref)).sum()

    rng = np.random.default_rng(5)
    for _ in range(3):
        th = _t(rng.normal(size=K))
        assert torch.allclose(_grad_at(surrogate, th), -_grad_at(objective, th), rtol=1e-12, atol=1e-13)

    closed = _normalize(pi_ref * np.exp(p @ mu / beta))
    assert _grad_at(surrogate, _t(np.log(closed))).abs().max().item() < 1e-12
    # policy-gradient descent on the surrogate converges to it
    theta = torch.zeros(K, dtype=DT)
    for _ in range(3000):
        theta = theta - 2.0 * _grad_at(surrogate, theta)
    assert np.max(np.abs(_softmax_np(theta) - closed)) < 1e-7


# ----------------------------------------------------------------------------------------------------
# 5. each paper's own experiment values: population minimizer == the paper's closed-form update (log-space)
# ----------------------------------------------------------------------------------------------------


def _check_min_log(f, closed_log: np.ndarray, tol: float = 1e-7) -> np.ndarray:
    """Minimize over a softmax table and compare log-probabilities: at the papers' small eta the update is
    nearly deterministic (log-probs down to ~-100), so probabilities alone would say little."""
    theta = _minimize(f, torch.zeros(K, dtype=DT))
    got = torch.log_softmax(theta, 0).numpy()
    assert np.max(np.abs(got - closed_log)) < tol, (got, closed_log)
    return got


def test_inpo_at_the_papers_values(game):
    """Zhang et al. (ICLR 2025) Appendix B: eta = 0.005 (from the grid 0.1, 0.01, 0.0075, 0.005, 0.002), tau = eta/3.
    The minimizer of our loss is Eq. 11, pi_{t+1} ∝ exp(P(y > pi_t)/eta) pi_ref^{tau/eta} pi_t^{1 - tau/eta}."""
    eta = 0.005
    tau = eta / 3
    pi_t, pi_ref, p = game["pi_t"], game["pi_ref"], game["P"]
    closed_log = _omd_log(np.log(pi_t), pi_ref, p, pi_t, eta, tau)
    got = _check_min_log(_inpo_expected(game, eta, tau, pi_t, pi_t), closed_log)
    assert got.min() < -20  # the update really is that sharp: 1/eta = 200 times win-rate differences
    # the previous meaning of eta (the learning rate) would give a different policy: its anchor ratio is 8e-6
    old = _omd_log(np.log(pi_t), pi_ref, p, pi_t, 1 / eta, tau)
    assert np.max(np.abs(old - got)) > 1.0


def test_mnpo_at_the_papers_values(game):
    """smiles724/MNPO training_configs/gemma-2-9b-it-mnpo-iter2.yaml: eta = 0.0075, ratio = 1/3, max_history_t = 2,
    history weights unset -> [1, 1] normalized to (1/2, 1/2) (mnpo_trainer.py). ratio = tau/eta, so tau = eta/3.
    Closed form: pi ∝ pi_ref^{ratio} pi_t^{(1-ratio)/2} pi_{t-1}^{(1-ratio)/2} exp(P(y > pi_t)/eta)."""
    eta, ratio = 0.0075, 1 / 3
    tau = ratio * eta
    pi_t, pi_old, pi_ref, p = game["pi_t"], game["pi_old"], game["pi_ref"], game["P"]
    z = ratio * np.log(pi_ref) + (1 - ratio) * 0.5 * (np.log(pi_t) + np.log(pi_old)) + p @ pi_t / eta
    closed_log = z - (z.max() + np.log(np.exp(z - z.max()).sum()))
    ch, rj, w = _labelled_pairs(pi_t, p)
    lref = _t(np.log(pi_ref))
    hist = _t(np.stack([np.log(pi_t), np.log(pi_old)], -1))

    def f(theta):
        lp = torch.log_softmax(theta, 0)
        return (w * L.mnpo_loss(lp[ch], lp[rj], lref[ch], lref[rj], hist[ch], hist[rj],
                                eta=eta, tau=tau, weights=[1.0, 1.0])).sum()

    _check_min_log(f, closed_log)


@pytest.mark.parametrize("estimator", ["with_self", "leave_one_out"])
def test_sppo_at_the_papers_values(game, estimator):
    """uclaml/SPPO scripts/pipeline.sh: beta = 0.001, i.e. the paper's eta = 1/beta = 1000; K = 5 samples per prompt
    (scripts/compute_prob.py --pairs 5). Every K-tuple of samples from pi_t is enumerated (5^5 tuples, exact
    expectation); win rates come from the real estimator (inpo.losses.win_rates) and every sample enters the real
    loss. The unnormalized minimizer is the paper's MW update pinned at log Z = eta/2,
    log pi = log pi_t + eta_eff (P(y > pi_t) - 1/2), with eta_eff = eta (K-1)/K for the code's self-inclusive
    estimator and eta_eff = eta for the leave-one-out one: the exact mapping of the paper's eta."""
    import itertools

    eta, k = 1000.0, 5
    pi_t, p = game["pi_t"], game["P"]
    tuples = np.array(list(itertools.product(range(K), repeat=k)))  # [T, k]
    prob = _t(np.prod(pi_t[tuples], -1))
    ys = torch.as_tensor(tuples)
    M = _t(p)[ys[:, :, None], ys[:, None, :]]  # [T, k, k] judge matrices, diagonal 1/2
    wr = L.win_rates(M, estimator)
    lprev = _t(np.log(pi_t))
    nxt = torch.roll(ys, -1, 1)  # sample i as chosen and sample i+1 as rejected: each sample enters once
    wr_next = torch.roll(wr, -1, 1)

    def f(theta):
        per = L.sppo_loss(theta[ys], theta[nxt], lprev[ys], lprev[nxt], wr, wr_next, eta=eta)
        return (prob[:, None] * per).sum()

    eta_eff = eta * (k - 1) / k if estimator == "with_self" else eta
    target = np.log(pi_t) + eta_eff * (p @ pi_t - 0.5)
    theta = _minimize(f, torch.zeros(K, dtype=DT))
    assert np.max(np.abs(theta.numpy() - target)) < 1e-7
    # normalized, that is the multiplicative-weights update pi_t exp(eta_eff P(y > pi_t)) / Z
    mw = np.log(pi_t) + eta_eff * p @ pi_t
    np.testing.assert_allclose(theta.numpy() - theta.numpy().max(), mw - mw.max(), atol=1e-7)


def test_win_rate_estimators_by_hand():
    # K = 3, M[0] = (1/2, 0.9, 0.6): with_self (0.5 + 0.9 + 0.6)/3 = 2/3; leave_one_out (0.9 + 0.6)/2 = 0.75
    m = _t([[[0.5, 0.9, 0.6], [0.1, 0.5, 0.3], [0.4, 0.7, 0.5]]])
    assert L.win_rates(m, "with_self")[0, 0].item() == pytest.approx(2 / 3, abs=1e-15)
    assert L.win_rates(m, "leave_one_out")[0, 0].item() == pytest.approx(0.75, abs=1e-15)
    with pytest.raises(ValueError, match="estimator"):
        L.win_rates(m, "mean")


def _empty_batch(n: int = 3):
    """A batch where some responses are empty (immediate EOS): summed log-prob 0, length 0."""
    z = torch.zeros(n, dtype=DT)
    lp = _t([-2.0, 0.0, -1.0][:n])
    return z, lp


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("name", ["inpo", "egpo", "mnpo", "ipo", "ipo_avg", "dpo", "sppo", "sppo_hard", "nash_md"])
def test_no_loss_is_inf_or_nan_on_empty_responses(name, reduction):
    """Every loss on a batch whose chosen and rejected responses are empty (log-prob 0, length 0), through the loop's
    reduction too (train.logprob_reduction=mean divides by the clamped length): all finite."""
    from inpo.algorithms import LossInputs, reduce_logps

    z, lp = _empty_batch()
    lengths = torch.tensor([0, 0, 3])
    b = reduce_logps(LossInputs(z, z.clone(), z, z, z, z, torch.stack([z, lp], -1), torch.stack([z, z], -1),
                                _t([0.5, 0.0, 1.0]), _t([0.5, 1.0, 0.0]), lengths, lengths), reduction)
    fns = {
        "inpo": lambda: L.inpo_loss(b.policy_chosen, b.policy_rejected, b.ref_chosen, b.ref_rejected,
                                    b.prev_chosen, b.prev_rejected, eta=0.005, tau=0.005 / 3),
        "egpo": lambda: L.egpo_loss(b.policy_chosen, b.policy_rejected, b.ref_chosen, b.ref_rejected,
                                    b.prev_chosen, b.prev_rejected, eta=0.25, tau=0.1),
        "mnpo": lambda: L.mnpo_loss(b.policy_chosen, b.policy_rejected, b.ref_chosen, b.ref_rejected,
                                    b.hist_chosen, b.hist_rejected, eta=0.0075, tau=0.0025, weights=[1, 1]),
        "ipo": lambda: L.ipo_loss(b.policy_chosen, b.policy_rejected, b.ref_chosen, b.ref_rejected, beta=0.1),
        "ipo_avg": lambda: L.ipo_loss(z, z, z, z, beta=0.1, chosen_lengths=lengths, rejected_lengths=lengths),
        "dpo": lambda: L.dpo_loss(b.policy_chosen, b.policy_rejected, b.ref_chosen, b.ref_rejected, beta=0.1),
        "sppo": lambda: L.sppo_loss(b.policy_chosen, b.policy_rejected, b.prev_chosen, b.prev_rejected,
                                    b.winrate_chosen, b.winrate_rejected, eta=1000.0),
        "sppo_hard": lambda: L.sppo_hard_loss(b.policy_chosen, b.policy_rejected, b.prev_chosen,
                                              b.prev_rejected, eta=1000.0),
        "nash_md": lambda: L.nash_md_loss(b.policy_chosen, b.ref_chosen, b.winrate_chosen, beta=0.1),
    }
    out = fns[name]()
    assert torch.isfinite(out).all(), (name, reduction, out)


def test_mean_reduction_divides_every_logprob_by_its_clamped_length():
    from inpo.algorithms import LossInputs, reduce_logps

    pc, pr = _t([-6.0, -4.0]), _t([-3.0, 0.0])
    hist = _t([[-6.0, -2.0], [-8.0, -4.0]])
    b = LossInputs(pc, pr, pc * 2, pr * 2, pc * 3, pr * 3, hist, hist, len_chosen=torch.tensor([3, 2]),
                   len_rejected=torch.tensor([1, 0]))
    m = reduce_logps(b, "mean")
    assert m.policy_chosen.tolist() == [-2.0, -2.0] and m.policy_rejected.tolist() == [-3.0, 0.0]
    assert m.ref_chosen.tolist() == [-4.0, -4.0] and m.prev_rejected.tolist() == [-9.0, 0.0]
    assert m.hist_chosen.tolist() == [[-2.0, -2.0 / 3], [-4.0, -2.0]]
    assert reduce_logps(b, "sum") is b
