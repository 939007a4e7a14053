"""KV cache allocation for the Ascend attention backend.

vLLM 0.32 packs K and V of a layer side by side in the last dimension of one shared buffer
(``[num_blocks, num_kv_heads, block_size, 2 * head_size]`` per layer). The NPU ops need each of K
and V as a dense ``[num_blocks, block_size, num_kv_heads, head_size]`` tensor (torch_npu's
"Norm" cache mode for npu_scatter_pa_kv_cache and the (blocknum, blocksize, H) paged format of
npu_fused_infer_attention_score), so each layer gets its own allocation of two dense halves.

The layer is bound a ``[num_blocks, 2, block_size, num_kv_heads, head_size]`` view of it: block
``b`` is still dimension 0, so vLLM's block-granular operations on bound caches (copy-on-write
block copies for partial prefix hits, block zeroing) address whole blocks correctly.

MLA layers (``MLAAttentionSpec``: one latent vector of kv_lora_rank + rope_dim per token, no V)
keep the latent cache as the two dense tensors the NPU's MLA ops take: the no-rope part
``[num_blocks, block_size, 1, kv_lora_rank]`` and the rope part ``[num_blocks, block_size, 1,
rope_dim]``, one after the other in the layer's allocation. The layer is bound the no-rope part
(``[num_blocks, block_size, kv_lora_rank]``; vLLM's MLA layer keeps one tensor) and
``latent_cache_parts`` recovers both from it. Caveat: vLLM's copy-on-write block copies (only
issued for partial-block prefix hits, which full-attention-only models do not produce) would
copy the no-rope part of a block only.
"""

from __future__ import annotations

import torch
from vllm.v1.kv_cache_interface import (
    AttentionSpec,
    KVCacheConfig,
    MLAAttentionSpec,
    UniformTypeKVCacheSpecs,
)

# The NPU's MLA attention (npu_fused_infer_attention_score with query_rope/key_rope) takes a
# latent of 512 and a rope part of 64.
from vllm_ascend.kernels.npu_ops.fia_mla import MLA_HEAD_DIM as MLA_KV_LORA_RANK
from vllm_ascend.kernels.npu_ops.fia_mla import MLA_ROPE_DIM


def _layer_specs(kv_cache_config: KVCacheConfig) -> dict[str, AttentionSpec]:
    specs: dict[str, AttentionSpec] = {}
    for group in kv_cache_config.kv_cache_groups:
        spec = group.kv_cache_spec
        for name in group.layer_names:
            layer_spec = (
                spec.kv_cache_specs[name] if isinstance(spec, UniformTypeKVCacheSpecs) else spec
            )
            if not isinstance(layer_spec, AttentionSpec):
                raise NotImplementedError(
                    f"vllm-ascend supports attention KV caches only; layer {name} has "
                    f"{type(layer_spec).__name__}"
                )
            specs[name] = layer_spec
    return specs


def allocate_kv_caches(
    kv_cache_config: KVCacheConfig, kernel_block_sizes: list[int], device: torch.device
) -> dict[str, torch.Tensor]:
    """Layer name -> ``[num_blocks, 2, block_size, num_kv_heads, head_size]`` view."""
    specs = _layer_specs(kv_cache_config)
    caches: dict[str, torch.Tensor] = {}
    for tensor in kv_cache_config.kv_cache_tensors:
        num_blocks = kv_cache_config.num_blocks_of(tensor)
        for name in tensor.layers:
            spec = specs[name]
            if isinstance(spec, MLAAttentionSpec):
                caches[name] = _allocate_latent(spec, num_blocks, kernel_block_sizes, device)
                continue
            if spec.head_size_v != spec.head_size:
                raise NotImplementedError("vllm-ascend needs equal K and V head sizes")
            if any(size != spec.block_size for size in kernel_block_sizes):
                raise NotImplementedError(
                    f"kernel block sizes {kernel_block_sizes} differ from block_size "
                    f"{spec.block_size}; vllm-ascend uses one block size per cache"
                )
            halves = torch.zeros(
                (2, num_blocks, spec.block_size, spec.num_kv_heads, spec.head_size),
                dtype=spec.dtype,
                device=device,
            )
            caches[name] = halves.transpose(0, 1)
    return caches


def _allocate_latent(spec: MLAAttentionSpec, num_blocks: int, kernel_block_sizes: list[int],
                     device: torch.device) -> torch.Tensor:
    if spec.head_size != MLA_KV_LORA_RANK + MLA_ROPE_DIM:
        raise NotImplementedError(
            f"vllm-ascend MLA needs a latent of {MLA_KV_LORA_RANK} + rope {MLA_ROPE_DIM} per "
            f"token (the NPU's MLA attention), the model's is {spec.head_size}")
    if any(size != spec.block_size for size in kernel_block_sizes):
        raise NotImplementedError(f"kernel block sizes {kernel_block_sizes} differ from "
                                  f"block_size {spec.block_size}")
    tokens = num_blocks * spec.block_size
    storage = torch.zeros(tokens * spec.head_size, dtype=spec.dtype, device=device)
    return storage[:tokens * MLA_KV_LORA_RANK].view(num_blocks, spec.block_size,
                                                   MLA_KV_LORA_RANK)


def latent_cache_parts(bound: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(no-rope part, rope part) of an MLA layer's latent cache, each ``[num_blocks, block_size,
    1, dim]``, from the tensor bound to the layer (the no-rope part; the rope part follows it
    in the same allocation)."""
    num_blocks, block_size, rank = bound.shape
    tokens = num_blocks * block_size
    offset = bound.storage_offset() + tokens * rank
    if bound.untyped_storage().nbytes() < (offset + tokens * MLA_ROPE_DIM) * bound.element_size():
        raise ValueError("not an MLA latent cache allocated by vllm_ascend.worker.kv_cache")
    rope = bound.new_empty(0).set_(bound.untyped_storage(), offset,
                                   (num_blocks, block_size, 1, MLA_ROPE_DIM))
    return bound.view(num_blocks, block_size, 1, rank), rope
