#!/usr/bin/env python
"""Host time per decode step on the plugin's CPU backend: eager against graph replay.

Same model and method as bench_host_overhead.py (the 1-layer hidden-64 Llama, so a step's wall
time is host work; (t68 - t4) / 64 is one decode-only step with N sequences running), run three
times in the plugin's venv with every measured batch size captured: eager (cudagraph_mode NONE),
PIECEWISE (the default: graph segments replayed, attention eager between them) and
FULL_DECODE_ONLY (each decode step one whole graph). On the CPU backend a graph is the op tape:
the recorded ops re-run on static buffers without the model's Python. ratio = eager ms/step /
graph ms/step; above 1.0 the replay saves host time.

    .venv/bin/python benchmarks/bench_graph_replay.py [--batch-sizes 1,8,64] [--repeats 5]
"""

from __future__ import annotations

import sys
import time

sys.path.insert(0, __import__("os").path.dirname(__file__))
import _common as C  # noqa: E402
import bench_host_overhead  # noqa: E402

DEFAULT_SIZES = [1, 8, 64]


def run(batch_sizes=None, repeats=None, dtype="bfloat16") -> dict:
    sizes = batch_sizes or DEFAULT_SIZES
    spec = dict(bench_host_overhead.DEFAULTS, task="decode_steps",
                model=str(C.build_tiny_checkpoint()), dtype=dtype,
                kv_cache_memory_bytes=512 * 2**20, max_model_len=512, max_num_seqs=max(sizes),
                block_size=128, seed=0, batch_sizes=sizes)
    if repeats:
        spec["repeats"] = repeats
    plugin = C.engines(with_peer=False)[0]
    raw = {}
    for label, extra in (("eager", {"cudagraph_mode": "NONE", "capture_sizes": []}),
                         ("piecewise", {"cudagraph_mode": "PIECEWISE",
                                        "capture_sizes": sorted(sizes)}),
                         ("full", {"cudagraph_mode": "FULL_DECODE_ONLY",
                                   "capture_sizes": sorted(sizes)})):
        t0 = time.perf_counter()
        print(f"  graph replay: {label} ...", file=sys.stderr, flush=True)
        raw[label] = C.run_worker(plugin, dict(spec, **extra), f"graph_replay-{label}")
        print(f"  graph replay: {label} done in {time.perf_counter() - t0:.0f}s",
              file=sys.stderr, flush=True)
    rows = []
    for i, n in enumerate(sizes):
        row = {"batch": n}
        for label in raw:
            assert raw[label]["decode_steps"][i]["batch"] == n
            reps = raw[label]["decode_steps"][i]["repeats"]
            row[label] = C.stats(r["ms_per_step"] for r in reps)
        for label in ("piecewise", "full"):
            row[f"ratio_{label}"] = C.ratio(row["eager"]["median"], row[label]["median"])
        rows.append(row)
    engines = {k: {f: v.get(f) for f in ("cudagraph_mode", "startup_s", "wall_s")}
               for k, v in raw.items()}
    return {"spec": spec, "engines": engines, "rows": rows}


def render(res: dict) -> str:
    rows = [[r["batch"], C.fmt_stat(r["eager"], 2), C.fmt_stat(r["piecewise"], 2),
             C.fmt_stat(r["full"], 2), f"{r['ratio_piecewise']:.2f}", f"{r['ratio_full']:.2f}"]
            for r in res["rows"]]
    e = res["engines"]
    s = res["spec"]
    title = (f"Host ms per decode step, plugin CPU backend, eager vs graph replay "
             f"({s['dtype']}, {s['repeats']} repeats; median [min-max]; start-up eager "
             f"{e['eager']['startup_s']:.1f}s, piecewise {e['piecewise']['startup_s']:.1f}s, "
             f"full {e['full']['startup_s']:.1f}s)")
    return C.table(["batch", "eager ms/step", "PIECEWISE ms/step", "FULL_DECODE_ONLY ms/step",
                    "eager/piecewise", "eager/full"], rows, title)


def main() -> None:
    C.batch_sizes_main(__doc__, run, render, "graph_replay", with_peer=False)


if __name__ == "__main__":
    main()
