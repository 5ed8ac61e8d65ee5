"""INPO / IPO losses inside TRL's ``DPOTrainer`` (trl >= 1.0), for users who stay on TRL.

:class:`NashDPOTrainer` is ``trl.DPOTrainer`` with ``compute_loss`` replaced; everything else (dataset
tokenization, the collator, PEFT, reference handling, ``precompute_ref_log_probs``, logging, saving) is TRL's.
One INPO iteration t in TRL terms (Zhang et al. 2024, arXiv 2407.00617, Algorithm 1)::

    trainer = NashDPOTrainer(model=pi_t, ref_model=pi_ref, args=DPOConfig(...), train_dataset=pairs_t,
                             processing_class=tokenizer, loss="inpo", eta=0.25, tau=0.05)
    trainer.train()            # -> pi_{t+1}; then sample and judge new pairs from it and repeat

* ``loss="inpo"``: :func:`inpo.losses.inpo_loss`, ``(d(pi) - (tau/eta) d(pi_ref) - (1-tau/eta) d(pi_t) - 1/(2 eta))^2``
  with the INPO paper's eta and tau.
  The anchor pi_t is the policy *as passed in* (before any step): its sequence log-probs are computed once at
  construction, exactly like TRL's ``precompute_ref_log_probs``, and stored in the dataset columns
  ``prev_chosen_logps`` / ``prev_rejected_logps`` (a dataset that already has them is used as is, e.g. when
  pi_t is not the model being trained). pi_ref is TRL's reference (``ref_model``, a PEFT adapter-disabled
  base, or precomputed ``ref_*_logps``).
* ``loss="ipo"``: :func:`inpo.losses.ipo_loss` with TRL's ``beta``; summed log-probs (the paper's form) by
  default, ``ipo_average_tokens=True`` for TRL's per-token average (equal to TRL's ``loss_type="ipo"``).

Sequence log-probs come from the same forward TRL uses (``fused_lm_head=True``: per-token log-probs of the
completion tokens, summed), so pi_theta, pi_ref and pi_t are scored identically. Not supported (ValueError):
TRL's other ``loss_type`` values, ``ld_alpha``, ``use_weighting``, f-divergences, MoE auxiliary losses.
Tested on CPU (tests/test_trl_interop.py); under DeepSpeed ZeRO-3 / FSDP the anchor precompute runs on the
unsharded model before ``train()``: precompute the columns yourself if that does not fit in memory.
"""

from __future__ import annotations

from typing import Any

import torch

try:
    from trl import DPOTrainer
except ImportError as e:  # pragma: no cover - exercised only without trl
    raise ImportError("inpo.integrations.trl needs trl>=1.0: pip install -e '.[bench]'") from e

from inpo.integrations.checkpoints import load_trl_checkpoint
from inpo.losses import inpo_loss, ipo_loss, preference_metrics

ANCHOR_COLUMNS = ("prev_chosen_logps", "prev_rejected_logps")
_NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps", *ANCHOR_COLUMNS}

__all__ = ["ANCHOR_COLUMNS", "NashDPOTrainer", "load_trl_checkpoint"]


