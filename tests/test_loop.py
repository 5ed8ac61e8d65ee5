"""The loop on a tiny LM: log-prob caching, padding invariance, INPO steps, accumulation, artifacts, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import TINY_TASK

from inpo import losses
from inpo.algorithms import ALGORITHMS, build_pairs
from inpo.config import build_config
from inpo.logprobs import batched_sequence_logprobs, collate, sequence_logprobs
from inpo.loop import run
from inpo.models import build_setup
from inpo.sampling import Samples
from inpo.train import train_on_pairs


@pytest.fixture(scope="module")
def cache_dir(cache: Path) -> Path:
    return cache


def tiny_cfg(out: Path, cache: Path, **over: object) -> object:
    data = {
        "output_dir": str(out),
        "iterations": 2,
        "task": {"sft_cache": str(cache), "options": TINY_TASK},
        "sampling": {"num_samples": 3, "max_new_tokens": 6},
        "train": {"epochs": 1, "batch_size": 4, "lr": 1e-3},
        "data": {"num_eval_prompts": 4},
    }
    for key, value in over.items():
        section, field = key.split("__")
        data.setdefault(section, {})[field] = value
    return build_config(data)


@pytest.fixture(scope="module")
def setup(cache_dir: Path):
    from rich.console import Console

    cfg = tiny_cfg(cache_dir / "unused", cache_dir)
    return build_setup(cfg, Console(quiet=True), progress=False)


def some_sequences(setup, n: int = 6) -> tuple[list[list[int]], list[list[int]]]:
    tok = setup.tokenizer
    prompts = [p.ids for p in setup.train_prompts[:n]]
    words = ["rock w1 w2", "paper", "scissors w3 w4 w5 w6", "w7 w8", "paper w9", "rock"]
    responses = [tok(w, add_special_tokens=False).input_ids + [setup.eos_id] for w in words[:n]]
    return prompts, responses


def fresh_logprob(model, prompt: list[int], response: list[int]) -> float:
    """Independent computation: one unpadded sequence, log_softmax of each next-token distribution."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return sum(logp[len(prompt) - 1 + i, tok].item() for i, tok in enumerate(response))


def test_cached_logprobs_equal_fresh_forward_and_ignore_padding_and_batch_size(setup) -> None:
    prompts, responses = some_sequences(setup)
    expected = torch.tensor([fresh_logprob(setup.policy, p, r) for p, r in zip(prompts, responses, strict=True)],
                            dtype=torch.float64)
    for bs in (1, 2, 6):
        got = batched_sequence_logprobs(setup.policy, prompts, responses, pad_id=setup.pad_id, batch_size=bs)
        assert torch.allclose(got.double(), expected, atol=1e-5), (bs, got, expected)
    # extra padding on the right (a longer batch-mate) does not change a row
    ids, att, resp = collate(prompts[:1] + prompts[2:3], responses[:1] + responses[2:3], setup.pad_id)
    with torch.no_grad():
        padded = sequence_logprobs(setup.policy, ids, att, resp)
    assert abs(padded[0].item() - expected[0].item()) < 1e-5


