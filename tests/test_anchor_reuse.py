"""pi_t's anchor log-probs taken from the sampler (plain sampling) instead of a second forward pass: the recorded
log-probs equal a forward pass, recording does not change the samples, the loop checks them on every iteration
(metrics say which path was used) and falls back to the forward pass above the tolerance or when not plain."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from rich.console import Console
from tiny import TINY_TASK

from inpo.config import build_config
from inpo.logprobs import batched_sequence_logprobs
from inpo.loop import run
from inpo.models import build_setup, load_policy
from inpo.rundir import load_stage
from inpo.sampling import is_plain, sample_responses

pytestmark = pytest.mark.filterwarnings("ignore:sft.*:UserWarning")  # the tiny SFT is deliberately short


def tiny_cfg(out: Path, cache: Path, sampling: dict | None = None, **sections: dict) -> object:
    return build_config({
        "output_dir": str(out), "iterations": 2,
        "task": {"sft_cache": str(cache), "options": TINY_TASK},
        "sampling": {"num_samples": 3, "max_new_tokens": 6, **(sampling or {})},
        "train": {"epochs": 1, "batch_size": 4, "lr": 1e-2},
        "data": {"num_eval_prompts": 4}, **sections,
    })


def test_recorded_logprobs_equal_a_forward_pass_and_recording_leaves_the_samples_unchanged(
        tmp_path: Path, cache: Path) -> None:
    cfg = tiny_cfg(tmp_path, cache, {"num_samples": 4, "max_new_tokens": 7, "batch_size": 5})
    setup = build_setup(cfg, Console(quiet=True), progress=False)
    prompts = [p.ids for p in setup.train_prompts]
    lps: list[list[float]] = []
    kw = {"eos_id": setup.eos_id, "pad_id": setup.pad_id, "seed": 3}
    with_lp = sample_responses(setup.policy, prompts, cfg.sampling, logprobs=lps, **kw)
    assert with_lp == sample_responses(setup.policy, prompts, cfg.sampling, **kw)
    flat = [r for rs in with_lp for r in rs]
    assert [len(x) for x in lps] == [len(r) for r in flat]  # one log-prob per response token, EOS included
    fwd = batched_sequence_logprobs(setup.policy, [prompts[i // 4] for i in range(len(flat))], flat,
                                    pad_id=setup.pad_id)
    diff = (torch.tensor([sum(x) for x in lps]) - fwd).abs()
    assert diff.max() < 1e-4, diff.max()
    assert all(v <= 0 for x in lps for v in x)


def test_plain_sampling_means_temperature_1_and_top_p_1() -> None:
    sampling = build_config({}).sampling
    assert is_plain(sampling)
    assert not is_plain(sampling.model_copy(update={"temperature": 0.7}))
    assert not is_plain(sampling.model_copy(update={"top_p": 0.9}))


def test_loop_reuses_the_sampler_logprobs_checked_every_iteration(tmp_path: Path, cache: Path) -> None:
    out = tmp_path / "run"
    cfg = tiny_cfg(out, cache, {"logprob_check": 1000})  # check every sequence against a forward pass
    rows = run(cfg, quiet=True)
    for row in rows[1:]:
        assert row["anchors/s0_from_sampler"] == 1.0
        assert 0 <= row["anchors/s0_max_abs_diff_per_token"] <= 1e-3
        assert row["anchors/s0_max_abs_diff"] < 1e-4
    # iteration 2: prev (pi_2) is the sampler's log-probs; pi_ref's come from a forward pass
    samples = load_stage(out / "stages" / "iter_2" / "s0_samples.pt")
    cache_t2 = load_stage(out / "stages" / "iter_2" / "s0_logps.pt")
    assert torch.equal(cache_t2["prev"], samples["logps"])
    setup = build_setup(cfg, Console(quiet=True), progress=False)
    k = cfg.sampling.num_samples
    prompts = [setup.train_prompts[i // k].ids for i in range(len(samples["responses"]))]
    pi_2 = load_policy(out / "iter_1", cfg, setup.ref_path)
    fwd = batched_sequence_logprobs(pi_2, prompts, samples["responses"], pad_id=setup.pad_id)
    assert (fwd - samples["logps"]).abs().max() < 1e-4
    ref = batched_sequence_logprobs(setup.ref, prompts, samples["responses"], pad_id=setup.pad_id)
    assert torch.equal(cache_t2["ref"], ref)
    # iteration 1: pi_1 = pi_ref, so both anchors are the sampler's
    t1 = load_stage(out / "stages" / "iter_1" / "s0_logps.pt")
    assert torch.equal(t1["ref"], load_stage(out / "stages" / "iter_1" / "s0_samples.pt")["logps"])


def test_loop_falls_back_to_the_forward_pass_above_the_tolerance(tmp_path: Path, cache: Path) -> None:
    out = tmp_path / "run"
    rows = run(tiny_cfg(out, cache, {"logprob_check": 1000, "logprob_tolerance": 1e-12}, iterations=1), quiet=True)
    assert rows[1]["anchors/s0_max_abs_diff_per_token"] > 1e-12  # not bit-exact: the tolerance decides
    assert rows[1]["anchors/s0_from_sampler"] == 0.0
    samples = load_stage(out / "stages" / "iter_1" / "s0_samples.pt")
    setup = build_setup(tiny_cfg(out, cache), Console(quiet=True), progress=False)
    prompts = [setup.train_prompts[i // 3].ids for i in range(len(samples["responses"]))]
    fwd = batched_sequence_logprobs(setup.ref, prompts, samples["responses"], pad_id=setup.pad_id)
    cache_t1 = load_stage(out / "stages" / "iter_1" / "s0_logps.pt")
    assert torch.equal(cache_t1["ref"], fwd)  # and "prev" = "ref" at t = 1 (pi_1 = pi_ref)


@pytest.mark.parametrize("sampling", [{"temperature": 0.8}, {"reuse_logprobs": False}])
def test_no_reuse_when_sampling_is_not_plain_or_reuse_is_off(tmp_path: Path, cache: Path, sampling: dict) -> None:
    out = tmp_path / "run"
    rows = run(tiny_cfg(out, cache, sampling, iterations=1), quiet=True)
    assert not any(k.startswith("anchors/") for k in rows[1])
    assert isinstance(load_stage(out / "stages" / "iter_1" / "s0_samples.pt"), list)  # no sampler log-probs
