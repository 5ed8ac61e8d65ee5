"""Chunked LM-head log-probs (``inpo.logprobs.chunked_sequence_logprobs``, ``train.logprob_chunk``) against the
model's full logits and an independent float64 log-softmax: values and gradients to 1e-5, for plain and tied-head
Llamas and a peft LoRA model (and its adapter-disabled pi_ref), every chunk size from 1 to larger than the
positions, right padding and empty responses; models it cannot serve fall back to the full logits. Tiny random
models built in code (seeded), a few ms each."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from inpo.config import TrainConfig
from inpo.logprobs import (
    _DECLINED,
    LOGPROB_CHUNK,
    batched_sequence_logprobs,
    chunked_sequence_logprobs,
    collate,
    output_head,
    sequence_logprobs,
)

VOCAB, PAD = 97, 0


def tiny_llama(tied: bool = False, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=tied, pad_token_id=PAD)
    model = LlamaForCausalLM(cfg).float()
    with torch.no_grad():  # random init is near-uniform; sharper logits make the test discriminating
        model.get_output_embeddings().weight.mul_(20.0)
    return model


def sequences(seed: int = 1) -> tuple[list[list[int]], list[list[int]]]:
    """Prompts and responses of different lengths (right padding in any batch), one empty response."""
    g = torch.Generator().manual_seed(seed)
    lens = [(3, 5), (6, 2), (1, 7), (4, 0), (5, 4)]
    prompts = [torch.randint(1, VOCAB, (lp,), generator=g).tolist() for lp, _ in lens]
    responses = [torch.randint(1, VOCAB, (lr,), generator=g).tolist() for _, lr in lens]
    return prompts, responses


def reference(model: torch.nn.Module, prompts: list[list[int]], responses: list[list[int]]) -> torch.Tensor:
    """Independent: each sequence alone (no padding), float64 log_softmax of every next-token distribution."""
    out = []
    for p, r in zip(prompts, responses, strict=True):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p + r])).logits[0].double()
        logp = torch.log_softmax(logits, -1)
        out.append(sum(logp[len(p) - 1 + i, tok].item() for i, tok in enumerate(r)))
    return torch.tensor(out, dtype=torch.float64)


N_POSITIONS = 18  # response tokens in sequences(): 5 + 2 + 7 + 0 + 4
CHUNKS = [1, 4, 5, N_POSITIONS - 1, N_POSITIONS, N_POSITIONS + 7, 10_000]


@pytest.mark.parametrize("tied", [False, True])
def test_chunked_values_equal_full_logits_and_independent_reference(tied: bool) -> None:
    model = tiny_llama(tied).eval()
    prompts, responses = sequences()
    assert sum(map(len, responses)) == N_POSITIONS
    ids, att, resp = collate(prompts, responses, PAD)
    expected = reference(model, prompts, responses)
    with torch.no_grad():
        full = sequence_logprobs(model, ids, att, resp, chunk=0)
        assert torch.allclose(full.double(), expected, atol=1e-5)
        for chunk in CHUNKS:
            got = chunked_sequence_logprobs(model, ids, att, resp, chunk=chunk)
            assert got is not None, chunk
            assert got.dtype == torch.float32
            assert torch.allclose(got.double(), expected, atol=1e-5), (chunk, got, expected)
            assert got[3].item() == 0.0  # the row with no response token
    # a row's value does not depend on its batch-mates (padding): rows alone == rows in the batch
    with torch.no_grad():
        for i in range(len(prompts)):
            one = sequence_logprobs(model, *collate(prompts[i : i + 1], responses[i : i + 1], PAD), chunk=3)
            assert abs(one.item() - expected[i].item()) < 1e-5


def grads(model: torch.nn.Module, prompts, responses, chunk: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    ids, att, resp = collate(prompts, responses, PAD)
    lp = sequence_logprobs(model, ids, att, resp, chunk=chunk)
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.5])  # a loss that weights rows differently
    (lp * weights).sum().backward()
    return lp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("tied", [False, True])
def test_chunked_gradients_equal_full_logits(tied: bool) -> None:
    model = tiny_llama(tied).train()
    prompts, responses = sequences()
    lp0, g0 = grads(model, prompts, responses, 0)
    assert len(g0) == len(list(model.parameters()))  # every parameter (the head too) gets a gradient
    for chunk in (1, 5, N_POSITIONS, 10_000):
        lp, g = grads(model, prompts, responses, chunk)
        assert torch.allclose(lp, lp0, atol=1e-5)
        assert g.keys() == g0.keys()
        for n in g0:
            assert torch.allclose(g[n], g0[n], atol=1e-5, rtol=1e-4), (chunk, n, (g[n] - g0[n]).abs().max())


def test_chunked_lora_model_values_and_gradients_and_adapter_disabled_reference() -> None:
    from peft import LoraConfig, get_peft_model

    from inpo.models import AdapterDisabled

    base = tiny_llama()
    plain = copy.deepcopy(base).eval()
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    torch.manual_seed(3)
    with torch.no_grad():  # a trained-looking adapter (lora_B starts at 0): the policy differs from pi_ref
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    prompts, responses = sequences()
    ids, att, resp = collate(prompts, responses, PAD)
    assert output_head(model) is not None
    model.eval()
    expected = reference(model, prompts, responses)
    with torch.no_grad():
        got = chunked_sequence_logprobs(model, ids, att, resp, chunk=4)
        assert got is not None and torch.allclose(got.double(), expected, atol=1e-5)
        ref = AdapterDisabled(model)
        assert output_head(ref) is not None
        ref_lp = chunked_sequence_logprobs(ref, ids, att, resp, chunk=4)  # pi_ref: the adapter off
        assert ref_lp is not None
        assert torch.allclose(ref_lp.double(), reference(plain, prompts, responses), atol=1e-5)
        assert (ref_lp - got).abs().max() > 0.1  # and really not the policy's values
    model.train()
    lp0, g0 = grads(model, prompts, responses, 0)
    assert g0 and all("lora_" in n for n in g0)  # only the adapter trains
    for chunk in (1, 7, 10_000):
        lp, g = grads(model, prompts, responses, chunk)
        assert torch.allclose(lp, lp0, atol=1e-5)
        for n in g0:
            assert torch.allclose(g[n], g0[n], atol=1e-5, rtol=1e-4), (chunk, n)


def test_batched_logprobs_chunked_equal_full_at_every_batch_size() -> None:
    model = tiny_llama(seed=2)
    prompts, responses = sequences(seed=5)
    expected = reference(model, prompts, responses)
    for bs in (1, 2, 5):
        for chunk in (0, 3, LOGPROB_CHUNK):
            got = batched_sequence_logprobs(model, prompts, responses, pad_id=PAD, batch_size=bs, chunk=chunk)
            assert torch.allclose(got.double(), expected, atol=1e-5), (bs, chunk)


def test_no_response_token_in_the_batch_gives_zeros_joined_to_the_graph() -> None:
    model = tiny_llama().train()
    ids, att, resp = collate([[5, 6], [7]], [[], []], PAD)
    lp = sequence_logprobs(model, ids, att, resp, chunk=4)
    assert lp.tolist() == [0.0, 0.0]
    lp.sum().backward()  # a zero step, not an error
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_models_it_cannot_serve_fall_back_to_the_full_logits() -> None:
    """A head whose logits are not head(hidden_states[-1]) (here a final logit soft-cap), and a wrapper that exposes
    no output head: chunked_sequence_logprobs declines (None) and sequence_logprobs is still exact."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    capped = Gemma2ForCausalLM(Gemma2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=64, final_logit_softcapping=2.0,
        pad_token_id=PAD)).float().eval()
    with torch.no_grad():
        capped.get_output_embeddings().weight.mul_(20.0)  # logits well inside the cap's non-linear range

    class Opaque(torch.nn.Module):  # forwards to a model but hides it (no get_output_embeddings, no .module)
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, **kwargs):
            return self.inner(**kwargs)

    prompts, responses = sequences()
    ids, att, resp = collate(prompts, responses, PAD)
    for model in (capped, Opaque(tiny_llama())):
        with torch.no_grad():
            assert chunked_sequence_logprobs(model, ids, att, resp, chunk=4) is None
            got = sequence_logprobs(model, ids, att, resp, chunk=4)
        assert torch.allclose(got.double(), reference(model, prompts, responses), atol=1e-5)
    assert capped in _DECLINED  # the failed check is remembered: the trunk does not run twice per call again


def test_config_default_is_the_library_default() -> None:
    assert TrainConfig().logprob_chunk == LOGPROB_CHUNK > 0
    with pytest.raises(ValueError):
        TrainConfig(logprob_chunk=-1)


def test_sharded_parameters_keep_the_full_logits_path(tmp_path) -> None:
    """FSDP2 (inpo.sharding) shards parameters as DTensors: the head cannot be called on its own there, so
    output_head declines and sequence_logprobs keeps the model's own logits (one gloo process, world size 1)."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = tiny_llama()
        plain = copy.deepcopy(model).eval()
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        model.eval()
        assert output_head(model) is None
        prompts, responses = sequences()
        ids, att, resp = collate(prompts, responses, PAD)
        with torch.no_grad():
            assert chunked_sequence_logprobs(model, ids, att, resp, chunk=4) is None
            got = sequence_logprobs(model, ids, att, resp, chunk=4)
        assert torch.allclose(got.double(), reference(plain, prompts, responses), atol=1e-5)
    finally:
        dist.destroy_process_group()
