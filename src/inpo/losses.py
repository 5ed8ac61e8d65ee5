"""The loss library: one pure function per algorithm.

Conventions (DESIGN.md section 3 and 6):

* Inputs are sequence log-probs log pi(y|x) of the responses, one value per example (summed over response
  tokens, or their per-token mean under ``train.logprob_reduction=mean``; the loop reduces every log-prob of a
  batch, policy and anchors alike, the same way before calling a loss),
  named ``<model>_<side>``: ``policy_chosen`` = log pi_theta(y_w|x), ``ref_rejected`` = log pi_ref(y_l|x),
  ``prev_*`` = log pi_t (the iterate at the start of the iteration, the "anchor"), ``hist_*`` = log-probs
  of the last n iterates stacked on the last dimension.
* Hyperparameters are keyword-only. Every function returns the per-example loss (no reduction): the
  loop averages, sums or weights as it needs.
* ``d(pi) = log pi(y_w|x) - log pi(y_l|x)``.

Parametrizations (checked against the papers and their public code; docs/algorithms/*.md has one page
per algorithm with the derivations and the tests that pin them):

=========  ====================  ==================================================================
loss       our arguments         paper symbols / public-code names
=========  ====================  ==================================================================
INPO       ``eta``, ``tau``      paper eta (1/eta = OMD learning rate), tau (KL reg.), exactly:
                                 target ``1/(2*eta)``, anchor weights ``tau/eta``, ``1 - tau/eta``.
MNPO       ``eta``, ``tau``,     smiles724/MNPO ``eta`` (target ``1/(2*eta)``) = ours, ``ratio =
           ``weights``           tau/eta``, ``history_weights`` (normalized to sum 1, as there).
IPO        ``beta``              Azar et al. tau (TRL ``beta``): target ``1/(2*beta)``.
DPO        ``beta``              Rafailov et al. beta (TRL ``beta``).
SPPO       ``eta``               Wu et al. eta (MW step); uclaml/SPPO and TRL: ``eta = 1/beta``.
EGPO       ``eta``, ``tau``      INPO's eta, tau: Zhou et al.'s step eta = ``1/eta``, beta = ``tau``.
Nash-MD    ``beta``              Munos et al. tau (KL reg.) = TRL NashMD ``beta``; the paper's mixture
                                 coefficient beta (TRL ``mixture_coef``) belongs to the sampler.
=========  ====================  ==================================================================

Population minimizers. Every squared pairwise loss here is a least-squares regression of
``f(y_w) - f(y_l)`` on a label, with ``f = log pi - (anchor terms)``. With pairs (y, y') drawn from mu x mu
and labels from P, the weighted least-squares solution is ``f(y) = c * P(y > mu) + const`` on supp(mu)
(set the derivative in f(z) to zero and use P(z, y) - 1/2 = -(P(y, z) - 1/2)). So *the opponent of the
update is the distribution the pairs are sampled from*; the loop samples from pi_t.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _margin(chosen: Tensor, rejected: Tensor) -> Tensor:
    return chosen - rejected


def _check_eta_tau(eta: float, tau: float) -> None:
    if not eta > 0:
        raise ValueError(f"eta must be > 0, got {eta}")
    if not tau >= 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    if tau > eta:
        raise ValueError(f"tau must be <= eta (anchor weight tau/eta in [0, 1]; eta={eta}, tau={tau})")


def inpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    prev_chosen: Tensor,
    prev_rejected: Tensor,
    *,
    eta: float,
    tau: float,
) -> Tensor:
    r"""INPO: Iterative Nash Policy Optimization (Zhang et al. 2024, arXiv 2407.00617, ICLR 2025 version).

    Online mirror descent on the KL-regularized preference game (Sec. 3.1, Eq. 4:
    ``pi_{t+1} = argmin <grad l_t(pi_t), pi> + eta KL(pi || pi_t)``, 1/eta the OMD learning rate, tau the KL
    regularization), whose closed form is Eq. 5 / Eq. 11,
    ``pi_{t+1}(y) ∝ exp(P(y > pi_t) / eta) pi_ref(y)^{tau/eta} pi_t(y)^{1 - tau/eta}``, learned without win-rate
    estimates from pairs (y, y') ~ pi_t x pi_t labelled by the preference oracle (Eq. 8):

        h_t(pi; y_w, y_l) = d(pi) - (tau/eta) d(pi_ref) - (1 - tau/eta) d(pi_t)
        L_t(pi)           = E[(h_t(pi; y_w, y_l) - 1/(2 eta))^2]

    Why 1/(2 eta): ``(h(y_w, y_l) - 1/(2 eta))^2 = (h(y, y') - (1{y > y'} - 1/2)/eta)^2`` because h is
    antisymmetric, so the label target is ``(P(y > y') - 1/2)/eta`` in expectation, and its least-squares
    projection onto differences f(y) - f(y') is ``f(y) = P(y > pi_t)/eta + const``: the OMD update exactly
    (tested in tests/test_losses.py on a tabular game to 1e-7, also at the paper's eta = 0.005, tau = eta/3).

    Symbols -> arguments, exactly the paper's: eta -> ``eta``, tau -> ``tau``, pi_t -> ``prev_*``, pi_ref ->
    ``ref_*``. smiles724/MNPO's INPO/MNPO trainer (``logits_shift = 1/(2*eta)``) uses the same ``eta``, and
    ``ratio = tau/eta``. Special cases: ``tau = eta`` is IPO with ``beta = eta`` (= tau); at ``pi = pi_t`` the
    gradient equals ``tau/eta`` times the IPO(beta=tau) gradient (online IPO, see :func:`egpo_loss`).
    Requires ``eta > 0`` and ``0 <= tau <= eta`` (ValueError otherwise).
    """
    _check_eta_tau(eta, tau)
    r = tau / eta
    h = (
        _margin(policy_chosen, policy_rejected)
        - r * _margin(ref_chosen, ref_rejected)
        - (1.0 - r) * _margin(prev_chosen, prev_rejected)
    )
    return (h - 1.0 / (2.0 * eta)) ** 2


def mnpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    hist_chosen: Tensor,
    hist_rejected: Tensor,
    *,
    eta: float,
    tau: float,
    weights: Tensor | list[float],
) -> Tensor:
    r"""MNPO: Multiplayer Nash Preference Optimization (Wu, Huang et al. 2025, arXiv 2509.23102;
    code smiles724/MNPO, ``mnpo_scripts/mnpo_trainer.py``).

    The anchor is a geometric mixture of the last n iterates pi_{t-j}, j = 0..n-1 (``hist_*[..., j]``,
    j = 0 the most recent), with weights lambda_j (``weights``; normalized to sum to 1 as the reference
    code does, ``lambda_j = w_j / sum(w)``):

        L(pi) = (d(pi) - (tau/eta) d(pi_ref) - (1 - tau/eta) sum_j lambda_j d(pi_{t-j}) - 1/(2 eta))^2.

    Population minimizer, for pairs drawn from mu x mu (the loop: mu = pi_t):
    ``pi_{t+1} ∝ pi_ref^{tau/eta} prod_j pi_{t-j}^{(1-tau/eta) lambda_j} exp(P(y > mu) / eta)``.
    Drawing the pairs from the arithmetic mixture sum_j lambda_j pi_{t-j} instead makes the preference term
    the multiplayer one, ``sum_j lambda_j P(y > pi_{t-j})``.

    Reference-code mapping (``mnpo_trainer.py``): its ``eta`` is ours (target ``logits_shift = 1/(2*eta)``), its
    ``ratio = tau/eta``; its experiments: eta = 0.0075, ratio = 1/3, two history iterates with equal weights.
    Upstream trains on per-token *mean* log-probs (SimPO's ``average_log_prob=True``): our
    ``train.logprob_reduction`` defaults to ``mean`` for MNPO. With n = 1 this is exactly :func:`inpo_loss`
    (tested bit-for-bit).
    """
    _check_eta_tau(eta, tau)
    w = torch.as_tensor(weights, dtype=hist_chosen.dtype, device=hist_chosen.device)
    if w.ndim != 1 or w.shape[0] != hist_chosen.shape[-1]:
        raise ValueError(f"weights has {w.numel()} entries but hist_* has {hist_chosen.shape[-1]} iterates")
    if bool((w < 0).any()) or not float(w.sum()) > 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {w.tolist()}")
    w = w / w.sum()
    r = tau / eta
    hist_margin = (_margin(hist_chosen, hist_rejected) * w).sum(-1)
    h = (
        _margin(policy_chosen, policy_rejected)
        - r * _margin(ref_chosen, ref_rejected)
        - (1.0 - r) * hist_margin
    )
    return (h - 1.0 / (2.0 * eta)) ** 2


def ipo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    *,
    beta: float,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
) -> Tensor:
    r"""IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", arXiv 2310.12036, Eq. 17): ``(d(pi) - d(pi_ref) - 1/(2*beta))^2``.

    Symbols -> arguments: the paper's regularization tau -> ``beta`` (TRL's name and convention).
    Population minimizer for pairs from mu x mu labelled by P: ``pi ∝ pi_ref exp(P(y > mu) / beta)``
    (Azar et al., the Psi = identity solution; tested on a tabular game). With mu = pi_t re-sampled each
    iteration this is online/iterative IPO; it equals :func:`inpo_loss` with ``eta = tau = beta``.

    Default (no lengths): the paper's summed form. With ``chosen_lengths`` / ``rejected_lengths`` (response
    token counts) every log-prob, policy and reference, is divided by its length first, clamped at 1 token
    (an empty response, immediate EOS, has log-prob 0 and is divided by 1): what TRL's
    ``DPOTrainer(loss_type="ipo")`` computes (``scores / mask.sum(1).clamp(min=1.0)``).
    """
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("give both chosen_lengths and rejected_lengths, or neither")
    if chosen_lengths is not None and rejected_lengths is not None:
        cl = chosen_lengths.to(policy_chosen.dtype).clamp(min=1.0)
        rl = rejected_lengths.to(policy_chosen.dtype).clamp(min=1.0)
        policy_chosen, ref_chosen = policy_chosen / cl, ref_chosen / cl
        policy_rejected, ref_rejected = policy_rejected / rl, ref_rejected / rl
    logits = _margin(policy_chosen, policy_rejected) - _margin(ref_chosen, ref_rejected)
    return (logits - 1.0 / (2.0 * beta)) ** 2


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    *,
    beta: float,
) -> Tensor:
    r"""DPO, sigmoid loss (Rafailov et al. 2023, arXiv 2305.18290, Eq. 7):
    ``-log sigmoid(beta * (d(pi) - d(pi_ref)))``. beta -> ``beta`` (TRL ``loss_type="sigmoid"``).

    Population minimizer: the pointwise optimum is ``beta*(f(y) - f(y')) = logit P(y > y')`` with
    ``f = log pi/pi_ref``, reachable only when P is Bradley-Terry, ``P = sigmoid(r(y) - r(y'))``; then
    ``pi ∝ pi_ref exp(r / beta)`` whatever the pair distribution (tested). For intransitive P there is no
    such policy, which is why DPO cannot represent a mixed Nash equilibrium.

    Used iteratively (Dong et al. 2024, "RLHF Workflow", arXiv 2405.07863): K samples per prompt from
    pi_t, best-vs-worst pair by the judge, reference kept at pi_ref (the SFT model).
    """
    logits = _margin(policy_chosen, policy_rejected) - _margin(ref_chosen, ref_rejected)
    return -F.logsigmoid(beta * logits)


def sppo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    prev_chosen: Tensor,
    prev_rejected: Tensor,
    winrate_chosen: Tensor,
    winrate_rejected: Tensor,
    *,
    eta: float,
) -> Tensor:
    r"""SPPO: Self-Play Preference Optimization (Wu et al. 2024, arXiv 2405.00675, Algorithm 1).

    Multiplicative weights ``pi_{t+1}(y) = pi_t(y) exp(eta * P(y > pi_t)) / Z_t`` learned by regressing
    each response's log-ratio on its estimated win-rate, with ``log Z_t`` replaced by the constant eta/2:

        L = ((log pi(y_w)/pi_t(y_w) - eta (P^_w - 1/2))^2 + (log pi(y_l)/pi_t(y_l) - eta (P^_l - 1/2))^2) / 2

    ``winrate_*`` = P^(y > pi_t), estimated from the K samples of the prompt; pi_t -> ``prev_*``.
    Mapping: the official code (uclaml/SPPO ``sppo/trainer.py``, ``loss_type="sppo"``) computes exactly this,
    ``(logits_w - (P_w - 0.5)/beta)^2`` etc. with the reference model reset to pi_t, so ``eta = 1/beta``, given
    the same win-rate estimates: its ``scripts/compute_prob.py`` includes the self-comparison (1/2) and divides by
    K, ``P^ = (1/2 + sum_{j != i} P_ij) / K``, whose mean is ``1/2 + (K-1)/K (P(y > pi_t) - 1/2)``: its effective
    MW step is ``eta (K-1)/K``. :func:`win_rates` offers both estimators (``with_self``, the
    default, as there; ``leave_one_out``, mean over the other K-1, unbiased: effective step ``eta``).
    No pi_ref term: SPPO regularizes only through the anchor pi_t.

    The loss is *pointwise*, so it also pins the normalizer: over an unconstrained (unnormalized) table the
    minimizer is ``log pi = log pi_t + eta (P(y > pi_t) - 1/2)``, whose mass ``Z_t e^{-eta/2} >= 1`` (Jensen;
    ``= 1`` only when pi_t is already a Nash equilibrium on its support). A normalized policy cannot hit
    it, and the constrained minimizer is ``log pi/pi_t = a + u`` with ``a = eta (P(y > pi_t) - 1/2)`` and
    ``u = -W(-S e^a)`` (Lambert W, one scalar S fixed by normalization). It differs from the MW update by
    O(eta^3) in log-space: total variation 5e-5 at eta = 0.5 but 3e-2 at eta = 4 and 0.19 at eta = 8 on
    the test game (docs/algorithms/sppo.md). Both facts are tested.
    """
    lw = policy_chosen - prev_chosen - eta * (winrate_chosen - 0.5)
    ll = policy_rejected - prev_rejected - eta * (winrate_rejected - 0.5)
    return (lw**2 + ll**2) / 2.0


def sppo_hard_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    prev_chosen: Tensor,
    prev_rejected: Tensor,
    *,
    eta: float,
) -> Tensor:
    r"""SPPO with hard labels: :func:`sppo_loss` with the win-rate estimates replaced by the pair label,
    P^_w = 1 and P^_l = 0:
    ``((log pi/pi_t (y_w) - eta/2)^2 + (log pi/pi_t (y_l) + eta/2)^2) / 2``.

    Deviation: TRL's ``loss_type="sppo_hard"`` is ``(a - 0.5/beta)^2 + (b + 0.5/beta)^2`` without the
    1/2, so it equals ``2 *`` this with ``beta = 1/eta`` (same minimizer; only the gradient scale differs).
    In expectation over labels it has the same minimizer as :func:`sppo_loss` with exact win-rates.
    """
    ones = torch.ones_like(policy_chosen)
    return sppo_loss(
        policy_chosen, policy_rejected, prev_chosen, prev_rejected, ones, torch.zeros_like(ones), eta=eta
    )


def egpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    anchor_chosen: Tensor,
    anchor_rejected: Tensor,
    *,
    eta: float,
    tau: float,
) -> Tensor:
    r"""EGPO: Extragradient Preference Optimization (Zhou, Fazel, Du 2025, arXiv 2503.08942, COLM 2025).

    Extragradient on the KL-regularized game, written in INPO's symbols (``eta``, ``tau`` as in
    :func:`inpo_loss`; the paper's step size eta_EGPO = ``1/eta``, its KL coefficient beta = ``tau``), from pi_t:

        half step  pi_{t+1/2} ∝ pi_t^{1-tau/eta} pi_ref^{tau/eta} exp(P(y > pi_t) / eta)
        full step  pi_{t+1}   ∝ pi_t^{1-tau/eta} pi_ref^{tau/eta} exp(P(y > pi_{t+1/2}) / eta)

    This function learns each step exactly, with INPO's regression loss anchored at pi_t (``anchor_*``) in
    *both* steps and pairs drawn from the step's opponent (pi_t for the half step, pi_{t+1/2} for the full
    step; the loop implements that):

        L = (d(pi) - (tau/eta) d(pi_ref) - (1 - tau/eta) d(pi_t) - 1/(2 eta))^2.

    Deviation from the paper's implementation: zhourunlong/EGPO does not minimize per step; it takes one
    gradient step of the *online IPO* loss ``(d(pi) - d(pi_ref) - (P(y > y'') - P(y' > y''))/beta)^2``
    (samples from the current policy, anchor pi_ref), against pi_t and then against pi_{t+1/2}, in
    parameter space (its ``simulations`` and ``lms/trainers/extragradient_trainer.py``). The two agree to
    first order: at pi = pi_t the gradient of this loss is ``tau/eta`` times the gradient of
    :func:`ipo_loss` with ``beta = tau`` (tested). Minimizing to convergence gives the exact tabular step
    (tested: half and full step on a game to 1e-7).
    """
    return inpo_loss(
        policy_chosen, policy_rejected, ref_chosen, ref_rejected, anchor_chosen, anchor_rejected,
        eta=eta, tau=tau,
    )


def nash_md_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    preference: Tensor,
    *,
    beta: float,
) -> Tensor:
    r"""Nash-MD-PG (Munos et al. 2023, "Nash Learning from Human Feedback", arXiv 2312.00886, ICML 2024).

    For y ~ pi and an opponent y' ~ pi_mix ∝ pi^{1-m} pi_ref^{m} (the geometric mixture; the paper's
    mixture coefficient m is written beta there, TRL ``mixture_coef``; it is used by the *sampler*, not
    here), ``preference`` = P(y > y'). The REINFORCE surrogate

        L = -[(P(y > y') - 1/2) - beta * (log pi(y) - log pi_ref(y))]_{stop-grad} * log pi(y)

    has expected gradient ``-grad_pi [P(pi > pi_mix) - beta * KL(pi || pi_ref)]`` with pi_mix held fixed
    (E_pi[grad log pi] = 0 makes the 1/2 a baseline and ``E_pi[log(pi/pi_ref) grad log pi] = grad KL``).
    Symbols -> arguments: ``beta`` = the KL-regularization coefficient (the paper's tau; TRL NashMD
    ``beta``), *not* the mixture coefficient. Its stationary point for a fixed opponent mu is
    ``pi ∝ pi_ref exp(P(y > mu) / beta)`` (tested).

    Deviation: TRL's NashMDTrainer applies the KL term per token, ``beta * sum_t [log pi/pi_ref]_t(sg) *
    log pi_t``; here it is sequence-level (the unbiased REINFORCE form). Not a minimizable loss: use
    one or a few gradient steps per batch of fresh samples.
    """
    advantage = (preference - 0.5) - beta * (policy_logps - ref_logps)
    return -advantage.detach() * policy_logps


def win_rates(m: Tensor, estimator: str = "with_self") -> Tensor:
    """P^(y_i > pi_t) per sample from the judge matrices ``m`` [N, K, K].

    * ``with_self`` (uclaml/SPPO ``scripts/compute_prob.py``: the row sum of the K x K matrix including the
      self-comparison M[i, i] = 1/2, divided by K): ``(sum_j M[i, j]) / K``. Its expectation is
      ``1/2 + (K-1)/K (P(y_i > pi_t) - 1/2)``, so SPPO's effective step is ``eta (K-1)/K``.
    * ``leave_one_out``: the mean over the other K-1 samples, ``(sum_{j != i} M[i, j]) / (K-1)``, unbiased for
      P(y_i > pi_t).

    The two are an increasing affine map of each other, so rankings (best-vs-worst pairs) are the same.
    """
    k = m.shape[-1]
    if estimator == "with_self":
        return (m.sum(-1) - m.diagonal(dim1=-2, dim2=-1) + 0.5) / k
    if estimator == "leave_one_out":
        return (m.sum(-1) - m.diagonal(dim1=-2, dim2=-1)) / (k - 1)
    raise ValueError(f"unknown win-rate estimator {estimator!r} (with_self | leave_one_out)")


def preference_metrics(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    *,
    beta: float = 1.0,
    weights: Tensor | None = None,
) -> dict[str, float]:
    """TRL-named metrics of a batch: implicit rewards ``beta * log pi/pi_ref`` and their margins
    (weighted means when ``weights`` are given, e.g. soft-label pair weights)."""
    with torch.no_grad():
        w = torch.ones_like(policy_chosen) if weights is None else weights.to(policy_chosen.dtype)
        w = w / w.sum()
        rc = beta * (policy_chosen - ref_chosen)
        rr = beta * (policy_rejected - ref_rejected)
        return {
            "rewards/chosen": (w * rc).sum().item(),
            "rewards/rejected": (w * rr).sum().item(),
            "rewards/margins": (w * (rc - rr)).sum().item(),
            "rewards/accuracies": (w * (rc > rr).to(w.dtype)).sum().item(),
            "logps/chosen": (w * policy_chosen).sum().item(),
            "logps/rejected": (w * policy_rejected).sum().item(),
        }
