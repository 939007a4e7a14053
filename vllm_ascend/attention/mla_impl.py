"""MLA attention through torch_npu: the latent cache written with npu_scatter_pa_kv_cache, decode
rows through the fused attention's MLA branch, prefill rows through its TND layout.

vLLM's ``MLAAttention`` layer does the model-side work (the absorbed key projection W_UK for
decode queries, the value up-projection W_UV of decode outputs) and calls, per step:
``do_kv_cache_update`` (the new tokens' latent and rope parts into the cache), ``forward_mqa``
for the decode rows and ``forward_mha`` for the prefill rows (see mla_metadata.py).

* Latent cache (worker/kv_cache.py): per layer a no-rope part ``[num_blocks, block_size, 1,
  kv_lora_rank]`` and a rope part ``[num_blocks, block_size, 1, rope_dim]``, each dense, the two
  separate tensors the NPU ops take (``latent_cache_parts``). The write is npu_scatter_pa_kv_cache
  in "Norm" mode with the no-rope part as "key" and the rope part as "value" (the doc allows
  different key and value head sizes).
* Decode: npu_fused_infer_attention_score with ``query_rope``/``key_rope`` (the MLA branch):
  BSND query [B, S, N, 512] (the absorbed no-rope query) and query_rope [B, S, N, 64]; key and
  value are the no-rope cache as (blocknum, blocksize, 512), key_rope the rope cache; S = 1:
  sparse_mode 0 without a mask; S > 1 (speculative verification rows): sparse_mode 3 with the
  compressed causal mask. The kernel takes 32, 64 or 128 heads; fewer heads are padded with
  zero queries whose outputs are dropped.
* Prefill: each prefill attends over its whole sequence. The latent and rope rows of all its
  tokens (context and new) are gathered from the cache, up-projected with kv_b_proj into
  per-head keys and values, and attended with the fused attention's TND layout (causal,
  sparse_mode 3). Context is recomputed per chunk instead of merged from partial states: simple,
  exact, no LSE merge; its cost grows with the context of a chunked prefill. Head dims are
  zero-padded to a pair the TND layout takes (64/64, 128/128, 192/192 or 192/128).
"""

from __future__ import annotations

import torch
from vllm.forward_context import get_forward_context, is_forward_context_available
from vllm.v1.attention.backend import AttentionLayer, AttentionType, MLAAttentionImpl

from vllm_ascend.attention.mla_metadata import AscendMLAMetadata
from vllm_ascend.kernels.npu_ops.attention import TND_HEAD_DIMS
from vllm_ascend.kernels.npu_ops.fia_mla import MLA_HEAD_DIM, MLA_HEADS, MLA_ROPE_DIM
from vllm_ascend.worker.kv_cache import latent_cache_parts

_UNLIMITED = 2147483647
SPARSE_RIGHT_DOWN_CAUSAL = 3


