"""Judges from the ecosystem on tiny random models: standard reward models (TRL's RewardTrainer output, and ours
loaded by plain transformers), causal LMs as pairwise preference models (lm-pair), judge training options, and
the `inpo judge api | lm-pair | eval` commands."""

from __future__ import annotations

import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaForSequenceClassification
from typer.testing import CliRunner

from inpo.errors import InpoError
from inpo.judges import JudgeTrainConfig, LMPairJudge, RewardModelJudge, load_judge, train_judge
from inpo.judges.cli import app
from inpo.judges.lm_pair import RLHFLOW_TEMPLATE, render_user_message
from inpo.judges.reward_model import reward_input_ids
from inpo.judges.synthetic import transitive_rows
from inpo.judges.tiny import build_tiny_causal_lm, build_word_tokenizer, save_tiny_base, tiny_llama_config

CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} [SEP] {% endfor %}"
                 "{% if add_generation_prompt %}assistant : {% endif %}")
# RLHFlow's `tokenizer_plain.chat_template`, verbatim from RLHFlow/RLHF-Reward-Modeling pair-pm/README.md
RLHFLOW_PLAIN = ("\n{% for message in messages %}{% if loop.index0 % 2 == 0 %}"
                 "\n\n<turn> user\n {{ message['content'] }}{% else %}\n\n<turn> assistant\n "
                 "{{ message['content'] }}{% endif %}{% endfor %}\n\n\n")
ROWS = [
    {"prompt": "tell me about cats", "chosen": "cats are small and soft", "rejected": "no"},
    {"prompt": "name a colour", "chosen": "blue is a colour", "rejected": "dog"},
    {"prompt": "what is rain", "chosen": "rain is water falling from clouds", "rejected": "cats"},
    {"prompt": "say hello", "chosen": "hello there friend", "rejected": "bye"},
]


def chat_tokenizer(extra: list[str] | None = None):
    texts = [r[k] for r in ROWS for k in ("prompt", "chosen", "rejected")] + ["user assistant : A B"]
    texts += [render_user_message("generic", "", "", ""), render_user_message("rlhflow", "", "", "")]
    tok = build_word_tokenizer(texts + (extra or []))
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_reward_model(tok) -> LlamaForSequenceClassification:
    config = tiny_llama_config(len(tok), hidden_size=32, num_layers=1, num_heads=2)
    config.num_labels = 1
    config.pad_token_id = tok.pad_token_id
    torch.manual_seed(0)
    return LlamaForSequenceClassification(config)


def unpadded_reward(model: torch.nn.Module, ids: list[int]) -> float:
    with torch.no_grad():
        return float(model(input_ids=torch.tensor([ids])).logits[0, 0])


# --------------------------------------------------------------------------------------- reward-model


