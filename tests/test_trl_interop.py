"""Our losses inside TRL's DPOTrainer, and TRL-saved checkpoints as pi_ref (skipped without trl)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from inpo.errors import InpoError  # noqa: E402
from inpo.integrations import load_trl_checkpoint, resolve_checkpoint  # noqa: E402
from inpo.integrations.trl import NashDPOTrainer  # noqa: E402
from inpo.losses import inpo_loss  # noqa: E402
from inpo.tasks import BuiltinTask, BuiltinTaskConfig  # noqa: E402

ROWS = [
    {"prompt": "topic0 w1 w2 :", "chosen": " rock w3", "rejected": " paper w4 w5"},
    {"prompt": "topic1 w6 :", "chosen": " scissors", "rejected": " rock w7 w8 w9"},
    {"prompt": "topic2 w10 w11 w12 :", "chosen": " paper w13 w14", "rejected": " w15"},
    {"prompt": "topic0 w16 :", "chosen": " paper", "rejected": " scissors w17"},
]


@pytest.fixture(scope="module")
def parts() -> tuple[object, torch.nn.Module, torch.nn.Module]:
    task = BuiltinTask(BuiltinTaskConfig(hidden_size=32, intermediate_size=64, num_layers=1, n_sft_prompts=8,
                                         n_train_prompts=4, n_eval_prompts=4))
    tok = task.make_tokenizer()
    ref = task.make_model(tok, seed=0)
    policy = copy.deepcopy(ref)  # pi_t != pi_ref, as at iteration t > 1
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return tok, ref, policy


def config(out: Path, **kw: object) -> DPOConfig:
    base = {"output_dir": str(out), "use_cpu": True, "bf16": False, "per_device_train_batch_size": 4,
            "max_steps": 1, "learning_rate": 1e-2, "report_to": [], "logging_steps": 1, "save_strategy": "no",
            "gradient_checkpointing": False, "seed": 0, "dataloader_num_workers": 0}
    return DPOConfig(**{**base, **kw})


def fresh_logprob(model: torch.nn.Module, prompt: list[int], response: list[int]) -> float:
    """Independent of TRL's fused head: full logits of one unpadded sequence, log_softmax, pick the tokens."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + response])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return sum(logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(response))


def batch_of(trainer: DPOTrainer) -> dict[str, torch.Tensor]:
    return trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])


def test_inpo_loss_in_dpo_trainer_equals_our_function_and_trains(parts, tmp_path: Path) -> None:
    tok, ref, policy = parts
    pi_t = copy.deepcopy(policy)
    model = copy.deepcopy(policy)
    trainer = NashDPOTrainer(model=model, ref_model=copy.deepcopy(ref), args=config(tmp_path / "o"),
                             train_dataset=Dataset.from_list(ROWS), processing_class=tok, loss="inpo",
                             eta=0.25, tau=0.05)
    ds = trainer.train_dataset

    def lp(m: torch.nn.Module, side: str) -> torch.Tensor:
        return torch.tensor([fresh_logprob(m, r["prompt_ids"], r[f"{side}_ids"]) for r in ds], dtype=torch.float64)

    # the anchor pi_t was scored once, at construction, from the model as passed in
    assert torch.allclose(torch.tensor(ds["prev_chosen_logps"], dtype=torch.float64), lp(pi_t, "chosen"), atol=1e-4)
    assert torch.allclose(torch.tensor(ds["prev_rejected_logps"], dtype=torch.float64), lp(pi_t, "rejected"),
                          atol=1e-4)
    expected = inpo_loss(lp(pi_t, "chosen"), lp(pi_t, "rejected"), lp(ref, "chosen"), lp(ref, "rejected"),
                         lp(pi_t, "chosen"), lp(pi_t, "rejected"), eta=0.25, tau=0.05).mean().item()
    assert expected > 1e-3  # pi_t != pi_ref, so the loss is not trivially at a special value
    got = trainer.compute_loss(trainer.model, batch_of(trainer)).item()
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)

    trainer.train()  # one optimizer step
    log = trainer.state.log_history[0]
    assert log["loss"] == pytest.approx(expected, rel=1e-3)
    assert log["loss/inpo"] == pytest.approx(expected, rel=1e-5)
    assert "rewards/margins" in log
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, pi_t.get_parameter(n))]
    assert len(changed) == len(list(pi_t.parameters()))
    # after the step the anchor columns still hold pi_t, not the new policy
    assert torch.allclose(torch.tensor(trainer.train_dataset["prev_chosen_logps"], dtype=torch.float64),
                          lp(pi_t, "chosen"), atol=1e-4)

    # a TRL-saved checkpoint loads back as pi_ref, weights identical
    trainer.save_model(str(tmp_path / "saved"))
    loaded, loaded_tok = load_trl_checkpoint(tmp_path / "saved")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    for n, p in trainer.model.named_parameters():
        assert torch.equal(loaded.get_parameter(n), p.detach()), n
    assert loaded_tok("topic0 w1 :").input_ids == tok("topic0 w1 :").input_ids


