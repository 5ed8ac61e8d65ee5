"""What a run shows and logs: the metrics table printed per iteration, ``metrics.png`` (win rate and duality
gap per iteration), the progress bars, and the accelerate trackers (tensorboard, wandb, mlflow).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from inpo.config import RunConfig
from inpo.rundir import RunDir

COLUMNS = [("iter", "iteration", "{:d}"), ("win vs ref (judge)", "pref/win_rate", "{:.3f}"),
           ("win vs ref (exact)", "game/win_rate_vs_ref", "{:.3f}"), ("duality gap", "game/duality_gap", "{:.4f}"),
           ("reg. gap", "game/reg_duality_gap", "{:.4f}"),
           ("KL(pi||ref)", "eval/kl_to_ref", "{:.3f}"), ("len", "eval/mean_length", "{:.2f}"),
           ("loss", "loss/train", "{:.4f}"), ("pairs", "train/pairs", "{:d}"), ("sample s", "time/sample", "{:.1f}"),
           ("judge s", "time/judge", "{:.1f}"), ("logps s", "time/logprobs", "{:.1f}"),
           ("train s", "time/train", "{:.1f}")]


def metrics_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    present = [c for c in COLUMNS if any(c[1] in r for r in rows)]
    for name, _, _ in present:
        table.add_column(name, justify="right")
    for r in rows:
        table.add_row(*[fmt.format(r[key]) if key in r else "-" for _, key, fmt in present])
    return table


def write_plots(run: RunDir, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = [  # (title, [(metric, legend)]): a panel is drawn when one of its metrics was recorded
        ("win rate vs pi_ref", [("pref/win_rate", "judge, sampled (both orders)"),
                                ("game/win_rate_vs_ref", "exact (task game)")]),
        ("duality gap", [("game/duality_gap", "plain"), ("game/reg_duality_gap", "tau-regularized")]),
    ]
    panels = [(t, [c for c in curves if any(c[0] in r for r in rows)]) for t, curves in panels]
    panels = [(t, curves) for t, curves in panels if curves]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels, strict=True):
        for key, legend in curves:
            pts = [(r["iteration"], r[key]) for r in rows if key in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=legend)
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = run.path / ".metrics.png.tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, run.path / "metrics.png")


@contextmanager
def progress_bars(enabled: bool) -> Iterator[Progress]:
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), disable=not enabled, transient=True)
    with progress:
        yield progress


def resolve_trackers(cfg: RunConfig) -> list[str]:
    """accelerate trackers: 'auto' = tensorboard when it is installed, else none (wandb/mlflow on request;
    their API keys are read by those libraries from the environment, never from the config)."""
    if cfg.log_with != "auto":
        return list(cfg.log_with)
    import importlib.util

    return ["tensorboard"] if importlib.util.find_spec("tensorboard") is not None else []


def flat_config(cfg: RunConfig) -> dict[str, Any]:
    """The config as flat scalar hyperparameters (what trackers accept)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = value if isinstance(value, int | float | str | bool) else str(value)

    walk("", cfg.model_dump(mode="json"))
    return out


@contextmanager
def timed(times: dict[str, float], key: str) -> Iterator[None]:
    """Add the wall-clock seconds of the block to ``times[key]``."""
    t0 = time.perf_counter()
    yield
    times[key] += time.perf_counter() - t0


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB (``getrusage``; Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024
