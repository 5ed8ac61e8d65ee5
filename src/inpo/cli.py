"""The `inpo` command line: thin wrappers that parse, build a config and call the library.

Every user-facing error is an :class:`inpo.errors.InpoError`; ``main`` prints it as one line and
exits with code 2 (``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console

from inpo.errors import InpoError

app = typer.Typer(
    name="inpo",
    help="Nash learning from general preferences: INPO, SPPO, MNPO, EGPO, Nash-MD, iterative DPO/IPO.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True)


ALGOS = "inpo|dpo|ipo|sppo|mnpo|egpo|nash-md"


@app.command()
def train(
    config: Path | None = typer.Argument(None, help="YAML config; omitted = the built-in task with INPO."),
    task: str | None = typer.Option(
        None, "--task", help="A built-in task's shipped config instead of a file: 'annotators' (SmolLM2-135M-Instruct, "
        "LoRA, 336 shipped prompts, an oracle of three rule-based annotators whose majority is cyclic)."),
    algo: str | None = typer.Option(
        None, "--algo", help=f"Algorithm: {ALGOS}. Replaces the config's, whose eta/tau/beta give way to the new "
        "algorithm's defaults (kept within INPO's family: inpo, mnpo, egpo, nash-md)."),
    iterations: int | None = typer.Option(None, "--iterations", "-T", help="Number of iterations T."),
    output_dir: str | None = typer.Option(
        None, "--output-dir", "-o", help="Run directory (default runs/<algo>-<time>)."
    ),
    seed: int | None = typer.Option(None, "--seed"),
    resume: Path | None = typer.Option(None, "--resume", help="Continue the run in this directory."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory."),
    allow_config_change: bool = typer.Option(
        False, "--allow-config-change", help="With --resume: continue under a changed config (--set ...)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or tables (CI)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config field: --set algo.eta=2 (repeatable)."),
) -> None:
    """Run iterative Nash policy optimization (sample -> judge -> pairs -> train) and evaluate each iterate."""
    from inpo.config import load_config, parse_overrides, resolve_output_dir

    overrides = parse_overrides(set_)
    if task is not None:
        if config is not None or resume is not None:
            raise InpoError("give one of a config file, --task or --resume")
        if task != "annotators":
            raise InpoError(f"--task {task!r}: unknown task (known: annotators; the toy task: no --task)")
        from inpo.tasks.annotators import CONFIG_FILE

        config = CONFIG_FILE
    if resume is not None:
        if config is not None:
            raise InpoError("give either a config file or --resume RUN_DIR, not both")
        config = resume / "config.yaml"
        if not config.is_file():
            raise InpoError(f"{resume}: nothing to resume (no config.yaml)")
        from inpo.config import check_run_version

        check_run_version(resume)  # before its config.yaml is read with today's field meanings
        overrides.setdefault("output_dir", str(resume))
    flags = {"iterations": iterations, "seed": seed, "output_dir": output_dir}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    if algo is not None:
        overrides.setdefault("algo", {})["name"] = algo
    cfg = resolve_output_dir(load_config(config, overrides))
    from inpo.loop import run  # imported after the config is valid: config errors come instantly

    if allow_config_change and resume is None:
        raise InpoError("--allow-config-change needs --resume RUN_DIR")
    run(cfg, resume=resume is not None, overwrite=overwrite, quiet=quiet, allow_config_change=allow_config_change)


@app.command("eval")
def eval_(
    runs: list[Path] = typer.Argument(..., help="Run directories written by `inpo train` (several: with --reference)."),
    iteration: str | None = typer.Option(
        None, "--iteration", help="Which iter_<t>: N, a list 0,2,4, 'all' or 'last' (default); 0 = pi_ref."),
    judge: str | None = typer.Option(None, "--judge", help="Judge directory, or 'builtin' (default: the run's)."),
    reference: Path | None = typer.Option(
        None, "--reference", help="Battle fixed reference outputs (AlpacaEval JSON, e.g. pi_ref's from --outputs): "
        "win rate with 95% bootstrap CI, AlpacaEval's LC win rate, lengths, position bias."),
    outputs: Path | None = typer.Option(
        None, "--outputs", help="Write the iterate's outputs: FILE.json (AlpacaEval), FILE_arena-hard/ (Arena-Hard), "
        "FILE.config.json (decoding)."),
    greedy: bool = typer.Option(False, "--greedy", help="Greedy outputs (default: sampled as the run's config)."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed of the evaluated outputs."),
    lc_ci: int = typer.Option(0, "--lc-ci", help="Bootstrap resamples for a 95% CI of the LC win rate (0: none)."),
    plot: Path | None = typer.Option(None, "--plot", help="With --reference: win rate vs iteration, PNG."),
    baseline: Path | None = typer.Option(
        None, "--baseline", help="Baseline: another iterate of the run (RUN/iter_<t>, LoRA or full) or a model "
        "directory (default: pi_ref)."),
    num_prompts: int | None = typer.Option(
        None, "--num-prompts", min=1, help="Evaluation prompts (default: the run's data.num_eval_prompts)."),
    samples: int = typer.Option(1, "--samples", min=1, help="Responses per prompt in the win rate vs the baseline "
                                "(each against one baseline response; a prompt's score is their mean)."),
    set_: list[str] = typer.Option([], "--set", help="Override a field of the run's config for this evaluation: "
                                   "--set sampling.max_new_tokens=64 (repeatable)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON (one object per evaluated iterate)."),
) -> None:
    """Evaluate iterates: without --reference/--outputs, the win rate against pi_ref's samples (both orders, ties
    half, 95% CI), KL and length; with them, outputs in AlpacaEval / Arena-Hard formats and battles against fixed
    reference outputs, one table row per run and iterate."""
    import json

    from rich.table import Table

    console = Console(quiet=json_out)
    if not console.is_terminal:
        console.width = 160
    if reference is None and outputs is None:
        if plot is not None or lc_ci:
            raise InpoError("--plot and --lc-ci need --reference")
        if len(runs) != 1:
            raise InpoError("several runs are compared against --reference outputs")
        metrics = _eval_vs_pi_ref(runs[0], iteration, judge, baseline, console, num_prompts=num_prompts,
                                  samples=samples, sets=set_)
        if json_out:
            print(json.dumps(metrics))
            return
        table = Table(title=f"{runs[0]} iter_{metrics['iteration']} vs {baseline or 'pi_ref'}")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for k, v in metrics.items():
            table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
        console.print(table)
        return
    if baseline is not None:
        raise InpoError("--baseline is for the win rate vs sampled baseline responses; with --reference the "
                        "reference is the outputs file")
    if num_prompts is not None or samples != 1 or set_:
        raise InpoError("--num-prompts, --samples and --set are for the win rate vs pi_ref / --baseline (not with "
                        "--reference / --outputs)")
    if plot is not None and reference is None:
        raise InpoError("--plot needs --reference")
    from inpo.battles import plot_win_rates
    from inpo.outputs import evaluate_runs

    def show(row: dict) -> None:
        if json_out:
            print(json.dumps(row), flush=True)

    rows = evaluate_runs(runs, iteration, judge=judge, reference=reference, outputs=outputs, greedy=greedy,
                         seed=seed, lc_boot=lc_ci, on_row=show)
    if outputs is not None:
        console.print(f"wrote {outputs} (AlpacaEval), {outputs.with_name(outputs.stem + '_arena-hard')}/ (Arena-Hard), "
                      f"{outputs.with_name(outputs.stem + '.config.json')}")
    if not rows:
        return
    if plot is not None:
        plot_win_rates(rows, plot)
    table = Table(title=f"vs {rows[0]['reference']} ({reference}), judge {rows[0]['judge']}, {rows[0]['n']} prompts")
    for col in ("run", "iter", "win rate [95% CI]", "LC win rate", "length", "ref length", "position bias"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for r in rows:
        lc = "-" if r["lc_win_rate"] is None else f"{r['lc_win_rate']:.3f}"
        if r["lc_ci_low"] is not None:
            lc += f" [{r['lc_ci_low']:.3f}, {r['lc_ci_high']:.3f}]"
        table.add_row(r["run"], str(r["iteration"]),
                      f"{r['win_rate']:.3f} [{r['win_rate_ci_low']:.3f}, {r['win_rate_ci_high']:.3f}]", lc,
                      f"{r['length']:.1f}", f"{r['reference_length']:.1f}", f"{r['position_bias']:.3f}")
    console.print(table)
    notes = dict.fromkeys(r["lc_note"] for r in rows if r.get("lc_note"))
    for note in notes:
        err_console.print(f"[yellow]LC win rate not computed: {note}[/]", highlight=False, soft_wrap=True)


def _eval_vs_pi_ref(run_dir: Path, iteration: str | None, judge: str | None, baseline: Path | None,
                    console: Console, *, num_prompts: int | None = None, samples: int = 1,
                    sets: list[str] | None = None) -> dict:
    from inpo.config import _merge, load_config, parse_overrides
    from inpo.evaluate import evaluate_policy
    from inpo.models import build_setup, load_baseline, load_policy
    from inpo.rundir import RunDir

    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise InpoError(f"{run_dir}: not a run directory (no config.yaml)")
    overrides = parse_overrides(sets or [])
    if judge is not None:
        overrides = _merge(overrides, {"judge": {"path": judge}})
    if num_prompts is not None:
        overrides = _merge(overrides, {"data": {"num_eval_prompts": num_prompts}})
    cfg = load_config(cfg_path, overrides)
    rundir = RunDir(run_dir)
    if iteration is not None and not iteration.isdigit():
        raise InpoError(f"--iteration {iteration!r}: one iteration number without --reference/--outputs")
    t = int(iteration) if iteration is not None else int(rundir.read_state().get("completed_iterations", 0))
    if t < 1 or not rundir.iter_dir(t).is_dir():
        raise InpoError(f"{run_dir}: no checkpoint iter_{t}")
    setup = build_setup(cfg, console, progress=False)
    if baseline is not None:
        setup.ref = load_baseline(baseline, cfg, setup.ref_path)
    policy = load_policy(rundir.iter_dir(t), cfg, setup.ref_path).eval()
    return {"iteration": t, **evaluate_policy(setup, policy, cfg, rundir, t, samples=samples,
                                              cache_baseline=baseline is None and not sets)}


def _register_subcommands() -> None:
    from inpo.datacheck import data_app
    from inpo.games.cli import game
    from inpo.judges.cli import app as judge_app
    from inpo.model_cli import app as model_app

    app.command("game")(game)
    app.add_typer(data_app, name="data")
    app.add_typer(judge_app, name="judge",
                  help="Preference models: train and evaluate BT, Scaled-BT, pair, GPM, lm-pair; reward-model and API "
                       "judges.")
    app.add_typer(model_app, name="model", help="Real models without a hub: import a GGUF file; SmolLM2 from PyPI.")


_register_subcommands()


def _one_line(msg: str) -> str:
    """``msg`` as one printable line: line breaks and control characters (e.g. from a path) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in msg)


