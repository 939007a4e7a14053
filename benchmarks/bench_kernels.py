"""Micro-benchmark of the _C_ascend CPU kernels against plain PyTorch (not a test).

    python benchmarks/bench_kernels.py [--threads N] [--iters N]

For each op prints the median time of the kernel and of the eager PyTorch formulation of the
same computation (vLLM's forward_native-style code), at decode-like and prefill-like sizes, and
the speed-up (reference / kernel).
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch

from vllm_ascend.kernels.extension import load


def bench(fn, iters: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ---- plain PyTorch references -------------------------------------------------------------------
def rope_ref(positions, q, k, head_size, cache, is_neox):
    t = positions.numel()
    cos, sin = cache.index_select(0, positions).chunk(2, dim=-1)
    rot = cache.shape[1]

    def apply(x):
        shape = x.shape
        x = x.view(t, -1, head_size)
        xr, xp = x[..., :rot], x[..., rot:]
        c, s = cos.unsqueeze(-2), sin.unsqueeze(-2)
        if is_neox:
            x1, x2 = xr.chunk(2, dim=-1)
            out = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
        else:
            x1, x2 = xr[..., ::2], xr[..., 1::2]
            out = torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).flatten(-2)
        return torch.cat((out, xp), dim=-1).reshape(shape)

    return apply(q), apply(k)


def mask_ref(ids, org_start, org_end, pad, added_start, added_end):
    org = (ids >= org_start) & (ids < org_end)
    added = (ids >= added_start) & (ids < added_end)
    offset = org_start * org + (added_start - (org_end - org_start) - pad) * added
    valid = org | added
    return valid * (ids - offset), ~valid


def add_rms_norm_quant_ref(x, residual, weight, eps):
    # Unfused W8A8 decode path: add + RMSNorm (bf16 out), then per-token dynamic int8 quant.
    s = x.float() + residual.float()
    new_residual = s.to(x.dtype)
    normed = (s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight
    nf = normed.float()
    scale = nf.abs().amax(-1, keepdim=True) / 127.0
    q = torch.round(nf / scale).clamp(-128, 127).to(torch.int8)
    return q, scale.squeeze(-1), new_residual


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    module = load(require_npu_kernels=False)
    ops = torch.ops._C_ascend
    dt = torch.bfloat16
    print(f"threads={torch.get_num_threads()}  cpu kernels={module.CPU_KERNEL_ISA}  dtype={dt}")
    print(f"{'op':<28}{'shape':<34}{'kernel us':>11}{'torch us':>11}{'speed-up':>10}")

    def row(name, shape, t_k, t_r):
        print(f"{name:<28}{shape:<34}{t_k * 1e6:>11.1f}{t_r * 1e6:>11.1f}{t_r / t_k:>9.2f}x")

    # Llama-3-8B-like attention: 32 q heads, 8 kv heads, head 128, full rotary, neox.
    nq, nk, hs = 32, 8, 128
    cache = torch.randn(16384, hs, dtype=dt)
    for tokens in (8, 64, 2048, 8192):
        iters = args.iters if tokens <= 2048 else max(3, args.iters // 4)
        pos = torch.randint(0, 16384, (tokens,))
        q = torch.randn(tokens, nq * hs, dtype=dt)
        k = torch.randn(tokens, nk * hs, dtype=dt)
        t_k = bench(partial(ops.rotary_embedding, pos, q, k, hs, cache, True), iters)
        t_r = bench(partial(rope_ref, pos, q, k, hs, cache, True), iters)
        row("rotary_embedding (neox)", f"T={tokens} q32 k8 hs128", t_k, t_r)
    for tokens in (8, 2048):
        pos = torch.randint(0, 16384, (tokens,))
        q = torch.randn(tokens, nq * hs, dtype=dt)
        k = torch.randn(tokens, nk * hs, dtype=dt)
        t_k = bench(partial(ops.rotary_embedding, pos, q, k, hs, cache, False), args.iters)
        t_r = bench(partial(rope_ref, pos, q, k, hs, cache, False), args.iters)
        row("rotary_embedding (gptj)", f"T={tokens} q32 k8 hs128", t_k, t_r)

    for tokens in (8, 64, 2048, 8192):
        ids = torch.randint(0, 160000, (tokens,))
        shard = (64000, 128000, 0, 152064, 152064)
        t_k = bench(partial(ops.get_masked_input_and_mask, ids, *shard), args.iters)
        t_r = bench(partial(mask_ref, ids, *shard), args.iters)
        row("get_masked_input_and_mask", f"T={tokens}", t_k, t_r)

    hidden = 4096
    w = torch.ones(hidden, dtype=dt)
    for tokens in (8, 64, 2048, 8192):
        iters = args.iters if tokens <= 2048 else max(3, args.iters // 4)
        x = torch.randn(tokens, hidden, dtype=dt)
        r = torch.randn(tokens, hidden, dtype=dt)
        t_k = bench(partial(ops.add_rms_norm_dynamic_quant, x, r, w, 1e-6), iters)
        t_r = bench(partial(add_rms_norm_quant_ref, x, r, w, 1e-6), iters)
        row("add_rms_norm_dynamic_quant", f"T={tokens} hidden={hidden}", t_k, t_r)


if __name__ == "__main__":
    main()