class AscendMLAImpl(MLAAttentionImpl[AscendMLAMetadata]):
    def __init__(self, num_heads: int, head_size: int, scale: float, num_kv_heads: int,
                 alibi_slopes, sliding_window, kv_cache_dtype: str, logits_soft_cap,
                 attn_type: str, kv_sharing_target_layer_name, *, q_lora_rank, kv_lora_rank: int,
                 qk_nope_head_dim: int, qk_rope_head_dim: int, qk_head_dim: int, v_head_dim: int,
                 kv_b_proj, indexer=None, q_pad_num_heads=None, **unsupported) -> None:
        problems = []
        if alibi_slopes is not None:
            problems.append("ALiBi")
        if sliding_window is not None:
            problems.append("sliding-window MLA")
        if logits_soft_cap:
            problems.append("logits soft-capping")
        if attn_type != AttentionType.DECODER:
            problems.append(f"attention type {attn_type}")
        if kv_cache_dtype not in ("auto", "float16", "bfloat16", "float32"):
            problems.append(f"kv_cache_dtype={kv_cache_dtype}")
        if kv_sharing_target_layer_name is not None:
            problems.append("KV sharing")
        if indexer is not None or unsupported.get("topk_indices_buffer") is not None:
            problems.append("sparse MLA (DeepSeek-V3.2 indexer)")
        if (kv_lora_rank, qk_rope_head_dim) != (MLA_HEAD_DIM, MLA_ROPE_DIM):
            problems.append(f"kv_lora_rank {kv_lora_rank} with rope dim {qk_rope_head_dim} (the "
                            f"NPU's MLA attention takes {MLA_HEAD_DIM} and {MLA_ROPE_DIM})")
        if getattr(self, "dcp_world_size", 1) > 1:  # (set by AttentionImplBase.__new__)
            problems.append("decode context parallelism")
        if num_heads > MLA_HEADS[-1]:
            problems.append(f"{num_heads} heads per rank (the NPU's MLA attention takes up to "
                            f"{MLA_HEADS[-1]}; use tensor parallelism)")
        if problems:
            raise NotImplementedError(
                f"vllm-ascend MLA attention does not support {', '.join(problems)} yet")
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = float(scale)
        self.num_kv_heads = num_kv_heads
        self.kv_cache_dtype = kv_cache_dtype
        self.kv_lora_rank = kv_lora_rank
        self.qk_nope_head_dim = qk_nope_head_dim
        self.qk_rope_head_dim = qk_rope_head_dim
        self.qk_head_dim = qk_head_dim
        self.v_head_dim = v_head_dim
        self.kv_b_proj = kv_b_proj
        # Decode: the kernel's head counts (zero query heads pad up to the next one).
        self.decode_heads = next(n for n in MLA_HEADS if n >= num_heads)
        # Prefill: the TND layout's head dims (zero columns pad up to the next legal pair).
        self.prefill_dims = tnd_head_dims(qk_head_dim, v_head_dim)

    # ---- KV cache write ----------------------------------------------------------------------
    def do_kv_cache_update(self, kv_c_normed: torch.Tensor, k_pe: torch.Tensor,
                           kv_cache: torch.Tensor, slot_mapping: torch.Tensor,
                           kv_cache_dtype: str, k_scale: torch.Tensor) -> None:
        meta = _step_metadata()
        if meta is None or kv_cache.numel() == 0:  # profiling run without a KV cache
            return
        # Padding tokens (after the real ones, slot -1) never reach the scatter. The slots are
        # the metadata's: the same as vLLM's ``slot_mapping`` except in a draft forward, where
        # the builder has moved the -1 slots of the middle of the batch to the null block.
        n = meta.num_actual_tokens
        nope, rope = latent_cache_parts(kv_cache)
        torch.ops.npu.npu_scatter_pa_kv_cache(
            kv_c_normed[:n].reshape(n, 1, self.kv_lora_rank).contiguous(),
            k_pe[:n].reshape(n, 1, self.qk_rope_head_dim).contiguous(),
            nope, rope, meta.slot_mapping[:n], cache_mode="Norm")

    # ---- decode rows -------------------------------------------------------------------------
    def forward_mqa(self, q, kv_c_and_k_pe_cache: torch.Tensor, attn_metadata: AscendMLAMetadata,
                    layer: AttentionLayer) -> tuple[torch.Tensor, torch.Tensor | None]:
        decode = attn_metadata.decode
        assert decode is not None
        if isinstance(q, tuple):
            q_nope, q_pe = q
        else:
            q_nope, q_pe = q.split([self.kv_lora_rank, self.qk_rope_head_dim], dim=-1)
        s = decode.query_len  # 1, or 1 + drafts of a verification / first draft pass
        tokens, n = q_nope.shape[:2]
        batch = tokens // s
        query = q_nope.reshape(batch, s, n, self.kv_lora_rank)
        query_rope = q_pe.reshape(batch, s, n, self.qk_rope_head_dim)
        pad = self.decode_heads - n
        if pad:
            query, query_rope = (torch.nn.functional.pad(t, (0, 0, 0, pad))
                                 for t in (query, query_rope))
        nope, rope = latent_cache_parts(kv_c_and_k_pe_cache)
        num_blocks, block_size = nope.shape[:2]
        latent = nope.view(num_blocks, block_size, self.kv_lora_rank)
        out, _ = torch.ops.npu.npu_fused_infer_attention_score(
            query.contiguous(),
            latent,
            latent,
            query_rope=query_rope.contiguous(),
            key_rope=rope.view(num_blocks, block_size, self.qk_rope_head_dim),
            actual_seq_lengths_kv=decode.seq_lens,
            block_table=decode.block_table,
            num_heads=self.decode_heads,
            scale=self.scale,
            input_layout="BSND",
            num_key_value_heads=1,
            # S > 1: causal within the request's new tokens (aligned to the end of its KV).
            atten_mask=decode.attn_mask,
            sparse_mode=SPARSE_RIGHT_DOWN_CAUSAL if s > 1 else 0,
            block_size=block_size,
        )
        return out[:, :, :n].reshape(tokens, n, self.kv_lora_rank), None

    # ---- prefill rows ------------------------------------------------------------------------
    def forward_mha(self, q: torch.Tensor, kv_c_normed: torch.Tensor, k_pe: torch.Tensor,
                    kv_c_and_k_pe_cache: torch.Tensor, attn_metadata: AscendMLAMetadata,
                    k_scale: torch.Tensor, output: torch.Tensor,
                    output_scale: torch.Tensor | None = None) -> None:
        if output_scale is not None:
            raise NotImplementedError("vllm-ascend MLA attention has no fused output "
                                      "quantisation")
        prefill = attn_metadata.prefill
        assert prefill is not None
        n_heads = self.num_heads
        # Every token the prefills attend (context and new), read back from the cache.
        nope, rope = latent_cache_parts(kv_c_and_k_pe_cache)
        latent = nope.view(-1, self.kv_lora_rank).index_select(0, prefill.kv_slots)
        k_rope = rope.view(-1, self.qk_rope_head_dim).index_select(0, prefill.kv_slots)
        kv = self.kv_b_proj(latent)[0].view(-1, n_heads, self.qk_nope_head_dim + self.v_head_dim)
        k_nope, value = kv.split([self.qk_nope_head_dim, self.v_head_dim], dim=-1)
        key = torch.cat([k_nope, k_rope[:, None].expand(-1, n_heads, -1)], dim=-1)
        dq, dv = self.prefill_dims
        query = _pad_last(q.reshape(-1, n_heads, self.qk_head_dim), dq)
        key, value = _pad_last(key, dq), _pad_last(value, dv)
        out, _ = torch.ops.npu.npu_fused_infer_attention_score(
            query.contiguous(),
            key.contiguous(),
            value.contiguous(),
            atten_mask=prefill.attn_mask,
            actual_seq_lengths=prefill.cu_query_lens,
            actual_seq_lengths_kv=prefill.cu_seq_lens,
            num_heads=n_heads,
            scale=self.scale,  # the model's own, not the padded head dim's
            pre_tokens=_UNLIMITED,
            next_tokens=0,
            input_layout="TND",
            num_key_value_heads=n_heads,
            sparse_mode=SPARSE_RIGHT_DOWN_CAUSAL,
        )
        output.view(-1, n_heads, self.v_head_dim).copy_(out[..., :self.v_head_dim])


