"""configs/accelerate/*.yaml are generated from one table (configs/accelerate/generate.py): the files on disk
equal what the generator writes, each loads with accelerate's own parser, and the FSDP2 CPU config and the
FSDP2 GPU config share one fsdp_config."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

DIR = Path(__file__).resolve().parents[1] / "configs" / "accelerate"


def generator():
    spec = importlib.util.spec_from_file_location("generate_accelerate_configs", DIR / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_config_files_equal_the_generated_ones_and_load_in_accelerate() -> None:
    from accelerate.commands.config.config_args import ClusterConfig

    gen = generator()
    assert sorted(p.name for p in DIR.glob("*.yaml")) == sorted(gen.CONFIGS)
    for name, (header, settings) in gen.CONFIGS.items():
        assert (DIR / name).read_text() == gen.render(header, settings), f"{name}: run configs/accelerate/generate.py"
        ClusterConfig.from_yaml_file(str(DIR / name))
    assert gen.main(["--check"]) == 0
    cpu, gpu = (yaml.safe_load((DIR / f).read_text()) for f in ("fsdp2_cpu_2proc.yaml", "fsdp2.yaml"))
    assert cpu["fsdp_config"] == gpu["fsdp_config"] and cpu["fsdp_config"]["fsdp_version"] == 2
    assert cpu["distributed_type"] == gpu["distributed_type"] == "FSDP"
    assert (cpu["use_cpu"], cpu["num_processes"], gpu["use_cpu"]) == (True, 2, False)
