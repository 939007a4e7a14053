"""On an Ascend host: each NPU kernel the plugin calls equals its CPU implementation (the golden
reference) on the same inputs. The dispatcher picks the kernel from the tensors' device, so the
same call runs both. Skipped without an NPU (marker ``npu``)."""

from __future__ import annotations

import pytest
import torch

import vllm_ascend.kernels as kernels

pytestmark = pytest.mark.npu


@pytest.fixture(scope="module", autouse=True)
def _loaded():
    kernels.load()


def both(fn, *args, **kwargs):
    """Run fn on CPU tensors and on their NPU copies; return (cpu, npu-on-cpu) outputs."""
    to_npu = [a.to("npu") if isinstance(a, torch.Tensor) else a for a in args]
    cpu = fn(*args, **kwargs)
    npu = fn(*to_npu, **kwargs)
    as_cpu = lambda o: o.cpu() if isinstance(o, torch.Tensor) else tuple(x.cpu() for x in o)
    return cpu, as_cpu(npu)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_rms_norm(dtype):
    x, w = torch.randn(37, 4096, dtype=dtype), torch.randn(4096, dtype=dtype)
    (y_cpu, r_cpu), (y_npu, r_npu) = both(torch.ops.npu.npu_rms_norm, x, w, 1e-6)
    torch.testing.assert_close(y_npu, y_cpu, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(r_npu, r_cpu, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_swiglu(dtype):
    x = torch.randn(19, 2 * 1408, dtype=dtype)
    cpu, npu = both(torch.ops.npu.npu_swiglu, x, -1)
    torch.testing.assert_close(npu, cpu, atol=2e-2, rtol=2e-2)


def test_paged_attention_tnd_mixed_batch():
    torch.manual_seed(0)
    heads, kv_heads, d, bs, blocks = 8, 2, 128, 128, 16
    q_lens, kv_lens = [1, 100, 7], [300, 100, 40]
    q = torch.randn(sum(q_lens), heads, d, dtype=torch.bfloat16)
    k = torch.randn(blocks, bs, kv_heads * d, dtype=torch.bfloat16)
    v = torch.randn(blocks, bs, kv_heads * d, dtype=torch.bfloat16)
    table = torch.randperm(blocks, dtype=torch.int32)[:12].reshape(3, 4)
    mask = torch.triu(torch.ones(2048, 2048, dtype=torch.bool), 1)
    cu = torch.tensor(q_lens).cumsum(0).tolist()
    cpu, npu = both(
        lambda q, k, v, table, mask: torch.ops.npu.npu_fused_infer_attention_score(
            q, k, v, atten_mask=mask, actual_seq_lengths=cu, actual_seq_lengths_kv=kv_lens,
            block_table=table, num_heads=heads, scale=d ** -0.5, input_layout="TND",
            num_key_value_heads=kv_heads, sparse_mode=3, block_size=bs, next_tokens=0)[0],
        q, k, v, table, mask)
    torch.testing.assert_close(npu, cpu, atol=2e-2, rtol=2e-2)


def test_scatter_pa_kv_cache_norm():
    key, value = torch.randn(9, 2, 64).half(), torch.randn(9, 2, 64).half()
    slots = torch.randperm(4 * 128)[:9].to(torch.int32)
    results = []
    for dev in ("cpu", "npu"):
        kc = torch.zeros(4, 128, 2, 64, dtype=torch.half, device=dev)
        vc = torch.zeros_like(kc)
        torch.ops.npu.npu_scatter_pa_kv_cache(key.to(dev), value.to(dev), kc, vc,
                                              slots.to(dev), cache_mode="Norm")
        results.append((kc.cpu(), vc.cpu()))
    torch.testing.assert_close(results[1], results[0])


def test_c_ascend_rotary_npu_kernel_matches_cpu():
    from vllm_ascend.kernels import extension

    extension.load()
    pos = torch.randint(0, 4096, (33,))
    q = torch.randn(33, 32 * 128, dtype=torch.bfloat16)
    k = torch.randn(33, 8 * 128, dtype=torch.bfloat16)
    cache = torch.randn(4096, 128, dtype=torch.bfloat16)
    outs = []
    for dev in ("cpu", "npu"):
        qd, kd = q.to(dev), k.to(dev)
        torch.ops._C_ascend.rotary_embedding(pos.to(dev), qd, kd, 128, cache.to(dev), True)
        outs.append((qd.cpu(), kd.cpu()))
    torch.testing.assert_close(outs[1], outs[0], atol=2e-2, rtol=2e-2)