def tnd_head_dims(qk_head_dim: int, v_head_dim: int) -> tuple[int, int]:
    """The smallest (q/k, v) head-dim pair of the fused attention's TND layout that holds the
    model's: zero columns added to q and k change no score, added to v only output columns
    that are dropped."""
    fitting = [(dq, dv) for dq, dv in TND_HEAD_DIMS if dq >= qk_head_dim and dv >= v_head_dim]
    if not fitting:
        raise NotImplementedError(
            f"MLA head dims q/k {qk_head_dim}, v {v_head_dim} exceed the fused attention's TND "
            f"layout (pairs {TND_HEAD_DIMS})")
    return min(fitting, key=sum)


def _pad_last(t: torch.Tensor, size: int) -> torch.Tensor:
    return t if t.shape[-1] == size else torch.nn.functional.pad(t, (0, size - t.shape[-1]))


def _step_metadata() -> AscendMLAMetadata | None:
    """This step's MLA metadata (one object shared by every MLA layer), from the forward
    context: the cache write needs the real token count, which vLLM does not pass it."""
    if not is_forward_context_available():
        return None
    metadata = get_forward_context().attn_metadata
    if isinstance(metadata, list):
        raise NotImplementedError("vllm-ascend MLA attention does not support micro-batches")
    for meta in (metadata or {}).values():
        if isinstance(meta, AscendMLAMetadata):
            return meta
    return None
