"""Vision-encoder attention (vLLM's MMEncoderAttention) through the fused attention op.

vLLM's vision towers (Qwen2-VL, Qwen2.5-VL and others) hand q/k/v as [batch, seq, heads, head]
(or [batch, seq, hidden]) plus ``cu_seqlens``: the cumulative ends of the images (or windows)
packed along seq, padded with repeats of the last end. Each image attends to itself only:
exactly the fused attention's TND layout with ``actual_seq_lengths`` = those ends.

The kernel takes the ends as a host list. The model builds ``cu_seqlens`` on the host and moves
it to the device through ``maybe_recompute_cu_seqlens``, which here keeps the host copy on the
tensor, so no layer reads it back from the device; a ``cu_seqlens`` built another way is read
back once and the copy kept the same way.
"""

from __future__ import annotations

import numpy as np
import torch
from vllm.model_executor.layers.attention.mm_encoder_attention import MMEncoderAttention

from vllm_ascend.attention.encoder import bidirectional_attention
from vllm_ascend.logger import init_logger

logger = init_logger(__name__)

_HOST_ENDS = "_ascend_host_ends"


def _ends(cu_seqlens: torch.Tensor) -> list[int]:
    """Cumulative ends of the non-empty sequences (padding repeats dropped), from the host copy."""
    ends = getattr(cu_seqlens, _HOST_ENDS, None)
    if ends is None:
        ends = _nonempty_ends(cu_seqlens.tolist())
        setattr(cu_seqlens, _HOST_ENDS, ends)
    return ends


def _nonempty_ends(cu: list[int]) -> list[int]:
    if not cu or cu[0] != 0 or any(b < a for a, b in zip(cu, cu[1:], strict=False)):
        raise ValueError(f"cu_seqlens must start at 0 and never decrease, got {cu[:8]}...")
    return [b for a, b in zip(cu, cu[1:], strict=False) if b > a]


class AscendMMEncoderAttention(MMEncoderAttention):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        logger.info_once("vllm-ascend: vision encoder attention runs the fused attention "
                         "(TND, no mask), whatever ViT backend vLLM reports")

    @classmethod
    def maybe_recompute_cu_seqlens(cls, attn_backend, cu_seqlens: np.ndarray, hidden_size: int,
                                   tp_size: int, device: torch.device,
                                   fp8_padded_hidden_size: int | None = None) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(cu_seqlens)).to(device, non_blocking=True)
        setattr(tensor, _HOST_ENDS, _nonempty_ends(np.asarray(cu_seqlens).tolist()))
        return tensor

    def forward_oot(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    cu_seqlens: torch.Tensor | None = None,
                    max_seqlen: torch.Tensor | None = None,
                    sequence_lengths: torch.Tensor | None = None) -> torch.Tensor:
        if self.fp8_enabled:
            raise NotImplementedError("vllm-ascend: FP8 vision-encoder attention "
                                      "(mm_encoder_attn_dtype='fp8') is not supported")
        bsz, q_len = query.shape[:2]
        kv_len = key.shape[1]
        if cu_seqlens is None:
            if q_len != kv_len:
                raise NotImplementedError("vllm-ascend: vision-encoder attention with query "
                                          f"length {q_len} != key length {kv_len}")
            ends = [q_len * (i + 1) for i in range(bsz)]
        else:
            if bsz != 1:
                raise ValueError(f"cu_seqlens packs sequences along one row; got batch {bsz}")
            ends = _ends(cu_seqlens)
            if ends[-1] != q_len:
                raise ValueError(f"cu_seqlens ends at {ends[-1]}, the input has {q_len} rows")
        out = bidirectional_attention(
            query.reshape(bsz * q_len, self.num_heads, self.head_size),
            key.reshape(bsz * kv_len, self.num_kv_heads, self.head_size),
            value.reshape(bsz * kv_len, self.num_kv_heads, self.head_size),
            ends, self.scale)
        return out.reshape(query.shape if query.dim() == 4 else (bsz, q_len, -1))
