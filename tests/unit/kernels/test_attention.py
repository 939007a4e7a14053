"""npu_fused_infer_attention_score (CPU kernel) against a float64 reference made of plain loops.

The reference works on one logical sequence at a time: q [q_len, N, D], k [kv_len, KV_N, D],
v [kv_len, KV_N, Dv] and a python predicate allowed(i, j) saying whether query row i (0-based
within the sequence) may attend kv position j. Tests pack those sequences into the op's layouts
(dense BSH/BSND/BNSD/TND or a paged cache) themselves.
"""

from __future__ import annotations

import math

import pytest
import torch

import vllm_ascend.kernels.npu_ops  # noqa: F401  (registers torch.ops.npu.*)
from vllm_ascend.kernels.npu_ops import attention as fia_mod

# Each test runs through the fast C++ CPU kernels and through the Python references.
pytestmark = pytest.mark.usefixtures("cpu_kernel_impl")

FIA = torch.ops.npu.npu_fused_infer_attention_score
MASK2048 = torch.triu(torch.ones(2048, 2048, dtype=torch.bool), diagonal=1)
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def ref_attention(q, k, v, scale, allowed):
    """q [Lq,N,D], k [Lk,KVN,D], v [Lk,KVN,Dv] -> out [Lq,N,Dv], lse [Lq,N] in float64."""
    q, k, v = q.double(), k.double(), v.double()
    lq, n, _ = q.shape
    lk, kvn, dv = v.shape
    group = n // kvn
    out = torch.zeros(lq, n, dv, dtype=torch.float64)
    lse = torch.full((lq, n), float("-inf"), dtype=torch.float64)
    for h in range(n):
        kh = h // group
        for i in range(lq):
            cols = [j for j in range(lk) if allowed(i, j)]
            if not cols:
                continue
            s = [scale * float(torch.dot(q[i, h], k[j, kh])) for j in cols]
            m = max(s)
            w = [math.exp(x - m) for x in s]
            tot = sum(w)
            for wj, j in zip(w, cols, strict=False):
                out[i, h] += wj / tot * v[j, kh]
            lse[i, h] = m + math.log(tot)
    return out, lse


def causal_right_down(q_len, kv_len):
    return lambda i, j: j <= i + kv_len - q_len


def causal_left_up(q_len, kv_len):
    return lambda i, j: j <= i


def window_right_down(q_len, kv_len, pre, nxt):
    def f(i, j):
        p = i + kv_len - q_len
        return p - j <= pre and j - p <= nxt
    return f


def full(q_len, kv_len):
    return lambda i, j: True


