"""Typed run configuration: YAML in, frozen pydantic models, unknown keys rejected.

``load_config(path, overrides)`` reads a YAML file (safe-load), applies ``key.sub=value`` overrides and
validates. Errors are one line naming the file and the field.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from inpo.errors import InpoError


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _finite_positive(name: str, v: float) -> float:
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {v}")
    return v


class ModelConfig(_Frozen):
    """The policy. ``path=None`` means the built-in task's tiny LM (SFT'd in code).

    ``path``: a transformers model directory, or a ``.gguf`` file (or a directory plus ``gguf_file``, the name of
    a ``.gguf`` file in it, as transformers' ``gguf_file=``): a GGUF model is imported once into a plain
    safetensors directory under the cache (``inpo.models_real.gguf_model_dir``), which the run then uses.
    """

    path: str | None = None
    gguf_file: str | None = None
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _gguf(self) -> ModelConfig:
        if self.gguf_file is not None:
            if self.path is None:
                raise ValueError("model.gguf_file needs model.path (the directory holding the file)")
            if not self.gguf_file.lower().endswith(".gguf"):
                raise ValueError(f"model.gguf_file must name a .gguf file, got {self.gguf_file!r}")
        return self


class PeftConfig(_Frozen):
    """LoRA adapters on the policy (peft). pi_ref is the same model with the adapter disabled, so no
    second copy of the weights is held; checkpoints are adapter directories loadable by peft."""

    r: int = Field(default=8, gt=0)
    alpha: int = Field(default=16, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"


class DataConfig(_Frozen):
    """Prompts: JSONL / JSON / parquet file or a `datasets.load_dataset` name; ``None`` = built-in task.

    ``chat_template``: how a plain-string prompt reaches the model: ``auto`` renders it as one user turn with the
    tokenizer's chat template (and a generation prompt) when the tokenizer has one, ``always`` requires a
    template, ``never`` feeds the text as is. The judge sees the prompt's text as written either way."""

    prompts: str | None = None
    split: str = "train"
    eval_prompts: str | None = None
    num_prompts: int | None = Field(default=None, gt=0)
    num_eval_prompts: int = Field(default=64, gt=0)
    max_prompt_length: int = Field(default=512, gt=0)
    too_long: Literal["skip", "error"] = "skip"
    chat_template: Literal["auto", "always", "never"] = "auto"


class SamplingConfig(_Frozen):
    num_samples: int = Field(default=4, ge=2, description="K responses per prompt")
    temperature: float = 1.0
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0, description="0: no top-k filtering")
    stop: tuple[str, ...] = Field(default=(), description="stop strings (besides EOS and end-of-turn tokens)")
    max_new_tokens: int = Field(default=8, gt=0)
    batch_size: int = Field(default=256, gt=0, description="prompts per generate call")
    backend: Literal["transformers", "vllm"] = "transformers"
    vllm_python: str | None = Field(default=None, description="interpreter with vLLM for backend=vllm; None: this "
                                    "one if it has vLLM, else the environment `python -m inpo.vllm_env` built")
    vllm_kv_cache_mb: int = Field(default=256, gt=0, description="vLLM's KV cache (on CPU it would reserve most RAM)")
    reuse_logprobs: bool = Field(default=True, description="plain sampling (temperature 1, top_p 1): pi_t's anchor "
                                 "log-probs are the sampler's own, no second forward pass")
    logprob_check: int = Field(default=8, ge=0, description="sequences per step whose reused log-probs are checked "
                               "against a forward pass (0: none); one off by > logprob_tolerance: all recomputed")
    logprob_tolerance: float = Field(default=1e-3, gt=0, description="nats per token")

    @field_validator("temperature")
    @classmethod
    def _temp(cls, v: float) -> float:
        return _finite_positive("temperature", v)


class JudgeConfig(_Frozen):
    """``builtin`` = the task's ground-truth judge; otherwise a directory saved by `inpo judge train`."""

    path: str = "builtin"


CONFIG_VERSION = 2
"""Version of the meaning of the config fields, written to a run's ``state.json``. 2: ``algo.eta`` is INPO's
paper eta (``1/eta`` is the OMD learning rate; version 1's ``eta`` was its inverse, ``1/eta``), ``algo.tau <=
algo.eta``; per-algorithm defaults; ``train.logprob_reduction``; SPPO's win-rate estimator."""

