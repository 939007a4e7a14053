"""The fast C++ CPU kernels (csrc/cpu/fast_ops.cpp, fast_moe_ops.cpp) against the Python references.

Each case runs the same call through ``torch.ops.npu.<op>`` (the fast kernel) and
``torch.ops.vllm_ascend_ref.<op>`` (the reference), and the fast kernel's counters show it served
the call itself. Calls the fast kernel does not cover reach the reference (counted as such, with
the reference's result or error). The other kernel tests of this directory run every corner case
through both implementations (conftest.py).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import vllm_ascend.kernels.npu_ops  # noqa: F401
from vllm_ascend.kernels import fast_cpu

NPU = torch.ops.npu
REF = torch.ops.vllm_ascend_ref
INT_MAX = 2147483647
MASK = torch.triu(torch.ones(2048, 2048, dtype=torch.bool), diagonal=1)
# fp32: accumulation order only. 16-bit: the same fp32 result may round to a neighbouring value.
ATOL = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _served(op: str, fn):
    """Run fn; return its result and assert the fast kernel of npu::op served every call."""
    before = fast_cpu.counters()[op]
    out = fn()
    fast, ref = fast_cpu.counters()[op]
    assert ref == before[1], f"{op}: the call went to the reference"
    assert fast > before[0], f"{op}: the fast kernel did not run"
    return out


def _close(a: torch.Tensor, b: torch.Tensor, dtype) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    torch.testing.assert_close(a.float(), b.float(), atol=ATOL[dtype], rtol=ATOL[dtype])


def test_installed_on_the_cpu_backend():
    assert fast_cpu.mode() == "fast"
    assert sorted(fast_cpu.counters()) == sorted(fast_cpu.FAST_OPS)


# ---- attention ---------------------------------------------------------------------------------


def _paged_call(dtype, heads, kv_heads, d, q_lens, kv_lens, *, block_size=128, sparse=3,
                pre=INT_MAX, nxt=0, lse=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = len(q_lens)
    need = [-(-n // block_size) for n in kv_lens]
    n_blocks = sum(need) + 2
    q = torch.randn(sum(q_lens), heads, d, generator=g).to(dtype)
    k = torch.randn(n_blocks, block_size, kv_heads * d, generator=g).to(dtype)
    v = torch.randn(n_blocks, block_size, kv_heads * d, generator=g).to(dtype)
    # Shuffled block ids, and a garbage (NaN) tail past every sequence's last token.
    ids = torch.randperm(n_blocks, generator=g).tolist()
    table = torch.full((batch, max(need) + 1), -1, dtype=torch.int32)
    for b, n in enumerate(need):
        for j in range(n):
            table[b, j] = ids.pop()
    for b, n in enumerate(kv_lens):
        if n % block_size:
            blk = int(table[b, n // block_size])
            k[blk, n % block_size:] = float("nan")
            v[blk, n % block_size:] = float("nan")
    cu = [sum(q_lens[: i + 1]) for i in range(batch)]
    kwargs = dict(atten_mask=MASK if sparse else None, actual_seq_lengths=cu,
                  actual_seq_lengths_kv=kv_lens, block_table=table, num_heads=heads,
                  scale=d ** -0.5, pre_tokens=pre, next_tokens=nxt, input_layout="TND",
                  num_key_value_heads=kv_heads, sparse_mode=sparse, block_size=block_size,
                  softmax_lse_flag=lse)
    return (q, k, v), kwargs


ATTENTION_CASES = {
    # name: (heads, kv_heads, d, q_lens, kv_lens, extra)
    "decode-gqa7": (28, 4, 128, [1, 1, 1], [1, 130, 300], {}),
    "mixed-prefix-chunk": (14, 2, 64, [5, 1, 130, 7], [5, 131, 300, 260], {"lse": True}),
    "mha-block256": (4, 4, 128, [3, 9], [3, 700], {"block_size": 256}),
    "window-4": (8, 2, 64, [40, 1], [90, 33], {"sparse": 4, "pre": 3, "lse": True}),
    "window-0": (4, 1, 192, [6], [6], {"sparse": 4, "pre": 0}),
    "empty-q-and-empty-kv": (8, 8, 64, [3, 0, 2], [20, 5, 0], {"lse": True}),
    "no-mask-full": (4, 2, 64, [4, 2], [4, 9], {"sparse": 0, "nxt": INT_MAX}),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", sorted(ATTENTION_CASES))
def test_paged_tnd_attention_matches_reference(case, dtype):
    heads, kv_heads, d, q_lens, kv_lens, extra = ATTENTION_CASES[case]
    args, kwargs = _paged_call(dtype, heads, kv_heads, d, q_lens, kv_lens, **extra)
    out, lse = _served("npu_fused_infer_attention_score",
                       lambda: NPU.npu_fused_infer_attention_score(*args, **kwargs))
    ref_out, ref_lse = REF.npu_fused_infer_attention_score(*args, **kwargs)
    _close(out, ref_out, dtype)
    assert torch.isfinite(out.float()).all()
    assert lse.shape == ref_lse.shape and lse.dtype == torch.float32
    if kwargs["softmax_lse_flag"]:
        torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=1e-5)  # -inf rows equal too


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dense_tnd_encoder_attention_matches_reference(dtype):
    g = torch.Generator().manual_seed(1)
    lens = [5, 1, 17]
    q = torch.randn(sum(lens), 6, 64, generator=g).to(dtype)
    k = torch.randn(sum(lens), 3, 64, generator=g).to(dtype)
    v = torch.randn(sum(lens), 3, 64, generator=g).to(dtype)
    cu = [5, 6, 23]
    kwargs = dict(actual_seq_lengths=cu, actual_seq_lengths_kv=cu, num_heads=6, scale=0.125,
                  input_layout="TND", num_key_value_heads=3, sparse_mode=0)
    out, _ = _served("npu_fused_infer_attention_score",
                     lambda: NPU.npu_fused_infer_attention_score(q, k, v, **kwargs))
    _close(out, REF.npu_fused_infer_attention_score(q, k, v, **kwargs)[0], dtype)


def test_uncovered_attention_call_is_computed_by_the_reference():
    """A BSND decode call (not the engine's TND call): legal, so the reference computes it."""
    g = torch.Generator().manual_seed(2)
    q = torch.randn(2, 1, 4, 64, generator=g)
    k = torch.randn(2, 9, 4, 64, generator=g)
    before = fast_cpu.counters()["npu_fused_infer_attention_score"]
    out, _ = NPU.npu_fused_infer_attention_score(q, k, k, num_heads=4, input_layout="BSND",
                                                 scale=0.125)
    after = fast_cpu.counters()["npu_fused_infer_attention_score"]
    assert after == (before[0], before[1] + 1)
    torch.testing.assert_close(
        out, REF.npu_fused_infer_attention_score(q, k, k, num_heads=4, input_layout="BSND",
                                                 scale=0.125)[0])


@pytest.mark.parametrize("break_it,exc,match", [
    (lambda a, kw: (a[0].transpose(0, 1).contiguous().transpose(0, 1), *a[1:]), ValueError,
     "contiguous"),
    (lambda a, kw: kw.update(block_size=256), ValueError, "block_size"),
    (lambda a, kw: kw["block_table"].__setitem__((1, 0), 99), IndexError, "block ids"),
    (lambda a, kw: kw.update(actual_seq_lengths=[1, 2, 4]), ValueError, "T="),
    (lambda a, kw: kw.update(atten_mask=~MASK), ValueError, "lower-triangular"),
    (lambda a, kw: kw.update(scale=float("inf")), ValueError, "scale"),
])
def test_illegal_attention_calls_raise_the_references_error(break_it, exc, match):
    args, kwargs = _paged_call(torch.float16, 4, 2, 64, [1, 2], [5, 9])
    args = break_it(list(args), kwargs) or args
    with pytest.raises(exc, match=match):
        NPU.npu_fused_infer_attention_score(*args, **kwargs)


def test_mask_template_cache_follows_in_place_edits():
    mask = MASK.clone()
    args, kwargs = _paged_call(torch.float32, 4, 2, 64, [2], [7])
    kwargs["atten_mask"] = mask
    _served("npu_fused_infer_attention_score",
            lambda: NPU.npu_fused_infer_attention_score(*args, **kwargs))
    mask[3, 1] = True
    with pytest.raises(ValueError, match="lower-triangular"):
        NPU.npu_fused_infer_attention_score(*args, **kwargs)
    mask[3, 1] = False  # restored: legal again (checked anew, then cached)
    _served("npu_fused_infer_attention_score",
            lambda: NPU.npu_fused_infer_attention_score(*args, **kwargs))


# ---- KV scatter --------------------------------------------------------------------------------


@pytest.mark.parametrize("slot_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.int8])
def test_scatter_norm_matches_reference(dtype, slot_dtype):
    g = torch.Generator().manual_seed(3)
    key = (torch.randn(6, 2, 64, generator=g) * 50).to(dtype)
    value = (torch.randn(6, 2, 16, generator=g) * 50).to(dtype)  # MLA-like: Dv != Dk
    kc, vc = torch.zeros(4, 128, 2, 64, dtype=dtype), torch.zeros(4, 128, 2, 16, dtype=dtype)
    slots = torch.tensor([5, 511, 0, 130, 129, 257], dtype=slot_dtype)
    kc2, vc2 = kc.clone(), vc.clone()
    _served("npu_scatter_pa_kv_cache",
            lambda: NPU.npu_scatter_pa_kv_cache(key, value, kc, vc, slots, cache_mode="Norm"))
    REF.npu_scatter_pa_kv_cache(key, value, kc2, vc2, slots, cache_mode="Norm")
    assert torch.equal(kc, kc2) and torch.equal(vc, vc2)
    assert torch.equal(kc.view(-1, 2, 64)[511], key[1])


@pytest.mark.parametrize("slots,exc,match", [
    ([1, 1], ValueError, "duplicate"),
    ([0, 512], IndexError, "value range"),
    ([-1, 3], IndexError, "value range"),
])
def test_scatter_illegal_slots_raise_the_references_error(slots, exc, match):
    key = torch.randn(2, 1, 64)
    kc = torch.zeros(4, 128, 1, 64)
    with pytest.raises(exc, match=match):
        NPU.npu_scatter_pa_kv_cache(key, key, kc, kc.clone(), torch.tensor(slots),
                                    cache_mode="Norm")


# ---- RMSNorm, add + RMSNorm, SwiGLU ----------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 64), (7, 100), (2, 3, 896), (0, 32)])
def test_norms_and_swiglu_match_reference(shape, dtype):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(shape, generator=g).to(dtype)
    r = torch.randn(shape, generator=g).to(dtype)
    w = torch.randn(shape[-1], generator=g).to(dtype)
    y, rstd = _served("npu_rms_norm", lambda: NPU.npu_rms_norm(x, w, 1e-5))
    ry, rrstd = REF.npu_rms_norm(x, w, 1e-5)
    _close(y, ry, dtype)
    torch.testing.assert_close(rstd, rrstd, atol=1e-6, rtol=1e-5)
    if x.numel():  # the reference refuses an empty x1 (doc); so does the fast kernel (below)
        outs = _served("npu_add_rms_norm", lambda: NPU.npu_add_rms_norm(x, r, w, 1e-5))
        refs = REF.npu_add_rms_norm(x, r, w, 1e-5)
        _close(outs[0], refs[0], dtype)
        torch.testing.assert_close(outs[1], refs[1], atol=1e-6, rtol=1e-5)
        assert torch.equal(outs[2], refs[2])  # the sum, rounded once: bit-exact
    s = _served("npu_swiglu", lambda: NPU.npu_swiglu(x))
    _close(s, REF.npu_swiglu(x), dtype)


def test_norm_and_swiglu_uncovered_or_illegal_calls_go_to_the_reference():
    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match="empty"):
        NPU.npu_add_rms_norm(x[:0], x[:0], torch.ones(6), 1e-6)
    with pytest.raises(TypeError, match="gamma dtype"):
        NPU.npu_rms_norm(x, torch.ones(6, dtype=torch.bfloat16))
    before = fast_cpu.counters()["npu_swiglu"]
    y = NPU.npu_swiglu(x, dim=0)  # legal, split along dim 0: the reference computes it
    torch.testing.assert_close(y, REF.npu_swiglu(x, dim=0))
    assert fast_cpu.counters()["npu_swiglu"] == (before[0], before[1] + 1)
    y = NPU.npu_rms_norm(x.t(), torch.ones(4))  # non-contiguous: legal, reference
    torch.testing.assert_close(y[0], REF.npu_rms_norm(x.t(), torch.ones(4))[0])


# ---- MoE routing: gating, init routing, grouped matmul, unpermute ----------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,k", [((9, 8), 2), ((2, 3, 64), 8), ((5, 6), 6), ((0, 8), 1)])
def test_gating_softmax_matches_reference(shape, k, dtype):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(5)).to(dtype)
    if x.numel():
        x.view(-1, shape[-1])[0, :3] = 1.5  # an exact tie: the lower expert id comes first
    outs = _served("npu_moe_gating_top_k_softmax",
                   lambda: NPU.npu_moe_gating_top_k_softmax(x, None, k=k))
    for a, b in zip(outs, REF.npu_moe_gating_top_k_softmax(x, None, k=k), strict=True):
        assert torch.equal(a, b)  # the same softmax and the same tie rule: bit-exact