def print_error(msg: str) -> None:
    """``error: <msg>`` on stderr as one line of plain text (no markup: ``inpo[vllm]`` prints as written)."""
    prefix = "\x1b[1;31merror:\x1b[0m" if sys.stderr.isatty() else "error:"
    sys.stderr.write(f"{prefix} {_one_line(msg)}\n")
    sys.stderr.flush()


def interrupted() -> NoReturn:
    """Ctrl-C: one line, exit code 130 (a second Ctrl-C while exiting is ignored)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print_error("interrupted (Ctrl-C)")
    sys.exit(130)


def _quiet_library_warnings() -> None:
    """Warnings of the libraries we call are not the user's business (e.g. transformers' FutureWarnings on every
    LoRA run); inpo's own warnings (UserWarning from inpo.*) still print."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|transformers|peft|accelerate|trl)\.")


def run_app(typer_app: typer.Typer, argv: list[str] | None = None, prog_name: str = "inpo") -> NoReturn:
    """Run a typer app as a command: every failure is one line on stderr. Exit codes: 0 ok, 2 bad input (an
    InpoError, an OSError such as a full disk, a usage error), 130 Ctrl-C. ``--debug`` re-raises (traceback)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
    _quiet_library_warnings()
    import threading

    thread_errors: list[BaseException] = []

    def thread_failed(a: threading.ExceptHookArgs) -> None:
        """A writer thread (tensorboard's) hit a full disk: kept for one line below, not a thread traceback."""
        if a.exc_type is not None and issubclass(a.exc_type, OSError) and a.exc_value is not None:
            thread_errors.append(a.exc_value)
        else:
            threading.__excepthook__(a)

    threading.excepthook = thread_failed
    try:
        from inpo.inputs import check_argv

        check_argv(args)
        code = typer_app(args=args, prog_name=prog_name, standalone_mode=False)
        if thread_errors and not code:
            e = thread_errors[0]
            where = f" ({e.filename})" if getattr(e, "filename", None) else ""
            raise InpoError(f"a background writer (tracker logs under the run's logs/){where} failed: "
                            f"{getattr(e, 'strerror', None) or e}; metrics.jsonl and checkpoints are complete")
    except KeyboardInterrupt:
        interrupted()
    except InpoError as e:
        if debug:
            raise
        print_error(str(e))
        sys.exit(2)
    except BrokenPipeError:  # stdout closed early (`inpo game --json | head -1`): nothing more to say
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the interpreter flushes stdout at exit
        sys.exit(1)
    except OSError as e:  # disk full, permission denied, ...: one line naming the file, not a traceback
        if debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print_error(f"{where}{e.strerror or e}")
        sys.exit(2)
    except MemoryError:
        if debug:
            raise
        print_error("out of memory (an input larger than this machine can hold?)")
        sys.exit(2)
    except Exception as e:  # click's (typer vendors its own copy): matched by class name
        kinds = {c.__name__ for c in type(e).__mro__}
        if "NoArgsIsHelpError" in kinds:  # `inpo` alone: the help, as before
            sys.stdout.write(e.format_message() + "\n")  # type: ignore[attr-defined]
            sys.exit(2)
        if "ClickException" in kinds:  # a usage error: one line naming the command
            ctx = getattr(e, "ctx", None)
            print_error(f"{ctx.command_path + ': ' if ctx is not None else ''}{e.format_message()}")  # type: ignore
            sys.exit(int(getattr(e, "exit_code", 2)))
        if "Abort" in kinds:
            interrupted()
        raise
    finally:
        threading.excepthook = threading.__excepthook__
    if code == 130:  # typer turns a Ctrl-C inside a command into exit code 130
        interrupted()
    sys.exit(code if isinstance(code, int) else 0)


def main(argv: list[str] | None = None) -> NoReturn:
    """The ``inpo`` command (``argv``: the arguments after ``inpo``; default ``sys.argv[1:]``)."""
    run_app(app, argv)


if __name__ == "__main__":
    main()