CONFIG_VERSION_CHANGES = (
    "inpo config version 2 changed the meaning of algo.eta for inpo/mnpo/egpo/nash-md (it is now the INPO paper's "
    "eta: the old eta is 1/eta, e.g. old eta=4 is eta=0.25), SPPO's default win-rate estimator (now self-inclusive, "
    "/K) and added train.logprob_reduction"
)

# The one source of truth for per-algorithm defaults (docs/algorithms/*.md's tables are checked against it by
# tests/test_config_defaults.py). Fields an algorithm does not use stay None. ``tau`` is set for every algorithm:
# the evaluation reports the duality gap of the tau-regularized game for all of them.
ALGO_DEFAULTS: dict[str, dict[str, Any]] = {
    # INPO paper eta, tau (Eq. 5/8): target 1/(2 eta), anchor weights tau/eta, 1 - tau/eta. Built-in task: eta=0.25
    # (= 1/4: the OMD learning rate 4 of config version 1), tau=0.1, tau/eta=0.4.
    "inpo": {"eta": 0.25, "tau": 0.1, "logprob_reduction": "sum"},
    "mnpo": {"eta": 0.25, "tau": 0.1, "logprob_reduction": "mean"},  # smiles724/MNPO: average_log_prob=True
    "egpo": {"eta": 0.25, "tau": 0.1, "logprob_reduction": "sum"},
    "nash-md": {"eta": 0.25, "tau": 0.1, "logprob_reduction": "sum"},
    # SPPO paper eta (the MW step) = 1/beta of its code. Built-in task: 16/3 = 4 K/(K-1) at K = 4, i.e. the MW step 4 of
    # config version 1, whose leave-one-out win rates had no (K-1)/K shrinkage (the default estimator now has it).
    "sppo": {"eta": 16 / 3, "tau": 0.1, "logprob_reduction": "sum"},
    "dpo": {"beta": 0.1, "tau": 0.1, "logprob_reduction": "sum"},
    "ipo": {"beta": 0.1, "tau": 0.1, "logprob_reduction": "sum"},
}
INPO_FAMILY = ("inpo", "mnpo", "egpo", "nash-md")  # INPO's eta/tau parametrization (its loss, or its mirror step)


