#!/usr/bin/env python
"""Figures that stand for the NPU path, measured on the CPU backend: device ops launched per
decoder layer per decode step, host synchronisations per decode step, and host milliseconds per
decode step with every kernel replaced by a shape-only fake, for the plugin and for vLLM's own
CPU build (the peer) on the same model.

Model: Qwen2.5-7B-Instruct's op structure at toy size: Qwen2ForCausalLM, GQA 7:1 (7 q heads,
1 kv head; Qwen2.5-7B has 28/4), head_dim 64 (hidden 448), q/k/v bias, SwiGLU MLP (intermediate
2368, Qwen2.5-7B's 5.29x hidden), RMSNorm, untied LM head, rope theta 1e6, 4 decoder layers,
random weights (seed 0), the test suite's tokenizer. bf16, block size 128, max_model_len 256.

Each engine runs in its own venv in one subprocess (benchmarks/_npu_path_worker.py) with the
engine core in that process (VLLM_ENABLE_V1_MULTIPROCESSING=0) and enforce_eager=True, so every
op of a step reaches the dispatcher. For decode batches 1 and 16, after the prefill and 3 decode
steps:

1. Device ops per decoder layer per decode step. Three engine steps run under a
   TorchDispatchMode that counts each op (by namespace::name) and the part of the step it runs
   in, known from module hooks: inside decoder layer i, the rest of the model forward
   (embedding, final norm), logits, sampler, and the runner (everything else). vLLM's Python
   glue ops (namespace vllm) are transparent: the ops inside them are counted. Not launches:
   views (no argument written and every output aliases an input), allocations (empty*) and ops
   returning host values. Per decoder layer = the mean over layers 1..L-1 (layer 0 differs: its
   input norm has no residual to add; the table says by how much); the hook attribution gives
   this directly, so one model suffices where a difference of two depths would otherwise be
   needed. Outside the layers, an op is a launch if it touches device memory: the model's
   weights, KV caches, the runner's device-side buffers, or a result of a device op (tracked
   by storage); ops on host tensors only are host work. Under torch.inference_mode composite
   ops (aten::linear, aten::to, aten::contiguous) reach the dispatcher whole and count once
   (and only when they produce a new tensor: a no-op .to()/.contiguous() is a view). Each op
   is shown with the innermost vLLM/vllm-ascend frame of its first call.

2. Host synchronisations per decode step (whole engine step). On the CPU backend every tensor
   is a host tensor, so a device-to-host read that an NPU would wait for passes no copy op: the
   counter recognises it by what is read, a device tensor in the sense of 1. Counted: item()/
   bool()/int() of a device tensor (aten::_local_scalar_dense, is_nonzero, equal); ops whose
   output size depends on device data (nonzero, masked_select, unique*, boolean indexing,
   repeat_interleave without output_size); blocking device-to-host copies (copy_ into host
   memory without non_blocking, Tensor.cpu(), Tensor.to("cpu")); Tensor.tolist()/numpy() of a
   device tensor (Python-level, wrapped while counting, as they bypass the dispatcher on the
   host); and explicit waits: the device layer's synchronize(), Stream/Event.synchronize() and
   torch.accelerator.synchronize(). Non-blocking device-to-host copies are listed apart (no
   wait by themselves). Each kind is shown with the innermost vLLM/vllm-ascend frames of its
   first occurrence. Limits: Tensor.to(d) is taken as a host copy only for the string "cpu"
   (on the CPU backend the device is torch.device("cpu") too); the peer's CPU runner makes each
   device buffer the same tensor as its host twin, so for the peer only reads of data computed
   on the "device" (model, sampler, copies of them) count. The plugin's CPU backend runs with
   async scheduling off (no streams), so the step measured is the synchronous one: its one
   wait for the sampled tokens would overlap the next step under async scheduling on an NPU.

3. Host ms per decode step with fake kernels. The model forward and the logits run under a
   second TorchDispatchMode that computes nothing: view ops, ops returning host values and
   data-dependent ops run for real; in-place and out= ops return the argument they would write;
   every other op returns torch.empty_strided outputs with the shapes/strides/dtypes the real
   kernel gives, cached per (op, argument metadata) from the op's Meta kernel (or one real run
   where it has none). Ints and int lists that change every step (sequence lengths passed as
   host lists) would miss that cache each step, so an op is matched by a looser key (ints by
   kind, int lists by length) once three different values gave the same output metadata; after
   5 warm-up steps no op misses (the JSON has the misses per step). "forward ms (fake)" is then
   host time only: the Python of the model, its layers, vLLM's and the plugin's glue, with the
   fake mode's dispatch in place of each kernel launch. The mode's own cost per op is measured
   on trivial ops (a cached fresh op, an in-place op, a view; the same code and torch in both
   venvs, so the smaller of the two measurements is used) and the table splits the forward into
   ops x that cost and the rest, the framework's Python. "engine step ms (fake forward)" is the
   whole engine step around it; the scheduler, input preparation, sampler and output handling
   run for real (small kernels at this size, but real). The "(real)" columns, every kernel run,
   are for reference only: on a loaded 2-core host they mostly measure CPU contention (the
   peer's CPU worker binds OpenMP threads to cores). The plugin runs its linear layers as an NPU
   would, one F.linear each: the CPU backend's own GEMM methods (device/cpu_linear.py, several
   ops per layer in bfloat16) never run on an NPU, so its real bf16 forward at batch 16 is slower
   here than in the offline benchmark. ratio = peer ms / plugin ms: >= 1.0 means the plugin's
   host path is leaner; it is given on medians and on minima (the least disturbed step) of 20
   steps timed one by one, as other work on a shared machine inflates the tails.

    .venv/bin/python benchmarks/bench_npu_path.py [--batch-sizes 1,16]
"""

