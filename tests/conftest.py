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
