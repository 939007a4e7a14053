"""npu_scatter_pa_kv_cache and npu_top_k_top_p against references written with loops."""

from __future__ import annotations

import math

import pytest
import torch

import vllm_ascend.kernels.npu_ops  # noqa: F401

# Each test runs through the fast C++ CPU kernels and through the Python references.
pytestmark = pytest.mark.usefixtures("cpu_kernel_impl")

SCATTER = torch.ops.npu.npu_scatter_pa_kv_cache


@pytest.mark.parametrize("block_size", [16, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_scatter_norm(block_size, dtype):
    t, n, dk, dv, nb = 10, 2, 8, 4, 3
    g = torch.Generator().manual_seed(0)
    key = torch.randn(t, n, dk, generator=g).to(dtype)
    value = torch.randn(t, n, dv, generator=g).to(dtype)
    slots = torch.randperm(nb * block_size, generator=g)[:t].to(torch.int32)
    kc = torch.zeros(nb, block_size, n, dk, dtype=dtype)
    vc = torch.zeros(nb, block_size, n, dv, dtype=dtype)
    assert SCATTER(key, value, kc, vc, slots, cache_mode="Norm") is None
    ek, ev = torch.zeros_like(kc), torch.zeros_like(vc)
    for i in range(t):
        s = int(slots[i])
        ek[s // block_size, s % block_size] = key[i]
        ev[s // block_size, s % block_size] = value[i]
    assert torch.equal(kc, ek) and torch.equal(vc, ev)


@pytest.mark.parametrize("block_size", [16, 128])
def test_scatter_pa_nz(block_size):
    """Scenario 1: cache [num_blocks, N*D // last_dim, block_size, last_dim]."""
    t, n, dk, dv, nb, last = 7, 4, 32, 64, 2, 16
    g = torch.Generator().manual_seed(1)
    key = torch.randn(t, n, dk, generator=g).half()
    value = torch.randn(t, n, dv, generator=g).half()
    slots = torch.randperm(nb * block_size, generator=g)[:t]
    kc = torch.zeros(nb, n * dk // last, block_size, last, dtype=torch.half)
    vc = torch.zeros(nb, n * dv // last, block_size, last, dtype=torch.half)
    SCATTER(key, value, kc, vc, slots)  # default cache_mode 'PA_NZ'
    ek, ev = torch.zeros_like(kc), torch.zeros_like(vc)
    for i in range(t):
        s = int(slots[i])
        blk, off = s // block_size, s % block_size
        kf, vf = key[i].reshape(-1), value[i].reshape(-1)
        for h in range(kf.numel()):
            ek[blk, h // last, off, h % last] = kf[h]
        for h in range(vf.numel()):
            ev[blk, h // last, off, h % last] = vf[h]
    assert torch.equal(kc, ek) and torch.equal(vc, ev)


def test_scatter_rejects_compress_and_bad_inputs():
    key = torch.randn(2, 1, 8)
    kc = torch.zeros(1, 16, 1, 8)
    slots = torch.tensor([0, 1], dtype=torch.int32)
    with pytest.raises(NotImplementedError, match="compress_lens"):
        SCATTER(key, key, kc, kc.clone(), slots, compress_lens=slots, cache_mode="Norm")
    with pytest.raises(NotImplementedError, match="4-D"):
        SCATTER(key[None], key[None], kc, kc.clone(), slots, cache_mode="Norm")
    with pytest.raises(TypeError):
        SCATTER(key.half(), key.half(), kc, kc.clone(), slots, cache_mode="Norm")
    with pytest.raises(IndexError):
        SCATTER(key, key, kc, kc.clone(), torch.tensor([0, 16]), cache_mode="Norm")
    with pytest.raises(ValueError, match="cache_mode"):
        SCATTER(key, key, kc, kc.clone(), slots, cache_mode="XYZ")


def ref_top_k_top_p(logits, p, k):
    """Per row, in float64: keep the k largest (ties with the k-th kept); then walk from the
    smallest kept probability upwards dropping while the running mass stays <= 1 - p, never
    dropping the largest."""
    out = torch.empty(logits.shape, dtype=torch.float64)
    for b in range(logits.shape[0]):
        row = [float(x) for x in logits[b]]
        order = sorted(range(len(row)), key=lambda i: (row[i], i))  # ascending, stable
        keep = [True] * len(row)
        if k is not None:
            kth = row[order[len(row) - int(k[b])]]
            keep = [x >= kth for x in row]
        if p is not None:
            m = max(row[i] for i in range(len(row)) if keep[i])
            z = sum(math.exp(row[i] - m) for i in range(len(row)) if keep[i])
            running = 0.0
            for pos, i in enumerate(order):
                if not keep[i]:
                    continue
                running += math.exp(row[i] - m) / z
                if running <= 1 - float(p[b]) and pos != len(order) - 1:
                    keep[i] = False
        for i in range(len(row)):
            out[b, i] = row[i] if keep[i] else float("-inf")
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("use_p,use_k", [(True, True), (True, False), (False, True)])
def test_top_k_top_p(dtype, use_p, use_k):
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(6, 50, generator=g) * 2).to(dtype)
    p = torch.tensor([0.9, 0.5, 0.1, 1.0, 0.73, 0.0]).to(dtype) if use_p else None
    k = torch.tensor([1, 5, 50, 10, 3, 7], dtype=torch.int32) if use_k else None
    out = torch.ops.npu.npu_top_k_top_p(logits, p, k)
    ref = ref_top_k_top_p(logits, p, k)
    assert out.dtype == dtype and out.shape == logits.shape
    assert torch.equal(torch.isinf(out), torch.isinf(ref)), (torch.isinf(out) != torch.isinf(ref))
    kept = ~torch.isinf(ref)
    assert torch.equal(out.double()[kept], ref[kept])


def test_top_k_ties_are_kept_and_p_keeps_one():
    logits = torch.tensor([[1.0, 3.0, 3.0, 2.0], [0.0, 0.0, 5.0, 1.0]])
    out = torch.ops.npu.npu_top_k_top_p(logits, None, torch.tensor([1, 4], dtype=torch.int32))
    assert torch.isinf(out[0]).tolist() == [True, False, False, True]
    out = torch.ops.npu.npu_top_k_top_p(logits, torch.tensor([0.0, 0.0]), None)
    assert (~torch.isinf(out)).sum(dim=1).tolist() == [1, 1]


def test_top_k_top_p_needs_one_filter():
    with pytest.raises(ValueError):
        torch.ops.npu.npu_top_k_top_p(torch.randn(2, 4))