class AlgoConfig(_Frozen):
    """Algorithm and its hyperparameters, named and scaled as in each algorithm's paper (inpo/losses.py, one
    docs/algorithms/<algo>.md page each). Unset fields take the algorithm's default (``ALGO_DEFAULTS``).

    INPO / MNPO / EGPO / Nash-MD: ``eta``, ``tau`` as in INPO (arXiv 2407.00617): ``1/eta`` is the OMD learning
    rate, ``tau`` the KL regularization, ``0 <= tau <= eta``; public code's ``beta``/``eta`` with target
    ``1/(2 beta)`` is this ``eta``, MNPO's ``ratio`` is ``tau/eta``. ``eta_schedule=theorem4``: INPO's
    Theorem 4 step ``eta_t = tau (t+2)/2`` (``eta`` is then unused). SPPO: its paper's ``eta`` (the MW step;
    uclaml/SPPO ``beta = 1/eta``) and ``winrate_estimator``. DPO / IPO: ``beta``.
    """

    name: Literal["inpo", "dpo", "ipo", "sppo", "mnpo", "egpo", "nash-md"] = "inpo"
    eta: float | None = None
    tau: float | None = None
    beta: float | None = None
    eta_schedule: Literal["constant", "theorem4"] = "constant"
    winrate_estimator: Literal["with_self", "leave_one_out"] = Field(
        default="with_self", description="SPPO: P^(y_i > pi_t) = (sum_j M[i,j] incl. the self-comparison 1/2) / K "
        "(uclaml/SPPO) or the mean over the other K-1 samples")
    pairing: Literal["default", "best_vs_worst", "all", "random"] = "default"
    mnpo_weights: tuple[float, ...] = (0.5, 0.5)

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if "ipo_average_tokens" in data:
                raise ValueError("ipo_average_tokens was replaced by train.logprob_reduction=mean (TRL's per-token "
                                 "IPO)")
            defaults = ALGO_DEFAULTS.get(data.get("name", "inpo"), {})
            data = {**{k: v for k, v in defaults.items() if k in ("eta", "tau", "beta")},
                    **{k: v for k, v in data.items() if v is not None or k not in defaults}}
        return data

    @field_validator("eta", "beta")
    @classmethod
    def _pos(cls, v: float | None, info: Any) -> float | None:
        return v if v is None else _finite_positive(info.field_name, v)

    @field_validator("tau")
    @classmethod
    def _tau(cls, v: float | None) -> float | None:
        if v is not None and (not math.isfinite(v) or v < 0):
            raise ValueError(f"tau must be a finite number >= 0, got {v}")
        return v

    @model_validator(mode="after")
    def _check(self) -> AlgoConfig:
        used = ALGO_DEFAULTS[self.name]
        for k in ("eta", "tau", "beta"):
            if k in used and getattr(self, k) is None:
                raise ValueError(f"{k} is required by {self.name}")
        if self.eta_schedule == "theorem4":
            if self.name != "inpo":
                raise ValueError(f"eta_schedule=theorem4 is INPO's Theorem 4 step eta_t = tau (t+2)/2; not defined "
                                 f"for {self.name}")
            if not (self.tau or 0) > 0:
                raise ValueError("eta_schedule=theorem4 needs tau > 0 (eta_t = tau (t+2)/2)")
        elif self.name in INPO_FAMILY and self.tau > self.eta:  # type: ignore[operator]
            raise ValueError(f"tau must be <= eta (INPO's anchor weight tau/eta is in [0, 1]; eta={self.eta}, "
                             f"tau={self.tau}; config version 1's eta is 1/eta now)")
        w = self.mnpo_weights
        if not w or any((not math.isfinite(x)) or x < 0 for x in w) or abs(sum(w) - 1) > 1e-6:
            raise ValueError(f"mnpo_weights must be non-negative and sum to 1, got {list(w)}")
        return self

    def eta_at(self, t: int) -> float:
        """The eta of iteration t (t = 1, 2, ...; iteration t updates pi_t to pi_{t+1}, pi_1 = pi_ref)."""
        if self.eta_schedule == "theorem4":
            return float(self.tau) * (t + 2) / 2.0  # type: ignore[arg-type]
        assert self.eta is not None
        return self.eta


class TrainConfig(_Frozen):
    epochs: int = Field(default=4, gt=0)
    lr: float = 1e-3
    batch_size: int = Field(default=16, gt=0, description="prompts per optimizer step, with all their pairs")
    grad_accum: int = Field(default=1, gt=0)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    max_grad_norm: float = 1.0
    weight_decay: float = Field(default=0.0, ge=0)
    logprob_batch_size: int = Field(default=256, gt=0)
    logprob_chunk: int = Field(
        default=512, ge=0, description="response positions per LM-head chunk in every sequence log-prob (training "
        "with gradients, anchors, evaluation): the log-probs come from the final hidden states through the output "
        "head this many positions at a time, recomputed per chunk in backward, so the [batch, length, vocab] logits "
        "never exist (inpo.logprobs.chunked_sequence_logprobs); 0 = the model's full logits. Models it cannot serve "
        "(FSDP2-sharded, a soft-capped head, ...) use the full logits either way")
    group_by_length: bool = Field(default=False, description="steps of prompts with similar lengths (less padding)")
    logprob_reduction: Literal["sum", "mean"] | None = Field(
        default=None, description="sequence log-prob of a response: sum over its tokens, or the per-token mean "
        "(policy, cached anchors and metrics alike); None = the algorithm's default (its paper's / code's)")

    @field_validator("lr", "max_grad_norm")
    @classmethod
    def _pos(cls, v: float, info: Any) -> float:
        return _finite_positive(info.field_name, v)


class TaskConfig(_Frozen):
    """The built-in task (used when ``model.path`` is None). ``options`` are fields of
    ``inpo.tasks.BuiltinTaskConfig`` (e.g. ``n_train_prompts``, ``sft_steps``).

    ``name: annotators``: the real-text task of :mod:`inpo.tasks.annotators` (SmolLM2 unless ``model.path`` is
    set, its shipped prompts unless ``data.prompts`` is set, its annotator oracle as ``judge.path: builtin``);
    ``options``: ``mode`` (sampled | majority), ``annotators``."""

    name: Literal["builtin", "annotators"] = "builtin"
    seed: int = 0
    sft_cache: str = "runs/.cache"
    options: dict[str, Any] = Field(default_factory=dict)