def test_ipo_average_tokens_equals_trl_ipo(parts, tmp_path: Path) -> None:
    tok, ref, policy = parts
    ds = Dataset.from_list(ROWS)
    ours = NashDPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(ref), args=config(tmp_path / "a"),
                          train_dataset=ds, processing_class=tok, loss="ipo", ipo_average_tokens=True)
    trl_ipo = DPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(ref),
                         args=config(tmp_path / "b", loss_type=["ipo"]), train_dataset=ds, processing_class=tok)
    a = ours.compute_loss(ours.model, batch_of(ours)).item()
    b = trl_ipo.compute_loss(trl_ipo.model, batch_of(trl_ipo)).item()
    assert a == pytest.approx(b, rel=1e-5)
    summed = NashDPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(ref), args=config(tmp_path / "c"),
                            train_dataset=ds, processing_class=tok, loss="ipo")
    assert summed.compute_loss(summed.model, batch_of(summed)).item() != pytest.approx(a, rel=1e-3)


def test_precomputed_reference_and_evaluate(parts, tmp_path: Path) -> None:
    tok, ref, policy = parts
    ds = Dataset.from_list(ROWS)
    live = NashDPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(ref), args=config(tmp_path / "a"),
                          train_dataset=ds, processing_class=tok)
    pre = NashDPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(ref),
                         args=config(tmp_path / "b", precompute_ref_log_probs=True), train_dataset=ds,
                         eval_dataset=ds, processing_class=tok)
    assert {"ref_chosen_logps", "prev_chosen_logps"} <= set(pre.train_dataset.column_names)
    expected = live.compute_loss(live.model, batch_of(live)).item()
    assert pre.compute_loss(pre.model, batch_of(pre)).item() == pytest.approx(expected, rel=1e-6)
    assert pre.evaluate()["eval_loss"] == pytest.approx(expected, rel=1e-5)  # before any step: same model


def test_checkpoint_dir_resolution_and_errors(parts, tmp_path: Path) -> None:
    tok, ref, policy = parts
    trainer = NashDPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(ref),
                             args=config(tmp_path / "out", save_strategy="steps", save_steps=1),
                             train_dataset=Dataset.from_list(ROWS), processing_class=tok)
    trainer.train()
    assert resolve_checkpoint(tmp_path / "out") == tmp_path / "out" / "checkpoint-1"
    model, _ = load_trl_checkpoint(tmp_path / "out")
    for n, p in trainer.model.named_parameters():
        assert torch.equal(model.get_parameter(n), p.detach()), n
    with pytest.raises(InpoError, match="no config.json and no checkpoint"):
        resolve_checkpoint(tmp_path)
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "adapter_config.json").write_text("{}")
    with pytest.raises(InpoError, match="PEFT adapter"):
        load_trl_checkpoint(tmp_path / "lora")
    with pytest.raises(ValueError, match="unsupported DPOConfig settings"):
        NashDPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(ref),
                       args=config(tmp_path / "x", loss_type=["hinge"]), train_dataset=Dataset.from_list(ROWS),
                       processing_class=tok)
