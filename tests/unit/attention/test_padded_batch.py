"""A padded step (vLLM pads tokens and requests for data parallelism and graph capture) keeps the
fused attention's TND invariants and never hands a negative slot to the KV scatter: attention
runs through the strict CPU kernels on exactly the real tokens, with a strided query as vLLM
produces it, and equals a float64 reference."""

from __future__ import annotations

import math

import pytest
import torch
from vllm.v1.attention.backend import CommonAttentionMetadata

from vllm_ascend import kernels
from vllm_ascend.attention.impl import AscendAttentionImpl
from vllm_ascend.attention.metadata import AscendAttentionMetadataBuilder, unpadded_batch

N, KVH, D, BS = 4, 2, 64, 128


def test_unpadded_batch():
    assert unpadded_batch([5, 6]) == (2, 6)
    assert unpadded_batch([5, 6, 6, 6]) == (2, 6)  # two padding requests with empty queries
    assert unpadded_batch([1]) == (1, 1)
    assert unpadded_batch([]) == (0, 0)


def padded_step():
    """Request 0: 3 cached tokens + 5 new (prefill chunk); request 1: 10 cached + 1 new (decode).
    Padded to 4 requests and 8 tokens the way GPUModelRunner pads them."""
    real_slots = [BS + 3 + i for i in range(5)] + [2 * BS + 10]
    return CommonAttentionMetadata(
        query_start_loc=torch.tensor([0, 5, 6, 6, 6], dtype=torch.int32),
        query_start_loc_cpu=torch.tensor([0, 5, 6, 6, 6], dtype=torch.int32),
        seq_lens=torch.tensor([8, 11, 0, 0], dtype=torch.int32),
        num_reqs=4,
        num_actual_tokens=8,
        max_query_len=5,
        max_seq_len=11,
        block_table_tensor=torch.tensor([[1, 0], [2, 0], [0, 0], [0, 0]], dtype=torch.int32),
        slot_mapping=torch.tensor(real_slots + [-1, -1], dtype=torch.int64),
        seq_lens_cpu_upper_bound=torch.tensor([8, 11, 0, 0], dtype=torch.int32),
    )


def reference(q, k_all, v_all, q_lens, kv_lens):
    """float64 causal GQA attention; the queries are the last tokens of each kv sequence."""
    out, qs = [], 0
    for r, (ql, kl) in enumerate(zip(q_lens, kv_lens, strict=True)):
        k = k_all[r][:kl].double().repeat_interleave(N // KVH, dim=1)  # [kl, N, D]
        v = v_all[r][:kl].double().repeat_interleave(N // KVH, dim=1)
        for i in range(ql):
            pos = kl - ql + i
            s = torch.einsum("nd,knd->nk", q[qs + i].double(), k[: pos + 1]) / math.sqrt(D)
            out.append(torch.einsum("nk,knd->nd", s.softmax(-1), v[: pos + 1]))
        qs += ql
    return torch.stack(out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_padded_step_attends_real_tokens_only(dtype):
    kernels.load()
    g = torch.Generator().manual_seed(0)
    builder = AscendAttentionMetadataBuilder(None, [], None, torch.device("cpu"))
    meta = builder.build(0, padded_step())
    assert meta.num_actual_tokens == 6 and meta.cu_query_lens == [5, 6]
    assert meta.seq_lens == [8, 11] and meta.block_table.shape[0] == 2
    assert int(meta.slot_mapping.min()) >= 0 and meta.slot_mapping.numel() == 6

    alloc = torch.zeros(2, 4, BS, KVH, D, dtype=dtype)
    kv_cache = alloc.permute(1, 0, 2, 3, 4)  # the runner's [blocks, 2, ...] view
    cached = {1: 3, 2: 10}
    for block, n in cached.items():
        alloc[:, block, :n] = torch.randn(2, n, KVH, D, generator=g).to(dtype)
    t = 8  # padded token count
    qkv = torch.randn(t, (N + 2 * KVH) * D, generator=g).to(dtype)
    query = qkv[:, : N * D].view(t, N, D)  # strided, as after vLLM's qkv.split
    key = qkv[:, N * D : (N + KVH) * D].reshape(t, KVH, D)
    value = qkv[:, (N + KVH) * D :].reshape(t, KVH, D)
    assert not query.is_contiguous()
    output = torch.full((t, N * D), 7.0, dtype=dtype)

    impl = AscendAttentionImpl(N, D, D**-0.5, num_kv_heads=KVH)
    impl.forward(None, query, key, value, kv_cache, meta, output)

    # The new tokens' K/V landed in their slots; padding touched no block.
    assert torch.equal(alloc[0, 1, 3:8], key[:5]) and torch.equal(alloc[1, 2, 10], value[5])
    assert not alloc[:, 0].any() and not alloc[:, 3].any()
    k_all = [alloc[0, 1], alloc[0, 2]]
    v_all = [alloc[1, 1], alloc[1, 2]]
    want = reference(query[:6], k_all, v_all, [5, 1], [8, 11])
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(output[:6].view(6, N, D).double(), want, atol=tol, rtol=tol)
    assert (output[6:] == 7.0).all(), "padding rows are never written"


def test_graph_shaped_batch_keeps_padding_rows_with_tnd_invariants():
    from vllm_ascend.attention.metadata import graph_shaped_batch

    # 3 real decode requests padded to a captured batch of 4 (q = 1): the padding request
    # gets one query token and one KV token on the null block, so cu[-1] equals the 4 tokens.
    cu, kv = graph_shaped_batch([1, 2, 3, 3], [9, 130, 4, 0], q=1)
    assert cu == [1, 2, 3, 4] and kv == [9, 130, 4, 1]
    # Two draft tokens per request (q = 3), two padding requests.
    cu, kv = graph_shaped_batch([3, 6, 6, 6], [20, 7, 0, 0], q=3)
    assert cu == [3, 6, 9, 12] and kv == [20, 7, 3, 3]


def test_padding_slots_go_to_distinct_null_block_slots():
    from vllm_ascend.attention.impl import null_block_slots_for_padding

    slots = torch.tensor([BS + 3, 2 * BS + 10, -1, -1], dtype=torch.int64)
    mapped = null_block_slots_for_padding(slots)
    assert mapped.tolist() == [BS + 3, 2 * BS + 10, 2, 3]  # block 0, distinct, real kept
