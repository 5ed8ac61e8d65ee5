"""The loss library: one pure function per algorithm.

Conventions (DESIGN.md section 3 and 6):

* Inputs are *summed* sequence log-probs log pi(y|x) over response tokens, one value per example,
  named ``<model>_<side>``: ``policy_chosen`` = log pi_theta(y_w|x), ``ref_rejected`` = log pi_ref(y_l|x),
  ``prev_*`` = log pi_t (the iterate at the start of the iteration, the "anchor"), ``hist_*`` = log-probs
  of the last n iterates stacked on the last dimension.
* Hyperparameters are keyword-only. Every function returns the per-example loss (no reduction): the
  loop averages, sums or weights as it needs.
* ``d(pi) = log pi(y_w|x) - log pi(y_l|x)``.

Parametrizations. INPO (Zhang et al. 2024) is written with a step size ``eta`` and a KL-regularization
``tau``. Public implementations of INPO/IPO-style squared losses usually write the target margin as
``1 / (2 * beta)``; the mapping is ``eta = 1 / beta`` (so ``eta / 2 == 1 / (2 * beta)``) and the
anchor mixing weight ``eta * tau`` stays explicit. The config exposes ``eta`` and ``tau``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _margin(chosen: Tensor, rejected: Tensor) -> Tensor:
    return chosen - rejected


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
    r"""INPO: Iterative Nash Policy Optimization (Zhang et al. 2024, arXiv 2407.00617, Alg. 1 / Eq. 9).

    Online mirror descent on the KL-regularized preference game,
    ``pi_{t+1}(y) ∝ pi_t(y)^{1-eta*tau} pi_ref(y)^{eta*tau} exp(eta * P(y > pi_t))``, learned from pairs
    (y_w, y_l) sampled from pi_t and labelled by the preference oracle with the squared loss

        h_t(pi) = d(pi) - eta*tau * d(pi_ref) - (1 - eta*tau) * d(pi_t)
        L_t(pi) = (h_t(pi) - eta / 2)^2

    Its population minimizer is exactly the mirror-descent update (the least-squares projection of the
    label target ``eta * (1{y_w > y_l} - 1/2)`` onto differences f(y) - f(y') gives
    f(y) = eta * P(y > pi_t) + const). Symbols: eta -> ``eta``, tau -> ``tau``, pi_t -> ``prev_*``.
    Public code writing the target as ``1/(2*beta)`` uses ``beta = 1/eta``.
    Requires ``eta * tau <= 1``.
    """
    r = eta * tau
    h = (
        _margin(policy_chosen, policy_rejected)
        - r * _margin(ref_chosen, ref_rejected)
        - (1.0 - r) * _margin(prev_chosen, prev_rejected)
    )
    return (h - eta / 2.0) ** 2


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
    r"""MNPO: Multiplayer Nash Preference Optimization (smiles724/MNPO, arXiv 2509.23102).

    The opponents are the last n iterates pi_{t-j}, j = 0..n-1 (``hist_*[..., j]``), mixed with weights
    lambda_j (``weights``, summing to 1). The update is
    ``pi_{t+1} ∝ pi_ref^{eta*tau} prod_j pi_{t-j}^{(1-eta*tau) lambda_j} exp(eta * P(y > pi_bar))``, and its loss

        L(pi) = (d(pi) - eta*tau * d(pi_ref) - (1 - eta*tau) * sum_j lambda_j d(pi_{t-j}) - eta/2)^2.

    With n = 1 (``weights=[1.0]``) this is exactly :func:`inpo_loss`.
    """
    w = torch.as_tensor(weights, dtype=hist_chosen.dtype, device=hist_chosen.device)
    if w.ndim != 1 or w.shape[0] != hist_chosen.shape[-1]:
        raise ValueError(f"weights has {w.numel()} entries but hist_* has {hist_chosen.shape[-1]} iterates")
    r = eta * tau
    hist_margin = (_margin(hist_chosen, hist_rejected) * w).sum(-1)
    h = _margin(policy_chosen, policy_rejected) - r * _margin(ref_chosen, ref_rejected) - (1.0 - r) * hist_margin
    return (h - eta / 2.0) ** 2


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

    With ``chosen_lengths`` / ``rejected_lengths`` (response token counts) every log-prob is divided by
    its length first: the per-token-averaged variant that TRL's ``loss_type="ipo"`` computes. Default
    (no lengths) is the paper's summed form.
    """
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("give both chosen_lengths and rejected_lengths, or neither")
    if chosen_lengths is not None and rejected_lengths is not None:
        cl, rl = chosen_lengths.to(policy_chosen.dtype), rejected_lengths.to(policy_chosen.dtype)
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
    ``-log sigmoid(beta * (d(pi) - d(pi_ref)))``.

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
    r"""SPPO: Self-Play Preference Optimization (Wu et al. 2024, arXiv 2405.00675, Eq. 4.4).

    Multiplicative weights ``pi_{t+1}(y) ∝ pi_t(y) exp(eta * P(y > pi_t))`` learned by regressing the
    log-ratio of each response on its estimated win-rate:

        L = ((log pi(y_w)/pi_t(y_w) - eta (P^_w - 1/2))^2 + (log pi(y_l)/pi_t(y_l) - eta (P^_l - 1/2))^2) / 2

    ``winrate_*`` are P^(y > pi_t), estimated from the K samples of the prompt. The paper's code writes
    ``eta = 1/beta``. No pi_ref term: SPPO regularizes only through the anchor pi_t.
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
    r"""SPPO with hard labels (TRL's ``loss_type="sppo_hard"``): :func:`sppo_loss` with the win-rate
    estimates replaced by the pair label, P^_w = 1 and P^_l = 0:
    ``((log pi/pi_t (y_w) - eta/2)^2 + (log pi/pi_t (y_l) + eta/2)^2) / 2``.
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
    r"""EGPO: Extragradient Preference Optimization (Zhou et al. 2025, arXiv 2503.08942), online-IPO form.

    Extragradient on the KL-regularized game, from pi_t:

        half step  pi_{t+1/2} ∝ pi_t^{1-eta*tau} pi_ref^{eta*tau} exp(eta P(y > pi_t))
        full step  pi_{t+1}   ∝ pi_t^{1-eta*tau} pi_ref^{eta*tau} exp(eta P(y > pi_{t+1/2}))

    Each step is learned with the same online-IPO squared loss on pairs sampled from the step's
    opponent (pi_t for the half step, pi_{t+1/2} for the full step), always anchored at pi_t
    (``anchor_*``):

        L = (d(pi) - eta*tau * d(pi_ref) - (1 - eta*tau) * d(pi_t) - eta/2)^2.

    The loss has INPO's form; EGPO differs in its step scheme (two steps per iteration, the second
    with the half-step policy as opponent but the *same* anchor), which the loop/dynamics implement.
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
    r"""Nash-MD-PG (Munos et al. 2023, "Nash Learning from Human Feedback", arXiv 2312.00886, Sec. 7).

    For y ~ pi and an opponent y' ~ pi_mix^beta ∝ pi^{1-beta} pi_ref^{beta} (the geometric mixture, here
    ``beta`` is the paper's mixing coefficient), ``preference`` = P(y > y'). The REINFORCE surrogate

        L = -[(P(y > y') - 1/2) - beta * (log pi(y) - log pi_ref(y))]_{stop-grad} * log pi(y)

    has gradient (in expectation) -grad[P(pi > pi_mix) - beta * KL(pi || pi_ref)], the Nash-MD
    policy-gradient direction. ``policy_logps`` / ``ref_logps`` are log-probs of y.
    """
    advantage = (preference - 0.5) - beta * (policy_logps - ref_logps)
    return -advantage.detach() * policy_logps


def preference_metrics(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    *,
    beta: float = 1.0,
) -> dict[str, float]:
    """TRL-named metrics of a batch: implicit rewards ``beta * log pi/pi_ref`` and their margins."""
    with torch.no_grad():
        rc = beta * (policy_chosen - ref_chosen)
        rr = beta * (policy_rejected - ref_rejected)
        return {
            "rewards/chosen": rc.mean().item(),
            "rewards/rejected": rr.mean().item(),
            "rewards/margins": (rc - rr).mean().item(),
            "rewards/accuracies": (rc > rr).float().mean().item(),
            "logps/chosen": policy_chosen.mean().item(),
            "logps/rejected": policy_rejected.mean().item(),
        }
