"""Per-step attention metadata, built once per step and shared by every attention layer."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from vllm.v1.attention.backend import (
    AttentionCGSupport,
    AttentionMetadataBuilder,
    CommonAttentionMetadata,
)

# torch_npu's fused attention takes causal masks in "compressed" form: one lower-triangular
# 2048 x 2048 pattern (True = masked) that the kernel slides along the diagonal (sparse_mode 3/4).
COMPRESSED_MASK_SIZE = 2048


@functools.cache
def compressed_causal_mask(device: torch.device) -> torch.Tensor:
    # A normal tensor even when first built under inference mode: it is cached for the process
    # and shared by every step (and the CPU kernel caches its content check by version counter).
    with torch.inference_mode(False):
        return torch.triu(
            torch.ones(COMPRESSED_MASK_SIZE, COMPRESSED_MASK_SIZE, dtype=torch.bool,
                       device=device),
            diagonal=1,
        )


@dataclass
class AscendAttentionMetadata:
    num_actual_tokens: int
    # Device tensors (ready for graph capture: their storage comes from the runner's buffers).
    slot_mapping: torch.Tensor  # [num_actual_tokens] int64: KV-cache slot of each new token
    block_table: torch.Tensor  # [num_reqs, max_blocks_per_req] int32
    attn_mask: torch.Tensor  # compressed causal mask, [2048, 2048] bool
    # Host integers, as torch_npu's SymInt[] arguments want them; taken from the runner's CPU
    # copies, so building them never waits for the device.
    cu_query_lens: list[int]  # TND actual_seq_lengths: cumulative query ends per request
    seq_lens: list[int]  # paged actual_seq_lengths_kv: total KV length per request
    max_query_len: int


class AscendAttentionMetadataBuilder(AttentionMetadataBuilder[AscendAttentionMetadata]):
    # Eager execution today; graph capture is a later step.
    _cudagraph_support = AttentionCGSupport.NEVER

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        self.attn_mask = compressed_causal_mask(device)

    def build(
        self,
        common_prefix_len: int,
        common_attn_metadata: CommonAttentionMetadata,
        fast_build: bool = False,
    ) -> AscendAttentionMetadata:
        m = common_attn_metadata
        seq_lens_cpu = m.seq_lens_cpu_upper_bound
        if seq_lens_cpu is None:
            raise RuntimeError(
                "vllm-ascend attention needs the runner's host copy of seq_lens "
                "(CommonAttentionMetadata.seq_lens_cpu_upper_bound)"
            )
        cu_query_lens = m.query_start_loc_cpu[1 : m.num_reqs + 1].tolist()
        num_reqs, num_tokens = unpadded_batch(cu_query_lens)
        return AscendAttentionMetadata(
            num_actual_tokens=num_tokens,
            slot_mapping=m.slot_mapping[:num_tokens],
            block_table=m.block_table_tensor[:num_reqs],
            attn_mask=self.attn_mask,
            cu_query_lens=cu_query_lens[:num_reqs],
            seq_lens=seq_lens_cpu[:num_reqs].tolist(),
            max_query_len=m.max_query_len,
        )


def unpadded_batch(cu_query_lens: list[int]) -> tuple[int, int]:
    """(requests, tokens) of the real batch inside a padded one.

    vLLM pads a step for data parallelism (every rank runs the same token count) and for graph
    capture: padding requests have empty queries (their cumulative length repeats the last real
    one), padding tokens sit after the last real token, and their slots are -1. The fused
    attention's TND layout needs the query's token count to equal the last cumulative length,
    and a negative slot must never reach the KV scatter, so attention runs on the real prefix
    only; the padding rows of its output are never read.
    """
    if not cu_query_lens:
        return 0, 0
    num_tokens = cu_query_lens[-1]
    num_reqs = len(cu_query_lens)
    while num_reqs > 1 and cu_query_lens[num_reqs - 2] == num_tokens:
        num_reqs -= 1
    return num_reqs, num_tokens