def make_seqs(q_lens, kv_lens, n, kvn, d, dv=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    dv = dv or d
    return [
        (torch.randn(ql, n, d, generator=g), torch.randn(kl, kvn, d, generator=g),
         torch.randn(kl, kvn, dv, generator=g))
        for ql, kl in zip(q_lens, kv_lens, strict=False)
    ]


def paged_cache(seqs, block_size, kvn, fmt, seed=1, num_extra_blocks=3, fill=0.0):
    """Scatter each sequence's k/v into randomly ordered blocks; returns caches + block table."""
    g = torch.Generator().manual_seed(seed)
    need = [math.ceil(k.shape[0] / block_size) for _, k, _ in seqs]
    n_blocks = sum(need) + num_extra_blocks
    perm = torch.randperm(n_blocks, generator=g).tolist()
    d, dv = seqs[0][1].shape[2], seqs[0][2].shape[2]
    kc = torch.full((n_blocks, block_size, kvn, d), fill)
    vc = torch.full((n_blocks, block_size, kvn, dv), fill)
    max_blocks = max(need) + 1
    table = torch.zeros(len(seqs), max_blocks, dtype=torch.int32)
    pos = 0
    for b, (_, k, v) in enumerate(seqs):
        for blk in range(need[b]):
            phys = perm[pos]
            pos += 1
            table[b, blk] = phys
            for off in range(block_size):
                t = blk * block_size + off
                if t < k.shape[0]:
                    kc[phys, off] = k[t]
                    vc[phys, off] = v[t]
    if fmt == "BSH":  # [num_blocks, block_size, KV_N*D]
        return kc.reshape(n_blocks, block_size, -1), vc.reshape(n_blocks, block_size, -1), table
    # [num_blocks, KV_N, block_size, D]
    return kc.transpose(1, 2).contiguous(), vc.transpose(1, 2).contiguous(), table


def check(out, lse, refs, dtype, lse_tol=None):
    tol = TOL[dtype]
    lses = lse if lse is not None else [None] * len(out)
    for (ro, rl), o, lv in zip(refs, out, lses, strict=True):
        torch.testing.assert_close(o.double(), ro, atol=tol * 4, rtol=tol * 4)
        if lv is not None:
            torch.testing.assert_close(lv.double(), rl, atol=lse_tol or tol * 4, rtol=0)


def cast(seqs, dtype):
    return [(q.to(dtype), k.to(dtype), v.to(dtype)) for q, k, v in seqs]


# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("paged_fmt", ["BSH", "BNSD"])
@pytest.mark.parametrize("block_size", [128, 256])
def test_tnd_paged_mixed_prefill_decode_causal(dtype, paged_fmt, block_size):
    """vLLM's chunked-prefill shape: TND queries, cumulative actual_seq_lengths, per-sequence kv
    lengths, queries aligned to the END of the kv sequence (sparse_mode 3), GQA 4:2."""
    n, kvn, d = 4, 2, 64
    q_lens, kv_lens = [1, 5, 1, 7, 3], [20, 37, 130, 7, 16]
    seqs = cast(make_seqs(q_lens, kv_lens, n, kvn, d), dtype)
    kc, vc, table = paged_cache(seqs, block_size, kvn, paged_fmt)
    query = torch.cat([q for q, _, _ in seqs])
    cum = torch.tensor(q_lens).cumsum(0).tolist()
    scale = 1 / math.sqrt(d)
    out, lse = FIA(query, kc.to(dtype), vc.to(dtype), atten_mask=MASK2048, block_table=table,
                   actual_seq_lengths=cum, actual_seq_lengths_kv=kv_lens, num_heads=n,
                   num_key_value_heads=kvn, scale=scale, input_layout="TND", sparse_mode=3,
                   block_size=block_size, softmax_lse_flag=True)
    assert out.dtype == dtype and out.shape == (sum(q_lens), n, d)
    assert lse.dtype == torch.float32 and lse.shape == (sum(q_lens), n, 1)
    refs = [ref_attention(q, k, v, scale, causal_right_down(len(q), len(k))) for q, k, v in seqs]
    outs = out.split(q_lens)
    lses = lse[..., 0].split(q_lens)
    check(outs, lses, refs, dtype, lse_tol=1e-3 if dtype != torch.float32 else None)


def test_tnd_dense_prefill_cumulative_kv_and_left_up_differs():
    """TND without paging: actual_seq_lengths_kv is cumulative too. sparse_mode 2 aligns the
    causal diagonal to the top-left, sparse_mode 3 to the bottom-right."""
    n, d = 2, 64
    q_lens, kv_lens = [3, 6, 2], [5, 6, 9]
    seqs = make_seqs(q_lens, kv_lens, n, n, d, seed=3)
    query = torch.cat([q for q, _, _ in seqs])
    key = torch.cat([k for _, k, _ in seqs])
    value = torch.cat([v for _, _, v in seqs])
    qc = torch.tensor(q_lens).cumsum(0).tolist()
    kc = torch.tensor(kv_lens).cumsum(0).tolist()
    for mode, rule in ((3, causal_right_down), (2, causal_left_up)):
        out, lse = FIA(query, key, value, atten_mask=MASK2048, actual_seq_lengths=qc,
                       actual_seq_lengths_kv=kc, num_heads=n, scale=0.3, input_layout="TND",
                       sparse_mode=mode, softmax_lse_flag=True)
        refs = [ref_attention(q, k, v, 0.3, rule(len(q), len(k))) for q, k, v in seqs]
        check(out.split(q_lens), lse[..., 0].split(q_lens), refs, torch.float32)
    a = FIA(query, key, value, atten_mask=MASK2048, actual_seq_lengths=qc,
            actual_seq_lengths_kv=kc, num_heads=n, input_layout="TND", sparse_mode=2)[0]
    b = FIA(query, key, value, atten_mask=MASK2048, actual_seq_lengths=qc,
            actual_seq_lengths_kv=kc, num_heads=n, input_layout="TND", sparse_mode=3)[0]
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("layout", ["BSH", "BSND", "BNSD", "BNSD_BSND"])
def test_dense_b_layouts_with_valid_lengths(layout):
    """Padded batches: actual_seq_lengths/_kv shorter than S; padded query rows come back as 0."""
    n, kvn, d, s, skv = 4, 1, 16, 6, 10
    q_lens, kv_lens = [6, 4], [10, 7]
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, s, n, d, generator=g)  # logical BSND
    k = torch.randn(2, skv, kvn, d, generator=g)
    v = torch.randn(2, skv, kvn, d, generator=g)

    def pack(t):
        if layout == "BSH":
            return t.reshape(t.shape[0], t.shape[1], -1)
        if layout == "BSND":
            return t
        return t.transpose(1, 2).contiguous()

    out, lse = FIA(pack(q), pack(k), pack(v), num_heads=n, num_key_value_heads=kvn,
                   input_layout=layout, scale=0.2, actual_seq_lengths=q_lens,
                   actual_seq_lengths_kv=kv_lens, softmax_lse_flag=True)
    if layout == "BSH":
        out = out.reshape(2, s, n, d)
    elif layout == "BNSD":
        out = out.transpose(1, 2)
    assert lse.shape == (2, n, s, 1)
    for b in range(2):
        ro, rl = ref_attention(q[b, :q_lens[b]], k[b, :kv_lens[b]], v[b, :kv_lens[b]], 0.2,
                               full(q_lens[b], kv_lens[b]))
        torch.testing.assert_close(out[b, :q_lens[b]].double(), ro, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lse[b, :, :q_lens[b], 0].T.double(), rl, atol=1e-5, rtol=0)
        assert torch.all(out[b, q_lens[b]:] == 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("block_size", [16, 128])
def test_decode_bsh_paged(dtype, block_size):
    """Decode: q_len 1 per sequence, BSH query [B,1,H], cache [num_blocks, block_size, H]."""
    n, kvn, d = 8, 2, 16
    kv_lens = [1, 17, 128, 129, 300]
    seqs = cast(make_seqs([1] * 5, kv_lens, n, kvn, d, seed=7), dtype)
    kc, vc, table = paged_cache(seqs, block_size, kvn, "BSH")
    query = torch.stack([q.reshape(1, -1) for q, _, _ in seqs])
    refs = [ref_attention(q, k, v, 0.25, full(1, len(k))) for q, k, v in seqs]
    for mode, mask in ((0, None), (3, MASK2048)):
        out, lse = FIA(query, kc.to(dtype), vc.to(dtype), atten_mask=mask, block_table=table,
                       actual_seq_lengths=[1] * 5, actual_seq_lengths_kv=kv_lens, num_heads=n,
                       num_key_value_heads=kvn, scale=0.25, input_layout="BSH",
                       block_size=block_size, sparse_mode=mode, softmax_lse_flag=True)
        assert out.shape == (5, 1, n * d) and out.dtype == dtype
        check(out.reshape(5, 1, n, d), lse[:, :, :, 0].transpose(1, 2), refs, dtype,
              lse_tol=2e-3)


def test_decode_bnsd_paged_4d_cache_and_bsnd_rejects_it():
    n, kvn, d, bs = 4, 4, 8, 16
    kv_lens = [5, 40]
    seqs = make_seqs([1, 1], kv_lens, n, kvn, d, seed=8)
    kc, vc, table = paged_cache(seqs, bs, kvn, "BNSD")
    query = torch.stack([q.transpose(0, 1) for q, _, _ in seqs])  # [B, N, 1, D]
    out, _ = FIA(query, kc, vc, block_table=table, actual_seq_lengths_kv=kv_lens, num_heads=n,
                 scale=0.5, input_layout="BNSD", block_size=bs)
    for b, (q, k, v) in enumerate(seqs):
        ro, _ = ref_attention(q, k, v, 0.5, full(1, len(k)))
        torch.testing.assert_close(out[b].transpose(0, 1).double(), ro, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="BNSD or TND"):
        FIA(query.transpose(1, 2).contiguous(), kc, vc, block_table=table,
            actual_seq_lengths_kv=kv_lens, num_heads=n, input_layout="BSND", block_size=bs)


@pytest.mark.parametrize("window", [1, 4, 16])
def test_sliding_window_sparse_mode_4_tnd_paged(window):
    """sparse_mode 4: band from the bottom-right corner; pre_tokens=W-1, next_tokens=0 is a causal
    window of W tokens (the query token included)."""
    n, kvn, d, bs = 2, 1, 64, 128
    q_lens, kv_lens = [1, 6, 3], [30, 6, 20]
    seqs = make_seqs(q_lens, kv_lens, n, kvn, d, seed=11)
    kc, vc, table = paged_cache(seqs, bs, kvn, "BSH")
    query = torch.cat([q for q, _, _ in seqs])
    out, lse = FIA(query, kc, vc, atten_mask=MASK2048, block_table=table,
                   actual_seq_lengths=torch.tensor(q_lens).cumsum(0).tolist(),
                   actual_seq_lengths_kv=kv_lens, num_heads=n, num_key_value_heads=kvn,
                   scale=0.4, input_layout="TND", block_size=bs, sparse_mode=4,
                   pre_tokens=window - 1, next_tokens=0, softmax_lse_flag=True)
    refs = [ref_attention(q, k, v, 0.4, window_right_down(len(q), len(k), window - 1, 0))
            for q, k, v in seqs]
    check(out.split(q_lens), lse[..., 0].split(q_lens), refs, torch.float32)


def test_sparse_mode_0_full_mask_with_left_up_band():
    """sparse_mode 0 with a full mask: mask (True = masked) AND the pre/next band (top-left)."""
    n, d, s, skv = 2, 16, 5, 9
    g = torch.Generator().manual_seed(13)
    q = torch.randn(1, n, s, d, generator=g)
    k = torch.randn(1, n, skv, d, generator=g)
    v = torch.randn(1, n, skv, d, generator=g)
    mask = torch.rand(1, 1, s, skv, generator=g) < 0.3
    mask[..., 0] = False
    pre, nxt = 2, 3
    out, lse = FIA(q, k, v, atten_mask=mask.to(torch.int8), num_heads=n, input_layout="BNSD",
                   scale=0.3, pre_tokens=pre, next_tokens=nxt, sparse_mode=0,
                   softmax_lse_flag=True)

    def allowed(i, j):
        return (not bool(mask[0, 0, i, j])) and i - j <= pre and j - i <= nxt

    ro, rl = ref_attention(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1),
                           0.3, allowed)
    torch.testing.assert_close(out[0].transpose(0, 1).double(), ro, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse[0, :, :, 0].T.double(), rl, atol=1e-5, rtol=0)
    # sparse_mode 1 uses the mask alone (pre/next ignored).
    out1 = FIA(q, k, v, atten_mask=mask, num_heads=n, input_layout="BNSD", scale=0.3,
               pre_tokens=pre, next_tokens=nxt, sparse_mode=1)[0]
    ro1, _ = ref_attention(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1),
                           0.3, lambda i, j: not bool(mask[0, 0, i, j]))
    torch.testing.assert_close(out1[0].transpose(0, 1).double(), ro1, atol=1e-5, rtol=1e-5)


