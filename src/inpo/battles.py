"""Battles against fixed reference outputs, reported the way AlpacaEval 2 and Arena-Hard report them.

Each evaluation prompt x_i has the iterate's output a_i and the reference model's output b_i (the reference
outputs file, e.g. pi_ref's outputs written by ``inpo eval RUN --iteration 0 --outputs ref.json``). The judge is
asked in **both presentation orders** (as Arena-Hard does; AlpacaEval randomizes one order):

    s1_i = f(a_i, b_i)          the iterate shown first,   f(u, v) = P(the first-shown response is better)
    s2_i = 1 - f(b_i, a_i)      the iterate shown second,
    s_i  = (s1_i + s2_i) / 2    the iterate's score on x_i; a tie (1/2) counts as half a win.

Reported (:func:`summarize`):

* raw win rate ``mean_i s_i`` with a 95% percentile-bootstrap CI over prompts (:func:`bootstrap_ci`);
* the length-controlled win rate of AlpacaEval 2 (Dubois et al. 2024, arXiv 2404.04475), computed by
  AlpacaEval's own implementation (:func:`length_controlled_win_rate`, PyPI ``alpaca-eval``, extra
  ``inpo[alpaca]``), on the annotations ``preference_i = 1 + s_i`` (AlpacaEval's encoding: 1 = the reference
  wins, 2 = the model wins, 1.5 = a tie; continuous values as with its weighted annotators);
* the mean length (characters, AlpacaEval's length unit) of both sides;
* the judge's position-bias rate (:func:`position_flip_rate`): the fraction of prompts whose verdict (iterate
  wins / tie / reference wins) differs between the two orders.

A judge whose ``prob`` is symmetrized inside (the API judge, a callable judge, the pair model) exposes its
one-order verdict as ``raw_prob``; a judge without it (ground truth, BT, GPM) is asked ``prob`` in each order,
which such judges answer consistently by construction, so their measured flip rate is 0.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inpo.errors import InpoError
from inpo.judges.base import Judge
from inpo.judges.checked import checked_prob

LC_GLM = "length_controlled_minimal"
"""AlpacaEval GLM used for the LC win rate. Its ``length_controlled_v1`` adds an instruction-difficulty term and a
regularization towards two "gamed" baselines, both estimated on AlpacaEval's own 805 instructions (downloaded from
the hub); on another prompt set neither exists, so the GLM with the length term and the model term only is used."""


# ------------------------------------------------------------------------------------------------ statistics


def bootstrap_ci(scores: Sequence[float] | np.ndarray, *, level: float = 0.95, n_boot: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean of ``scores`` (resampling prompts with replacement).

    ``n_boot`` resamples drawn with ``numpy.random.default_rng(seed)``; the interval is the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled means (numpy's default linear
    interpolation)."""
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("bootstrap_ci needs a non-empty 1-D array of scores")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def verdicts(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    """+1 where the score says the iterate won (> 1/2), -1 where it lost (< 1/2), 0 for a tie (exactly 1/2)."""
    return np.sign(np.asarray(scores, dtype=np.float64) - 0.5).astype(np.int64)


def position_flip_rate(first: Sequence[float] | np.ndarray, second: Sequence[float] | np.ndarray) -> float:
    """Fraction of prompts whose verdict changes with the presentation order.

    ``first[i]`` / ``second[i]``: the iterate's score on prompt i when shown first / second (both already from
    the iterate's side, i.e. ``second = 1 - f(reference, iterate)``). A flip is any change among win / tie /
    loss; an unbiased judge flips on no prompt."""
    a, b = verdicts(first), verdicts(second)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("position_flip_rate needs two non-empty score arrays of the same length")
    return float(np.mean(a != b))


def mean_chars(texts: Sequence[str]) -> float:
    return sum(len(t) for t in texts) / max(1, len(texts))


# ------------------------------------------------------------------------------------------------ battles


def ordered_prob(judge: Judge, prompts: list[str], first: list[str], second: list[str]) -> torch.Tensor:
    """P(the first-shown response is better) per row, in this presentation order only: the judge's ``raw_prob``
    when it has one, else its ``prob``. Checked: shape (N,), finite, in [0, 1]."""
    return checked_prob(getattr(judge, "raw_prob", None) or judge.prob, prompts, first, second, "the battles")


@dataclass(frozen=True)
class Battle:
    """Per-prompt battles of a model's outputs against reference outputs (see the module docstring)."""

    instructions: list[str]
    outputs: list[str]  # the model's
    reference: list[str]
    model_first: np.ndarray  # s1: the model's score when shown first
    model_second: np.ndarray  # s2: the model's score when shown second

    @property
    def scores(self) -> np.ndarray:
        return (self.model_first + self.model_second) / 2.0


def battle(judge: Judge, instructions: list[str], outputs: list[str], reference: list[str]) -> Battle:
    """Ask ``judge`` about every (output, reference) pair in both orders."""
    if not len(instructions) == len(outputs) == len(reference):
        raise InpoError(f"battle: lengths differ (instructions {len(instructions)}, outputs {len(outputs)}, "
                        f"reference {len(reference)})")
    s1 = ordered_prob(judge, instructions, outputs, reference).numpy()
    s2 = 1.0 - ordered_prob(judge, instructions, reference, outputs).numpy()
    return Battle(list(instructions), list(outputs), list(reference), s1, s2)


def annotations(b: Battle, *, generator: str, reference_generator: str, annotator: str) -> list[dict[str, Any]]:
    """The battles as AlpacaEval annotations (``output_1`` = the reference/baseline, ``output_2`` = the model,
    ``preference = 1 + s``), the input of AlpacaEval's metrics."""
    return [{"instruction": x, "output_1": r, "output_2": o, "generator_1": reference_generator,
             "generator_2": generator, "annotator": annotator, "preference": 1.0 + float(s), "index": i}
            for i, (x, o, r, s) in enumerate(zip(b.instructions, b.outputs, b.reference, b.scores, strict=True))]


# ------------------------------------------------------------------------------------------------ LC win rate


@contextmanager
def _no_hub_glm_inputs(n: int, workdir: Path) -> Iterator[None]:
    """AlpacaEval's GLM featurization reads ``df_gamed.csv`` (instruction difficulty and gamed baselines of its
    805 instructions) from the hub, even for a GLM whose formula uses neither. Serve it a local file with a
    difficulty column for our ``n`` prompts instead (zero: unused by :data:`LC_GLM`'s formula)."""
    import pandas as pd
    from alpaca_eval.metrics import glm_winrate

    path = workdir / "df_gamed.csv"
    pd.DataFrame({"model": "-", "index": range(n), "instruction_difficulty": 0.0}).to_csv(path, index=False)
    original = glm_winrate.hf_hub_download
    glm_winrate.hf_hub_download = lambda **_: str(path)
    try:
        yield
    finally:
        glm_winrate.hf_hub_download = original


def length_controlled_win_rate(annotation_rows: list[dict[str, Any]]) -> float:
    """AlpacaEval 2's length-controlled win rate of ``generator_2`` over ``generator_1``, in [0, 1].

    Calls ``alpaca_eval.metrics.glm_winrate.get_length_controlled_winrate`` (GLM :data:`LC_GLM`: logistic
    regression of the preference on ``tanh(delta_len / std(delta_len))`` and a model term, cross-validated L1,
    evaluated at ``delta_len = 0``; AlpacaEval's own code, nothing re-implemented). Its ``lc_standard_error`` is
    not returned: with this GLM every prompt gets the same prediction, so it is 0 by construction. Needs
    ``pip install 'inpo[alpaca]'``, at least 5 prompts (AlpacaEval's 5-fold CV) and outputs of differing lengths.
    """
    import tempfile

    import pandas as pd

    n = len(annotation_rows)
    if n < 5:
        raise InpoError(f"the length-controlled win rate needs at least 5 prompts (AlpacaEval's 5-fold CV); got {n}")
    df = pd.DataFrame(annotation_rows)
    delta = df["output_1"].str.len() - df["output_2"].str.len()
    if not float(delta.std()) > 0:
        raise InpoError("the length-controlled win rate is undefined when every length difference is the same")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pkg_resources deprecation (alpaca_eval.utils), sklearn FutureWarnings
        try:
            from alpaca_eval.metrics.glm_winrate import get_length_controlled_winrate
        except ImportError as e:
            raise InpoError(f"the length-controlled win rate needs AlpacaEval: pip install 'inpo[alpaca]' ({e})"
                            ) from None
        with tempfile.TemporaryDirectory() as d, _no_hub_glm_inputs(int(df["index"].max()) + 1, Path(d)):
            m = get_length_controlled_winrate(df, glm_name=LC_GLM, save_weights_dir=None,
                                              is_add_glm_preference_inplace=False, is_warn_extreme_changes=False)
    return float(m["length_controlled_winrate"]) / 100


def lc_bootstrap_ci(annotation_rows: list[dict[str, Any]], *, n_boot: int, level: float = 0.95, seed: int = 0
                    ) -> tuple[float, float]:
    """Percentile-bootstrap CI of :func:`length_controlled_win_rate`: the GLM refitted on ``n_boot`` resamples of
    the prompts (``numpy.random.default_rng(seed)``); resamples where it is undefined are skipped."""
    rng = np.random.default_rng(seed)
    n = len(annotation_rows)
    values = []
    for _ in range(n_boot):
        sample = [annotation_rows[i] for i in rng.integers(0, n, size=n)]
        try:
            values.append(length_controlled_win_rate(sample))
        except InpoError:
            continue
    if not values:
        raise InpoError("the LC bootstrap: the GLM was undefined on every resample")
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


# ------------------------------------------------------------------------------------------------ summary


def summarize(b: Battle, *, generator: str, reference_generator: str, annotator: str, lc: bool = True,
              lc_boot: int = 0, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """One row of the comparison table: raw win rate with its 95% bootstrap CI, the LC win rate (with a 95%
    bootstrap CI when ``lc_boot`` > 0; ``None`` with the reason in ``lc_note`` when it cannot be computed), mean
    lengths of both sides, the position-bias rate, and the counts of wins / ties / losses (by ``s``)."""
    s = b.scores
    lo, hi = bootstrap_ci(s, n_boot=n_boot, seed=seed)
    v = verdicts(s)
    row: dict[str, Any] = {
        "generator": generator, "reference": reference_generator, "n": int(s.size),
        "win_rate": float(s.mean()), "win_rate_ci_low": lo, "win_rate_ci_high": hi,
        "lc_win_rate": None, "lc_ci_low": None, "lc_ci_high": None,
        "length": mean_chars(b.outputs), "reference_length": mean_chars(b.reference),
        "position_bias": position_flip_rate(b.model_first, b.model_second),
        "wins": int((v > 0).sum()), "ties": int((v == 0).sum()), "losses": int((v < 0).sum()),
    }
    if lc:
        rows = annotations(b, generator=generator, reference_generator=reference_generator, annotator=annotator)
        try:
            row["lc_win_rate"] = length_controlled_win_rate(rows)
            if lc_boot > 0:
                row["lc_ci_low"], row["lc_ci_high"] = lc_bootstrap_ci(rows, n_boot=lc_boot, seed=seed)
        except InpoError as e:
            row["lc_note"] = str(e)
    return row


def plot_win_rates(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Win rate vs iteration, one line per run: raw with its 95% bootstrap CI (band), LC dashed (when computed)."""
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in dict.fromkeys(r["run"] for r in rows):
        rs = sorted((r for r in rows if r["run"] == run), key=lambda r: r["iteration"])
        it = [r["iteration"] for r in rs]
        (line,) = ax.plot(it, [r["win_rate"] for r in rs], marker="o", label=f"{run} (raw)")
        ax.fill_between(it, [r["win_rate_ci_low"] for r in rs], [r["win_rate_ci_high"] for r in rs],
                        color=line.get_color(), alpha=0.15)
        lc = [(r["iteration"], r["lc_win_rate"]) for r in rs if r.get("lc_win_rate") is not None]
        if lc:
            ax.plot([p[0] for p in lc], [p[1] for p in lc], ls="--", marker="x", color=line.get_color(),
                    label=f"{run} (LC)")
    ax.axhline(0.5, color="grey", lw=0.8)
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"win rate vs {rows[0]['reference']}" if rows else "win rate")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    except OSError as e:
        raise InpoError(f"{path}: cannot write the plot ({e.strerror or e})") from None
    finally:
        plt.close(fig)
