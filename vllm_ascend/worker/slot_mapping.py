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
    device = positions_ptr.device
    token_idx = torch.arange(num_tokens, device=device)
    # Request of each token: the number of request end offsets at or before it.
    ends = query_start_loc_ptr[1:].to(torch.int64)
    req_idx = torch.searchsorted(ends, token_idx, right=True)
    req_idx.clamp_(max=block_table_ptr.shape[0] - 1)
    pos = positions_ptr[:num_tokens]
    block_numbers = block_table_ptr.reshape(-1, block_table_stride)[
        req_idx, pos // KV_CACHE_BLOCK_SIZE
    ].to(torch.int64)
    slot_mapping_ptr[:num_tokens] = block_numbers * KV_CACHE_BLOCK_SIZE + pos % KV_CACHE_BLOCK_SIZE
    slot_mapping_ptr[num_tokens:max_num_tokens] = PAD_ID
