"""FSDP2 (``torch.distributed.fsdp.fully_shard``): the policy and pi_ref sharded per decoder layer across the
processes of ``accelerate launch``, with the parameters, gradients and AdamW state of each process 1/world of
the model's.

The switch is accelerate's own: a config with ``distributed_type: FSDP`` and ``fsdp_version: 2`` makes
``accelerate launch`` export ``ACCELERATE_USE_FSDP=true`` and ``FSDP_VERSION=2`` (:func:`fsdp2_requested`).
accelerate 1.16 applies its FSDP plugin only to accelerator devices (``AcceleratorState`` turns FSDP on for
``MULTI_GPU``/``MULTI_XPU``/..., never for ``MULTI_CPU``), so inpo calls ``fully_shard`` itself
(:func:`shard_model`), on CPU (gloo) and GPU alike: the route tested on CPU processes is the GPU route.

A sharded module runs collectives in every forward: all processes must run the same number of forwards in
the same order. The loop keeps them in lockstep: sampling and log-prob stages give every process the same
number of prompts (:func:`inpo.rundir.sharded_stage` with ``lockstep``), ``generate`` runs with
``synced_gpus`` (transformers keeps a finished process stepping until all are done), training splits every
step into the same number of micro-batches per process (empty ones run a zero forward), and evaluation runs
on every process with the same inputs (only the main process judges and writes).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

import torch

from inpo.errors import InpoError


def fsdp2_requested() -> bool:
    """True under an accelerate config with ``distributed_type: FSDP`` and ``fsdp_version: 2``."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return False
    if os.environ.get("FSDP_VERSION", "1") != "2":
        raise InpoError("accelerate config: FSDP version 1 is not supported; set fsdp_config.fsdp_version: 2 "
                        "(see configs/accelerate/fsdp2.yaml)")
    if os.environ.get("FSDP_ACTIVATION_CHECKPOINTING", "false").lower() == "true":
        raise InpoError("accelerate config: fsdp_activation_checkpointing is not supported by inpo's FSDP2 route; "
                        "set it to false")
    return True


@cache
def _mesh(device_type: str) -> Any:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, (dist.get_world_size(),))


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks: modules whose class is in transformers' ``_no_split_modules``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    names = set(getattr(base, "_no_split_modules", None) or [])
    return [m for m in base.modules() if type(m).__name__ in names]


def shard_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``fully_shard`` every decoder layer, then the root (embeddings, final norm, LM head), in place. With
    LoRA the root is the transformers model inside the peft wrapper (``generate`` and the forward both run
    through it; the wrapper's own forward is skipped by ``generate``).

    Options from accelerate's environment: ``FSDP_RESHARD_AFTER_FORWARD`` (default true),
    ``FSDP_OFFLOAD_PARAMS`` (CPU offload of the shards), ``ACCELERATE_MIXED_PRECISION`` (bf16/fp16 compute,
    fp32 gradient reduction)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    layers = decoder_layers(model)
    if not layers:
        raise InpoError(f"FSDP2: {type(model).__name__} names no decoder layer class (_no_split_modules); "
                        "cannot shard it per layer")
    kw: dict[str, Any] = {
        "mesh": _mesh(device.type),
        "reshard_after_forward": os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() == "true",
    }
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(os.environ.get("ACCELERATE_MIXED_PRECISION", "no"))
    if dtype is not None:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    if os.environ.get("FSDP_OFFLOAD_PARAMS", "false").lower() == "true":
        kw["offload_policy"] = CPUOffloadPolicy()
    root = model.get_base_model() if hasattr(model, "get_base_model") else model
    for layer in layers:
        fully_shard(layer, **kw)
    fully_shard(root, **kw)
    # transformers' generate turns synced_gpus on for modules carrying this flag (transformers.distributed.fsdp)
    root._is_fsdp_managed_module = True
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded weights on the main process (CPU), an empty dict elsewhere. A collective: every process
    calls it. A tied weight (e.g. the LM head sharing the embedding) appears once, under its first name, as in
    an unsharded ``save_pretrained``."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    aliases = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {n for n, _ in model.named_parameters()}
    return {k: v for k, v in full.items() if k not in aliases}


def _local(p: torch.Tensor) -> torch.Tensor:
    """This process's shard of a parameter (the tensor itself when not sharded)."""
    from torch.distributed.tensor import DTensor

    return p.to_local() if isinstance(p, DTensor) else p


def _reshard(model: torch.nn.Module) -> None:
    """Free the unsharded copies FSDP2 keeps after a no-grad forward of the root, so the next forward gathers
    the (possibly rewritten) shards afresh."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


class FrozenSnapshot(torch.nn.Module):
    """A frozen copy of ``model`` as it is now, holding only its trainable parameters (this process's shards
    under FSDP2; with LoRA only the adapter), not a deep copy of the model. Its forward swaps the saved values
    into ``model``, runs it (no grad, eval mode) and swaps the current values back, bit for bit.

    EGPO's second step anchors on pi_t after the first step has changed the policy; this is that pi_t at
    1/world of the trainable parameters' memory per process. Under FSDP2 every process must call the forward
    together (as for any sharded forward)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self._model = [model]  # a list: not registered as a submodule (eval()/train() here leave it alone)
        self._params = [p for p in model.parameters() if p.requires_grad]
        with torch.no_grad():
            self._saved = [_local(p).detach().clone() for p in self._params]

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]:
        return self._model[0].parameters(recurse)

    @contextmanager
    def _swapped(self) -> Iterator[torch.nn.Module]:
        model = self._model[0]
        was_training = model.training
        with torch.no_grad():
            if is_sharded(model):
                _reshard(model)
            current = [_local(p).detach().clone() for p in self._params]
            for p, s in zip(self._params, self._saved, strict=True):
                _local(p).copy_(s)
            try:
                model.eval()
                yield model
            finally:
                if is_sharded(model):
                    _reshard(model)
                for p, c in zip(self._params, current, strict=True):
                    _local(p).copy_(c)
                model.train(was_training)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with self._swapped() as model:
            return model(*args, **kwargs)
