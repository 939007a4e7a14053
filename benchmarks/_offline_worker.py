"""Offline-engine benchmark worker: runs inside ONE venv (the plugin's .venv or the peer's
.venv-peer) and is started by bench_host_overhead.py / bench_serving.py as a subprocess.

It imports only the standard library and vLLM, so the same file runs under both engines. The
spec comes as a JSON file (argv[1]); results go to a JSON file (argv[2]).

Spec keys:
  model, dtype, enforce_eager, kv_cache_memory_bytes, max_model_len, max_num_seqs,
  max_num_batched_tokens (optional), block_size, seed
  cudagraph_mode, capture_sizes   optional: graph mode (e.g. FULL_DECODE_ONLY) and its sizes
  expect_platform         class name current_platform must have (guards against a wrong venv)
  task = "decode_steps":  batch_sizes, prompt_len, short_len, long_len, repeats
      For each batch size N: N distinct random prompts of prompt_len tokens, greedy, ignore_eos.
      One run with short_len and one with long_len output tokens; both have one prefill step,
      so (t_long - t_short) / (long_len - short_len) is the wall time of one decode-only engine
      step with all N sequences running. Repeated `repeats` times (after one warm-up).
  task = "throughput":    num_prompts, input_len, output_len, repeats
      vLLM-benchmark-style offline throughput: random prompts, ignore_eos, fixed output length.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time


def _prompts(n: int, length: int, vocab: int, rng: random.Random, avoid: set[int]):
    from vllm.inputs import TokensPrompt

    usable = [t for t in range(vocab) if t not in avoid]
    return [TokensPrompt(prompt_token_ids=[rng.choice(usable) for _ in range(length)])
            for _ in range(n)]


def _timed_generate(llm, prompts, params) -> tuple[float, int, int]:
    engine = llm.llm_engine
    calls = 0
    orig_step = engine.step

    def counting_step(*args, **kwargs):
        nonlocal calls
        calls += 1
        return orig_step(*args, **kwargs)

    engine.step = counting_step
    try:
        start = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - start
    finally:
        engine.step = orig_step
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return elapsed, tokens, calls


def main(spec_path: str, out_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)

    import torch
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.platforms import current_platform

    platform = type(current_platform).__name__
    if spec.get("expect_platform") and platform != spec["expect_platform"]:
        raise SystemExit(f"wrong platform {platform}, expected {spec['expect_platform']}")

    t0 = time.perf_counter()
    llm = LLM(
        model=spec["model"],
        dtype=spec["dtype"],
        enforce_eager=spec.get("enforce_eager", False),
        kv_cache_memory_bytes=spec["kv_cache_memory_bytes"],
        max_model_len=spec["max_model_len"],
        max_num_seqs=spec["max_num_seqs"],
        **({"max_num_batched_tokens": spec["max_num_batched_tokens"]}
           if spec.get("max_num_batched_tokens") else {}),
        block_size=spec.get("block_size", 128),
        enable_prefix_caching=False,
        seed=spec.get("seed", 0),
        **({"compilation_config": {"cudagraph_mode": spec["cudagraph_mode"],
                                   "cudagraph_capture_sizes": spec["capture_sizes"]}}
           if spec.get("cudagraph_mode") else {}),
    )
    startup_s = time.perf_counter() - t0
    tok = llm.get_tokenizer()
    vocab = llm.llm_engine.model_config.get_vocab_size()
    avoid = {t for t in (tok.eos_token_id, tok.bos_token_id, tok.pad_token_id) if t is not None}
    avoid |= set(getattr(tok, "all_special_ids", []) or [])
    rng = random.Random(spec.get("seed", 0))
    result = {
        "platform": platform,
        "vllm_version": vllm.__version__,
        "torch_version": torch.__version__,
        "python": sys.executable,
        "startup_s": startup_s,
        "compilation_mode": str(llm.llm_engine.vllm_config.compilation_config.mode),
        "cudagraph_mode": str(llm.llm_engine.vllm_config.compilation_config.cudagraph_mode),
        "block_size": llm.llm_engine.vllm_config.cache_config.block_size,
    }

    if spec["task"] == "decode_steps":
        rows = []
        for n in spec["batch_sizes"]:
            prompts = _prompts(n, spec["prompt_len"], vocab, rng, avoid)

            def params(length):
                return SamplingParams(max_tokens=length, min_tokens=length, ignore_eos=True,
                                      temperature=0.0)

            _timed_generate(llm, prompts, params(spec["short_len"]))  # warm-up
            reps = []
            for _ in range(spec["repeats"]):
                t_s, tok_s, calls_s = _timed_generate(llm, prompts, params(spec["short_len"]))
                t_l, tok_l, calls_l = _timed_generate(llm, prompts, params(spec["long_len"]))
                steps = spec["long_len"] - spec["short_len"]
                reps.append({
                    "t_short_s": t_s, "t_long_s": t_l,
                    "tokens_long": tok_l, "engine_step_calls_long": calls_l,
                    "ms_per_step": (t_l - t_s) / steps * 1e3,
                    "decode_tok_s": n * steps / (t_l - t_s),
                    "output_tok_s": tok_l / t_l,
                })
            rows.append({"batch": n, "repeats": reps})
            print(f"[{platform}] batch {n}: "
                  f"{sorted(r['ms_per_step'] for r in reps)[len(reps) // 2]:.2f} ms/step",
                  file=sys.stderr, flush=True)
        result["decode_steps"] = rows
    elif spec["task"] == "throughput":
        prompts = _prompts(spec["num_prompts"], spec["input_len"], vocab, rng, avoid)
        params = SamplingParams(max_tokens=spec["output_len"], min_tokens=spec["output_len"],
                                ignore_eos=True, temperature=0.0)
        warm = _prompts(min(4, spec["num_prompts"]), spec["input_len"], vocab, rng, avoid)
        _timed_generate(llm, warm, SamplingParams(max_tokens=4, ignore_eos=True))
        reps = []
        for _ in range(spec["repeats"]):
            elapsed, tokens, _ = _timed_generate(llm, prompts, params)
            total = tokens + spec["num_prompts"] * spec["input_len"]
            reps.append({"elapsed_s": elapsed, "output_tokens": tokens,
                         "output_tok_s": tokens / elapsed, "total_tok_s": total / elapsed,
                         "req_s": spec["num_prompts"] / elapsed})
        result["throughput"] = reps
    else:
        raise SystemExit(f"unknown task {spec['task']}")

    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv[1], sys.argv[2])