class RunConfig(_Frozen):
    output_dir: str | None = None  # None: runs/<algo>-<YYYYmmdd-HHMMSS> (see resolve_output_dir)
    iterations: int = Field(default=6, gt=0)
    seed: int = 0
    peft: PeftConfig | None = None
    log_with: list[Literal["tensorboard", "wandb", "mlflow"]] | Literal["auto"] = Field(
        default="auto", description="accelerate trackers; 'auto' = tensorboard when installed, else none")
    threads: int | None = Field(default=None, gt=0, description="torch CPU threads; None: 1 for the built-in "
                                "task (its tiny model is overhead-bound), torch's default otherwise")
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    sampling: SamplingConfig = SamplingConfig()
    judge: JudgeConfig = JudgeConfig()
    algo: AlgoConfig = AlgoConfig()
    train: TrainConfig = TrainConfig()
    task: TaskConfig = TaskConfig()

    @model_validator(mode="before")
    @classmethod
    def _algo_defaults(cls, data: Any) -> Any:
        """``train.logprob_reduction`` unset: the algorithm's default (``ALGO_DEFAULTS``)."""
        if not isinstance(data, dict):
            return data
        algo = data.get("algo", {})
        name = algo.get("name", "inpo") if isinstance(algo, dict) else getattr(algo, "name", "inpo")
        default = ALGO_DEFAULTS.get(name, {}).get("logprob_reduction")
        train = data.get("train", {})
        if default is None:
            return data
        if isinstance(train, dict) and train.get("logprob_reduction") is None:
            return {**data, "train": {**train, "logprob_reduction": default}}
        if isinstance(train, TrainConfig) and train.logprob_reduction is None:
            return {**data, "train": train.model_copy(update={"logprob_reduction": default})}
        return data

    @model_validator(mode="after")
    def _builtin_consistency(self) -> RunConfig:
        if self.sampling.backend == "vllm" and self.algo.name == "nash-md":
            raise ValueError("sampling.backend=vllm does not support nash-md (it samples from the token-level "
                             "mixture of pi_t and pi_ref, two models per token); use backend=transformers")
        if self.model.path is not None and self.data.prompts is None and self.task.name == "builtin":
            raise ValueError("data.prompts is required when model.path is set (the built-in prompts fit only "
                             "the built-in model)")
        if self.model.path is not None and self.judge.path == "builtin" and self.task.name == "builtin":
            raise ValueError("judge.path is required when model.path is set ('builtin' is the task's judge)")
        return self


def resolve_output_dir(cfg: RunConfig) -> RunConfig:
    """The config with ``output_dir`` set: unset means a new ``runs/<algo>-<time>``. Under several processes
    (``WORLD_SIZE`` > 1) each would pick its own time, so the directory must be given."""
    if cfg.output_dir is not None:
        return cfg
    import os
    import time

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise InpoError("output_dir: set it (config or -o) for multi-process runs")
    return cfg.model_copy(update={"output_dir": f"runs/{cfg.algo.name}-{time.strftime('%Y%m%d-%H%M%S')}"})


