"""The Ascend MLA backend as vLLM sees it (DeepSeek-V2/V3 style Multi-head Latent Attention).

The platform selects it for ``use_mla`` models (platform.py ``get_attn_backend_cls``); the impl is
mla_impl.py, the per-step metadata mla_metadata.py, the latent cache layout worker/kv_cache.py.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from vllm.v1.attention.backend import AttentionBackend, AttentionType, MultipleOf
from vllm.v1.attention.backends.mla.prefill.base import MLAPrefillBackend

from vllm_ascend.attention.mla_impl import AscendMLAImpl
from vllm_ascend.attention.mla_metadata import AscendMLAMetadataBuilder
from vllm_ascend.kernels.npu_ops.fia_mla import MLA_BLOCK_SIZES, MLA_HEAD_DIM, MLA_ROPE_DIM

# Blocks of 128 tokens: the MLA decode kernel's 16/128 that the platform's paged layout
# (multiples of 128) also allows.
MLA_SUPPORTED_BLOCK_SIZES = tuple(b for b in MLA_BLOCK_SIZES if b % 128 == 0)


class AscendMLABackend(AttentionBackend):
    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.float16, torch.bfloat16, torch.float32]

    @staticmethod
    def get_name() -> str:
        # Out-of-tree backends are looked up through AttentionBackendEnum.CUSTOM.
        return "CUSTOM"

    @staticmethod
    def get_impl_cls() -> type[AscendMLAImpl]:
        return AscendMLAImpl

    @staticmethod
    def get_builder_cls() -> type[AscendMLAMetadataBuilder]:
        return AscendMLAMetadataBuilder

    @staticmethod
    def get_kv_cache_shape(num_blocks: int, block_size: int, num_kv_heads: int, head_size: int,
                           cache_dtype_str: str = "auto") -> tuple[int, ...]:
        # vLLM's view of a latent cache; the runner allocates it itself (worker/kv_cache.py).
        return (num_blocks, block_size, head_size)

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec=None) -> list[int | MultipleOf]:
        return list(MLA_SUPPORTED_BLOCK_SIZES)

    @classmethod
    def get_supported_head_sizes(cls) -> list[int]:
        return [MLA_HEAD_DIM + MLA_ROPE_DIM]

    @classmethod
    def is_mla(cls) -> bool:
        return True

    @classmethod
    def supports_attn_type(cls, attn_type: str) -> bool:
        return attn_type == AttentionType.DECODER


class AscendMLAPrefillBackend(MLAPrefillBackend):
    """What vLLM's MLA layer asks the platform for (``get_mla_prefill_backend_cls``) when it is
    built. The Ascend impl runs prefill itself (mla_impl.py ``forward_mha``), so nothing calls
    these kernels; they refuse rather than compute something else."""

    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.float16, torch.bfloat16, torch.float32]

    @staticmethod
    def get_name() -> str:
        return "ASCEND_FIA"

    def run_prefill_new_tokens(self, q, k, v, return_softmax_lse, out=None, output_scale=None):
        raise NotImplementedError("vllm-ascend: MLA prefill runs in AscendMLAImpl.forward_mha")

    def run_prefill_context_chunk(self, chunk, q, k, v, out=None):
        raise NotImplementedError("vllm-ascend: MLA prefill runs in AscendMLAImpl.forward_mha")


def check_mla_model(model_config, cache_config) -> None:
    """Refuse, before any weight loads, an MLA model the NPU's MLA kernels cannot run."""
    hf = model_config.hf_text_config
    dims = (getattr(hf, "kv_lora_rank", None), getattr(hf, "qk_rope_head_dim", None))
    if dims != (MLA_HEAD_DIM, MLA_ROPE_DIM):
        raise ValueError(
            f"MLA model {model_config.model} has kv_lora_rank {dims[0]} and qk_rope_head_dim "
            f"{dims[1]}; the NPU's MLA attention takes {MLA_HEAD_DIM} and {MLA_ROPE_DIM}")
    if getattr(hf, "index_topk", None):
        raise ValueError(f"sparse MLA ({model_config.model}: DeepSeek-V3.2 indexer) is not "
                         "supported by vllm-ascend yet")
    if cache_config is not None and cache_config.block_size not in MLA_SUPPORTED_BLOCK_SIZES:
        raise ValueError(
            f"block_size={cache_config.block_size} is not supported for MLA on Ascend: the MLA "
            f"attention takes blocks of {', '.join(map(str, MLA_SUPPORTED_BLOCK_SIZES))} tokens")