from __future__ import annotations

import sys
import time

sys.path.insert(0, __import__("os").path.dirname(__file__))
import _common as C  # noqa: E402

WORKER = C.BENCH_DIR / "_npu_path_worker.py"

# Qwen2.5-7B-Instruct's structure, toy dimensions (see the module docstring).
QWEN2_CONFIG = dict(
    hidden_size=448,
    intermediate_size=2368,
    num_hidden_layers=4,
    num_attention_heads=7,
    num_key_value_heads=1,
    max_position_embeddings=4096,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    tie_word_embeddings=False,
    use_sliding_window=False,
)

DEFAULTS = dict(batch_sizes=[1, 16], prompt_len=8, warmup_steps=3, count_steps=3,
                fake_warmup_steps=5, time_steps=20, micro_ops=2000)


def build_qwen2_checkpoint():
    """The toy Qwen2 checkpoint (``QWEN2_CONFIG``) with the test suite's tokenizer."""
    return C.build_bench_checkpoint("qwen2-npu-path", "Qwen2", QWEN2_CONFIG)


def run(batch_sizes=None, dtype="bfloat16") -> dict:
    spec = dict(DEFAULTS, model=str(build_qwen2_checkpoint()), dtype=dtype,
                kv_cache_memory_bytes=256 * 2**20, max_model_len=256, block_size=128, seed=0)
    if batch_sizes:
        spec["batch_sizes"] = batch_sizes
    raw = {}
    for eng in C.engines():
        t0 = time.perf_counter()
        print(f"  npu path: {eng.name} ...", file=sys.stderr, flush=True)
        raw[eng.name] = C.run_worker(eng, spec, f"npu_path-{eng.name}", timeout=600,
                                     worker=WORKER)
        print(f"  npu path: {eng.name} done in {time.perf_counter() - t0:.0f}s",
              file=sys.stderr, flush=True)
    return {"spec": spec, "engines": raw}


# ---- rendering --------------------------------------------------------------------------------


def _steady_layer(per_layer: list[dict]) -> dict:
    """Mean launches by op over layers 1..L-1 (all of them with a single layer)."""
    layers = per_layer[1:] or per_layer
    ops = sorted({op for layer in layers for op in layer})
    return {op: sum(layer.get(op, 0) for layer in layers) / len(layers) for op in ops}


def _num(x: float) -> str:
    return f"{x:.0f}" if abs(x - round(x)) < 1e-9 else f"{x:.2f}"


def _site(frames: list[str] | None) -> str:
    """The innermost frame as path:line."""
    return frames[-1].split(" ")[0] if frames else ""