class _AnchorCollator:
    """TRL's preference collator plus the anchor columns (as float tensors) when the examples carry them."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = self.inner(examples)
        for key in ANCHOR_COLUMNS:
            if key in examples[0]:
                out[key] = torch.tensor([ex[key] for ex in examples], dtype=torch.float32)
        return out


class NashDPOTrainer(DPOTrainer):
    """``trl.DPOTrainer`` optimizing :func:`inpo.losses.inpo_loss` (``loss="inpo"``) or
    :func:`inpo.losses.ipo_loss` (``loss="ipo"``); see the module docstring.

    Args (besides DPOTrainer's): ``loss``; ``eta``, ``tau`` (the INPO paper's: 1/eta is the OMD learning rate,
    tau the KL regularization, ``0 <= tau <= eta``); ``ipo_average_tokens`` (IPO only; lengths clamped at 1).
    """

    def __init__(self, *args: Any, loss: str = "inpo", eta: float = 0.25, tau: float = 0.05,
                 ipo_average_tokens: bool = False, **kwargs: Any) -> None:
        if loss not in ("inpo", "ipo"):
            raise ValueError(f"loss must be 'inpo' or 'ipo', got {loss!r}")
        z = torch.zeros(1)
        inpo_loss(z, z, z, z, z, z, eta=eta, tau=tau)  # validates eta, tau (ValueError)
        super().__init__(*args, **kwargs)
        a = self.args
        unsupported = {"loss_type": a.loss_type != ["sigmoid"], "ld_alpha": a.ld_alpha is not None,
                       "use_weighting": a.use_weighting, "f_divergence_type": a.f_divergence_type != "reverse_kl",
                       "MoE aux loss": self.aux_loss_enabled}
        bad = [k for k, v in unsupported.items() if v]
        if bad:
            raise ValueError(f"NashDPOTrainer replaces TRL's loss; unsupported DPOConfig settings: {bad}")
        self.nash_loss, self.eta, self.tau, self.ipo_average_tokens = loss, eta, tau, ipo_average_tokens
        self.data_collator = _AnchorCollator(self.data_collator)
        if loss == "inpo":
            bs = a.precompute_ref_batch_size or a.per_device_train_batch_size
            self.train_dataset = self._with_anchor_logps(self.train_dataset, bs)
            if isinstance(self.eval_dataset, dict):
                self.eval_dataset = {k: self._with_anchor_logps(v, bs) for k, v in self.eval_dataset.items()}
            elif self.eval_dataset is not None:
                self.eval_dataset = self._with_anchor_logps(self.eval_dataset, bs)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if self._signature_columns is not None:
            self._signature_columns += [c for c in ANCHOR_COLUMNS if c not in self._signature_columns]

    def sequence_logps(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        """Summed completion log-probs ``[2B]`` (chosen rows first), by TRL's fused-LM-head forward."""
        kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        kwargs["use_cache"] = False
        mask = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(mask == 0, -100)
        out = model(**kwargs, labels=labels, fused_lm_head=True)
        return out.log_probs[:, -(mask.size(1) - 1):].sum(dim=1)

    @torch.no_grad()
    def _with_anchor_logps(self, dataset: Any, batch_size: int) -> Any:
        """Add pi_t's log-probs (the model as passed in, before any step) as the ANCHOR_COLUMNS."""
        if all(c in dataset.column_names for c in ANCHOR_COLUMNS):
            return dataset
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                             collate_fn=self.data_collator.inner)
        model, device = self.model, self.accelerator.device
        was_training = model.training
        model.eval()
        chosen, rejected = [], []
        try:
            for batch in loader:
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                c, r = self.sequence_logps(model, batch).float().cpu().chunk(2)
                chosen += c.tolist()
                rejected += r.tolist()
        finally:
            model.train(was_training)
        return dataset.add_column(ANCHOR_COLUMNS[0], chosen).add_column(ANCHOR_COLUMNS[1], rejected)

    def nash_loss_terms(self, model: Any, inputs: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-pair losses ``[B]`` and the log-probs they were computed from (policy with grad)."""
        pc, pr = self.sequence_logps(model, inputs).chunk(2)
        if self.precompute_ref_logps:
            rc, rr = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            rc, rr = self.compute_ref_log_probs(self.ref_model if self.ref_model is not None else model, inputs)
        rc, rr = rc.to(pc.dtype), rr.to(pc.dtype)
        terms = {"policy_chosen": pc, "policy_rejected": pr, "ref_chosen": rc, "ref_rejected": rr}
        if self.nash_loss == "inpo":
            ac, ar = inputs[ANCHOR_COLUMNS[0]].to(pc), inputs[ANCHOR_COLUMNS[1]].to(pc)
            terms.update(prev_chosen=ac, prev_rejected=ar)
            per = inpo_loss(pc, pr, rc, rr, ac, ar, eta=self.eta, tau=self.tau)
        else:
            lengths: tuple[Any, Any] = (None, None)
            if self.ipo_average_tokens:
                cm, rm = inputs["completion_mask"].chunk(2)
                lengths = (cm.sum(1).clamp(min=1), rm.sum(1).clamp(min=1))
            per = ipo_loss(pc, pr, rc, rr, beta=self.beta, chosen_lengths=lengths[0], rejected_lengths=lengths[1])
        return per, terms

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        """Mean of the per-pair losses; logs TRL-named metrics (``rewards/*`` against pi_ref, ``loss/<name>``)."""
        if return_outputs:
            raise ValueError("NashDPOTrainer.compute_loss does not return model outputs")
        per, t = self.nash_loss_terms(model, inputs)
        loss = per.mean()
        mode = "train" if self.model.training else "eval"
        gathered = {k: self.accelerator.gather_for_metrics(v.detach()) for k, v in t.items()}
        metrics = preference_metrics(gathered["policy_chosen"], gathered["policy_rejected"], gathered["ref_chosen"],
                                     gathered["ref_rejected"], beta=self.beta)
        metrics[f"loss/{self.nash_loss}"] = self.accelerator.gather_for_metrics(per.detach()).mean().item()
        for k, v in metrics.items():
            self._metrics[mode][k].append(v)
        return loss

    def prediction_step(self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool,
                        ignore_keys: list[str] | None = None) -> tuple[torch.Tensor, None, None]:
        """Evaluation computes the loss only (there are no logits to return)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None
