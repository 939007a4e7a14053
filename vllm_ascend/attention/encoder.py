"""Bidirectional attention without a KV cache (encoder-only models, vision encoders) through the
fused attention's TND layout: K/V as packed tensors, no mask (sparse_mode 0)."""

from __future__ import annotations

import torch


def padded_head_size(head_size: int) -> int:
    """The smallest head size the fused attention's TND layout takes that holds head_size."""
    from vllm_ascend.attention.backend import SUPPORTED_HEAD_SIZES

    for size in SUPPORTED_HEAD_SIZES:
        if size >= head_size:
            return size
    raise NotImplementedError(f"head size {head_size} exceeds the fused attention's largest "
                              f"({SUPPORTED_HEAD_SIZES[-1]})")


def bidirectional_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            ends: list[int], scale: float) -> torch.Tensor:
    """q [T, heads, d], k/v [T, kv_heads, d]; sequence i is rows ends[i-1]:ends[i] (cumulative
    ends, strictly increasing, last = T). Each row attends to every row of its own sequence.
    Returns [T, heads, d]."""
    d = q.shape[-1]
    padded = padded_head_size(d)
    if padded != d:
        # The kernel's TND layout takes head dims 64/128/192. Zero columns change no q.k product,
        # and the output's extra columns (from zero V columns) are dropped.
        q, k, v = (torch.nn.functional.pad(t, (0, padded - d)) for t in (q, k, v))
    out, _ = torch.ops.npu.npu_fused_infer_attention_score(
        q.contiguous(), k.contiguous(), v.contiguous(),
        actual_seq_lengths=ends,
        actual_seq_lengths_kv=ends,
        num_heads=q.shape[1],
        scale=scale,  # the model's own 1/sqrt(head_size), not the padded one
        input_layout="TND",
        num_key_value_heads=k.shape[1],
        sparse_mode=0,
    )
    return out[..., :d]
