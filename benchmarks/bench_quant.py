#!/usr/bin/env python
"""Weight bytes and decode tokens/s of each quantization scheme against bfloat16 weights, on
the CPU backend, in the same run.

Model: tests/checkpoints.py's ``llama_wide`` (2 layers, hidden 1024, MLP 4096: 30M parameters,
so the linear layers dominate a step), and its quantized copies from tests/quant_checkpoints.py
(msModelSlim W8A8, W8A8_DYNAMIC, W8A16; compressed-tensors W8A8 dynamic). Every run is in
bfloat16 (the quantized ones dequantize to it), each a fresh engine in a subprocess
(bench_parallel.measure): N=8 random 16-token prompts, greedy; decode tok/s as bench_parallel.
On the CPU backend the quantized matmuls are the reference implementations of the NPU ops
(int8 x int8 -> int32 through torch._int_mm), so the speed column is the CPU backend's, not a
prediction for the NPU; the weight bytes are what an NPU holds too.

    .venv/bin/python benchmarks/bench_quant.py
"""

from __future__ import annotations

import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]
import _common as C  # noqa: E402
from bench_parallel import measure  # noqa: E402

BASE = "llama_wide"
SCHEMES = ["bf16", "W8A8", "W8A8_DYNAMIC", "W8A16", "ct_w8a8_dynamic"]


def run() -> dict:
    from checkpoints import build_checkpoint
    from quant_checkpoints import build_quant_checkpoint

    rows = []
    for scheme in SCHEMES:
        path = build_checkpoint(BASE) if scheme == "bf16" else build_quant_checkpoint(BASE, scheme)
        result = measure(path, {"dtype": "bfloat16", "enforce_eager": False},
                         f"quant: {BASE} {scheme}")
        rows.append({"scheme": scheme, **result})
    bf16 = rows[0]
    for row in rows:
        row["weights_vs_bf16"] = C.ratio(row["weight_bytes"], bf16["weight_bytes"])
        row["speed_vs_bf16"] = C.ratio(row["decode_tok_s"]["median"],
                                       bf16["decode_tok_s"]["median"])
    return {"rows": rows}


def render(res: dict) -> str:
    rows = [[r["scheme"], f"{r['weight_bytes'] / 2**20:.1f}", f"{r['weights_vs_bf16']:.2f}",
             C.fmt_stat(r["decode_tok_s"], 0), f"{r['speed_vs_bf16']:.2f}"]
            for r in res["rows"]]
    return C.table(["scheme", "weights MiB", "vs bf16", "decode tok/s", "vs bf16"], rows,
                   f"Quantized {BASE} on the plugin's CPU backend (bf16 activations; decode "
                   "tok/s median [min-max] of 3)")


def main() -> None:
    res = run()
    print(render(res))
    print(f"wrote {C.write_json('quant.json', {'quant': res})}")


if __name__ == "__main__":
    main()
