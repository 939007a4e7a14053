"""Per-step slot mapping (token -> KV-cache slot) in plain tensor ops, replacing vLLM's Triton
kernel ``ComputeSlotMappingKernel.kernel`` on both backends through
``Platform.register_triton_kernel_overrides``. No host synchronisation: every shape used here is
a launch argument, so it runs the same inside a captured graph."""

from __future__ import annotations

import torch


def compute_slot_mapping(
    num_tokens: int,
    max_num_tokens: int,
    query_start_loc_ptr: torch.Tensor,  # [num_reqs + 1] int32
    positions_ptr: torch.Tensor,  # [>= num_tokens] int64
    block_table_ptr: torch.Tensor,  # [max_num_reqs, block_table_stride] int32
    block_table_stride: int,
    slot_mapping_ptr: torch.Tensor,  # [>= max_num_tokens] int64, written
    KV_CACHE_BLOCK_SIZE: int,
    TOTAL_CP_WORLD_SIZE: int,
    TOTAL_CP_RANK: int,
    CP_KV_CACHE_INTERLEAVE_SIZE: int,
    PAD_ID: int,
    BLOCK_SIZE: int,
) -> None:
    if TOTAL_CP_WORLD_SIZE != 1:
        raise NotImplementedError("context parallelism is not supported by vllm-ascend yet")
    ends = query_start_loc_ptr[1:]
    # Request of each token: the number of request end offsets at or before it (token indices
    # in the ends' dtype, so no conversion is needed).
    token_idx = torch.arange(num_tokens, device=ends.device, dtype=ends.dtype)
    req_idx = torch.searchsorted(ends, token_idx, right=True)
    req_idx.clamp_(max=block_table_ptr.shape[0] - 1)
    pos = positions_ptr[:num_tokens]
    table = block_table_ptr.reshape(-1, block_table_stride)
    block_numbers = table[req_idx, pos // KV_CACHE_BLOCK_SIZE]
    # block * block_size stays far inside int32 (a cache of 2^31 slots would not fit in memory);
    # adding the int64 offset promotes, and the sum is written in place (no temporary copy).
    torch.add(block_numbers * KV_CACHE_BLOCK_SIZE, pos % KV_CACHE_BLOCK_SIZE,
              out=slot_mapping_ptr[:num_tokens])
    slot_mapping_ptr[num_tokens:max_num_tokens] = PAD_ID
