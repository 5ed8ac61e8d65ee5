"""THE iterative loop: Algorithm 1 of INPO (Zhang et al. 2024, arXiv 2407.00617), for every algorithm of
:mod:`inpo.algorithms`. One call per line of the algorithm; each stage's artifact in the run directory:

    for t = 1..T:
        for each step of the algorithm (1; EGPO: 2):
            sample K responses per prompt from pi_t (Nash-MD: from the geometric mixture of pi_t and pi_ref)
                                                                              -> stages/iter_t/s<step>_samples.pt
            judge: the K x K preference matrix of each prompt                  -> stages/iter_t/s<step>_judgements.pt
            anchors: sequence log-probs of pi_ref, pi_t (MNPO: past iterates)  -> stages/iter_t/s<step>_logps.pt
            pairs (all with soft labels | best-vs-worst | random), then train the policy on the
                algorithm's loss L_t for E epochs (AdamW, warm-up, clipping, accumulation)
        checkpoint pi_{t+1} as iter_t/ (safetensors), evaluate it, append to metrics.jsonl, record t in state.json

The machinery lives below this module (imports point down; nothing imports ``inpo.loop``): the run directory,
atomic writes and resumable stages in :mod:`inpo.rundir`; models, tokenizer, prompts and judge in
:mod:`inpo.models`; sampling in :mod:`inpo.sampling`; checked judging in :mod:`inpo.judges.checked`; log-probs in
:mod:`inpo.logprobs`; pairs and losses in :mod:`inpo.algorithms`; the optimization of one step in
:mod:`inpo.train`; evaluation in :mod:`inpo.evaluate`; tables, plots and trackers in :mod:`inpo.report`.

A stage whose artifact exists is loaded instead of recomputed, and every random phase is seeded by
(seed, t, step, phase), so a run killed anywhere resumes (``resume=True``) from its last artifact and ends
bit-identical to an uninterrupted run on CPU.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from inpo import sharding, train
from inpo.algorithms import ALGORITHMS, Algorithm, Pairs, at_iteration, build_pairs, mixture_coefficient, win_rates
from inpo.config import RunConfig, resolve_output_dir, with_absolute_paths
from inpo.errors import InpoError
from inpo.evaluate import evaluate_policy
from inpo.inputs import check_extras
from inpo.models import AdapterDisabled, Setup, build_setup, history_models, load_policy
from inpo.report import flat_config, metrics_table, peak_rss_mb, progress_bars, resolve_trackers, timed, write_plots
from inpo.rundir import RunDir, seed_for, sharded_stage, writing
from inpo.sampling import Samples, response_texts, truncated
from inpo.stages import judge_stage, logprob_stage, reuse_metrics, sample_stage, vllm_checkpoint
from inpo.train import NonFiniteError


@dataclass
class Context:
    """What every stage reads, fixed for the whole run."""

    cfg: RunConfig
    algo: Algorithm
    pairing: str  # the algorithm's pairing, or the config's override
    setup: Setup
    rundir: RunDir
    accelerator: Accelerator
    console: Console
    quiet: bool
    trackers: list[str]
    sharded: bool = False  # FSDP2: policy (and pi_ref) sharded; every process joins every forward


def run(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False, quiet: bool = False,
        console: Console | None = None, allow_config_change: bool = False) -> list[dict[str, Any]]:
    """Run (or resume) the iterative loop described in the module docstring; return metrics rows. The run
    directory is locked (:meth:`RunDir.lock`) while this runs. Relative file paths of the config are made absolute
    (the run directory records them so; ``state.json``'s ``paths_as_given`` keeps the text as given)."""
    cfg, given = with_absolute_paths(resolve_output_dir(cfg))
    rundir = RunDir(cfg.output_dir)
    try:
        return _run(cfg, rundir, given, resume=resume, overwrite=overwrite, quiet=quiet, console=console,
                    allow_config_change=allow_config_change)
    finally:
        rundir.unlock()


def _run(cfg: RunConfig, rundir: RunDir, given: dict[str, Any], *, resume: bool, overwrite: bool, quiet: bool,
         console: Console | None, allow_config_change: bool) -> list[dict[str, Any]]:
    ctx, policy, optimizer, done = start(cfg, resume=resume, overwrite=overwrite, quiet=quiet,
                                        console=console, allow_config_change=allow_config_change, rundir=rundir)
    cfg, algo, setup, rundir, console = ctx.cfg, ctx.algo, ctx.setup, ctx.rundir, ctx.console
    accelerator = ctx.accelerator
    main = accelerator.is_main_process
    if main and given and rundir.read_state().get("paths_as_given") != given:
        rundir.write_state({**rundir.read_state(), "paths_as_given": given})
    rows = [r for r in rundir.read_metrics() if r["iteration"] <= done]
    if not rows and (main or ctx.sharded):  # iteration 0: pi_ref itself (FSDP2: every process joins the forwards)
        row0 = {"iteration": 0, **evaluate_policy(setup, accelerator.unwrap_model(policy), cfg, rundir, 0, main=main)}
        if main:
            rows = [row0]
            rundir.write_metrics(rows)
    accelerator.wait_for_everyone()
    console.print(f"[bold]inpo[/] {algo.name}: {len(setup.train_prompts)} prompts x K={cfg.sampling.num_samples}, "
                  f"{cfg.iterations} iterations, pairing={ctx.pairing} -> {escape(str(rundir.path))}")
    if done:
        console.print(f"resuming after iteration {done}")
    console.print(metrics_table(rows, "start"))
    if ctx.trackers:
        with writing(rundir.path / "logs", "tracker logs"):
            accelerator.init_trackers("inpo", config=flat_config(cfg))

    for t in range(done + 1, cfg.iterations + 1):
        times = {"time/sample": 0.0, "time/judge": 0.0, "time/logprobs": 0.0, "time/train": 0.0}
        # EGPO's two steps both anchor on pi_t: a frozen copy, taken before the first step changes the policy
        # (FSDP2: a snapshot of this process's shards, swapped in for the anchor's forwards)
        anchor = None
        if algo.steps_per_iteration > 1:
            anchor = (sharding.FrozenSnapshot(accelerator.unwrap_model(policy)) if ctx.sharded
                      else copy.deepcopy(accelerator.unwrap_model(policy)).eval())
        train_metrics: dict[str, float] = {}
        anchor_metrics: dict[str, float] = {}
        n_pairs = 0
        cut: list[bool] = []
        for step in range(algo.steps_per_iteration):
            with progress_bars(not ctx.quiet) as bars:
                with timed(times, "time/sample"):
                    samples = sample(ctx, t, step, policy, bars)
                cut += truncated(samples.responses, setup.stop_ids or [setup.eos_id], setup.tokenizer,
                                 cfg.sampling.stop)
                with timed(times, "time/judge"):
                    matrices = judge(ctx, t, step, samples, bars)
                with timed(times, "time/logprobs"):
                    cache = anchor_logprobs(ctx, t, step, samples, policy, anchor)
                anchor_metrics.update(reuse_metrics(cache, step))
                t0 = time.perf_counter()  # a step without pairs is not timed (and gives no perf/pairs_per_s)
                pairs = build_pairs(matrices, ctx.pairing,
                                    generator=torch.Generator().manual_seed(seed_for(cfg, t, step, "pairs")))
                if len(pairs) == 0:
                    console.print(f"[yellow]iteration {t}: the judge found no preference among the samples; "
                                  "no training this step[/]")
                    continue
                train_metrics = train_policy(ctx, t, step, policy, optimizer, samples, pairs, cache, matrices, bars)
                n_pairs += len(pairs)
                times["time/train"] += time.perf_counter() - t0

        unwrapped = accelerator.unwrap_model(policy)
        full = sharding.full_state_dict(unwrapped) if ctx.sharded else None  # FSDP2: gathered on the main process
        if main:  # one writer: checkpoint (atomic: a temp dir renamed), evaluation, metrics, state, plots
            rundir.save_checkpoint(t, unwrapped, setup.tokenizer, state_dict=full)
            perf = {"perf/pairs_per_s": n_pairs * cfg.train.epochs / times["time/train"]} if times["time/train"] else {}
            perf["perf/peak_rss_mb"] = peak_rss_mb()
            row = {"iteration": t, **train_metrics, **anchor_metrics, "train/pairs": n_pairs, **times, **perf,
                   "sample/truncated": sum(cut) / max(1, len(cut)),
                   **evaluate_policy(setup, unwrapped, cfg, rundir, t)}
            record(ctx, rows, row)
        elif ctx.sharded:
            evaluate_policy(setup, unwrapped, cfg, rundir, t, main=False)
        del full
        accelerator.wait_for_everyone()

    console.print(metrics_table(rows, f"{algo.name}: summary ({escape(str(rundir.path / 'metrics.jsonl'))})"))
    if ctx.trackers:
        with writing(rundir.path / "logs", "tracker logs"):
            accelerator.end_training()
    return rows


# --------------------------------------------------------------------------------------------------
# The stages of one step, in the order of Algorithm 1
# --------------------------------------------------------------------------------------------------


def sample(ctx: Context, t: int, step: int, policy: torch.nn.Module, bars: Progress) -> Samples:
    """K responses per prompt from pi_t (Nash-MD: from the geometric mixture of pi_t and pi_ref)."""
    cfg, setup, accelerator = ctx.cfg, ctx.setup, ctx.accelerator
    prompt_ids = [p.ids for p in setup.train_prompts]
    bar = bars.add_task(f"iter {t} sample", total=len(prompt_ids))
    mixture = (setup.ref, mixture_coefficient(cfg.algo)) if ctx.algo.sample_from_mixture else None
    out = sharded_stage(accelerator, ctx.rundir.stage(t, f"s{step}_samples"), sample_stage, len(prompt_ids),
                        accelerator.unwrap_model(policy), prompt_ids, cfg, setup,
                        seed=seed_for(cfg, t, step, "sample") + accelerator.process_index,
                        mixture=mixture, progress=partial(bars.advance, bar),
                        checkpoint=partial(vllm_checkpoint, cfg, ctx.rundir, setup, t, step,
                                           accelerator.unwrap_model(policy), sharded=ctx.sharded,
                                           rank=accelerator.process_index),
                        record=step == 0 and not ctx.sharded, lockstep=ctx.sharded)
    if isinstance(out, dict):  # with the sampler's own log-probs (plain sampling)
        return Samples(prompt_ids, out["responses"], cfg.sampling.num_samples, out["logps"])
    return Samples(prompt_ids, out, cfg.sampling.num_samples)


def judge(ctx: Context, t: int, step: int, samples: Samples, bars: Progress) -> torch.Tensor:
    """[N, K, K] preference matrices of the samples, one per prompt, checked (:mod:`inpo.judges.checked`)."""
    setup = ctx.setup
    texts = response_texts(setup.tokenizer, samples.responses, ctx.cfg.sampling.stop)
    bar = bars.add_task(f"iter {t} judge", total=len(samples.prompt_ids))
    return sharded_stage(ctx.accelerator, ctx.rundir.stage(t, f"s{step}_judgements"), judge_stage,
                         len(samples.prompt_ids), setup.judge, setup.train_prompts, texts, samples.k,
                         partial(bars.advance, bar))


def anchor_logprobs(ctx: Context, t: int, step: int, samples: Samples, policy: torch.nn.Module,
                    anchor: torch.nn.Module | None) -> dict[str, torch.Tensor]:
    """No-grad sequence log-probs of the samples under the anchors the algorithm needs: ``ref`` (pi_ref),
    ``prev`` (pi_t; EGPO: the frozen ``anchor``) and ``hist`` [N*K, n] (MNPO: pi_t, pi_{t-1}, ...)."""
    algo, cfg, setup = ctx.algo, ctx.cfg, ctx.setup
    models: dict[str, torch.nn.Module] = {}
    if algo.needs_ref:
        models["ref"] = setup.ref
    if algo.needs_prev:
        models["prev"] = anchor if anchor is not None else ctx.accelerator.unwrap_model(policy)
    if algo.needs_history:
        models.update(history_models(ctx.rundir, setup, ctx.accelerator.unwrap_model(policy), t, cfg))
    same_as_ref = t == 1 and step == 0 and "ref" in models and "prev" in models
    if same_as_ref:  # pi_1 = pi_ref: one pass serves both anchors
        del models["prev"]
    # the anchors that are the policy the samples were drawn from (step 0: pi_t; at t = 1 also pi_ref = pi_1);
    # not under FSDP2, where a process's fallback to the forward pass would have to be every process's
    sampler = {id(ctx.accelerator.unwrap_model(policy)), id(anchor)} | ({id(setup.ref)} if t == 1 else set())
    reuse = [n for n, m in models.items()
             if samples.logps is not None and step == 0 and id(m) in sampler and not ctx.sharded]
    cache = sharded_stage(ctx.accelerator, ctx.rundir.stage(t, f"s{step}_logps"), logprob_stage,
                          len(samples.prompt_ids), models, samples, pad_id=setup.pad_id,
                          batch_size=cfg.train.logprob_batch_size, lockstep=ctx.sharded, reuse=reuse,
                          check=cfg.sampling.logprob_check, tolerance=cfg.sampling.logprob_tolerance,
                          chunk=cfg.train.logprob_chunk)
    if same_as_ref:
        cache["prev"] = cache["ref"]
    if algo.needs_history:
        cache["hist"] = torch.stack([cache[f"hist{j}"] for j in range(len(cfg.algo.mnpo_weights))], -1)
    return cache


def train_policy(ctx: Context, t: int, step: int, policy: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 samples: Samples, pairs: Pairs, cache: dict[str, torch.Tensor], matrices: torch.Tensor,
                 bars: Progress) -> dict[str, float]:
    """Minimize the algorithm's loss L_t over the pairs (:func:`inpo.train.train_on_pairs`); mean metrics."""
    algo, cfg = ctx.algo, at_iteration(ctx.cfg, t)  # eta_t (INPO's Theorem 4 schedule) or the constant eta
    wr = win_rates(matrices, cfg.algo.winrate_estimator).flatten().float() if algo.needs_winrates else None
    steps = math.ceil(len(torch.unique(pairs.prompt)) / cfg.train.batch_size) * cfg.train.epochs
    bar = bars.add_task(f"iter {t} train", total=steps)
    try:
        return train.train_on_pairs(policy, ctx.accelerator, algo, cfg, samples, pairs, cache, wr,
                                    pad_id=ctx.setup.pad_id, seed=seed_for(cfg, t, step, "train"),
                                    on_step=partial(bars.advance, bar), optimizer=optimizer)
    except NonFiniteError as e:
        kept = ctx.rundir.iter_dir(t - 1).name if t > 1 else "pi_ref"
        raise NonFiniteError(f"iteration {t}: {e} ({kept})") from None


def record(ctx: Context, rows: list[dict[str, Any]], row: dict[str, Any]) -> None:
    """Append iteration t's row to metrics.jsonl, mark t complete in state.json, print, plot, log."""
    rows.append(row)
    ctx.rundir.write_metrics(rows)
    launch = {"processes": ctx.accelerator.num_processes, "sharding": "fsdp2" if ctx.sharded else "none"}
    ctx.rundir.write_state({**ctx.rundir.read_state(), "completed_iterations": row["iteration"], "launch": launch})
    ctx.console.print(metrics_table(rows[-1:], f"iteration {row['iteration']}"))
    write_plots(ctx.rundir, rows)
    if ctx.trackers:
        with writing(ctx.rundir.path / "logs", "tracker logs"):  # a full disk in tensorboard's writer: one line
            ctx.accelerator.log({k: v for k, v in row.items() if isinstance(v, int | float)}, step=row["iteration"])


# --------------------------------------------------------------------------------------------------
# Start-up, and the per-shard bodies of the stages (prompt indices -> that shard's part of the artifact)
# --------------------------------------------------------------------------------------------------


def start(cfg: RunConfig, *, resume: bool, overwrite: bool, quiet: bool, console: Console | None,
          allow_config_change: bool, rundir: RunDir | None = None
          ) -> tuple[Context, torch.nn.Module, torch.optim.Optimizer, int]:
    """Everything before iteration 1: threads and seed, accelerate, the run directory locked and checked (before
    any write), the models loaded (pi_t from the last checkpoint on resume: a changed config must load it before
    anything is written) and the directory opened, and one AdamW prepared with the policy. Returns the context,
    the prepared policy and optimizer, and the completed iterations."""
    from transformers.utils import logging as hf_logging

    check_extras(cfg)  # peft / vllm / trackers installed, before any work

    hf_logging.disable_progress_bar()
    if console is None:
        console = Console(quiet=quiet)
        if not console.is_terminal:
            console.width = 160
    threads = cfg.threads if cfg.threads is not None else (1 if cfg.model.path is None else None)
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    trackers = resolve_trackers(cfg)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), log_with=trackers or None,
                              project_dir=str(Path(cfg.output_dir) / "logs"))
    algo = ALGORITHMS[cfg.algo.name]
    fsdp2 = sharding.fsdp2_requested()
    sharded = fsdp2 and accelerator.num_processes > 1
    if fsdp2 and algo.sample_from_mixture:
        raise InpoError(f"algo.name={algo.name}: its sampling runs pi_ref at every generated token, which FSDP2 "
                        "cannot keep in step across processes; use DDP (configs/accelerate/multi_gpu.yaml)")
    pairing = algo.pairing if cfg.algo.pairing == "default" else cfg.algo.pairing
    rundir = rundir if rundir is not None else RunDir(cfg.output_dir)
    resumed = None
    if accelerator.is_main_process:
        rundir.lock()  # a second process on the same run is refused
        # refuse early; write nothing until the inputs (and on resume the last checkpoint) load
        before = rundir.check(cfg, resume=resume, overwrite=overwrite, allow_change=allow_config_change)
        setup = build_setup(cfg, console, progress=not quiet)  # builds (and caches) the SFT reference once
        if before:
            resumed = load_policy(rundir.iter_dir(before), cfg, setup.ref_path)
        done = rundir.prepare(cfg, resume=resume, overwrite=overwrite, allow_change=allow_config_change)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        console.quiet = quiet = True
        done = int(rundir.read_state().get("completed_iterations", 0))
        setup = build_setup(cfg, console, progress=False)
    policy = setup.policy
    if done > 0:  # resume from the last complete checkpoint
        policy = resumed if resumed is not None else load_policy(rundir.iter_dir(done), cfg, setup.ref_path)
        if cfg.peft is not None:
            setup.ref = AdapterDisabled(policy)
    if sharded:  # FSDP2 (inpo.sharding): pi_ref and the policy sharded per decoder layer, AdamW on the shards
        if cfg.peft is None:
            sharding.shard_model(setup.ref.to(accelerator.device), accelerator.device)
        policy = sharding.shard_model(policy.to(accelerator.device), accelerator.device)
        optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        ctx = Context(cfg, algo, pairing, setup, rundir, accelerator, console, quiet, trackers, sharded=True)
        return ctx, policy, optimizer, done
    # one AdamW for the run, prepared with the policy in one call; train_on_pairs resets it every iteration
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    policy, optimizer = accelerator.prepare(policy, optimizer)
    if cfg.peft is None:
        setup.ref.to(accelerator.device)
    ctx = Context(cfg, algo, pairing, setup, rundir, accelerator, console, quiet, trackers)
    return ctx, policy, optimizer, done
