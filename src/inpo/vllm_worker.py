"""The vLLM sampling worker: a standalone script run by the interpreter of the environment that has vLLM.

It imports only the standard library and vLLM (not inpo), so it runs in the separate environment
``python -m inpo.vllm_env`` builds (vLLM pins its own transformers) as well as in one with ``inpo[vllm]``.
:class:`inpo.sampling.VllmWorker` starts it as ``<python> vllm_worker.py`` and talks to it in JSON lines:

request (stdin, one line)::

    {"model": dir, "prompts": [[ids]], "seeds": [int per prompt], "n": K, "temperature": T, "top_p": p,
     "max_tokens": m, "stop_token_ids": [eos], "max_model_len": L, "dtype": "float32"}

reply (one line on the protocol pipe, which is the original stdout; anything vLLM prints goes to stderr)::

    {"tokens": [[[ids] x K] x N], "logprobs": [[[float per token] x K] x N], "engine_s": float, "generate_s": float,
     "engine_cpu_s": float, "generate_cpu_s": float}  (wall and this process's CPU seconds)
    or {"error": "one line"}

Each prompt has its own seed (vLLM gives the k-th of the K samples ``seed + k``), so a prompt's samples do not
depend on the batch it is in. The log-probs are vLLM's ``raw_logprobs`` of the sampled tokens (the model's
distribution, before temperature / top-p). The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``,
one ``uni`` executor: no further processes to spawn) and is kept while requests name the same model directory
(and the files in it are unchanged). The worker exits when its stdin closes, so it never outlives the run.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time


def _engine_key(req: dict) -> tuple:
    files = sorted(os.listdir(req["model"]))
    stamp = tuple((f, os.stat(os.path.join(req["model"], f)).st_mtime_ns) for f in files)
    return req["model"], stamp, req["max_model_len"], req["dtype"], req.get("kv_cache_bytes")


def serve(proto) -> None:  # noqa: ANN001 - a text file
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    proto.write(json.dumps({"ready": True}) + "\n")
    proto.flush()
    llm, key = None, None
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            t0, c0 = time.perf_counter(), time.process_time()
            if _engine_key(req) != key:
                if llm is not None:
                    del llm
                    gc.collect()
                llm = LLM(model=req["model"], dtype=req["dtype"], max_model_len=req["max_model_len"],
                          enforce_eager=True, skip_tokenizer_init=True, generation_config="vllm",
                          distributed_executor_backend="uni", kv_cache_memory_bytes=req.get("kv_cache_bytes"),
                          seed=0)
                key = _engine_key(req)
            t1, c1 = time.perf_counter(), time.process_time()
            params = [SamplingParams(n=req["n"], temperature=req["temperature"], top_p=req["top_p"],
                                     top_k=req.get("top_k") or 0, max_tokens=req["max_tokens"],
                                     stop_token_ids=req["stop_token_ids"],
                                     ignore_eos=True, seed=s, logprobs=0, detokenize=False)
                      for s in req["seeds"]]
            outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in req["prompts"]], params, use_tqdm=False)
            tokens, logps = [], []
            for out in outs:
                seqs = sorted(out.outputs, key=lambda o: o.index)
                tokens.append([list(o.token_ids) for o in seqs])
                logps.append([[d[t].logprob for t, d in zip(o.token_ids, o.logprobs, strict=True)] for o in seqs])
            reply = {"tokens": tokens, "logprobs": logps, "engine_s": t1 - t0, "generate_s": time.perf_counter() - t1,
                     "engine_cpu_s": c1 - c0, "generate_cpu_s": time.process_time() - c1}
        except Exception as e:  # noqa: BLE001 - one line back to the caller, which raises it as an InpoError
            reply = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        proto.write(json.dumps(reply) + "\n")
        proto.flush()


if __name__ == "__main__":
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    proto_fd = os.dup(1)  # the protocol pipe; everything printed from here on goes to stderr
    os.dup2(2, 1)
    with os.fdopen(proto_fd, "w") as proto:
        try:
            import vllm  # noqa: F401
        except Exception as e:  # noqa: BLE001 - reported as one line
            proto.write(json.dumps({"error": f"cannot import vllm: {type(e).__name__}: {e}"}) + "\n")
            sys.exit(1)
        serve(proto)
