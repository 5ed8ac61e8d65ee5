"""The loop on a real model: one INPO iteration of the annotators task on SmolLM2-135M-Instruct (LoRA, two prompts,
K=2, 16 new tokens), then what a new user does with the run (``inpo eval`` from another directory against another
LoRA iterate, ``inpo data export``, loading the checkpoint with transformers + peft), and the real-model behaviour
the toy never exercised: chat template on prompts only, end-of-turn and stop-string stops, truncation counts, left
vs right padding. One run for the module; few and short generations (each forward pass is a 135M model)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from inpo.config import build_config
from inpo.sampling import end_of_turn_ids, response_texts, sample_responses, truncated

PROMPTS = ["Give me some tips about saving money.", "Answer briefly: what is photosynthesis?"]
MAX_NEW = 16


@pytest.fixture(scope="module")
def real_run(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One INPO iteration on SmolLM2 (the annotators task, its oracle), run from a working directory with a
    relative prompts path; every prompt the judge is given is recorded."""
    from inpo.loop import run
    from inpo.tasks.annotators import AnnotatorJudge

    root = tmp_path_factory.mktemp("real")
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    seen: list[str] = []
    prob = AnnotatorJudge.prob

    def recording(self: AnnotatorJudge, prompts: list[str], a: list[str], b: list[str]) -> torch.Tensor:
        seen.extend(prompts)
        return prob(self, prompts, a, b)

    cfg = build_config({
        "output_dir": str(root / "run"), "iterations": 1, "seed": 0, "threads": 1,
        "task": {"name": "annotators"}, "peft": {"r": 4, "alpha": 8},
        "data": {"prompts": "prompts.jsonl", "num_eval_prompts": 2},
        "sampling": {"num_samples": 2, "max_new_tokens": MAX_NEW, "top_k": 50},
        "train": {"epochs": 1, "batch_size": 2, "lr": 5e-4},
    })
    cwd = Path.cwd()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AnnotatorJudge, "prob", recording)
        os.chdir(root)
        try:
            rows = run(cfg, quiet=True)
        finally:
            os.chdir(cwd)
    return {"dir": root / "run", "rows": rows, "seen": seen, "root": root}


def test_one_inpo_iteration_on_smollm2(real_run: dict, smollm2_dir: Path) -> None:
    """CI's end-to-end run: metrics of pi_ref and iteration 1, a LoRA checkpoint, absolute paths recorded."""
    run, rows = real_run["dir"], real_run["rows"]
    assert [r["iteration"] for r in rows] == [0, 1]
    assert rows[1]["train/pairs"] > 0 and all(torch.isfinite(torch.tensor(r["pref/win_rate"])) for r in rows)
    assert all((run / "iter_1" / f).is_file() for f in ("adapter_config.json", "adapter_model.safetensors"))
    cfg_text = (run / "config.yaml").read_text()
    assert f"prompts: {real_run['root'] / 'prompts.jsonl'}" in cfg_text  # absolute ...
    given = json.loads((run / "state.json").read_text())["paths_as_given"]
    assert given["data.prompts"] == "prompts.jsonl"  # ... and as given


def test_judge_sees_the_prompt_as_written(real_run: dict) -> None:
    seen = set(real_run["seen"])
    assert seen == set(PROMPTS)  # loop (matrix -> prob) and evaluation alike; no template markers, no system prompt


def test_truncation_is_recorded(real_run: dict, smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    samples = torch.load(real_run["dir"] / "stages/iter_1/s0_samples.pt", weights_only=True)
    by_hand = [len(s) == MAX_NEW and s[-1] != tok.eos_token_id for s in samples]
    assert all(len(s) <= MAX_NEW for s in samples)
    assert real_run["rows"][1]["sample/truncated"] == pytest.approx(sum(by_hand) / len(samples))
    assert 0 <= real_run["rows"][1]["eval/truncated"] <= 1


def test_prompts_rendered_with_the_chat_template_and_responses_clean(real_run: dict, smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    from inpo.data import load_prompts

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    src = str(real_run["root"] / "prompts.jsonl")
    prompts, _ = load_prompts(src, tok, chat_template="auto")
    for p, raw in zip(prompts, PROMPTS, strict=True):
        ids = tok.apply_chat_template([{"role": "user", "content": raw}], add_generation_prompt=True,
                                      return_dict=True)["input_ids"]
        assert p.ids == list(ids) and p.text == raw
    plain, _ = load_prompts(src, tok, chat_template="never")
    assert [p.ids for p in plain] == [tok(raw).input_ids for raw in PROMPTS]
    # chat messages: one user turn -> the judge sees its content; a longer conversation -> the rendered template
    convo = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPTS[0]}]
    msgs = real_run["root"] / "messages.jsonl"
    msgs.write_text(json.dumps({"messages": [convo[1]]}) + "\n" + json.dumps({"messages": convo}) + "\n")
    one, two = load_prompts(str(msgs), tok)[0]
    assert one.text == PROMPTS[0] and one.ids == prompts[0].ids
    assert two.text == tok.apply_chat_template(convo, tokenize=False, add_generation_prompt=True)
    # responses: no template (not rendered as a chat turn), no prompt echo, no special tokens inside
    samples = torch.load(real_run["dir"] / "stages/iter_1/s0_samples.pt", weights_only=True)
    special = set(tok.all_special_ids)
    for i, s in enumerate(samples):
        assert not special & set(s[:-1]), tok.decode(s)  # only the last token may be the end of turn
        text = tok.decode(s, skip_special_tokens=True)
        assert PROMPTS[i // 2] not in text and "assistant\n" not in text and "You are a helpful" not in text


def test_stops_at_end_of_turn_and_stop_strings(smollm2_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from inpo.config import SamplingConfig

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    stop_ids = end_of_turn_ids(tok, model)
    assert stop_ids == [tok.convert_tokens_to_ids("<|im_end|>")]
    ids = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                   return_dict=True)["input_ids"]
           for q in ("What is the capital of France? Answer in one word.", "Reply with one word: is the sky blue?")]
    cfg = SamplingConfig(num_samples=2, max_new_tokens=24, temperature=0.7, top_k=20)
    out = [r for rs in sample_responses(model, ids, cfg, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, seed=0,
                                        stop_ids=stop_ids) for r in rs]
    ended = [r for r in out if r and r[-1] in stop_ids]
    assert ended and len(ended) < len(out), [tok.decode(r) for r in out]  # "Paris." ends at <|im_end|> ...
    for r in out:  # ... and nothing follows the end of turn
        assert all(t not in stop_ids for t in r[:-1])
    assert truncated(out, stop_ids) == [not (r and r[-1] in stop_ids) for r in out]
    assert all(len(r) == 24 for r, cut in zip(out, truncated(out, stop_ids), strict=True) if cut)
    # a stop string: the response ends with the token that completes it; the judge's text stops before it
    cfg = SamplingConfig(num_samples=2, max_new_tokens=24, temperature=0.7, top_k=20, stop=(" ",))
    out = [r for rs in sample_responses(model, ids, cfg, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, seed=0,
                                        stop_ids=stop_ids, tokenizer=tok) for r in rs]
    for r, text in zip(out, response_texts(tok, out, cfg.stop), strict=True):
        assert " " not in text
        assert (" " in tok.decode(r)) == (" " not in tok.decode(r[:-1]))  # the last token completes the stop
    assert not any(truncated(out, stop_ids, tok, cfg.stop))