def test_trl_reward_trainer_output_is_a_reward_model_judge(tmp_path: Path) -> None:
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    tok = chat_tokenizer()
    rows = [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in ROWS]
    args = RewardConfig(output_dir=str(tmp_path / "o"), use_cpu=True, bf16=False, per_device_train_batch_size=4,
                        max_steps=3, learning_rate=1e-2, report_to=[], save_strategy="no", seed=0,
                        dataloader_num_workers=0, logging_steps=1)
    model = tiny_reward_model(tok)
    init = copy.deepcopy(model.score.weight.detach())
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    trainer.train()
    assert not torch.equal(init, trainer.model.score.weight.detach())  # it trained
    trainer.save_model(str(tmp_path / "rm"))

    judge = load_judge(tmp_path / "rm")  # no judge_config.json: detected as a one-label sequence classifier
    assert isinstance(judge, RewardModelJudge) and judge.template == "chat"
    ds = trainer.train_dataset
    for i, r in enumerate(ROWS):  # exactly the token ids TRL trained on
        assert judge._ids(r["prompt"], r["chosen"]) == list(ds[i]["chosen_ids"])
        assert judge._ids(r["prompt"], r["rejected"]) == list(ds[i]["rejected_ids"])
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    prompts = [r["prompt"] for r in ROWS]
    a, b = [r["chosen"] for r in ROWS], [r["rejected"] for r in ROWS]
    truth_a = torch.tensor([unpadded_reward(plain, list(ds[i]["chosen_ids"])) for i in range(4)], dtype=torch.float64)
    truth_b = torch.tensor([unpadded_reward(plain, list(ds[i]["rejected_ids"])) for i in range(4)],
                           dtype=torch.float64)
    judge.batch_size = 3  # padded batches of different lengths
    torch.testing.assert_close(judge.rewards(prompts, a), truth_a, atol=1e-5, rtol=0)
    p = judge.prob(prompts, a, b)
    torch.testing.assert_close(p, torch.sigmoid(truth_a - truth_b), atol=1e-5, rtol=0)
    torch.testing.assert_close(p + judge.prob(prompts, b, a), torch.ones(4, dtype=torch.float64))
    m = judge.matrix(prompts[0], [a[0], b[0], "blue"])
    torch.testing.assert_close(m[0, 1], p[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(m + m.T, torch.ones(3, 3, dtype=torch.float64))


def test_plain_reward_model_input_is_trls(tmp_path: Path) -> None:
    """Without a chat template: prompt + response + eos, tokenized as TRL's RewardTrainer does."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    tok = chat_tokenizer()
    tok.chat_template = None
    rows = [{"prompt": r["prompt"] + " ", "chosen": r["chosen"], "rejected": r["rejected"]} for r in ROWS]
    args = RewardConfig(output_dir=str(tmp_path / "o"), use_cpu=True, bf16=False, report_to=[], save_strategy="no")
    trainer = RewardTrainer(model=tiny_reward_model(tok), args=args, train_dataset=Dataset.from_list(rows),
                            processing_class=tok)
    for i, r in enumerate(rows):
        assert reward_input_ids(tok, r["prompt"], r["chosen"], "plain") == list(trainer.train_dataset[i]["chosen_ids"])


def test_our_bt_judge_is_a_standard_reward_model(tmp_path: Path) -> None:
    rows = transitive_rows(8, seed=0)
    res = train_judge(rows, "bt", "builtin-tiny", tmp_path / "bt", JudgeTrainConfig(epochs=2))
    cfg = json.loads((tmp_path / "bt" / "judge_config.json").read_text())
    assert cfg["standard"] is True and cfg["input"] == "tokens" and cfg["metrics"]["lr"] == 1e-3
    prompts, resp = [r["prompt"] for r in rows[:5]], [r["chosen"] for r in rows[:5]]
    ours = load_judge(tmp_path / "bt").rewards(prompts, resp)
    torch.testing.assert_close(ours, res.judge.rewards(prompts, resp))
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "bt").eval()
    assert plain.config.num_labels == 1
    enc = res.judge.encoder.encode(prompts, resp)
    with torch.no_grad():
        theirs = plain(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits[:, 0].double()
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)

    # a base whose tokenizer has a chat template: the BT judge takes the standard chat input, so a reader that
    # knows nothing of inpo (the reward-model judge, TRL's conventions) gets the same rewards
    texts = [r[k] for r in ROWS for k in ("prompt", "chosen", "rejected")] + ["user assistant :"]
    base = save_tiny_base(texts, tmp_path / "base")
    (tmp_path / "base" / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    res = train_judge(ROWS, "scaled-bt", base, tmp_path / "sbt", JudgeTrainConfig(epochs=2, held_out=0))
    cfg = json.loads((tmp_path / "sbt" / "judge_config.json").read_text())
    assert cfg["input"] == "chat" and cfg["standard"] is True
    std = load_judge(tmp_path / "sbt", kind="reward-model")
    assert isinstance(std, RewardModelJudge)
    prompts, resp = [r["prompt"] for r in ROWS], [r["chosen"] for r in ROWS]
    torch.testing.assert_close(std.rewards(prompts, resp), res.judge.rewards(prompts, resp), atol=1e-5, rtol=0)


def test_reward_model_judge_errors(tmp_path: Path) -> None:
    tok = chat_tokenizer()
    config = tiny_llama_config(len(tok))
    config.num_labels = 2
    with pytest.raises(InpoError, match="num_labels=2"):
        RewardModelJudge(LlamaForSequenceClassification(config), tok)
    with pytest.raises(InpoError, match="no judge_config.json"):
        load_judge(tmp_path)
    with pytest.raises(InpoError, match="kind must be reward-model or lm-pair"):
        load_judge(tmp_path, kind="gpm")


# --------------------------------------------------------------------------------------------- lm-pair


def lm_pair(preset: str = "generic", **kw) -> LMPairJudge:
    tok = chat_tokenizer()
    model = build_tiny_causal_lm(len(tok), hidden_size=32, num_layers=2, seed=1).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # larger weights than the default init: logits that differ visibly between inputs
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return LMPairJudge(model, tok, preset=preset, **kw)


def first_prob_by_hand(judge: LMPairJudge, prompt: str, first: str, second: str) -> float:
    """One unpadded sequence, full logits, the last position: sigmoid(logit_A - logit_B)."""
    ids = judge.tokenizer(judge.render(prompt, first, second), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = judge.model(input_ids=torch.tensor([ids])).logits[0, -1].double()
    a, b = judge.answer_ids
    return float(torch.sigmoid(logits[a] - logits[b]))


@pytest.mark.parametrize("preset", ["generic", "rlhflow"])
def test_lm_pair_probabilities_are_the_answer_token_logits(preset: str) -> None:
    judge = lm_pair(preset, batch_size=3)
    prompts = [r["prompt"] for r in ROWS]
    a, b = [r["chosen"] for r in ROWS], [r["rejected"] + " and more words here" for r in ROWS]
    f_ab = torch.tensor([first_prob_by_hand(judge, x, u, v) for x, u, v in zip(prompts, a, b, strict=True)],
                        dtype=torch.float64)
    f_ba = torch.tensor([first_prob_by_hand(judge, x, v, u) for x, u, v in zip(prompts, a, b, strict=True)],
                        dtype=torch.float64)
    # batched with left padding (rows of different lengths) equals the unpadded sequences one by one
    torch.testing.assert_close(judge.first_prob(prompts, a, b), f_ab, atol=1e-5, rtol=0)
    assert (f_ab - f_ba).abs().max() > 1e-4  # a random model is position-biased ...
    p = judge.prob(prompts, a, b)
    torch.testing.assert_close(p, (f_ab + 1 - f_ba) / 2, atol=1e-5, rtol=0)
    torch.testing.assert_close(p + judge.prob(prompts, b, a), torch.ones(4, dtype=torch.float64))  # ... the judge not
    torch.testing.assert_close(judge.prob(prompts, a, a), torch.full((4,), 0.5, dtype=torch.float64))
    m = judge.matrix(prompts[0], [a[0], b[0], a[1]])
    torch.testing.assert_close(m + m.T, torch.ones(3, 3, dtype=torch.float64))
    torch.testing.assert_close(m[0, 1], p[0], atol=1e-6, rtol=0)


def test_rlhflow_rendering_matches_their_template() -> None:
    judge = lm_pair("rlhflow")
    plain = copy.deepcopy(judge.tokenizer)
    plain.chat_template = RLHFLOW_PLAIN
    context = plain.apply_chat_template([{"role": "user", "content": "what is rain"}], tokenize=False)
    content = RLHFLOW_TEMPLATE.format(context=context, response_a="wet", response_b="dry")
    assert content == "[CONTEXT] \n\n<turn> user\n what is rain\n [RESPONSE A] wet [RESPONSE B] dry \n"
    expected = judge.tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                   add_generation_prompt=True)
    assert judge.render("what is rain", "wet", "dry") == expected


def test_lm_pair_errors() -> None:
    with pytest.raises(InpoError, match="unknown preset"):
        lm_pair("nope")
    with pytest.raises(InpoError, match="answer token 'A B'"):
        lm_pair(answer_tokens=("A B", "B"))


def test_train_lm_pair_learns_and_saves_a_plain_causal_lm(tmp_path: Path) -> None:
    rows = transitive_rows(20, seed=0)  # 4 styles ranked s0 > s1 > s2 > s3
    res = train_judge(rows, "lm-pair", "builtin-tiny", tmp_path / "pm", JudgeTrainConfig(epochs=15, lr=3e-3))
    assert res.metrics["accuracy"] >= 0.95 and res.metrics["p_chosen"] > 0.8, res.metrics
    assert res.history[-1]["loss"] < res.history[0]["loss"] / 5
    loaded = load_judge(tmp_path / "pm")
    assert isinstance(loaded, LMPairJudge) and loaded.preset == "generic"
    q = [r["prompt"] for r in rows[:6]]
    a, b = [r["chosen"] for r in rows[:6]], [r["rejected"] for r in rows[:6]]
    torch.testing.assert_close(loaded.prob(q, a, b), res.judge.prob(q, a, b))
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "pm").config.model_type == "llama"


@pytest.mark.parametrize("kind", ["bt", "lm-pair"])
def test_lora_and_gradient_checkpointing(tmp_path: Path, kind: str) -> None:
    pytest.importorskip("peft")
    rows = transitive_rows(6, seed=0)
    cfg = JudgeTrainConfig(epochs=2, lora_r=4, gradient_checkpointing=True, threads=1, held_out=0)
    res = train_judge(rows, kind, "builtin-tiny", tmp_path / "j", cfg)
    names = [n for n, _ in res.judge.model.named_parameters()]
    assert not any("lora" in n for n in names)  # merged before saving
    from safetensors import safe_open

    with safe_open(str(tmp_path / "j" / "model.safetensors"), "pt") as f:
        assert not any("lora" in k for k in f.keys())
    q, a, b = [r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows]
    torch.testing.assert_close(load_judge(tmp_path / "j").prob(q, a, b), res.judge.prob(q, a, b))


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_lm_pair_and_eval_of_model_dirs(tmp_path: Path) -> None:
    runner = CliRunner()
    judge = lm_pair()
    judge.model.save_pretrained(tmp_path / "lm")
    judge.tokenizer.save_pretrained(tmp_path / "lm")
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    r = runner.invoke(app, ["lm-pair", str(tmp_path / "lm"), str(tmp_path / "j"), "--preset", "rlhflow"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "j" / "judge_config.json").read_text())
    assert cfg["kind"] == "lm-pair" and cfg["preset"] == "rlhflow" and Path(cfg["model"]).is_absolute()
    r = runner.invoke(app, ["eval", str(tmp_path / "j"), str(data), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["kind"] == "lm-pair" and out["cases"]["all"]["n"] == 4
    expected = lm_pair("rlhflow").prob([x["prompt"] for x in ROWS], [x["chosen"] for x in ROWS],
                                       [x["rejected"] for x in ROWS])
    assert out["cases"]["all"]["p_chosen"] == pytest.approx(float(expected.mean()), abs=1e-6)
    r = runner.invoke(app, ["eval", str(tmp_path / "lm"), str(data), "--kind", "lm-pair", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["kind"] == "lm-pair"
    r = runner.invoke(app, ["lm-pair", str(tmp_path / "nope"), str(tmp_path / "k")])
    assert isinstance(r.exception, InpoError) and "no config.json" in str(r.exception)
    assert not (tmp_path / "k").exists()


def test_cli_api_judge_create_and_eval(tmp_path: Path) -> None:
    """`inpo judge api` writes the config; `inpo judge eval` runs it (it crashed on `.kind` before)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802 - http.server's API
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            text = body["messages"][-1]["content"]
            first = text.split("[Response A]\n")[1].split("\n\n[Response B]")[0]
            second = text.split("[Response B]\n")[1].split("\n\nAnswer")[0]
            verdict = "A" if len(first) > len(second) else "B"  # prefers the longer response
            out = json.dumps({"choices": [{"message": {"content": verdict}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        runner = CliRunner()
        url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
        r = runner.invoke(app, ["api", str(tmp_path / "api"), "--base-url", url, "--model", "m", "--no-auth"])
        assert r.exit_code == 0, r.output
        cfg = json.loads((tmp_path / "api" / "judge_config.json").read_text())
        assert cfg["kind"] == "openai" and cfg["api_key_env"] is None and cfg["model"] == "m"
        data = tmp_path / "pairs.jsonl"
        rows = ROWS + [{"prompt": "x", "chosen": "ok", "rejected": "a much longer answer"}]
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        r = runner.invoke(app, ["eval", str(tmp_path / "api"), str(data), "--json"])
        assert r.exit_code == 0, r.output
        out = json.loads(r.output)
        assert out["kind"] == "openai" and out["cases"]["all"]["accuracy"] == pytest.approx(4 / 5)
        r = runner.invoke(app, ["api", str(tmp_path / "api"), "--base-url", url, "--model", "m"])
        assert isinstance(r.exception, InpoError) and "already holds" in str(r.exception)
        r = runner.invoke(app, ["api", str(tmp_path / "a2"), "--base-url", "ftp://x", "--model", "m"])
        assert isinstance(r.exception, InpoError) and "http://" in str(r.exception)
    finally:
        srv.shutdown()
        srv.server_close()