def test_decode_mask_b_kv_shape():
    """Q_S = 1 accepts a (B, KV_S) mask."""
    n, d, skv = 2, 8, 7
    g = torch.Generator().manual_seed(17)
    q = torch.randn(3, 1, n * d, generator=g)
    k = torch.randn(3, skv, n * d, generator=g)
    v = torch.randn(3, skv, n * d, generator=g)
    mask = torch.zeros(3, skv, dtype=torch.bool)
    mask[0, :3] = True
    mask[2, 5:] = True
    out = FIA(q, k, v, atten_mask=mask, num_heads=n, scale=0.1)[0].reshape(3, 1, n, d)
    for b in range(3):
        ro, _ = ref_attention(q[b].reshape(1, n, d), k[b].reshape(skv, n, d),
                              v[b].reshape(skv, n, d), 0.1, lambda i, j, b=b: not bool(mask[b, j]))
        torch.testing.assert_close(out[b].double(), ro, atol=1e-5, rtol=1e-5)


def test_fully_masked_rows_are_zero_with_lse_minus_inf():
    """Right-down causal with q longer than kv: the first rows see nothing."""
    n, d = 1, 16
    q = torch.randn(1, 5, n, d)
    k = torch.randn(1, 2, n, d)
    out, lse = FIA(q, k, k, atten_mask=MASK2048, num_heads=n, input_layout="BSND",
                   sparse_mode=3, softmax_lse_flag=True)
    assert torch.all(out[0, :3] == 0) and torch.all(torch.isneginf(lse[0, 0, :3, 0]))
    assert torch.all(torch.isfinite(lse[0, 0, 3:, 0]))


