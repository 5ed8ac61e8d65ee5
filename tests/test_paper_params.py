"""Issue 10: every algorithm's parameters named and scaled as its paper; one source of truth for the defaults; old
runs refuse to resume under the new meanings; the README's set-up and test commands are what CI runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from inpo.algorithms import at_iteration, mixture_coefficient
from inpo.config import (
    ALGO_DEFAULTS,
    CONFIG_VERSION,
    AlgoConfig,
    RunConfig,
    build_config,
    check_run_version,
    load_config,
)
from inpo.errors import InpoError

ROOT = Path(__file__).resolve().parents[1]


def test_per_algorithm_defaults_and_the_builtin_conversion() -> None:
    # config version 1's INPO default eta = 4 (the OMD learning rate) is eta = 1/4 now; tau unchanged; the anchor
    # weight tau/eta and the target 1/(2 eta) are the same doubles, so the built-in run is the same run
    inpo = RunConfig().algo
    assert (inpo.eta, inpo.tau) == (0.25, 0.1)
    assert inpo.tau / inpo.eta == 4.0 * 0.1 and 1 / (2 * inpo.eta) == 4.0 / 2
    for name, d in ALGO_DEFAULTS.items():
        cfg = build_config({"algo": {"name": name}})
        for field in ("eta", "tau", "beta"):
            assert getattr(cfg.algo, field) == d.get(field), (name, field)
        assert cfg.train.logprob_reduction == d["logprob_reduction"]
    assert build_config({"algo": {"name": "mnpo"}}).train.logprob_reduction == "mean"  # smiles724/MNPO
    # an explicit value wins over the algorithm's default
    assert build_config({"algo": {"name": "mnpo"}, "train": {"logprob_reduction": "sum"}}).train.logprob_reduction \
        == "sum"
    assert build_config({"algo": {"name": "sppo", "eta": 1000.0}}).algo.eta == 1000.0


def test_algo_flag_drops_the_files_steps_of_another_algorithm(tmp_path: Path) -> None:
    # `--algo X` over a file written for INPO: INPO's eta (target 1/(2 eta)) is not SPPO's eta (its MW step) nor
    # DPO's beta, so X takes its own defaults; within INPO's family the symbols are the same and are kept
    f = tmp_path / "c.yaml"
    f.write_text("algo: {name: inpo, eta: 0.1, tau: 0.04}\n")
    assert (load_config(f).algo.eta, load_config(f).algo.tau) == (0.1, 0.04)
    sppo = load_config(f, {"algo": {"name": "sppo"}}).algo
    assert (sppo.eta, sppo.tau) == (ALGO_DEFAULTS["sppo"]["eta"], ALGO_DEFAULTS["sppo"].get("tau"))
    assert load_config(f, {"algo": {"name": "dpo"}}).algo.beta == ALGO_DEFAULTS["dpo"]["beta"]
    mnpo = load_config(f, {"algo": {"name": "mnpo"}}).algo
    assert (mnpo.eta, mnpo.tau) == (0.1, 0.04)
    assert load_config(f, {"algo": {"name": "sppo", "eta": 5.0}}).algo.eta == 5.0  # --set still wins
    f.write_text("algo: {name: sppo, eta: 5.0}\n")
    assert load_config(f, {"algo": {"name": "sppo"}}).algo.eta == 5.0  # the same algorithm keeps its file's step
    assert load_config(f, {"algo": {"name": "inpo"}}).algo.eta == ALGO_DEFAULTS["inpo"]["eta"]


def test_papers_values_are_accepted_and_tau_above_eta_is_not() -> None:
    c = AlgoConfig(name="inpo", eta=0.005, tau=0.005 / 3)  # INPO Appendix B
    assert c.tau / c.eta == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="tau must be <= eta"):
        AlgoConfig(name="inpo", eta=4.0e-3, tau=0.1)
    with pytest.raises(ValueError, match="tau must be <= eta"):
        AlgoConfig(name="mnpo", eta=0.0075, tau=0.01)


def test_theorem4_schedule_and_nash_md_mixture() -> None:
    cfg = build_config({"algo": {"name": "inpo", "tau": 0.1, "eta_schedule": "theorem4"}})
    assert [at_iteration(cfg, t).algo.eta for t in (1, 2, 3)] == pytest.approx([0.15, 0.2, 0.25])
    assert at_iteration(cfg, 1).algo.tau == 0.1 and cfg.algo.eta == 0.25  # the run's config is untouched
    const = build_config({})
    assert at_iteration(const, 5) is const
    assert mixture_coefficient(build_config({"algo": {"name": "nash-md"}}).algo) == pytest.approx(0.4)


def _old_run(path: Path) -> Path:
    """A run directory as config version 1 wrote it (state.json without config_version)."""
    path.mkdir()
    (path / "config.yaml").write_text(yaml.safe_dump({"output_dir": str(path), "algo": {"name": "inpo", "eta": 4.0,
                                                                                         "tau": 0.1}}))
    (path / "state.json").write_text(json.dumps({"config_hash": "0123456789abcdef", "completed_iterations": 2}))
    return path


def test_a_run_of_config_version_1_refuses_to_resume(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from inpo.cli import app
    from inpo.rundir import RunDir

    old = _old_run(tmp_path / "old")
    with pytest.raises(InpoError, match="config version 1") as e:
        check_run_version(old)
    assert "algo.eta" in str(e.value) and "1/eta" in str(e.value) and "\n" not in str(e.value)
    cfg = build_config({"output_dir": str(old)})
    with pytest.raises(InpoError, match="config version 1"):
        RunDir(old).check(cfg, resume=True, overwrite=False)
    with pytest.raises(InpoError, match="config version 1"):
        RunDir(old).check(cfg, resume=True, overwrite=False, allow_change=True)
    res = CliRunner().invoke(app, ["train", "--resume", str(old)])
    assert isinstance(res.exception, InpoError) and "config version 1" in str(res.exception)
    # a run of this version passes the check
    (old / "state.json").write_text(json.dumps({"config_hash": "x", "config_version": CONFIG_VERSION}))
    check_run_version(old)


# ----------------------------------------------------------------------------- docs: one source of truth
ALGO_PAGES = {"inpo": "inpo", "mnpo": "mnpo", "egpo": "egpo", "nash-md": "nash_md", "sppo": "sppo", "dpo": "dpo",
              "ipo": "ipo"}


@pytest.mark.parametrize("algo", sorted(ALGO_PAGES))
def test_docs_parameter_table_matches_the_config_defaults(algo: str) -> None:
    """Every docs/algorithms/<algo>.md has the table paper symbol | paper's value | config field | our default |
    public code; its defaults are those of ALGO_DEFAULTS (and AlgoConfig's own defaults)."""
    text = (ROOT / "docs" / "algorithms" / f"{ALGO_PAGES[algo]}.md").read_text()
    head = ("| paper symbol | paper's value in its experiments | our config field | our default "
            "| public code: name and mapping |")
    assert head in text
    rows = [line for line in text.splitlines() if line.startswith("|")]
    cfg = build_config({"algo": {"name": algo}})
    checked = set()
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        if len(cells) != 5:
            continue
        m = re.fullmatch(r"`(algo|train|sampling)\.(\w+)`", cells[2])
        if not m or not re.fullmatch(r"`[^`]*`", cells[3]):  # a default in backticks is a claim about the config
            continue
        section, field = m.groups()
        value = getattr(getattr(cfg, section), field)
        want = cells[3].strip("`")
        assert want == (str(list(value)) if isinstance(value, tuple) else str(value)), (algo, field, want, value)
        checked.add(field)
    assert {k for k in ("eta", "tau", "beta") if k in ALGO_DEFAULTS[algo]} - {"tau"} <= checked
    assert "logprob_reduction" in checked


# ----------------------------------------------------------------------------- README == CI
def _bash_blocks(md: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", md, flags=re.S)


def test_ci_runs_exactly_the_readme_setup_and_test_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = _bash_blocks(readme)
    install, test = blocks[0].strip(), blocks[1].strip()
    assert install.endswith("pip install -e '.[test]' && inpo train") and "pytest" in test
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [c for c in ci if c and not c.startswith("#") and c not in ("set -euo pipefail",)
                and not c.startswith("cd ")]
    assert commands == [install.removesuffix(" && inpo train"), test]  # the install step, then the tests


def test_test_extra_has_what_the_tests_import() -> None:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    names = {re.split(r"[<>=\[ ]", e)[0] for e in extras}
    assert {"pytest", "ruff", "peft", "trl"} <= names
