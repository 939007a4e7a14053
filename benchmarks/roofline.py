#!/usr/bin/env python
"""NPU roofline for LLM serving on an Ascend 910B: what the hardware allows, beside what
vllm-ascend is published to reach.

Decode: every step reads all weights once (shared by the batch) plus each sequence's KV cache,
and writes one token of KV per sequence; it is bound by HBM bandwidth until the batch is large
enough for the matmuls to hit the compute peak:
    t_step >= max(bytes_step / HBM_BW, flops_step / PEAK)        tokens/s <= batch / t_step
Prefill of N prompt tokens is bound by compute (and, for short prompts, by reading the weights):
    TTFT >= max(flops_prefill / PEAK, weight_bytes / HBM_BW)

Nothing here touches a device or the hub: the model config is hard-coded and the part figures
are published peak numbers, so this runs anywhere (and in `make bench`).

    .venv/bin/python benchmarks/roofline.py [--part 910B3] [--input-len 128] [--output-len 128]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelConfig:
    name: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    qkv_bias: bool
    tie_word_embeddings: bool

    def params(self) -> dict[str, int]:
        h, i, hd = self.hidden_size, self.intermediate_size, self.head_dim
        q, kv = self.num_heads * hd, self.num_kv_heads * hd
        attn = h * q + 2 * h * kv + q * h + ((q + 2 * kv) if self.qkv_bias else 0)
        mlp = 3 * h * i  # gate, up, down
        norms = 2 * h
        layer = attn + mlp + norms
        embed = self.vocab_size * h
        lm_head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return {"per_layer": layer, "layers": layer * self.num_layers, "embed": embed,
                "lm_head": lm_head, "final_norm": h,
                "total": layer * self.num_layers + embed + lm_head + h}

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes


# Qwen2.5-7B-Instruct, values from its config.json (hard-coded: no hub access here).
QWEN25_7B = ModelConfig(
    name="Qwen2.5-7B-Instruct", hidden_size=3584, intermediate_size=18944, num_layers=28,
    num_heads=28, num_kv_heads=4, head_dim=128, vocab_size=152064, qkv_bias=True,
    tie_word_embeddings=False,
)


@dataclass(frozen=True)
class Part:
    name: str
    hbm_gb: int
    hbm_bw_gbs: float  # GB/s (1e9 bytes)
    fp16_tflops: float  # dense fp16/bf16 peak


# Ascend 910B variants (one NPU each). Huawei publishes no per-variant datasheet; these are the
# figures repeated in public spec tables of the Atlas 800T A2 / 800I A2 parts (e.g. Huawei's
# Ascend 910B product brief as reproduced by the Gitee AI "Ascend 910B" compute-cluster
# documentation: 280 TFLOPS FP16, 64 GB HBM2e) and in press coverage of the B1-B4 bins.
# Bandwidths in particular vary between sources (0.4-1.8 TB/s are quoted for "910B"); treat
# every bound below as +-20 % and pass --part/--bw/--tflops to use other figures.
PARTS = {
    "910B1": Part("910B1", 64, 1600.0, 414.0),
    "910B2": Part("910B2", 64, 1600.0, 376.0),
    "910B3": Part("910B3", 64, 1600.0, 313.0),
    "910B4": Part("910B4", 32, 800.0, 280.0),
}

# Published vllm-ascend results for Qwen2.5-7B-Instruct on one 910B (bf16), as given in the
# issue: single request decode, dynamic batch of 8, and TTFT for a 128-token prompt.
PUBLISHED = {"decode_tok_s": {1: 35.0, 8: 280.0}, "ttft_ms_128": 120.0}


def decode_bound(model: ModelConfig, part: Part, batch: int, context: int,
                 dtype_bytes: int = 2) -> dict:
    p = model.params()
    # The embedding lookup reads `batch` rows only; the LM head reads its whole matrix.
    weight_bytes = (p["layers"] + p["final_norm"] + p["lm_head"]
                    + (p["embed"] if model.tie_word_embeddings else 0)) * dtype_bytes
    weight_bytes += batch * model.hidden_size * dtype_bytes
    kv_tok = model.kv_bytes_per_token(dtype_bytes)
    kv_bytes = batch * (context * kv_tok + kv_tok)  # read the cache, write the new token
    matmul_params = p["layers"] + (p["lm_head"] or p["embed"])
    attn_flops = 4 * model.num_layers * model.num_heads * model.head_dim * context
    flops = batch * (2 * matmul_params + attn_flops)
    t_mem = (weight_bytes + kv_bytes) / (part.hbm_bw_gbs * 1e9)
    t_compute = flops / (part.fp16_tflops * 1e12)
    t = max(t_mem, t_compute)
    return {"batch": batch, "context": context, "weight_gb": weight_bytes / 1e9,
            "kv_gb": kv_bytes / 1e9, "t_mem_ms": t_mem * 1e3, "t_compute_ms": t_compute * 1e3,
            "bound": "memory" if t_mem >= t_compute else "compute",
            "step_ms": t * 1e3, "tok_s": batch / t}


def prefill_bound(model: ModelConfig, part: Part, tokens: int, dtype_bytes: int = 2) -> dict:
    p = model.params()
    # Every prompt token goes through the layers; the LM head runs for the last token only.
    linear = 2 * p["layers"] * tokens + 2 * (p["lm_head"] or p["embed"])
    # Causal attention: QK^T and PV over on average tokens/2 keys per query.
    attn = 2 * 2 * model.num_layers * model.num_heads * model.head_dim * tokens * tokens / 2
    flops = linear + attn
    weight_bytes = (p["layers"] + p["lm_head"]) * dtype_bytes
    t_compute = flops / (part.fp16_tflops * 1e12)
    t_mem = weight_bytes / (part.hbm_bw_gbs * 1e9)
    return {"tokens": tokens, "tflop": flops / 1e12, "t_compute_ms": t_compute * 1e3,
            "t_mem_ms": t_mem * 1e3, "ttft_ms": max(t_compute, t_mem) * 1e3,
            "bound": "compute" if t_compute >= t_mem else "memory"}


def run(part_name: str = "910B3", input_len: int = 128, output_len: int = 128,
        batches=(1, 2, 4, 8, 16, 32, 64, 128, 256), bw: float | None = None,
        tflops: float | None = None, model: ModelConfig = QWEN25_7B) -> dict:
    part = PARTS[part_name]
    if bw or tflops:
        part = Part(part.name + "*", part.hbm_gb, bw or part.hbm_bw_gbs,
                    tflops or part.fp16_tflops)
    context = input_len + output_len // 2  # mean context over the decode phase
    curve = [decode_bound(model, part, b, context) for b in batches]
    pre = prefill_bound(model, part, input_len)
    compare = []
    for b, published in PUBLISHED["decode_tok_s"].items():
        bound = decode_bound(model, part, b, context)
        compare.append({"what": f"decode tok/s, batch {b}", "published": published,
                        "bound": bound["tok_s"], "fraction_of_bound": published / bound["tok_s"],
                        "gap_x": bound["tok_s"] / published})
    compare.append({"what": f"TTFT ms, {input_len} input tokens",
                    "published": PUBLISHED["ttft_ms_128"], "bound": pre["ttft_ms"],
                    "fraction_of_bound": pre["ttft_ms"] / PUBLISHED["ttft_ms_128"],
                    "gap_x": PUBLISHED["ttft_ms_128"] / pre["ttft_ms"]})
    # Batch at which decode turns compute-bound (the ridge point).
    ridge = next((c["batch"] for c in (decode_bound(model, part, b, context)
                                        for b in range(1, 4097)) if c["bound"] == "compute"),
                 None)
    params = model.params()
    variants = []
    for v in PARTS.values():
        variants.append({
            "part": v.name, "hbm_bw_gbs": v.hbm_bw_gbs, "fp16_tflops": v.fp16_tflops,
            "tok_s_b1": decode_bound(model, v, 1, context)["tok_s"],
            "tok_s_b8": decode_bound(model, v, 8, context)["tok_s"],
            "ttft_ms": prefill_bound(model, v, input_len)["ttft_ms"],
        })
    return {"variants": variants, "model": asdict(model), "params": params, "part": asdict(part),
            "input_len": input_len, "output_len": output_len, "mean_context": context,
            "decode_curve": curve, "prefill": pre, "compare": compare, "ridge_batch": ridge,
            "kv_bytes_per_token": model.kv_bytes_per_token(2),
            "max_batch_fitting_hbm": int((part.hbm_gb * 1e9 * 0.9 - params["total"] * 2)
                                         / (model.kv_bytes_per_token(2)
                                            * (input_len + output_len)))}


def render(res: dict) -> str:
    sys.path.insert(0, os.path.dirname(__file__))
    from _common import table

    part, m = res["part"], res["model"]
    head = (f"Roofline: {m['name']} ({res['params']['total'] / 1e9:.2f} B params, bf16 "
            f"{res['params']['total'] * 2 / 1e9:.1f} GB, KV "
            f"{res['kv_bytes_per_token'] / 1024:.0f} KiB/token) on one {part['name']} "
            f"({part['hbm_bw_gbs'] / 1000:.1f} TB/s HBM, {part['fp16_tflops']:.0f} TFLOPS "
            f"bf16); input {res['input_len']}, output {res['output_len']} "
            f"(mean context {res['mean_context']})")
    rows = [[c["batch"], f"{c['t_mem_ms']:.2f}", f"{c['t_compute_ms']:.2f}", c["bound"],
             f"{c['step_ms']:.2f}", f"{c['tok_s']:.0f}"] for c in res["decode_curve"]]
    t1 = table(["batch", "mem ms", "compute ms", "bound", "step ms", "decode tok/s bound"],
               rows, head)
    pre = res["prefill"]
    t2 = (f"Prefill {pre['tokens']} tokens: {pre['tflop']:.2f} TFLOP -> compute "
          f"{pre['t_compute_ms']:.2f} ms, weight read {pre['t_mem_ms']:.2f} ms; TTFT bound "
          f"{pre['ttft_ms']:.2f} ms ({pre['bound']}-bound). Decode turns compute-bound at "
          f"batch ~{res['ridge_batch']}; ~{res['max_batch_fitting_hbm']} sequences of "
          f"{res['input_len'] + res['output_len']} tokens fit in {part['hbm_gb']} GB.")
    rows = [[c["what"], f"{c['published']:.0f}", f"{c['bound']:.1f}",
             f"{c['fraction_of_bound'] * 100:.0f}%", f"{c['gap_x']:.1f}x"]
            for c in res["compare"]]
    t3 = table(["figure", "published vllm-ascend", "roofline bound", "% of bound", "gap"],
               rows, "Published vllm-ascend figures against the bound")
    pub = PUBLISHED
    rows = [[v["part"], f"{v['hbm_bw_gbs'] / 1000:.1f}", f"{v['fp16_tflops']:.0f}",
             f"{v['tok_s_b1']:.0f} ({pub['decode_tok_s'][1] / v['tok_s_b1'] * 100:.0f}%)",
             f"{v['tok_s_b8']:.0f} ({pub['decode_tok_s'][8] / v['tok_s_b8'] * 100:.0f}%)",
             f"{v['ttft_ms']:.1f} ({v['ttft_ms'] / pub['ttft_ms_128'] * 100:.0f}%)"]
            for v in res["variants"]]
    t4 = table(["part", "HBM TB/s", "bf16 TFLOPS", "tok/s b=1 (published %)",
                "tok/s b=8 (published %)", f"TTFT ms {res['input_len']} tok (published %)"],
               rows, "All 910B variants: bound (published figure as % of it)")
    return "\n\n".join([t1, t2, t3, t4])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", default="910B3", choices=sorted(PARTS))
    ap.add_argument("--bw", type=float, default=None, help="override HBM GB/s")
    ap.add_argument("--tflops", type=float, default=None, help="override bf16 TFLOPS")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = run(args.part, args.input_len, args.output_len, bw=args.bw, tflops=args.tflops)
    print(json.dumps(res, indent=1) if args.json else render(res))


if __name__ == "__main__":
    main()
