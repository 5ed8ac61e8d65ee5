"""``inpo judge ...``: train and evaluate preference models (registered by the main CLI as ``judge``).

    inpo judge train DATA --kind bt|scaled-bt|pair|gpm --base MODEL_DIR|builtin-tiny --out DIR
    inpo judge eval JUDGE_DIR DATA
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from inpo.errors import InpoError
from inpo.inputs import MAX_SEED, check_int, check_judge_train_args, refuse_inside_run

app = typer.Typer(
    name="judge",
    help="Preference models (judges): train and evaluate BT, Scaled-BT, pairwise and GPM judges.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()


@app.command("train")
def train(
    data: Path = typer.Argument(..., help="Pairs: .jsonl/.json/.csv/.parquet (prompt, chosen, rejected[, strength])."),
    kind: str = typer.Option("gpm", "--kind", help="bt | scaled-bt | pair | gpm"),
    base: str = typer.Option("builtin-tiny", "--base", help="Local transformers model dir, or builtin-tiny."),
    out: Path | None = typer.Option(
        None, "--out", help="Output directory (save_pretrained + judge_config.json); default runs/judge-<kind>-<time>."
    ),
    epochs: int = typer.Option(3, "--epochs"),
    lr: float = typer.Option(1e-3, "--lr"),
    batch_size: int = typer.Option(16, "--batch-size"),
    seed: int = typer.Option(0, "--seed"),
    dim: int = typer.Option(4, "--dim", help="GPM embedding dimension 2k (even)."),
    temperature: float = typer.Option(0.1, "--temperature", help="GPM: P = sigmoid(s / temperature)."),
    prompt_head: bool = typer.Option(False, "--prompt-head", help="GPM: prompt-dependent eigenvalues."),
    held_out: float = typer.Option(0.2, "--held-out", help="Fraction of prompts held out for evaluation."),
    max_length: int = typer.Option(512, "--max-length", help="Max tokens per model input."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object."),
) -> None:
    """Fit a judge; print held-out accuracy, ECE (10 bins) and pair counts."""
    import time

    from inpo.judges.train import JudgeTrainConfig, train_judge

    check_judge_train_args(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, dim=dim, temperature=temperature,
                           held_out=held_out, max_length=max_length)  # the input boundary (inpo.inputs)
    if out is None:
        out = Path("runs") / f"judge-{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    refuse_inside_run(out, "--out")
    cfg = JudgeTrainConfig(
        epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, dim=dim, temperature=temperature,
        prompt_head=prompt_head, held_out=held_out, max_length=max_length,
    )
    result = train_judge(data, kind, base, out, cfg)
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
    judge_dir: Path = typer.Argument(..., help="A directory written by `inpo judge train`."),
    data: Path = typer.Argument(..., help="Labelled pairs (a `case` column gives per-case rows)."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object."),
) -> None:
    """Accuracy / ECE per case and the confusion of cyclic triples (data vs judge)."""
    from inpo.judges.data import load_preferences
    from inpo.judges.train import evaluate_pairs, load_judge
    from inpo.judges.triples import cyclic_triple_confusion

    if not judge_dir.is_dir():
        raise InpoError(f"{judge_dir}: judge directory not found")
    judge = load_judge(judge_dir)
    prefs = load_preferences(data)
    per_case = {"all": evaluate_pairs(judge, prefs.pairs)}
    for case in prefs.cases:
        per_case[case] = evaluate_pairs(judge, [p for p in prefs.pairs if p.case == case])
    triples = cyclic_triple_confusion(judge, prefs.pairs)
    if as_json:
        print(json.dumps({"judge": str(judge_dir), "kind": judge.kind, "cases": per_case, "triples": triples,
                          "n_ties_dropped": prefs.n_ties}))
        return
    table = Table(title=f"{judge.kind} judge {judge_dir} on {data}")
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


@app.command("synth")
def synth(
    name: str = typer.Argument(..., help="cyclic | transitive | condorcet | mixture | position | length"),
    out: Path = typer.Argument(..., help="Output .jsonl"),
    prompts: int = typer.Option(60, "--prompts", help="Number of prompts."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Write a synthetic preference dataset with a known answer (see inpo.judges.synthetic)."""
    from inpo.judges import synthetic as syn

    check_int("--prompts", prompts, 1, 1_000_000)
    check_int("--seed", seed, 0, MAX_SEED)
    refuse_inside_run(out, "output")
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
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    console.print(f"wrote {len(rows)} rows to {out}")


def main() -> None:
    """``python -m inpo.judges.cli ...``: the same commands before/without the main CLI (same error handling)."""
    from inpo.cli import run_app

    run_app(app, prog_name="inpo judge")


if __name__ == "__main__":
    main()