def _ops_table(res: dict, b: int) -> str:
    eng = res["engines"]
    names = list(eng)
    per = {n: eng[n]["batches"][b]["counted"] for n in names}
    layer = {n: _steady_layer(per[n]["per_layer"]) for n in names}
    ops = sorted({op for n in names for op in layer[n]},
                 key=lambda op: (-max(layer[n].get(op, 0) for n in names), op))
    rows = [[op] + [_num(layer[n].get(op, 0)) for n in names]
            + [_site(per[n]["op_where"].get(f"layer {op}")) for n in names] for op in ops]
    blank = [""] * len(names)
    rows.append(["total per decoder layer"] + [_num(sum(layer[n].values())) for n in names]
                + blank)
    rows.append(["layer 0 (no residual to add yet)"]
                + [_num(sum(per[n]["per_layer"][0].values())) for n in names] + blank)
    labels = {"model": "per step, model outside the layers", "logits": "per step, logits",
              "sampler": "per step, sampler", "runner": "per step, runner (inputs, outputs)"}
    for region, label in labels.items():
        rows.append([label] + [_num(sum(per[n]["by_region"][region].values())) for n in names]
                    + blank)
    rows.append(["per step, all launches"]
                + [_num(sum(sum(x.values()) for x in per[n]["per_layer"])
                        + sum(sum(x.values()) for x in per[n]["by_region"].values()))
                   for n in names] + blank)
    batch = eng[names[0]]["batches"][b]["batch"]
    layers = eng[names[0]]["num_layers"]
    title = (f"Device ops launched per decoder layer per decode step, by op (decode batch "
             f"{batch}; eager; {layers}-layer toy Qwen2.5-7B; mean of layers 1-{layers - 1}; "
             "views, allocations and host-only ops excluded)")
    return C.table(["op"] + names + [f"{n}: where" for n in names], rows, title)


def _regions_table(res: dict, b: int = 0) -> str:
    """Launches per decode step outside the decoder layers, by region and op."""
    eng = res["engines"]
    names = list(eng)
    per = {n: eng[n]["batches"][b]["counted"] for n in names}
    rows = []
    for region in ("model", "logits", "sampler", "runner"):
        ops = sorted({op for n in names for op in per[n]["by_region"][region]},
                     key=lambda op: (-max(per[n]["by_region"][region].get(op, 0)
                                          for n in names), op))
        for op in ops:
            rows.append([region, op] + [_num(per[n]["by_region"][region].get(op, 0))
                                        for n in names]
                        + [_site(per[n]["op_where"].get(f"{region} {op}")) for n in names])
    batch = eng[names[0]]["batches"][b]["batch"]
    title = (f"Device ops launched per decode step outside the decoder layers, by part of the "
             f"step and op (decode batch {batch})")
    return C.table(["part", "op"] + names + [f"{n}: where" for n in names], rows, title)


def _syncs_table(res: dict) -> str:
    eng = res["engines"]
    names = list(eng)
    rows = []
    for b, batch in enumerate(eng[names[0]]["batches"]):
        for n in names:
            c = eng[n]["batches"][b]["counted"]
            rows.append([batch["batch"], n, _num(sum(c["syncs"].values())), "(total)", ""])
            for k, v in sorted(c["syncs"].items()):
                rows.append(["", "", _num(v), k, _site(c["sync_where"].get(k))])
            for k, v in sorted(c["async_d2h"].items()):
                rows.append(["", "", f"({_num(v)})", k + " [not a wait]",
                             _site(c["async_where"].get(k))])
    title = ("Host synchronisations per decode step (whole engine step; zero is the goal; "
             "where = innermost vLLM/vllm-ascend frame of the first occurrence)")
    return C.table(["batch", "engine", "per step", "kind", "where"], rows, title)


def _sync_stacks(res: dict) -> str:
    lines = ["Their stacks (innermost last):"]
    for n, e in res["engines"].items():
        seen = set()
        for batch in e["batches"]:
            c = batch["counted"]
            for k, frames in list(c["sync_where"].items()) + list(c["async_where"].items()):
                if k not in seen:
                    seen.add(k)
                    lines.append(f"  {n}: {k}")
                    lines.extend(f"      {f}" for f in frames)
    return "\n".join(lines)


def mode_cost(res: dict) -> dict:
    """The fake mode's µs per op: the same code under the same torch in both venvs, so the
    least disturbed (smallest) of the engines' measurements."""
    costs = [e["mode_cost_us_inference"] for e in res["engines"].values()]
    return {k: min(c[k] for c in costs) for k in costs[0]}