def _routing_args(tokens, k, experts, dtype, seed=6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, 40, generator=g).to(dtype)
    ids = [torch.randperm(experts, generator=g)[:k] for _ in range(tokens)]
    return x, (torch.stack(ids) if ids else torch.empty(0, k)).to(torch.int32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8])
@pytest.mark.parametrize("kw", [
    dict(active_expert_range=[0, 16]),
    dict(active_expert_range=[4, 11]),  # expert parallelism: a contiguous range of experts
    dict(active_expert_range=[0, 16], active_num=13),  # rows past active_num dropped
    dict(active_expert_range=[3, 9], row_idx_type=1),
    dict(active_expert_range=[2, 16], expert_tokens_num_type=2),  # (id, count) pairs
])
@pytest.mark.parametrize("tokens", [0, 1, 23])
def test_init_routing_matches_reference(kw, tokens, dtype):
    if dtype == torch.int8:
        x = torch.randint(-128, 128, (tokens, 40), dtype=torch.int8)
        ids = _routing_args(tokens, 3, 16, torch.float32)[1]
    else:
        x, ids = _routing_args(tokens, 3, 16, dtype)
    args = dict(dict(active_num=tokens * 3, expert_num=16, expert_tokens_num_type=1,
                     expert_tokens_num_flag=True, quant_mode=-1), **kw)
    outs = _served("npu_moe_init_routing_v2", lambda: NPU.npu_moe_init_routing_v2(x, ids, **args))
    for a, b in zip(outs, REF.npu_moe_init_routing_v2(x, ids, **args), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("counts", [
    [1, 0, 3, 2],  # decode-sized groups, one empty
    [0, 40, 17, 0],  # empty groups at both ends
    [5, 20, 0, 9],
])
@pytest.mark.parametrize("n", [128, 72])
@pytest.mark.parametrize("list_type,bias", [(1, False), (0, True)])
def test_grouped_matmul_matches_reference(counts, n, list_type, bias, dtype):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(sum(counts), 96, generator=g).to(dtype)
    w = (torch.randn(4, 96, n, generator=g) / 10).to(dtype)
    gl = torch.tensor(counts).cumsum(0) if list_type == 0 else torch.tensor(counts)
    kw = dict(group_list=gl, split_item=2, group_type=0, group_list_type=list_type)
    if bias:
        kw["bias"] = [torch.randn(4, n, generator=g).to(
            torch.float16 if dtype == torch.float16 else torch.float32)]
    y = _served("npu_grouped_matmul", lambda: NPU.npu_grouped_matmul([x], [w], **kw))[0]
    _close(y, REF.npu_grouped_matmul([x], [w], **kw)[0], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("tokens,k,hidden", [(7, 2, 40), (33, 8, 64), (0, 4, 16), (3, 1, 5)])
@pytest.mark.parametrize("probs_dtype,index_dtype", [
    (torch.float32, torch.int32), (torch.bfloat16, torch.int64), (None, torch.int32)])
def test_token_unpermute_matches_reference(tokens, k, hidden, dtype, probs_dtype, index_dtype):
    g = torch.Generator().manual_seed(8)
    rows = torch.randn(tokens * k, hidden, generator=g).to(dtype)
    idx = torch.randperm(tokens * k, generator=g).to(index_dtype)
    probs = None if probs_dtype is None else torch.rand(tokens, k, generator=g).to(probs_dtype)
    if probs is None and k > 1:
        rows, idx = rows[:tokens], idx[idx < tokens]  # without probs topK is 1
    y = _served("npu_moe_token_unpermute", lambda: NPU.npu_moe_token_unpermute(rows, idx, probs))
    _close(y, REF.npu_moe_token_unpermute(rows, idx, probs), dtype)


@pytest.mark.parametrize("call,match", [
    (lambda: NPU.npu_moe_token_unpermute(torch.randn(4, 8), torch.tensor([0, 1, 1, 2])),
     "duplicate"),
    (lambda: NPU.npu_moe_token_unpermute(torch.randn(4, 8), torch.tensor([0, 1, 4, 2])),
     "out of range"),
    (lambda: NPU.npu_moe_init_routing_v2(
        torch.randn(2, 8), torch.tensor([[0, 9], [1, 2]], dtype=torch.int32), expert_num=8,
        expert_tokens_num_type=1, expert_tokens_num_flag=True), "expert ids"),
    (lambda: NPU.npu_grouped_matmul(
        [torch.randn(5, 8)], [torch.randn(2, 8, 16)], group_list=torch.tensor([2, 2]),
        split_item=2, group_type=0, group_list_type=1), "cover"),
    (lambda: NPU.npu_moe_gating_top_k_softmax(torch.randn(2, 4), None, k=5), "k <="),
])
def test_moe_illegal_calls_raise_the_references_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_moe_uncovered_calls_go_to_the_reference():
    x = torch.randn(4, 8)
    before = fast_cpu.counters()["npu_moe_gating_top_k_softmax"]
    finished = torch.tensor([False, True, False, False])
    y = NPU.npu_moe_gating_top_k_softmax(x, finished, k=2)  # finished rows: reference
    for a, b in zip(y, REF.npu_moe_gating_top_k_softmax(x, finished, k=2), strict=True):
        assert torch.equal(a, b)
    assert fast_cpu.counters()["npu_moe_gating_top_k_softmax"] == (before[0], before[1] + 1)
    w = torch.randn(2, 16, 8).transpose(1, 2)  # a transposed weight view: legal, reference
    before = fast_cpu.counters()["npu_grouped_matmul"]
    kw = dict(group_list=torch.tensor([1, 3]), split_item=2, group_type=0, group_list_type=1)
    y = NPU.npu_grouped_matmul([x], [w], **kw)[0]
    torch.testing.assert_close(y, REF.npu_grouped_matmul([x], [w], **kw)[0])
    assert fast_cpu.counters()["npu_grouped_matmul"] == (before[0], before[1] + 1)


def test_reference_selection_leaves_the_python_kernels_in_place():
    """VLLM_ASCEND_CPU_KERNELS=reference: nothing is installed; npu::<op> is the reference."""
    code = (
        "import torch, vllm_ascend.kernels.npu_ops\n"
        "from vllm_ascend.kernels import fast_cpu\n"
        "x = torch.randn(3, 8)\n"
        "y = torch.ops.npu.npu_swiglu(x)\n"
        "assert torch.equal(y, torch.ops.vllm_ascend_ref.npu_swiglu(x))\n"
        "print(fast_cpu.mode(), fast_cpu.counters())\n"
    )
    env = dict(os.environ, VLLM_ASCEND_CPU_KERNELS="reference")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "reference {}"
