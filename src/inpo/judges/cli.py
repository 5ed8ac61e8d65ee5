"""``inpo judge ...``: train and evaluate preference models (registered by the main CLI as ``judge``).

    inpo judge train DATA --kind bt|scaled-bt|pair|gpm|lm-pair --base MODEL_DIR|builtin-tiny --out DIR
    inpo judge eval JUDGE_DIR DATA            any judge dir; a TRL reward model; --kind lm-pair MODEL_DIR
    inpo judge lm-pair MODEL_DIR OUT_DIR      a causal LM as a pairwise judge (--preset generic|rlhflow)
    inpo judge reward-model MODEL_DIR OUT_DIR a one-label sequence classifier as a judge
    inpo judge api OUT_DIR --base-url URL --model NAME   an OpenAI-compatible chat endpoint as a judge
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from inpo.errors import InpoError

app = typer.Typer(
    name="judge",
    help="Preference models (judges): train and evaluate BT, Scaled-BT, pair, GPM and lm-pair judges; reward-model "
    "and API judges.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()


@app.command("train")
def train(
    data: Path = typer.Argument(..., help="Pairs: .jsonl/.json/.csv/.parquet (prompt, chosen, rejected[, strength])."),
    kind: str = typer.Option("gpm", "--kind", help="bt | scaled-bt | pair | gpm | lm-pair"),
    base: str = typer.Option("builtin-tiny", "--base", help="Local transformers model dir, or builtin-tiny."),
    out: Path | None = typer.Option(
        None, "--out", help="Output directory (save_pretrained + judge_config.json); default runs/judge-<kind>-<time>."
    ),
    epochs: int = typer.Option(3, "--epochs"),
    lr: float | None = typer.Option(
        None, "--lr", help="AdamW lr. Default: 1e-3 for models under 10M parameters (builtin-tiny), else 2e-4 with "
        "--lora-r, 1e-5 without."),
    batch_size: int = typer.Option(16, "--batch-size", help="Pairs per step (a 135M model: 4, see docs/judges.md)."),
    seed: int = typer.Option(0, "--seed"),
    dim: int = typer.Option(4, "--dim", help="GPM embedding dimension 2k (even)."),
    temperature: float = typer.Option(0.1, "--temperature", help="GPM: P = sigmoid(s / temperature)."),
    prompt_head: bool = typer.Option(False, "--prompt-head", help="GPM: prompt-dependent eigenvalues."),
    held_out: float = typer.Option(0.2, "--held-out", help="Fraction of prompts held out for evaluation."),
    max_length: int = typer.Option(512, "--max-length", help="Max tokens per model input."),
    lora_r: int = typer.Option(0, "--lora-r", help="LoRA rank on all linear layers (0: train all weights)."),
    lora_alpha: int = typer.Option(16, "--lora-alpha"),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing",
                                                help="Recompute activations: less memory, more time."),
    threads: int | None = typer.Option(None, "--threads", help="torch CPU threads (default: torch's)."),
    preset: str = typer.Option("generic", "--preset", help="lm-pair template: generic | rlhflow."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar (stderr)."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object."),
) -> None:
    """Fit a judge; print the loss per epoch, held-out accuracy, ECE (10 bins) and pair counts."""
    import time

    from inpo.judges.train import JudgeTrainConfig, train_judge

    if out is None:
        out = Path("runs") / f"judge-{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = JudgeTrainConfig(
        epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, dim=dim, temperature=temperature,
        prompt_head=prompt_head, held_out=held_out, max_length=max_length, lora_r=lora_r, lora_alpha=lora_alpha,
        gradient_checkpointing=gradient_checkpointing, threads=threads, preset=preset,
        progress=progress and not as_json,
    )
    err = Console(stderr=True)

    def log(row: dict[str, float]) -> None:
        if not as_json:
            err.print(f"epoch {int(row['epoch'])}/{epochs}: loss {row['loss']:.4f} ({row['seconds']:.1f} s)")

    result = train_judge(data, kind, base, out, cfg, log=log)
    m = result.metrics
    if as_json:
        print(json.dumps({"kind": kind, "out": str(out), **m}))
        return
    table = Table(title=f"judge {kind} -> {out}")
    for col in ("held-out acc", "ECE", "train acc", "n pairs", "train", "held-out", "ties dropped"):
        table.add_column(col, justify="right")
    table.add_row(
        f"{m['accuracy']:.3f}", f"{m['ece']:.3f}", f"{m['train_accuracy']:.3f}", str(m["n_pairs"]),
        str(m["n_train"]), str(m["n_held_out"]), str(m["n_ties_dropped"]),
    )
    console.print(table)
    if abs(m["final_loss"] - math.log(2)) < 0.01:
        console.print(
            f"[yellow]warning:[/] final training loss {m['final_loss']:.4f} ~ log 2: the judge separates no pairs "
            "(BT on cyclic data cannot; a GPM/pair judge stuck here may need a smaller --lr or more --epochs)"
        )


@app.command("eval")
def eval_(
    judge_dir: Path = typer.Argument(..., help="A judge directory (inpo judge train/lm-pair/reward-model/api), or a "
                                               "reward model directory (e.g. TRL's RewardTrainer output)."),
    data: Path = typer.Argument(..., help="Labelled pairs (a `case` column gives per-case rows)."),
    kind: str | None = typer.Option(None, "--kind", help="Read JUDGE_DIR as a plain model dir of this kind: "
                                                         "reward-model | lm-pair."),
    preset: str = typer.Option("generic", "--preset", help="With --kind lm-pair: generic | rlhflow."),
    batch_size: int = typer.Option(8, "--batch-size", help="Sequences per forward pass."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object."),
) -> None:
    """Accuracy / ECE per case and the confusion of cyclic triples (data vs judge)."""
    from inpo.judges.data import load_preferences
    from inpo.judges.train import evaluate_pairs, load_judge
    from inpo.judges.triples import cyclic_triple_confusion

    if not judge_dir.is_dir():
        raise InpoError(f"{judge_dir}: judge directory not found")
    options = {"preset": preset} if kind == "lm-pair" else {}
    judge = load_judge(judge_dir, kind=kind, batch_size=batch_size, **options)
    judge_kind = getattr(judge, "kind", type(judge).__name__)
    prefs = load_preferences(data)
    per_case = {"all": evaluate_pairs(judge, prefs.pairs)}
    for case in prefs.cases:
        per_case[case] = evaluate_pairs(judge, [p for p in prefs.pairs if p.case == case])
    triples = cyclic_triple_confusion(judge, prefs.pairs)
    if as_json:
        print(json.dumps({"judge": str(judge_dir), "kind": judge_kind, "cases": per_case, "triples": triples,
                          "n_ties_dropped": prefs.n_ties}))
        return
    table = Table(title=f"{judge_kind} judge {judge_dir} on {data}")
    for col in ("case", "n", "accuracy", "ECE", "mean P(chosen)"):
        table.add_column(col, justify="right" if col != "case" else "left")
    for case, m in per_case.items():
        table.add_row(case, str(m["n"]), f"{m['accuracy']:.3f}", f"{m['ece']:.3f}", f"{m['p_chosen']:.3f}")
    console.print(table)
    conf = Table(title="triples with all 3 pairs labelled: data (rows) vs judge (columns)")
    conf.add_column("data \\ judge")
    for k in ("cyclic", "transitive", "tie"):
        conf.add_column(k, justify="right")
    for k in ("cyclic", "transitive"):
        conf.add_row(k, *(str(triples[k][j]) for j in ("cyclic", "transitive", "tie")))
    console.print(conf)
    e = triples["edges"]
    if e["total"]:
        console.print(f"triple edges agreeing with the data majority: {e['agree']}/{e['total']}")


@app.command("lm-pair")
def lm_pair(
    model_dir: Path = typer.Argument(..., help="A causal LM directory (save_pretrained, safetensors)."),
    out: Path = typer.Argument(..., help="Judge directory to write (judge_config.json pointing at MODEL_DIR)."),
    preset: str = typer.Option("generic", "--preset", help="generic (any instruct model) | rlhflow "
                                                           "(RLHFlow pair-preference-model template)."),
    template_file: Path | None = typer.Option(None, "--template-file", help="Own user-message template (generic: "
                                              "{prompt} {response_a} {response_b}; rlhflow: {context} ...)."),
    system: str | None = typer.Option(None, "--system", help="System message."),
    max_length: int = typer.Option(1024, "--max-length", help="Max tokens per rendered input (keeps the end)."),
) -> None:
    """A causal LM as a pairwise judge: P(A > B) from the next-token logits of A and B, both orders averaged."""
    from inpo.judges.train import write_wrapper_judge

    template = _read_template(template_file)
    write_wrapper_judge(out, "lm-pair", model_dir, preset=preset, template=template, system=system,
                        max_length=max_length)
    console.print(f"wrote {out / 'judge_config.json'} (lm-pair, preset {preset}, model {model_dir.resolve()})")


@app.command("reward-model")
def reward_model(
    model_dir: Path = typer.Argument(..., help="A one-label AutoModelForSequenceClassification directory."),
    out: Path = typer.Argument(..., help="Judge directory to write (judge_config.json pointing at MODEL_DIR)."),
    template: str = typer.Option("auto", "--template", help="auto | chat | plain (see inpo.judges.reward_model)."),
    max_length: int = typer.Option(1024, "--max-length"),
) -> None:
    """A standard reward model as a judge, P(a > b) = sigmoid(r_a - r_b) (a directory without judge_config.json
    also loads as one directly)."""
    from inpo.judges.train import write_wrapper_judge

    write_wrapper_judge(out, "reward-model", model_dir, template=template, max_length=max_length)
    console.print(f"wrote {out / 'judge_config.json'} (reward-model, model {model_dir.resolve()})")


@app.command("api")
def api(
    out: Path = typer.Argument(..., help="Judge directory to write (judge_config.json; never the key)."),
    base_url: str = typer.Option(..., "--base-url", help="API root, e.g. http://127.0.0.1:8000/v1."),
    model: str = typer.Option(..., "--model", help="Served model name."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env",
                                    help="Environment variable holding the key (read at each request)."),
    no_auth: bool = typer.Option(False, "--no-auth", help="Send no Authorization header (local servers)."),
    template_file: Path | None = typer.Option(None, "--template-file",
                                              help="User-message template with {prompt} {response_a} {response_b}."),
    system: str | None = typer.Option(None, "--system", help="System message."),
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds per request."),
    max_retries: int = typer.Option(3, "--max-retries"),
    concurrency: int = typer.Option(4, "--concurrency", help="Requests in flight."),
    max_tokens: int = typer.Option(8, "--max-tokens"),
    temperature: float = typer.Option(0.0, "--temperature"),
) -> None:
    """An OpenAI-compatible chat-completions endpoint as a pairwise judge (both orders asked and averaged)."""
    from inpo.judges.api import DEFAULT_TEMPLATE, OpenAIPairwiseJudge

    if (out / "judge_config.json").exists():
        raise InpoError(f"{out}: already holds a judge_config.json")
    judge = OpenAIPairwiseJudge(
        base_url, model, api_key_env=None if no_auth else api_key_env, timeout=timeout, max_retries=max_retries,
        template=_read_template(template_file) or DEFAULT_TEMPLATE, system=system, max_tokens=max_tokens,
        temperature=temperature, concurrency=concurrency,
    )
    judge.save(out)
    console.print(f"wrote {out / 'judge_config.json'} (API judge {model} at {judge.base_url})")


def _read_template(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise InpoError(f"{path}: cannot read the template ({e.strerror or e})") from None


@app.command("synth")
def synth(
    name: str = typer.Argument(..., help="cyclic | transitive | condorcet | mixture | position | length"),
    out: Path = typer.Argument(..., help="Output .jsonl"),
    prompts: int = typer.Option(60, "--prompts", help="Number of prompts."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Write a synthetic preference dataset with a known answer (see inpo.judges.synthetic)."""
    from inpo.judges import synthetic as syn

    makers = {
        "cyclic": lambda: syn.cyclic_rows(prompts, seed=seed),
        "transitive": lambda: syn.transitive_rows(prompts, seed=seed),
        "condorcet": lambda: syn.condorcet_rows(prompts, seed=seed),
        "mixture": lambda: syn.annotator_rows(syn.OPPOSITE_RANKINGS, [3, 1], n_prompts=prompts, seed=seed,
                                              case="mixture"),
        "position": lambda: syn.position_trap(prompts, seed=seed),
        "length": lambda: [r for part in syn.length_trap(prompts, seed=seed) for r in part],
    }
    if name not in makers:
        raise InpoError(f"unknown synthetic dataset '{name}' (choose one of {', '.join(makers)})")
    rows = makers[name]()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    console.print(f"wrote {len(rows)} rows to {out}")


def main() -> None:
    """``python -m inpo.judges.cli ...``: the same commands before/without the main CLI."""
    import sys

    try:
        app()
    except InpoError as e:
        Console(stderr=True).print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
