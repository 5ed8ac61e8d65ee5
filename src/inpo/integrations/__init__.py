"""Bridges to other libraries. Each submodule imports its library lazily or on import:

* :mod:`inpo.integrations.trl` (needs ``trl>=1.0``, ``pip install -e '.[bench]'``): :class:`NashDPOTrainer`, TRL's
  ``DPOTrainer`` with the loss replaced by :func:`inpo.losses.inpo_loss` / :func:`inpo.losses.ipo_loss`.
* :mod:`inpo.integrations.checkpoints` (no extra dependency): :func:`load_trl_checkpoint`, a TRL-saved model
  directory as pi_ref.

See docs/ecosystem.md.
"""

from inpo.integrations.checkpoints import load_trl_checkpoint, resolve_checkpoint

__all__ = ["load_trl_checkpoint", "resolve_checkpoint"]
