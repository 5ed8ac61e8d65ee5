"""Learning dynamics of every algorithm on a preference game, exact and sampled.

Policies are tabular, one distribution over the A actions per context, vectorized over contexts.

**Exact** (full information, :func:`run_exact`): the closed-form population update of each algorithm on
log-policies ``[X, A]`` (``logpi``; ``P pi`` means ``(P pi)_i = P(y_i > pi)``):

``eta`` and ``tau`` are INPO's (arXiv 2407.00617): ``1/eta`` is the mirror-descent learning rate, ``tau`` the
KL regularization, ``0 <= tau <= eta``.

* ``inpo``    pi_{t+1} ∝ pi_t^{1-tau/eta} pi_ref^{tau/eta} exp(P pi_t / eta)   (INPO, Eq. 5 / Eq. 11); with
  ``eta_schedule="theorem4"`` iteration t uses eta_t = tau (t+2)/2 (Theorem 4, O(1/T) last iterate)
* ``sppo``    pi_{t+1} ∝ pi_t exp(eta_S P pi_t)   (multiplicative weights; SPPO arXiv 2405.00675, Eq. 3.5) with
  SPPO's own step ``eta_S = sppo_eta`` (default ``1/eta``, the same learning rate as INPO's)
* ``ipo``     pi_{t+1} ∝ pi_ref exp(P pi_t / beta): the population minimizer of the IPO loss on pairs
  from pi_t (least squares of the labels, as for INPO); i.e. INPO with eta = tau = beta.
* ``dpo``     iterative DPO (Dong et al. 2024): pi_{t+1} ∝ pi_ref exp(r_t / beta) with r_t the population
  minimizer of the DPO loss on pairs from pi_t with soft labels P, i.e. the Bradley-Terry fit of P
  weighted by pi_t(y) pi_t(y') (damped Newton; a 1e-9 ridge toward pi_t's implicit reward fixes the
  gauge and leaves actions the pairs never cover where pi_t had them).
* ``mnpo``    pi_{t+1} ∝ pi_ref^{tau/eta} prod_j pi_{t-j}^{(1-tau/eta) lambda_j} exp(P pi_t / eta)
  (the population minimizer of :func:`inpo.losses.mnpo_loss` on pairs from pi_t; before n iterates
  exist the history is padded with pi_0). n = 1 is INPO exactly.
* ``egpo``    extragradient (mirror-prox): pi_{t+1/2} = INPO step from pi_t with opponent pi_t, then
  pi_{t+1} ∝ pi_t^{1-tau/eta} pi_ref^{tau/eta} exp(P pi_{t+1/2} / eta)  (EGPO's step size is 1/eta).
* ``nash-md`` pi_{t+1} ∝ mix_t exp(P mix_t / eta), mix_t ∝ pi_t^{1-tau/eta} pi_ref^{tau/eta}
  (Nash-MD, arXiv 2312.00886, Eq. 9, with its learning rate eta_M = 1/eta: mixing coefficient eta_M tau =
  tau/eta). With a constant eta its fixed point, ``pi ∝ pi_ref exp(P mix(pi) / tau)``, is not exactly the
  regularized NE (the paper decreases eta_M).

**Sampled** (:func:`run_sampled`): the policy is a softmax table (``logits [X, A]``, requires_grad,
float64) trained at every iteration for ``steps`` Adam steps, starting from pi_t's logits, on the *same*
loss functions as the language-model loop (:mod:`inpo.losses`), with the sequence log-prob of a
response being ``log pi(action)``. Data per iteration and context:

* inpo / ipo / mnpo: ``pairs`` pairs y, y' ~ pi_t, label ~ Bernoulli(P(y > y')) orders them.
* egpo: ``pairs`` pairs from pi_t for the half step, then ``pairs`` pairs from pi_{t+1/2} for the full
  step (both with :func:`inpo.losses.egpo_loss`, anchor pi_t, each trained from pi_t's logits).
* nash-md: regression form. ``pairs`` pairs from the geometric mixture mix_t, Bernoulli labels,
  :func:`inpo.losses.inpo_loss` with anchor pi_t (its anchor term is exactly d(mix_t)), whose population
  minimizer is the Nash-MD update above. (The policy-gradient form, ``nash_md_loss``, is not used here.)
* sppo: ``groups`` groups of K = ``k`` samples from pi_t; win rates P^(y_k > pi_t) from the judge
  probabilities P(y_k > y_j) by ``winrate_estimator`` (:func:`inpo.losses.win_rates`: ``with_self``, the
  row sum including the self-comparison 1/2 over K as uclaml/SPPO, or ``leave_one_out``); samples sorted
  by estimated win rate, the i-th best paired with the i-th worst (all K used), :func:`inpo.losses.sppo_loss`.
* dpo: ``groups`` groups of K samples from pi_t; the judge scores each by its mean probability of beating
  the others (a pairwise judge's Borda score); best vs worst (groups where they are the same action
  are skipped), :func:`inpo.losses.dpo_loss` with the reference fixed at pi_ref.

``samples`` counts responses drawn; ``comparisons`` counts judge calls (labels or probabilities).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.special import log_softmax

from inpo import losses
from inpo.games.matrices import to_numpy
from inpo.games.metrics import duality_gap, regularized_duality_gap
from inpo.losses import win_rates

ALGORITHMS: tuple[str, ...] = ("inpo", "sppo", "dpo", "ipo", "mnpo", "egpo", "nash-md")


@dataclass(frozen=True)
class DynamicsConfig:
    """Hyperparameters shared by the games CLI, the exact and the sampled dynamics.

    ``eta`` and ``tau`` as in the INPO paper (``1/eta`` the learning rate, ``tau`` the KL regularization,
    ``0 <= tau <= eta``), used by inpo, mnpo, egpo, nash-md; ``eta_schedule="theorem4"``: INPO with
    eta_t = tau (t+2)/2 at iteration t = 1, 2, ... (pi_1 = pi_ref). ``sppo_eta``: SPPO's step (default
    ``1/eta``). ``beta`` is DPO's / IPO's coefficient (default: ``tau``, so IPO's fixed point is the same
    tau-regularized equilibrium); ``mnpo_weights`` are MNPO's lambda_j for pi_t, pi_{t-1}, ...
    Sampled only: ``pairs`` per context and iteration, ``k`` / ``groups`` (SPPO, DPO: groups of K
    samples per context), ``steps`` optimizer steps (``optimizer`` "sgd" or "adam") with learning
    rate ``lr`` per iteration. SGD is the default: the INPO/IPO/EGPO/MNPO losses are quadratic in
    the logits (log pi(y) - log pi(y') is a logit difference), so gradient descent converges
    linearly to the sampled least-squares solution, while Adam with a constant lr keeps moving
    every logit by ~lr per step and adds noise of that size. DPO's logistic loss has gradients
    proportional to beta, so SGD at that lr barely moves it: DPO is trained with Adam at ``dpo_lr``
    (as in practice).
    """

    eta: float = 2.0
    tau: float = 0.05
    beta: float | None = None
    sppo_eta: float | None = None
    eta_schedule: str = "constant"
    winrate_estimator: str = "with_self"
    mnpo_weights: tuple[float, ...] = (0.5, 0.3, 0.2)
    pairs: int = 256
    k: int = 8
    groups: int = 32
    steps: int = 30
    lr: float = 0.5
    optimizer: str = "sgd"
    dpo_lr: float = 0.05

    def __post_init__(self) -> None:
        eta_ok = self.tau <= self.eta or self.eta_schedule == "theorem4"  # theorem4: eta_t >= 1.5 tau, eta unused
        if not (np.isfinite(self.eta) and self.eta > 0 and np.isfinite(self.tau) and self.tau >= 0 and eta_ok):
            raise ValueError(f"need eta > 0 and 0 <= tau <= eta (INPO's eta: 1/eta is the step), got eta={self.eta}, "
                             f"tau={self.tau}")
        if self.eta_schedule not in ("constant", "theorem4"):
            raise ValueError(f"eta_schedule must be 'constant' or 'theorem4', got {self.eta_schedule!r}")
        if self.eta_schedule == "theorem4" and not self.tau > 0:
            raise ValueError("eta_schedule='theorem4' needs tau > 0 (eta_t = tau (t+2)/2)")

    @property
    def dpo_beta(self) -> float:
        return self.tau if self.beta is None else self.beta

    @property
    def sppo_step(self) -> float:
        return 1.0 / self.eta if self.sppo_eta is None else self.sppo_eta

    def eta_at(self, t: int) -> float:
        """INPO's eta at iteration t = 1, 2, ... (constant, or Theorem 4's tau (t+2)/2)."""
        return self.tau * (t + 2) / 2.0 if self.eta_schedule == "theorem4" else self.eta


@dataclass
class Trajectory:
    """Result of a run: per-iteration gaps (mean and max over contexts), final policy, data used."""

    algo: str
    gap_mean: list[float] = field(default_factory=list)
    gap_max: list[float] = field(default_factory=list)
    reg_gap_mean: list[float] = field(default_factory=list)
    reg_gap_max: list[float] = field(default_factory=list)
    pi: np.ndarray | None = None
    samples: int = 0
    comparisons: int = 0

    def record(self, P: np.ndarray, pi: np.ndarray, ref: np.ndarray, tau: float) -> None:
        g = duality_gap(P, pi)
        r = regularized_duality_gap(P, pi, ref, tau)
        self.gap_mean.append(float(np.mean(g)))
        self.gap_max.append(float(np.max(g)))
        self.reg_gap_mean.append(float(np.mean(r)))
        self.reg_gap_max.append(float(np.max(r)))


# ----------------------------------------------------------------------------- exact updates
def _Ppi(P: np.ndarray, logpi: np.ndarray) -> np.ndarray:
    return np.einsum("xij,xj->xi", P, np.exp(logpi))


def inpo_update(P: np.ndarray, logpi: np.ndarray, logref: np.ndarray, *, eta: float, tau: float) -> np.ndarray:
    """INPO (Eq. 11): ``log pi_{t+1} = (1 - tau/eta) log pi_t + (tau/eta) log pi_ref + P pi_t / eta`` (normalized)."""
    r = tau / eta
    return log_softmax((1.0 - r) * logpi + r * logref + _Ppi(P, logpi) / eta, axis=-1)


def sppo_update(P: np.ndarray, logpi: np.ndarray, *, eta: float) -> np.ndarray:
    """SPPO (multiplicative weights): ``log pi_{t+1} = log pi_t + eta P pi_t`` (normalized)."""
    return log_softmax(logpi + eta * _Ppi(P, logpi), axis=-1)


def ipo_update(P: np.ndarray, logpi: np.ndarray, logref: np.ndarray, *, beta: float) -> np.ndarray:
    """Online IPO, reference fixed: ``log pi_{t+1} = log pi_ref + P pi_t / beta`` (normalized)."""
    return log_softmax(logref + _Ppi(P, logpi) / beta, axis=-1)


def mnpo_update(
    P: np.ndarray, history: Sequence[np.ndarray], logref: np.ndarray, *, eta: float, tau: float,
    weights: Sequence[float],
) -> np.ndarray:
    """MNPO: ``(tau/eta) log pi_ref + (1 - tau/eta) sum_j lambda_j log pi_{t-j} + P pi_t / eta``.

    ``history[0]`` is log pi_t, ``history[j]`` log pi_{t-j}; it must hold ``len(weights)`` iterates.
    """
    if len(history) != len(weights):
        raise ValueError(f"history has {len(history)} iterates, weights {len(weights)}")
    r = tau / eta
    mixed = sum(w * h for w, h in zip(weights, history, strict=True))
    return log_softmax((1.0 - r) * mixed + r * logref + _Ppi(P, history[0]) / eta, axis=-1)


def egpo_update(P: np.ndarray, logpi: np.ndarray, logref: np.ndarray, *, eta: float, tau: float) -> np.ndarray:
    """EGPO (extragradient): half step to pi_{t+1/2}, then the INPO step from pi_t against pi_{t+1/2}."""
    half = inpo_update(P, logpi, logref, eta=eta, tau=tau)
    r = tau / eta
    return log_softmax((1.0 - r) * logpi + r * logref + _Ppi(P, half) / eta, axis=-1)


def nash_md_update(
    P: np.ndarray, logpi: np.ndarray, logref: np.ndarray, *, eta: float, tau: float
) -> np.ndarray:
    """Nash-MD: ``log pi_{t+1} = log mix_t + P mix_t / eta``, ``mix_t ∝ pi_t^{1-tau/eta} pi_ref^{tau/eta}``."""
    r = tau / eta
    logmix = log_softmax((1.0 - r) * logpi + r * logref, axis=-1)
    return log_softmax(logmix + _Ppi(P, logmix) / eta, axis=-1)


def bt_fit(
    P: np.ndarray, w: np.ndarray, r0: np.ndarray | None = None, *, ridge: float = 1e-9, iters: int = 100
) -> np.ndarray:
    """Weighted Bradley-Terry fit:
    ``argmin_r sum_{ij} w_ij [-P_ij log sigmoid(r_i - r_j)] + ridge/2 |r - r0|^2``.

    This is the population minimizer of the DPO loss (``r = beta log pi/pi_ref``) on pairs drawn with
    probability ``w_ij`` and soft labels P. The tiny ridge toward ``r0`` (the current implicit reward,
    i.e. training warm-started at pi_t) fixes the additive gauge and keeps the reward of actions that
    the pairs (almost) never cover where pi_t had it, as finite training from pi_t would. Damped
    Newton (convex objective), vectorized over contexts.
    """
    X, A = w.shape[0], w.shape[-1]
    r0 = np.zeros((X, A)) if r0 is None else r0 - r0.mean(-1, keepdims=True)
    r = r0.copy()
    eye = np.eye(A)

    def obj(r: np.ndarray) -> np.ndarray:
        z = r[:, :, None] - r[:, None, :]
        return (w * P * np.logaddexp(0.0, -z)).sum((1, 2)) + 0.5 * ridge * ((r - r0) ** 2).sum(-1)

    f = obj(r)
    for _ in range(iters):
        z = r[:, :, None] - r[:, None, :]
        s = 0.5 * (1.0 + np.tanh(0.5 * z))
        g = (w * (s - P)).sum(-1) + ridge * (r - r0)
        h = w * s * (1.0 - s)
        H = eye * h.sum(-1)[:, None, :] - h + ridge * eye
        d = np.linalg.solve(H, -g[..., None])[..., 0]
        t = np.ones(X)
        for _ls in range(40):
            cand = r + t[:, None] * d
            fc = obj(cand)
            bad = fc > f + 1e-4 * t * (g * d).sum(-1)
            if not bad.any():
                break
            t = np.where(bad, 0.5 * t, t)
        r, f = cand, fc
        if np.abs(g).max() < 1e-13:
            break
    return r


def dpo_update(P: np.ndarray, logpi: np.ndarray, logref: np.ndarray, *, beta: float) -> np.ndarray:
    """Iterative DPO, population form: ``log pi_{t+1} = log pi_ref + r_t / beta`` with r_t = BT fit of P
    weighted by pi_t(y) pi_t(y') (:func:`bt_fit`, warm-started at ``beta log pi_t/pi_ref``)."""
    pi = np.exp(logpi)
    r = bt_fit(P, pi[:, :, None] * pi[:, None, :], beta * (logpi - logref))
    return log_softmax(logref + r / beta, axis=-1)


def _check(algo: str) -> None:
    if algo not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algo!r}; choose from {', '.join(ALGORITHMS)}")


def _prep(P: Any, pi_ref: Any | None) -> tuple[np.ndarray, np.ndarray]:
    Q = to_numpy(P)
    Q = Q[None] if Q.ndim == 2 else Q
    X, A = Q.shape[0], Q.shape[-1]
    ref = np.full((X, A), 1.0 / A) if pi_ref is None else to_numpy(pi_ref)
    ref = np.broadcast_to(ref[None] if ref.ndim == 1 else ref, (X, A)).copy()
    return Q, ref / ref.sum(-1, keepdims=True)


def run_exact(
    P: Any, algo: str, iterations: int, cfg: DynamicsConfig | None = None, *, pi_ref: Any | None = None,
    record_every: int = 1, callback: Callable[[int, np.ndarray], None] | None = None,
) -> Trajectory:
    """Iterate the exact update of ``algo`` from pi_0 = pi_ref (default uniform) for ``iterations`` steps.

    Records the duality gap and the tau-regularized gap (mean/max over contexts) every
    ``record_every`` iterations (and at the last); ``callback(t, logpi)`` is called after each step.
    """
    _check(algo)
    cfg = cfg or DynamicsConfig()
    Q, ref = _prep(P, pi_ref)
    logref = np.log(ref)
    logpi = logref.copy()
    history = [logpi] * len(cfg.mnpo_weights)
    traj = Trajectory(algo)
    traj.record(Q, np.exp(logpi), ref, cfg.tau)
    for t in range(1, iterations + 1):
        if algo == "inpo":
            logpi = inpo_update(Q, logpi, logref, eta=cfg.eta_at(t), tau=cfg.tau)
        elif algo == "sppo":
            logpi = sppo_update(Q, logpi, eta=cfg.sppo_step)
        elif algo == "ipo":
            logpi = ipo_update(Q, logpi, logref, beta=cfg.dpo_beta)
        elif algo == "dpo":
            logpi = dpo_update(Q, logpi, logref, beta=cfg.dpo_beta)
        elif algo == "mnpo":
            logpi = mnpo_update(Q, history, logref, eta=cfg.eta, tau=cfg.tau, weights=cfg.mnpo_weights)
            history = [logpi, *history[:-1]]
        elif algo == "egpo":
            logpi = egpo_update(Q, logpi, logref, eta=cfg.eta, tau=cfg.tau)
        else:
            logpi = nash_md_update(Q, logpi, logref, eta=cfg.eta, tau=cfg.tau)
        if callback is not None:
            callback(t, logpi)
        if t % record_every == 0 or t == iterations:
            traj.record(Q, np.exp(logpi), ref, cfg.tau)
    traj.pi = np.exp(logpi)
    return traj


# ----------------------------------------------------------------------------- sampled updates
def _gather(logp: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """log pi(action): the 'summed sequence log-prob' of a one-action response, shape of idx."""
    return torch.gather(logp, 1, idx.reshape(idx.shape[0], -1)).reshape(idx.shape)


class _Sampler:
    """Draws responses from a policy and labels from P, counting samples and judge calls."""

    def __init__(self, P: torch.Tensor, seed: int) -> None:
        self.P = P
        self.g = torch.Generator().manual_seed(seed)
        self.samples = 0
        self.comparisons = 0
        self.rows = torch.arange(P.shape[0])

    def draw(self, logits: torch.Tensor, n: int) -> torch.Tensor:
        self.samples += logits.shape[0] * n
        return torch.multinomial(torch.softmax(logits, -1), n, replacement=True, generator=self.g)

    def prob(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Judge probability P(a > b) per context, a/b of shape [X, ...]."""
        self.comparisons += a.numel()
        x = self.rows.reshape(-1, *([1] * (a.ndim - 1))).expand_as(a)
        return self.P[x, a, b]

    def labelled_pairs(self, logits: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n pairs y, y' ~ softmax(logits) per context, ordered (chosen, rejected) by a Bernoulli label."""
        y = self.draw(logits, 2 * n)
        a, b = y[:, :n], y[:, n:]
        win = torch.bernoulli(self.prob(a, b), generator=self.g).bool()
        return torch.where(win, a, b), torch.where(win, b, a)


def _train(
    init: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor], cfg: DynamicsConfig,
    optimizer: str | None = None, lr: float | None = None,
) -> torch.Tensor:
    """``cfg.steps`` optimizer steps from ``init`` on the per-example losses ``loss_fn(log_softmax(logits))``
    ([X, n]), averaged over each context's examples and summed over contexts (contexts are independent
    problems, so the step size does not depend on X). Returns the new logits."""
    logits = init.detach().clone().requires_grad_(True)
    optimizer, lr = optimizer or cfg.optimizer, cfg.lr if lr is None else lr
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam([logits], lr=lr)
    elif optimizer == "sgd":
        opt = torch.optim.SGD([logits], lr=lr)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    for _ in range(cfg.steps):
        opt.zero_grad(set_to_none=True)
        per = loss_fn(torch.log_softmax(logits, -1))
        loss = per.reshape(per.shape[0], -1).mean(-1).sum()
        loss.backward()
        opt.step()
    return logits.detach()


def _sampled_step(
    algo: str, S: _Sampler, theta: torch.Tensor, logref: torch.Tensor, hist: list[torch.Tensor],
    cfg: DynamicsConfig, t: int = 1,
) -> torch.Tensor:
    """One iteration (number ``t``) of the sampled version of ``algo``; returns the new logits."""
    eta, tau = (cfg.eta_at(t) if algo == "inpo" else cfg.eta), cfg.tau
    prev = torch.log_softmax(theta, -1)
    if algo in ("inpo", "ipo", "nash-md", "mnpo"):
        src = theta
        if algo == "nash-md":  # regression form: pairs from the geometric mixture, anchor pi_t
            src = (1.0 - tau / eta) * prev + (tau / eta) * logref
        c, r = S.labelled_pairs(src, cfg.pairs)
        rc, rr = _gather(logref, c), _gather(logref, r)
        pc, pr = _gather(prev, c), _gather(prev, r)
        if algo == "ipo":
            def fn(lp: torch.Tensor) -> torch.Tensor:
                return losses.ipo_loss(_gather(lp, c), _gather(lp, r), rc, rr, beta=cfg.dpo_beta)
        elif algo == "mnpo":
            hc = torch.stack([_gather(h, c) for h in hist], -1)
            hr = torch.stack([_gather(h, r) for h in hist], -1)

            def fn(lp: torch.Tensor) -> torch.Tensor:
                return losses.mnpo_loss(
                    _gather(lp, c), _gather(lp, r), rc, rr, hc, hr, eta=eta, tau=tau, weights=list(cfg.mnpo_weights)
                )
        else:
            def fn(lp: torch.Tensor) -> torch.Tensor:
                return losses.inpo_loss(_gather(lp, c), _gather(lp, r), rc, rr, pc, pr, eta=eta, tau=tau)
        return _train(theta, fn, cfg)
    if algo == "egpo":
        half = theta
        for opponent_step in range(2):  # half step (pairs from pi_t), full step (pairs from pi_{t+1/2})
            c, r = S.labelled_pairs(theta if opponent_step == 0 else half, cfg.pairs)
            rc, rr, pc, pr = _gather(logref, c), _gather(logref, r), _gather(prev, c), _gather(prev, r)

            def fn(lp: torch.Tensor, c: torch.Tensor = c, r: torch.Tensor = r, rc: torch.Tensor = rc,
                   rr: torch.Tensor = rr, pc: torch.Tensor = pc, pr: torch.Tensor = pr) -> torch.Tensor:
                return losses.egpo_loss(_gather(lp, c), _gather(lp, r), rc, rr, pc, pr, eta=eta, tau=tau)
            half = _train(theta, fn, cfg)
        return half
    # sppo / dpo: groups of K samples per context, judged against each other
    X, G, K = theta.shape[0], cfg.groups, cfg.k
    y = S.draw(theta, G * K).reshape(X, G, K)
    M = S.prob(y[..., :, None].expand(X, G, K, K), y[..., None, :].expand(X, G, K, K))  # [X,G,K,K]
    S.comparisons -= X * G * K  # the diagonal (a response against itself) is not a judge call
    score = win_rates(M, cfg.winrate_estimator)  # P^(y_k > pi_t); the same order under either estimator
    order = torch.argsort(score, dim=-1, descending=True)
    ys = torch.gather(y, -1, order)
    ws = torch.gather(score, -1, order)
    if algo == "sppo":
        h = K // 2
        c, r = ys[..., :h], ys[..., K - h:].flip(-1)
        wc, wr = ws[..., :h], ws[..., K - h:].flip(-1)
        pc, pr = _gather(prev, c), _gather(prev, r)

        def fn(lp: torch.Tensor) -> torch.Tensor:
            return losses.sppo_loss(_gather(lp, c), _gather(lp, r), pc, pr, wc, wr, eta=cfg.sppo_step)
        return _train(theta, fn, cfg)
    # dpo: best vs worst of each group, reference fixed at pi_ref
    c, r = ys[..., 0], ys[..., -1]
    keep = (c != r).to(theta.dtype)
    rc, rr = _gather(logref, c), _gather(logref, r)

    def fn(lp: torch.Tensor) -> torch.Tensor:
        return losses.dpo_loss(_gather(lp, c), _gather(lp, r), rc, rr, beta=cfg.dpo_beta) * keep
    return _train(theta, fn, cfg, "adam", cfg.dpo_lr)


def run_sampled(
    P: Any, algo: str, iterations: int, cfg: DynamicsConfig | None = None, *, pi_ref: Any | None = None,
    seed: int = 0, record_every: int = 1,
) -> Trajectory:
    """The sampled version of ``algo`` (see the module docstring): a softmax table trained by Adam on
    the :mod:`inpo.losses` function of the algorithm, from pi_0 = pi_ref (default uniform).

    Deterministic for a given ``seed`` (torch.Generator for all sampling). Gaps are of the exact
    game evaluated at the learned tables.
    """
    _check(algo)
    cfg = cfg or DynamicsConfig()
    Q, ref = _prep(P, pi_ref)
    Pt = torch.from_numpy(np.ascontiguousarray(Q))
    logref = torch.log(torch.from_numpy(ref))
    theta = logref.clone()
    hist = [torch.log_softmax(theta, -1)] * len(cfg.mnpo_weights)
    S = _Sampler(Pt, seed)
    traj = Trajectory(algo)
    traj.record(Q, ref, ref, cfg.tau)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only add contention
    try:
        for t in range(1, iterations + 1):
            theta = _sampled_step(algo, S, theta, logref, hist, cfg, t)
            hist = [torch.log_softmax(theta, -1), *hist[:-1]]
            if t % record_every == 0 or t == iterations:
                traj.record(Q, torch.softmax(theta, -1).numpy(), ref, cfg.tau)
    finally:
        torch.set_num_threads(threads)
    traj.pi = torch.softmax(theta, -1).numpy()
    traj.samples, traj.comparisons = S.samples, S.comparisons
    return traj