def test_grad_accumulation_1x8_equals_8x1(setup, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same step from the same weights: one micro-batch of 8 prompts vs 8 micro-batches of 1.

    The optimizer is replaced by plain SGD so the weight change *is* the (clipped) accumulated gradient:
    Adam would hide a wrong overall scale and amplify float rounding on near-zero gradients.
    """
    import copy

    monkeypatch.setattr(torch.optim, "AdamW", lambda params, lr, weight_decay: torch.optim.SGD(params, lr=lr))
    from accelerate import Accelerator

    prompts = [p.ids for p in setup.train_prompts[:8]]
    k = 3
    g = torch.Generator().manual_seed(0)
    vocab = [setup.tokenizer.convert_tokens_to_ids(w) for w in ["rock", "paper", "scissors", "w1", "w2"]]
    responses = [[vocab[int(i)] for i in torch.randint(0, 5, (3,), generator=g)] + [setup.eos_id]
                 for _ in range(8 * k)]
    samples = Samples(prompts, responses, k)
    m = torch.rand(8, k, k, generator=g, dtype=torch.float64)
    m = torch.triu(m, 1) + torch.tril(1 - m.transpose(1, 2), -1) + 0.5 * torch.eye(k)
    pairs = build_pairs(m, "all")
    cache = {"ref": torch.randn(8 * k, generator=g) - 10, "prev": torch.randn(8 * k, generator=g) - 10}
    weights = []
    for accum in (1, 8):
        cfg = tiny_cfg(cache_dir / "x", cache_dir, train__batch_size=8, train__grad_accum=accum, train__epochs=1,
                       train__warmup_ratio=0.0)
        model = copy.deepcopy(setup.ref).requires_grad_(True)
        train_on_pairs(model, Accelerator(cpu=True), ALGORITHMS["inpo"], cfg, samples, pairs, cache, None,
                       pad_id=setup.pad_id, seed=0)
        weights.append({n: p.detach().clone() for n, p in model.named_parameters()})
    changed = any(not torch.equal(weights[0][n], setup.ref.state_dict()[n]) for n in weights[0])
    assert changed
    for n in weights[0]:
        assert torch.allclose(weights[0][n], weights[1][n], atol=1e-8), (n, (weights[0][n] - weights[1][n]).abs().max())


def test_one_inpo_step_lowers_the_inpo_loss_and_optimum_has_zero_gradient(setup) -> None:
    import copy

    prompts, responses = some_sequences(setup, 2)
    ids, att, resp = collate(prompts, responses, setup.pad_id)
    model = copy.deepcopy(setup.ref).requires_grad_(True)
    with torch.no_grad():
        ref = sequence_logprobs(setup.ref, ids, att, resp)

    def loss_of(eta: float, tau: float, w: int = 0) -> torch.Tensor:
        """INPO loss of the pair (chosen = sequence w, rejected = the other), pi_t = pi_ref."""
        lp = sequence_logprobs(model, ids, att, resp)
        c, r = w, 1 - w
        return losses.inpo_loss(lp[c], lp[r], ref[c], ref[r], ref[c], ref[r], eta=eta, tau=tau)

    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    before = loss_of(2.0, 0.1)
    before.backward()
    opt.step()
    opt.zero_grad()
    after = loss_of(2.0, 0.1)
    assert after.item() < before.item() - 1e-4
    # with tau = 0 the target is d(pi) - d(pi_t) = 1/(2 eta): choose eta to put the current model exactly there
    with torch.no_grad():
        lp = sequence_logprobs(model, ids, att, resp)
    h = (lp[0] - lp[1] - (ref[0] - ref[1])).item()
    assert abs(h) > 1e-4
    w = 0 if h > 0 else 1

    def grad_norm(loss: torch.Tensor) -> float:
        model.zero_grad()
        loss.backward()
        return torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters())).item()

    assert grad_norm(loss_of(1 / (2 * abs(h)), 0.0, w)) < 1e-6
    assert grad_norm(loss_of(1 / (2 * abs(h) + 1.0), 0.0, w)) > 1e-3


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("algo", ["inpo"])
def test_loop_writes_every_artifact_and_resume_is_bit_identical(tmp_path: Path, cache_dir: Path, algo: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "run"
    cfg = tiny_cfg(out, cache_dir, algo__name=algo)
    rows = run(cfg, quiet=True)
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    for name in ("config.yaml", "metrics.jsonl", "state.json", "metrics.png"):
        assert (out / name).is_file(), name
    # log_with="auto" logs to tensorboard (installed with the test extra) through accelerate's trackers
    assert list((out / "logs").rglob("events.out.tfevents.*")), "no tensorboard event file"
    for t in (1, 2):
        model = AutoModelForCausalLM.from_pretrained(out / f"iter_{t}")
        AutoTokenizer.from_pretrained(out / f"iter_{t}")
        assert (out / f"iter_{t}" / "model.safetensors").is_file()
        assert model is not None
    for key in ("game/duality_gap", "pref/win_rate", "eval/kl_to_ref", "eval/mean_length", "loss/train",
                "time/sample", "time/judge", "time/logprobs", "time/train"):
        assert key in rows[-1], key
    # every parameter moved in the first iteration
    ref_w = load_file(next(Path(cache_dir).rglob("model.safetensors")))
    w1 = load_file(out / "iter_1" / "model.safetensors")
    unchanged = [n for n in w1 if torch.equal(w1[n], ref_w[n])]
    assert not unchanged, unchanged
    # simulate a crash in iteration 2 after sampling: drop its checkpoint, its later stages and its state
    final = load_file(out / "iter_2" / "model.safetensors")
    shutil.rmtree(out / "iter_2")
    for stage in (out / "stages" / "iter_2").glob("s0_logps.pt"):
        stage.unlink()
    state = json.loads((out / "state.json").read_text())
    (out / "state.json").write_text(json.dumps({**state, "completed_iterations": 1}))
    resumed = run(cfg, resume=True, quiet=True)
    again = load_file(out / "iter_2" / "model.safetensors")
    for n in final:
        assert torch.equal(final[n], again[n]), n
    strip = ("time/", "perf/")  # wall-clock measurements
    clean = [{k: v for k, v in r.items() if not k.startswith(strip)} for r in rows]
    clean_resumed = [{k: v for k, v in r.items() if not k.startswith(strip)} for r in resumed]
    assert clean == clean_resumed


def test_lora_run_saves_peft_adapters_and_ref_is_the_disabled_adapter(tmp_path: Path, cache_dir: Path) -> None:
    pytest.importorskip("peft")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    cfg = build_config({**tiny_cfg(out, cache_dir).model_dump(mode="json"), "iterations": 1,
                        "peft": {"r": 4, "alpha": 8}})
    rows = run(cfg, quiet=True)
    assert len(rows) == 2
    adapter = out / "iter_1" / "adapter_model.safetensors"
    assert adapter.is_file() and not (out / "iter_1" / "model.safetensors").exists()
    ref_dir = next(Path(cache_dir).glob("builtin-*"))
    base = AutoModelForCausalLM.from_pretrained(ref_dir)
    model = PeftModel.from_pretrained(base, str(out / "iter_1"))
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        tuned = model(input_ids=ids).logits
        with model.disable_adapter():
            plain = model(input_ids=ids).logits
        ref = AutoModelForCausalLM.from_pretrained(ref_dir)(input_ids=ids).logits
    assert torch.allclose(plain, ref, atol=1e-6)  # adapter disabled == pi_ref
    assert not torch.allclose(tuned, ref, atol=1e-4)  # the adapter was trained


def test_length_grouped_order_is_a_seeded_permutation_of_length_sorted_steps() -> None:
    from inpo.train import length_grouped_order

    k, n = 2, 10
    lengths = [7, 3, 9, 1, 5, 8, 2, 6, 4, 10]  # longest sequence of prompt i
    samples = Samples([[0] * lengths[i] for i in range(n)], [[1] for _ in range(n * k)], k)
    prompts = torch.arange(n)
    order = length_grouped_order(prompts, samples, 3, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(n))
    steps = [sorted(lengths[int(i)] + 1 for i in s) for s in torch.split(order, 3)]
    expected = [[2, 3, 4], [5, 6, 7], [8, 9, 10], [11]]  # sorted lengths cut into steps of 3, in some order
    assert sorted(steps) == expected and len(order) == n
    again = length_grouped_order(prompts, samples, 3, torch.Generator().manual_seed(0))
    assert torch.equal(order, again)


def test_resume_under_a_changed_config_needs_the_flag_and_drops_unfinished_stages(tmp_path: Path,
                                                                                   cache_dir: Path) -> None:
    from inpo.errors import InpoError

    out = tmp_path / "run"
    run(tiny_cfg(out, cache_dir).model_copy(update={"iterations": 1}), quiet=True)
    (out / "stages" / "iter_2").mkdir(parents=True)
    (out / "stages" / "iter_2" / "s0_samples.pt").write_bytes(b"made under the old config")  # must not be used
    lower_lr = tiny_cfg(out, cache_dir, train__lr=1e-4)
    with pytest.raises(InpoError, match="different config"):
        run(lower_lr, resume=True, quiet=True)
    rows = run(lower_lr, resume=True, quiet=True, allow_config_change=True)
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    state = json.loads((out / "state.json").read_text())
    assert state["completed_iterations"] == 2 and state["config_changes"][0]["after_iteration"] == 1
    assert "lr: 0.0001" in (out / "config.yaml").read_text()