def test_left_padded_generation_and_right_padded_logprobs_agree(smollm2_dir: Path) -> None:
    """Greedy generation of two prompts of different lengths in one left-padded batch: the log-probs of the
    generated tokens from generate's logits equal the right-padded batched log-probs and the unpadded ones."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from inpo.logprobs import batched_sequence_logprobs
    from inpo.sampling import left_pad

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                       return_dict=True)["input_ids"] for q in ("Hi.", PROMPTS[0])]
    assert len(prompts[0]) != len(prompts[1])
    ids, mask = left_pad(prompts, tok.pad_token_id)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=8,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=tok.pad_token_id,
                             eos_token_id=-1)
    new = out.sequences[:, ids.shape[1]:]
    logits = torch.stack(out.logits, 1).float().log_softmax(-1)
    from_generate = logits.gather(-1, new.unsqueeze(-1)).squeeze(-1).sum(-1)
    responses = new.tolist()
    right = batched_sequence_logprobs(model, prompts, responses, pad_id=tok.pad_token_id, batch_size=2)
    single = torch.stack([batched_sequence_logprobs(model, [p], [r], pad_id=tok.pad_token_id)[0]
                          for p, r in zip(prompts, responses, strict=True)])
    torch.testing.assert_close(right.float(), from_generate, atol=2e-4, rtol=0)
    torch.testing.assert_close(right, single, atol=2e-4, rtol=0)


def test_lora_checkpoint_loads_with_transformers_and_peft(real_run: dict, smollm2_dir: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from inpo.config import load_config
    from inpo.models import load_policy

    ckpt = real_run["dir"] / "iter_1"
    theirs = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smollm2_dir), str(ckpt)).eval()
    ours = load_policy(ckpt, load_config(real_run["dir"] / "config.yaml"), smollm2_dir).eval()
    tok = AutoTokenizer.from_pretrained(ckpt)
    x = tok(PROMPTS[0], return_tensors="pt")
    with torch.no_grad():
        a, b = theirs(**x).logits, ours(**x).logits
        with theirs.disable_adapter():
            base = theirs(**x).logits
    assert torch.equal(a, b) and not torch.equal(a, base)  # the adapter changed the model


def test_eval_from_another_directory_against_a_lora_iterate(real_run: dict, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from inpo.cli import app

    run = real_run["dir"]
    monkeypatch.chdir(tmp_path)  # the config's prompts path was relative to the training directory
    res = CliRunner().invoke(app, ["eval", str(run), "--baseline", str(run / "iter_1"), "--num-prompts", "1",
                                   "--samples", "2", "--json", "--set", "sampling.max_new_tokens=8"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["iteration"] == 1 and 0 <= out["pref/win_rate"] <= 1
    assert out["eval/kl_to_ref"] == pytest.approx(0.0, abs=1e-4)  # the baseline is the same iterate


def test_export_on_the_run(real_run: dict, tmp_path: Path) -> None:
    from inpo.datacheck import check_dataset, export_pairs_trl

    n = export_pairs_trl(real_run["dir"], tmp_path / "pairs.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert n == len(rows) > 0
    assert {r["prompt"] for r in rows} <= set(PROMPTS) and all(r["chosen"] != r["rejected"] for r in rows)
    assert check_dataset(tmp_path / "pairs.jsonl").format == "preference"


def test_data_check_reports_the_chat_template(real_run: dict, smollm2_dir: Path) -> None:
    from inpo.datacheck import data_app

    src = str(real_run["root"] / "prompts.jsonl")
    res = CliRunner().invoke(data_app, ["check", src, "--model", str(smollm2_dir), "--json"])
    assert res.exit_code == 0, res.output
    assert "rendered as one user turn" in json.loads(res.output)["prompt_rendering"]
    res = CliRunner().invoke(data_app, ["check", src, "--model", str(smollm2_dir), "--chat-template", "never",
                                        "--json"])
    assert "fed as is" in json.loads(res.output)["prompt_rendering"]