def with_absolute_paths(cfg: RunConfig, base: str | Path | None = None) -> tuple[RunConfig, dict[str, str]]:
    """The config with its relative file paths made absolute (against ``base``, default the working directory), so
    a run directory works from any directory (``inpo eval``, ``inpo data export``), and ``{field: text as given}``
    of the paths changed. Paths: ``model.path``, ``data.prompts`` / ``data.eval_prompts`` (when they name an
    existing file: else a ``datasets`` name), ``judge.path`` (unless ``builtin``) and ``task.sft_cache``."""
    root = Path(base) if base is not None else Path.cwd()
    given: dict[str, str] = {}
    data = cfg.model_dump()

    def fix(section: str, key: str, must_exist: bool) -> None:
        value = data[section][key]
        if value is None or (section == "judge" and value == "builtin"):
            return
        p = Path(value).expanduser()
        if p.is_absolute() or (must_exist and not (root / p).exists()):
            if p.is_absolute() and str(p) != value:
                given[f"{section}.{key}"], data[section][key] = value, str(p)
            return
        given[f"{section}.{key}"], data[section][key] = value, str((root / p).resolve())

    fix("model", "path", False)
    fix("data", "prompts", True)
    fix("data", "eval_prompts", True)
    fix("judge", "path", False)
    fix("task", "sft_cache", False)
    return (RunConfig.model_validate(data) if given else cfg), given


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise InpoError(f"override {key}: {p} is not a section")
        cur = nxt
    cur[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["algo.eta=2", "train.lr=1e-4"]`` -> nested dict (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise InpoError(f"override '{item}': expected key.sub=value")
        key, raw = item.split("=", 1)
        value = _override_value(item, key, raw)
        _set_dotted(out, key.strip(), value)
    return out


def _override_value(item: str, key: str, raw: str) -> Any:
    """The value of one ``--set key=value``, parsed as YAML at the input boundary (no aliases, bounded depth)."""
    from inpo.inputs import MAX_DEPTH, check_path, yaml_loads

    check_path(item, f"override '{item[:40]}'")
    if key.count(".") >= MAX_DEPTH:
        raise InpoError(f"override '{key[:40]}...': more than {MAX_DEPTH} levels of sections")
    try:
        return yaml_loads(raw, "value")
    except InpoError as e:
        raise InpoError(f"override '{item[:200]}': invalid {e}") from None


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


_STEP_FIELDS = ("eta", "tau", "beta")


def _switch_algo(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``data`` without its ``algo.eta/tau/beta`` when ``overrides`` (``--algo``) change ``algo.name`` to an algorithm
    whose symbols mean something else: a file's steps were chosen for the file's algorithm (INPO's ``eta`` is its
    loss's target 1/(2 eta), SPPO's ``eta`` its multiplicative-weights step, DPO's ``beta`` its temperature), so the new
    algorithm takes its own defaults. Kept within INPO's family (the same eta / tau) and when ``overrides`` set them."""
    over, algo = overrides.get("algo"), data.get("algo")
    new = over.get("name") if isinstance(over, dict) else None
    if new is None or not isinstance(algo, dict):
        return data
    old = algo.get("name", "inpo")
    if new == old or (new in INPO_FAMILY and old in INPO_FAMILY):
        return data
    return {**data, "algo": {k: v for k, v in algo.items() if k not in _STEP_FIELDS}}


def _format_validation_error(e: ValidationError, source: str) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"{source}: field '{loc}': {msg}{more}"


def build_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    from inpo.inputs import check_run_limits, check_strings

    check_strings(data, source)
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as e:
        raise InpoError(_format_validation_error(e, source)) from None
    check_run_limits(cfg, source)  # sizes and numbers within their bounds (inpo.inputs.LIMITS)
    return cfg


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> RunConfig:
    data: dict[str, Any] = {}
    source = "command line"
    if path is not None:
        from inpo.inputs import check_path, load_yaml_file

        check_path(path, "config")
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise InpoError(f"{p}: config file not found")
        loaded = load_yaml_file(p)  # UTF-8, safe tags, no aliases / duplicate keys, bounded depth
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise InpoError(f"{p}: expected a mapping at the top level, got {type(loaded).__name__}")
        data = loaded
    return build_config(_merge(_switch_algo(data, overrides or {}), overrides or {}), source)


def check_run_version(run_dir: str | Path) -> None:
    """Refuse a run directory written before config version ``CONFIG_VERSION`` (its fields meant other things):
    one line saying what changed. A directory without ``state.json`` is not checked here."""
    import json

    p = Path(run_dir) / "state.json"
    if not p.is_file():
        return
    try:
        state = json.loads(p.read_text())
    except (ValueError, RecursionError, OSError):  # bad JSON / UTF-8, nesting, huge ints, a directory
        return  # the run directory's own check reports a corrupt state file
    if not isinstance(state, dict):
        return  # likewise
    version = state.get("config_version", 1)
    if version != CONFIG_VERSION:
        raise InpoError(f"{run_dir}: the run was made with config version {version}, this inpo reads version "
                        f"{CONFIG_VERSION} and will not resume it: {CONFIG_VERSION_CHANGES}; start a new run "
                        "(e.g. with algo.eta=1/old_eta)")


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
