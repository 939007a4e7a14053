"""Attention through torch_npu: npu_scatter_pa_kv_cache writes the new K/V into the paged cache,
npu_fused_infer_attention_score attends over it (TND query layout, paged KV via block_table).

KV cache layout: the model runner allocates each layer's cache as two dense halves,
K = [num_blocks, block_size, num_kv_heads, head_size] and V likewise, and binds the layer a
``[num_blocks, 2, block_size, num_kv_heads, head_size]`` view of them (see
worker/kv_cache.py). Dense halves are what both NPU ops require ("Norm" cache mode, and
the paged (blocknum, blocksize, H) key/value format of the fused attention).

Assumption where torch_npu's docs disagree: the input_layout entry lists TND without page
attention on A2/A3, while the page-attention constraints describe both paged cache formats for a
TND query. We follow the constraints section (one TND call serves prefill, decode and mixed
batches); tests/npu/ checks it against the CPU reference on a real NPU.
"""

from __future__ import annotations

import torch
from vllm.v1.attention.backend import AttentionImpl, AttentionLayer, AttentionType

from vllm_ascend.attention.encoder import bidirectional_attention
from vllm_ascend.attention.metadata import AscendAttentionMetadata

# pre_tokens/next_tokens default: unlimited.
_UNLIMITED = 2147483647
SPARSE_RIGHT_DOWN_CAUSAL = 3
SPARSE_BAND = 4


class AscendAttentionImpl(AttentionImpl[AscendAttentionMetadata]):
    def __init__(
        self,
        num_heads: int,
        head_size: int,
        scale: float,
        num_kv_heads: int | None = None,
        alibi_slopes: list[float] | None = None,
        sliding_window: int | None = None,
        kv_cache_dtype: str = "auto",
        logits_soft_cap: float | None = None,
        attn_type: str = AttentionType.DECODER,
        kv_sharing_target_layer_name: str | None = None,
        **unsupported,
    ) -> None:
        problems = []
        if alibi_slopes is not None:
            problems.append("ALiBi")
        if logits_soft_cap:
            problems.append("logits soft-capping")
        if attn_type not in (AttentionType.DECODER, AttentionType.ENCODER_ONLY):
            problems.append(f"attention type {attn_type}")
        if kv_cache_dtype not in ("auto", "float16", "bfloat16", "float32"):
            problems.append(f"kv_cache_dtype={kv_cache_dtype}")
        if unsupported.get("sinks") is not None:
            problems.append("attention sinks")
        if problems:
            raise NotImplementedError(
                f"vllm-ascend attention does not support {', '.join(problems)} yet"
            )
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = float(scale)
        self.num_kv_heads = num_kv_heads or num_heads
        self.sliding_window = sliding_window
        self.kv_cache_dtype = kv_cache_dtype
        self.kv_sharing_target_layer_name = kv_sharing_target_layer_name
        self.attn_type = attn_type
        if sliding_window is None:
            self.sparse_mode, self.pre_tokens = SPARSE_RIGHT_DOWN_CAUSAL, _UNLIMITED
        else:
            # Band mask: each query attends to itself and the window-1 tokens before it.
            self.sparse_mode, self.pre_tokens = SPARSE_BAND, sliding_window - 1

    def forward(
        self,
        layer: AttentionLayer,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_metadata: AscendAttentionMetadata | None,
        output: torch.Tensor,
        output_scale: torch.Tensor | None = None,
        output_block_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError("vllm-ascend attention has no fused output quantisation")
        if attn_metadata is None:  # profiling run without a KV cache
            return output
        if self.attn_type == AttentionType.ENCODER_ONLY:
            return self._encoder_only(query, key, value, attn_metadata, output)
        n = attn_metadata.num_actual_tokens
        key_cache, value_cache = kv_cache.unbind(1)
        if self.kv_sharing_target_layer_name is None:
            slots = attn_metadata.slot_mapping
            if attn_metadata.graph_shaped:
                slots = null_block_slots_for_padding(slots)
            # The scatter takes contiguous key/value only (doc constraint). With one token the
            # slices of the fused qkv projection are contiguous already (no copy); with more,
            # each is a strided column slice and is copied here.
            torch.ops.npu.npu_scatter_pa_kv_cache(
                key[:n].contiguous(),
                value[:n].contiguous(),
                key_cache,
                value_cache,
                slots,
                cache_mode="Norm",
            )
        num_blocks, block_size = key_cache.shape[:2]
        # vLLM hands the query as a view of the fused qkv projection (token stride qkv_size);
        # the fused attention does not take a non-contiguous query.
        attn_out, _ = torch.ops.npu.npu_fused_infer_attention_score(
            query[:n].contiguous(),
            key_cache.view(num_blocks, block_size, -1),
            value_cache.view(num_blocks, block_size, -1),
            atten_mask=attn_metadata.attn_mask,
            actual_seq_lengths=attn_metadata.cu_query_lens,
            actual_seq_lengths_kv=attn_metadata.seq_lens,
            block_table=attn_metadata.block_table,
            num_heads=self.num_heads,
            scale=self.scale,
            pre_tokens=self.pre_tokens,
            next_tokens=0,
            input_layout="TND",
            num_key_value_heads=self.num_kv_heads,
            sparse_mode=self.sparse_mode,
            block_size=block_size,
        )
        # One copy per layer into vLLM's output buffer. torch_npu's .out overload (with a
        # workspace argument) could write there directly; not used yet.
        output[:n].copy_(attn_out.reshape(output[:n].shape))
        return output


    def _encoder_only(self, query, key, value, attn_metadata: AscendAttentionMetadata,
                      output: torch.Tensor) -> torch.Tensor:
        """Bidirectional attention within each request, no KV cache (encoder-only models)."""
        n = attn_metadata.num_actual_tokens
        d = self.head_size
        out = bidirectional_attention(
            query[:n].reshape(n, self.num_heads, d),
            key[:n].reshape(n, self.num_kv_heads, d),
            value[:n].reshape(n, self.num_kv_heads, d),
            attn_metadata.cu_query_lens, self.scale)
        output[:n].copy_(out.reshape(output[:n].shape))
        return output


def null_block_slots_for_padding(slot_mapping: torch.Tensor) -> torch.Tensor:
    """Padding tokens of a graph-shaped step carry slot -1, which the scatter refuses. Token
    ``i`` of the step writes slot ``i`` of the reserved null block 0 instead: distinct slots
    (the scatter refuses duplicates too), all in block 0 because the platform caps captured
    batch sizes at the block size. Device ops only: no host sync, and captured with the graph
    so every replay maps that step's slots."""
    position = torch.arange(slot_mapping.shape[0], device=slot_mapping.device,
                            dtype=slot_mapping.dtype)
    return torch.where(slot_mapping >= 0, slot_mapping, position)
