"""``inpo game``: run the learning dynamics of several algorithms on a preference game.

Prints a rich table of the duality gap (mean over contexts) per iteration and algorithm, optionally
writes a log-scale plot (``--plot``), and with ``--json`` prints exactly one JSON object per algorithm
(final plain and tau-regularized duality gaps) and nothing else on stdout.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import typer
from rich import box
from rich.console import Console
from rich.table import Table

from inpo.errors import InpoError
from inpo.games.dynamics import ALGORITHMS, DynamicsConfig, Trajectory, run_exact, run_sampled
from inpo.games.matrices import GAMES, make_game, validate_game
from inpo.games.nash import solve_nash


def load_matrix(path: Path) -> np.ndarray:
    """Load a user game ``[A, A]`` or ``[X, A, A]`` from a ``.npy`` file; InpoError naming the file."""
    if not path.is_file():
        raise InpoError(f"--matrix {path}: file not found")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InpoError(f"--matrix {path}: not a readable .npy array ({msg})") from None
    return validate_game(arr, name=f"--matrix {path}")


def parse_algos(spec: str) -> list[str]:
    algos = [a.strip().lower() for a in spec.split(",") if a.strip()]
    bad = [a for a in algos if a not in ALGORITHMS]
    if bad or not algos:
        raise InpoError(
            f"--algo: unknown algorithm(s) {', '.join(bad) or '(none)'}; choose from {', '.join(ALGORITHMS)}"
        )
    return list(dict.fromkeys(algos))


def reference_policy(kind: str, contexts: int, actions: int, seed: int) -> np.ndarray:
    """``uniform`` or ``random`` (Dirichlet(2), seeded) reference policy ``[X, A]``."""
    if kind == "uniform":
        return np.full((contexts, actions), 1.0 / actions)
    if kind == "random":
        return np.random.default_rng(seed + 12345).dirichlet(2.0 * np.ones(actions), size=contexts)
    raise InpoError(f"--ref must be 'uniform' or 'random', got {kind!r}")


def write_plot(trajs: list[Trajectory], path: Path, title: str) -> None:
    """Log-scale duality gap (solid) and regularized gap (dashed) vs iteration; atomic write."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, tr in enumerate(trajs):
        color = f"C{i}"
        x = np.arange(len(tr.gap_mean))
        ax.semilogy(x, np.maximum(tr.gap_mean, 1e-16), color=color, label=f"{tr.algo}")
        ax.semilogy(x, np.maximum(tr.reg_gap_mean, 1e-16), color=color, ls="--", lw=0.9)
    ax.set_xlabel("iteration")
    ax.set_ylabel("duality gap (solid) / tau-regularized gap (dashed)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)


def _rows(T: int, n: int = 12) -> list[int]:
    if T + 1 <= n:
        return list(range(T + 1))
    pts = np.unique(np.round(np.geomspace(1, T, n - 1)).astype(int))
    return [0, *pts.tolist()]


def game(
    game: str = typer.Option("cyclic", help=f"Game generator: {', '.join(GAMES)}."),
    actions: int = typer.Option(5, min=2, help="Number of actions (responses) A; rps always has 3."),
    contexts: int = typer.Option(1, min=1, help="Number of contexts (prompts) X."),
    algo: str = typer.Option(",".join(ALGORITHMS), help=f"Comma-separated: {', '.join(ALGORITHMS)}."),
    iterations: int = typer.Option(200, min=1, help="Number of iterations T."),
    sampled: bool = typer.Option(False, "--sampled", help="Sampled dynamics (pairs + labels + losses.py)."),
    json_out: bool = typer.Option(False, "--json", help="One JSON object per algorithm on stdout, nothing else."),
    matrix: Path | None = typer.Option(None, help="User game .npy ([A,A] or [X,A,A]); overrides --game."),
    plot: Path | None = typer.Option(None, help="Write a PNG of the gap per iteration here."),
    seed: int = typer.Option(0, help="Seed for the game generator and the sampled dynamics."),
    eta: float = typer.Option(2.0, help="INPO's eta (paper's symbol; 1/eta is the step) for INPO, MNPO, EGPO, "
                              "Nash-MD; SPPO steps by 1/eta."),
    tau: float = typer.Option(0.05, help="KL regularization tau (0 < tau <= eta)."),
    eta_schedule: str = typer.Option("constant", help="INPO: constant | theorem4 (eta_t = tau (t+2)/2)."),
    beta: float | None = typer.Option(None, help="DPO/IPO beta (default: tau)."),
    ref: str = typer.Option("uniform", help="Reference policy pi_ref (= pi_0): uniform | random."),
    pairs: int = typer.Option(256, min=1, help="Sampled: pairs per context and iteration."),
    steps: int = typer.Option(30, min=1, help="Sampled: optimizer steps per iteration."),
    lr: float = typer.Option(0.5, help="Sampled: learning rate."),
) -> None:
    """Algorithmic unit test on a finite preference game: duality gap per iteration per algorithm."""
    algos = parse_algos(algo)
    if not (tau > 0 and eta > 0 and (tau <= eta or eta_schedule == "theorem4")):
        raise InpoError(f"--eta/--tau: need eta > 0 and 0 < tau <= eta (INPO's eta: 1/eta is the step; got "
                        f"eta={eta}, tau={tau})")
    if eta_schedule not in ("constant", "theorem4"):
        raise InpoError(f"--eta-schedule must be 'constant' or 'theorem4', got {eta_schedule!r}")
    if beta is not None and beta <= 0:
        raise InpoError(f"--beta must be > 0, got {beta}")
    if matrix is not None:
        P = load_matrix(matrix)
        name = f"matrix {matrix.name}"
    else:
        if game not in GAMES:
            raise InpoError(f"--game: unknown game {game!r}; choose one of {', '.join(GAMES)}")
        if game == "cyclic" and actions < 3:
            raise InpoError("--actions: a cyclic game needs at least 3 actions")
        P = make_game(game, actions, contexts, seed=seed)
        name = game
    X, A = P.shape[0], P.shape[-1]
    pi_ref = reference_policy(ref, X, A, seed)
    cfg = DynamicsConfig(eta=eta, tau=tau, beta=beta, pairs=pairs, steps=steps, lr=lr, eta_schedule=eta_schedule)
    trajs = []
    for a in algos:
        if sampled:
            trajs.append(run_sampled(P, a, iterations, cfg, pi_ref=pi_ref, seed=seed))
        else:
            trajs.append(run_exact(P, a, iterations, cfg, pi_ref=pi_ref))
    mode = "sampled" if sampled else "exact"
    sched = ", eta_t=tau(t+2)/2 (inpo)" if eta_schedule == "theorem4" else ""
    title = f"{name}: A={A}, X={X}, {mode}, eta={eta}, tau={tau}{sched}, pi_ref={ref}"
    if plot is not None:
        write_plot(trajs, plot, title)
    if json_out:
        for tr in trajs:
            rec = {
                "algo": tr.algo, "game": name, "actions": A, "contexts": X, "iterations": iterations,
                "mode": mode, "eta": eta, "tau": tau, "eta_schedule": eta_schedule, "beta": cfg.dpo_beta, "ref": ref,
                "seed": seed,
                "duality_gap": tr.gap_mean[-1], "duality_gap_max": tr.gap_max[-1],
                "regularized_gap": tr.reg_gap_mean[-1], "regularized_gap_max": tr.reg_gap_max[-1],
                "initial_gap": tr.gap_mean[0], "samples": tr.samples, "comparisons": tr.comparisons,
            }
            typer.echo(json.dumps(rec))
        return
    console = Console(width=max(80, 10 + 11 * len(trajs)))
    pi_ne, _ = solve_nash(P[0])
    console.print(f"[bold]{title}[/]")
    console.print(f"Nash equilibrium (LP) of context 0: {np.array2string(pi_ne, precision=3, suppress_small=True)}")
    table = Table(title="duality gap (mean over contexts)", box=box.SIMPLE_HEAD, padding=(0, 1))
    table.add_column("iter", justify="right", no_wrap=True)
    for tr in trajs:
        table.add_column(tr.algo, justify="right", no_wrap=True)
    for t in _rows(iterations):
        table.add_row(str(t), *[f"{tr.gap_mean[t]:.3g}" for tr in trajs])
    table.add_row("reg.gap", *[f"{tr.reg_gap_mean[-1]:.3g}" for tr in trajs], style="italic")
    if sampled:
        table.add_row("samples", *[str(tr.samples) for tr in trajs], style="dim")
    console.print(table)
    if plot is not None:
        console.print(f"plot written to {plot}")
