"""The Ascend attention backend as vLLM sees it."""

from __future__ import annotations

from typing import ClassVar

import torch
from vllm.v1.attention.backend import AttentionBackend, AttentionType, MultipleOf
from vllm.v1.kv_cache_interface import KVCacheLayout

from vllm_ascend.attention.impl import AscendAttentionImpl
from vllm_ascend.attention.metadata import AscendAttentionMetadataBuilder

# What torch_npu's npu_fused_infer_attention_score accepts for the one call this backend makes
# (TND query, paged KV): head dims 64/128/192 in TND layout (CANN's tiling check for TND), and
# blocks of 128..512 tokens in multiples of 128 (doc entry, page-attention constraints). The
# platform validates a model against these before any weight is loaded.
SUPPORTED_HEAD_SIZES = (64, 128, 192)
SUPPORTED_BLOCK_SIZES = (128, 256, 384, 512)


class AscendAttentionBackend(AttentionBackend):
    # fp32 is for the CPU backend's reference runs; on an NPU use bf16/fp16 (the platform
    # refuses fp32 there).
    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.float16, torch.bfloat16, torch.float32]
    forward_includes_kv_cache_update = True

    @staticmethod
    def get_name() -> str:
        # Out-of-tree backends are looked up through AttentionBackendEnum.CUSTOM.
        return "CUSTOM"

    @staticmethod
    def get_impl_cls() -> type[AscendAttentionImpl]:
        return AscendAttentionImpl

    @staticmethod
    def get_builder_cls() -> type[AscendAttentionMetadataBuilder]:
        return AscendAttentionMetadataBuilder

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec=None) -> list[int | MultipleOf]:
        return list(SUPPORTED_BLOCK_SIZES)

    @classmethod
    def get_supported_head_sizes(cls) -> list[int]:
        return list(SUPPORTED_HEAD_SIZES)

    @classmethod
    def get_preferred_block_size(cls, default_block_size: int) -> int:
        # vLLM proposes its generic default (16) when --block-size is not given; the paged fused
        # attention reads 128-token blocks fastest, so that is this backend's preference.
        from vllm_ascend.platform import DEFAULT_BLOCK_SIZE

        return DEFAULT_BLOCK_SIZE

    @classmethod
    def supported_kv_cache_layouts(cls) -> tuple[KVCacheLayout, ...]:
        # Layer-compact, token-major pages. The runner allocates the cache itself (dense K and V
        # halves per layer), so this only keeps vLLM's own planning consistent.
        return (KVCacheLayout.LBNHC,)

    @classmethod
    def supports_sliding_window(cls) -> bool:
        return True

    @classmethod
    def supports_attn_type(cls, attn_type: str) -> bool:
        return attn_type == AttentionType.DECODER