def fake_rows(res: dict) -> list[dict]:
    """Per batch and engine: fake forward ms, op count, ops x mode cost, the rest."""
    out = []
    cost = mode_cost(res)
    for n, e in res["engines"].items():
        for r in e["batches"]:
            counts = r["fake"]["ops_per_step"]
            views = counts.get("real (view / host value)", 0)
            inplace = counts.get("faked in-place", 0)
            fresh = counts.get("faked", 0) + counts.get("faked (loose key)", 0)
            resolved = sum(v for k, v in counts.items() if k.startswith("resolved"))
            ops_ms = (fresh * cost["fresh op (add)"] + inplace * cost["in-place op (add_)"]
                      + views * cost["view op (view)"]) / 1e3
            fwd = r["fake"]["forward_ms"]
            out.append({"batch": r["batch"], "engine": n, "forward_ms": fwd,
                        "ops": fresh + inplace + views + resolved, "resolved": resolved,
                        "ops_ms": ops_ms, "rest_ms": fwd["median"] - ops_ms,
                        "rest_ms_min": fwd["min"] - ops_ms, "step_ms": r["fake"]["step_ms"],
                        "real_forward_ms": r["real"]["forward_ms"],
                        "real_step_ms": r["real"]["step_ms"]})
    return out


def _fake_table(res: dict) -> str:
    eng = res["engines"]
    rows_by = {(r["batch"], r["engine"]): r for r in fake_rows(res)}
    rows = []
    for batch in [r["batch"] for r in eng[next(iter(eng))]["batches"]]:
        for n in eng:
            r = rows_by[(batch, n)]
            rows.append([batch, n, C.fmt_stat(r["forward_ms"], 2), _num(r["ops"]),
                         f"{r['ops_ms']:.2f}", f"{r['rest_ms']:.2f}", C.fmt_stat(r["step_ms"], 2),
                         f"{r['real_forward_ms']['median']:.2f}",
                         f"{r['real_step_ms']['median']:.2f}"])
        p, q = rows_by.get((batch, "plugin")), rows_by.get((batch, "peer"))
        if p and q:
            rows.append(["", "peer/plugin",
                         f"{C.ratio(q['forward_ms']['median'], p['forward_ms']['median']):.2f}"
                         f" (min {C.ratio(q['forward_ms']['min'], p['forward_ms']['min']):.2f})",
                         "", "", f"{C.ratio(q['rest_ms'], p['rest_ms']):.2f}"
                         f" (min {C.ratio(q['rest_ms_min'], p['rest_ms_min']):.2f})",
                         f"{C.ratio(q['step_ms']['median'], p['step_ms']['median']):.2f}"
                         f" (min {C.ratio(q['step_ms']['min'], p['step_ms']['min']):.2f})",
                         "", ""])
    c = mode_cost(res)
    title = ("Host ms per decode step with every kernel of the model forward and logits faked "
             "(shape only; median [min-max] of 20 steps; peer/plugin >= 1.0: the plugin's host "
             "path is leaner; fake-mode cost per op, fresh / in-place / view: "
             f"{c['fresh op (add)']:.1f} / {c['in-place op (add_)']:.1f} / "
             f"{c['view op (view)']:.1f} us)")
    return C.table(["batch", "engine", "forward ms (fake)", "ops/forward", "ops x op cost",
                    "rest: framework", "engine step ms (fake forward)", "forward ms (real)",
                    "step ms (real)"], rows, title)


def render(res: dict) -> str:
    eng = res["engines"]
    head = "\n".join(f"{n}: {e['runner']}, attention {', '.join(e['attention_backend'])}, "
                      f"async scheduling {'on' if e['async_scheduling'] else 'off'}, start-up "
                      f"{e['startup_s']:.0f}s, worker {e['wall_s']:.0f}s"
                      for n, e in eng.items())
    parts = [head]
    for b in range(len(eng[next(iter(eng))]["batches"])):
        parts.append(_ops_table(res, b))
    parts += [_regions_table(res), _syncs_table(res), _sync_stacks(res), _fake_table(res)]
    misses = [f"{r['engine']} batch {r['batch']}: {r['resolved']:g}" for r in fake_rows(res)
              if r["resolved"]]
    if misses:
        parts[-1] += ("\nfake-kernel cache misses per timed step (op resolved again, costing "
                      "more than a fake op): " + "; ".join(misses))
    return "\n\n".join(parts)


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", default=None)
    args = ap.parse_args()
    sizes = [int(x) for x in args.batch_sizes.split(",")] if args.batch_sizes else None
    t0 = time.perf_counter()
    res = run(sizes)
    print(render(res))
    path = C.write_json("npu_path.json", {"machine": C.machine_info(), "npu_path": res})
    print(f"wrote {path} ({time.perf_counter() - t0:.0f}s)")


if __name__ == "__main__":
    main()
