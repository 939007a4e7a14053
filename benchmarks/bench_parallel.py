#!/usr/bin/env python
"""Start-up time and decode tokens/s of each parallel mode on the CPU backend, next to the
single-process run of the same model (tests/checkpoints.py: the 2-layer dense Qwen2 and the
2-layer, 8-expert Qwen3-MoE).

Each mode is a fresh engine in its own subprocess (this file with --one), so start-up is what a
user waits for: from `LLM(...)` to ready, workers, process groups and graph capture included.
Decode rate: N=8 random 16-token prompts, greedy, ignore_eos, generated twice (4 and 36 output
tokens, one prefill step each); decode tok/s = N * 32 / (t36 - t4). Modes: single, TP=2, PP=2,
and TP=2 with expert parallel (MoE). Data parallel (through `vllm serve`) and Ray (a cluster
started first) are timed by tests/e2e/test_distributed.py, which prints their start-up.

    .venv/bin/python benchmarks/bench_parallel.py
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]
import _common as C  # noqa: E402

N, PROMPT, SHORT, LONG = 8, 16, 4, 36
MODES = [
    ("qwen2", "single", {}),
    ("qwen2", "TP=2", {"tensor_parallel_size": 2}),
    ("qwen2", "PP=2", {"pipeline_parallel_size": 2}),
    ("qwen3_moe", "single", {}),
    ("qwen3_moe", "TP=2", {"tensor_parallel_size": 2}),
    ("qwen3_moe", "TP=2 + EP all-to-all", {"tensor_parallel_size": 2,
                                           "enable_expert_parallel": True}),
    ("qwen3_moe", "TP=2 + EP all-gather", {"tensor_parallel_size": 2,
                                           "enable_expert_parallel": True,
                                           "additional_config": {"expert_dispatch": "allgather"}}),
]


def _weight_bytes(worker) -> int:
    model = worker.model_runner.get_model()
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def one(model: str, kwargs: dict) -> dict:
    """Runs in the subprocess: build the engine, time the two generations."""
    import random

    from vllm import LLM, SamplingParams, TokensPrompt

    start = time.perf_counter()
    llm = LLM(model=model, **{"dtype": "float32", "max_model_len": 512,
                              "kv_cache_memory_bytes": 64 << 20, "seed": 0, **kwargs})
    startup = time.perf_counter() - start
    weights = sum(llm.collective_rpc(_weight_bytes))
    rng = random.Random(0)
    vocab = json.loads((pathlib.Path(model) / "config.json").read_text())["vocab_size"]
    prompts = [TokensPrompt(prompt_token_ids=[rng.randrange(8, vocab) for _ in range(PROMPT)])
               for _ in range(N)]

    def timed(max_tokens: int) -> float:
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        t0 = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        return time.perf_counter() - t0

    timed(SHORT)  # warm-up
    rates = []
    for _ in range(3):
        rates.append(N * (LONG - SHORT) / (timed(LONG) - timed(SHORT)))
    # Stop the engine's processes now: left to interpreter exit, the teardown can hang.
    llm.llm_engine.engine_core.shutdown()
    return {"startup_s": startup, "decode_tok_s": C.stats(rates), "weight_bytes": weights}


def measure(path: pathlib.Path, kwargs: dict, label: str) -> dict:
    """``one`` in a fresh subprocess (this file with --one)."""
    env = dict(os.environ, VLLM_ASCEND_DEVICE="cpu", VLLM_ENABLE_V1_MULTIPROCESSING="1",
               VLLM_ALLOW_INSECURE_SERIALIZATION="1")  # the weight-bytes query is a function
    print(f"  {label} ...", file=sys.stderr, flush=True)
    with tempfile.NamedTemporaryFile("r", suffix=".json") as out, \
            tempfile.TemporaryFile("w+") as log:
        # Output to a file, not a pipe: the engine's own processes inherit it.
        proc = subprocess.run([sys.executable, __file__, "--one", str(path),
                               json.dumps(kwargs), out.name],
                              env=env, stdout=log, stderr=log, text=True, timeout=300)
        if proc.returncode:
            log.seek(0)
            raise RuntimeError(f"{label} failed:\n{log.read()[-3000:]}")
        return json.load(out)


def run() -> dict:
    from checkpoints import build_checkpoint

    rows = []
    for model, label, kwargs in MODES:
        result = measure(build_checkpoint(model), kwargs, f"parallel: {model} {label}")
        rows.append({"model": model, "mode": label, **result})
    for row in rows:
        single = next(r for r in rows if r["model"] == row["model"] and r["mode"] == "single")
        row["vs_single"] = C.ratio(row["decode_tok_s"]["median"], single["decode_tok_s"]["median"])
    return {"rows": rows}


def render(res: dict) -> str:
    rows = [[r["model"], r["mode"], f"{r['startup_s']:.1f}", C.fmt_stat(r["decode_tok_s"], 0),
             f"{r['vs_single']:.2f}"] for r in res["rows"]]
    return C.table(["model", "mode", "start-up s", "decode tok/s", "vs single"], rows,
                   f"Parallel modes, plugin CPU backend, gloo (fp32, {N} sequences; decode "
                   "tok/s median [min-max] of 3)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        model, kwargs, out = sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
        result = one(model, kwargs)
        pathlib.Path(out).write_text(json.dumps(result))
        os._exit(0)  # the result is written; nothing else in this process matters
    res = run()
    print(render(res))
    print(f"wrote {C.write_json('parallel.json', {'parallel': res})}")


if __name__ == "__main__":
    main()
