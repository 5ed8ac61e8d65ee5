"""vLLM sampling backend: runs only where vLLM is importable (GPU machines); the default stays transformers."""

from __future__ import annotations

import pytest

from inpo.config import build_config
from inpo.errors import InpoError


def test_vllm_backend_is_opt_in_and_rejects_unsupported_algorithms() -> None:
    assert build_config({}).sampling.backend == "transformers"
    with pytest.raises(InpoError, match="vllm"):
        build_config({"sampling": {"backend": "vllm"}, "algo": {"name": "egpo"}})


def test_vllm_missing_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_vllm(name: str, *args: object, **kwargs: object) -> object:
        if name == "vllm" or name.startswith("vllm."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_vllm)
    from inpo.sampling import sample_responses_vllm

    with pytest.raises(InpoError, match="pip install"):
        sample_responses_vllm("/nonexistent", [[1, 2]], build_config({}).sampling, eos_id=2, seed=0)


def test_vllm_samples_k_responses_per_prompt(tmp_path) -> None:
    pytest.importorskip("vllm", reason="vLLM is an optional GPU extra: pip install 'inpo[vllm]'")
    from inpo.sampling import sample_responses_vllm
    from inpo.tasks import BuiltinTask, build_reference

    task = BuiltinTask()
    ref = build_reference(task, tmp_path, progress=False)
    cfg = build_config({"sampling": {"num_samples": 3, "max_new_tokens": 6}}).sampling
    out = sample_responses_vllm(str(ref), [[1, 5, 6]], cfg, eos_id=2, seed=0)
    assert len(out) == 1 and len(out[0]) == 3 and all(len(r) <= 6 for r in out[0])