def test_garbage_in_unused_cache_slots_does_not_leak():
    n, d, bs = 2, 64, 128
    seqs = make_seqs([2], [20], n, n, d, seed=19)
    kc, vc, table = paged_cache(seqs, bs, n, "BSH", fill=float("nan"))
    table[0, -1] = 10_000  # an out-of-range id past the used blocks is never read
    q = seqs[0][0]
    out = FIA(q, kc, vc, atten_mask=MASK2048, block_table=table, actual_seq_lengths=[2],
              actual_seq_lengths_kv=[20], num_heads=n, input_layout="TND", block_size=bs,
              sparse_mode=3)[0]
    ro, _ = ref_attention(*seqs[0], 1.0, causal_right_down(2, 20))
    torch.testing.assert_close(out.double(), ro, atol=1e-5, rtol=1e-5)


def test_chunked_execution_matches(monkeypatch):
    """Tiny working-set budgets force per-row chunking; the result must not change."""
    n, kvn, d, bs = 4, 2, 64, 128
    q_lens, kv_lens = [9, 1, 4], [40, 33, 4]
    seqs = make_seqs(q_lens, kv_lens, n, kvn, d, seed=23)
    kc, vc, table = paged_cache(seqs, bs, kvn, "BSH")
    query = torch.cat([q for q, _, _ in seqs])
    kwargs = dict(atten_mask=MASK2048, block_table=table,
                  actual_seq_lengths=torch.tensor(q_lens).cumsum(0).tolist(),
                  actual_seq_lengths_kv=kv_lens, num_heads=n, num_key_value_heads=kvn,
                  input_layout="TND", block_size=bs, sparse_mode=3, softmax_lse_flag=True,
                  scale=0.125)
    big = FIA(query, kc, vc, **kwargs)
    monkeypatch.setattr(fia_mod, "SCORE_BUDGET", 300)
    monkeypatch.setattr(fia_mod, "KV_BUDGET", 100)
    small = FIA(query, kc, vc, **kwargs)
    # Same math, different padding and matmul shapes: float32 rounding only.
    torch.testing.assert_close(small[0], big[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(small[1], big[1], atol=1e-5, rtol=1e-5)
    refs = [ref_attention(q, k, v, 0.125, causal_right_down(len(q), len(k))) for q, k, v in seqs]
    check(small[0].split(q_lens), small[1][..., 0].split(q_lens), refs, torch.float32)


def test_lse_placeholder_and_value_head_dim():
    """TND with q/k head dim 192 and v head dim 128, the one q/v mismatch CANN allows."""
    q = torch.randn(3, 4, 192)
    k = torch.randn(5, 2, 192)
    v = torch.randn(5, 2, 128)
    out, lse = FIA(q, k, v, num_heads=4, num_key_value_heads=2, input_layout="TND",
                   actual_seq_lengths=[3], actual_seq_lengths_kv=[5], scale=0.1)
    assert out.shape == (3, 4, 128) and lse.shape == (0,) and lse.dtype == torch.float32
    ro, _ = ref_attention(q, k, v, 0.1, full(3, 5))
    torch.testing.assert_close(out.double(), ro, atol=1e-5, rtol=1e-5)


def test_empty_kv_gives_zeros():
    q = torch.randn(1, 2, 2, 16)
    k = torch.randn(1, 2, 0, 16)
    out, _ = FIA(q, k, k, num_heads=2, input_layout="BNSD")
    assert out.shape == q.shape and torch.all(out == 0)


@pytest.mark.parametrize("arg", fia_mod._UNSUPPORTED_TENSOR_ARGS)
def test_unsupported_tensor_args_raise(arg):
    q = torch.randn(1, 1, 8)
    val = [1] if arg == "actual_shared_prefix_len" else torch.ones(1)  # SymInt[]? in the schema
    with pytest.raises(NotImplementedError, match=arg):
        FIA(q, q, q, num_heads=1, **{arg: val})


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(antiquant_mode=1), NotImplementedError, "antiquant_mode"),
    (dict(key_antiquant_mode=1), NotImplementedError, "key_antiquant_mode"),
    (dict(sparse_mode=5), NotImplementedError, "sparse_mode 5"),
    (dict(input_layout="NTD"), NotImplementedError, "NTD"),
    (dict(pre_tokens=0, next_tokens=0), NotImplementedError, "sparse_mode=4"),
    (dict(sparse_mode=3), ValueError, "compressed"),
    (dict(sparse_mode=3, atten_mask=torch.ones(4, 4, dtype=torch.bool)), ValueError, "2048"),
    (dict(sparse_mode=1), ValueError, "full atten_mask"),
    (dict(sparse_mode=2, atten_mask=MASK2048), NotImplementedError, "single-token"),
    (dict(num_heads=2, num_key_value_heads=3), ValueError, "multiple"),
])
def test_invalid_or_unsupported_calls_raise(kwargs, exc, match):
    q = torch.randn(2, 1, 12)
    k = torch.randn(2, 4, 12)
    kwargs = dict(kwargs)
    kwargs.setdefault("num_heads", 1)
    with pytest.raises(exc, match=match):
        FIA(q, k, k, **kwargs)


def test_paged_requires_kv_lengths_and_matching_block_size():
    seqs = make_seqs([1], [5], 1, 1, 8)
    kc, vc, table = paged_cache(seqs, 16, 1, "BSH")
    q = seqs[0][0].reshape(1, 1, 8)
    with pytest.raises(ValueError, match="actual_seq_lengths_kv is required"):
        FIA(q, kc, vc, block_table=table, block_size=16)
    with pytest.raises(ValueError, match="block_size"):
        FIA(q, kc, vc, block_table=table, block_size=128, actual_seq_lengths_kv=[5])
    with pytest.raises(ValueError, match="TND"):
        FIA(q[0], kc, vc, block_table=table, block_size=16, input_layout="TND",
            actual_seq_lengths_kv=[5])


def test_tnd_dense_requires_kv_lengths():
    q = torch.randn(4, 1, 8)
    with pytest.raises(ValueError, match="actual_seq_lengths_kv is required"):
        FIA(q, q, q, input_layout="TND", actual_seq_lengths=[4])
