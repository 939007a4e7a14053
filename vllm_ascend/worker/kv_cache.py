"""KV cache allocation for the Ascend attention backend.

vLLM 0.32 packs K and V of a layer side by side in the last dimension of one shared buffer
(``[num_blocks, num_kv_heads, block_size, 2 * head_size]`` per layer). The NPU ops need each of K
and V as a dense ``[num_blocks, block_size, num_kv_heads, head_size]`` tensor (torch_npu's
"Norm" cache mode for npu_scatter_pa_kv_cache and the (blocknum, blocksize, H) paged format of
npu_fused_infer_attention_score), so each layer gets its own allocation of two dense halves.

The layer is bound a ``[num_blocks, 2, block_size, num_kv_heads, head_size]`` view of it: block
``b`` is still dimension 0, so vLLM's block-granular operations on bound caches (copy-on-write
block copies for partial prefix hits, block zeroing) address whole blocks correctly.
"""

from __future__ import annotations

import torch
from vllm.v1.kv_cache_interface import AttentionSpec, KVCacheConfig, UniformTypeKVCacheSpecs


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
