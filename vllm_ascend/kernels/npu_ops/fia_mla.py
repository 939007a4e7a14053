"""The MLA branch of torch_npu.npu_fused_infer_attention_score (FIA): ``query_rope``/``key_rope``.

Doc entry ``npu_fused_infer_attention_score`` of torch-npu 2.13.0, section "query_rope和key_rope
参数约束及支持特性" (Multi-head Latent Attention). The query is the latent (weight-absorbed) query
of D 512, ``query_rope`` its rotary part of D 64; key and value are the paged latent cache (one kv
head, D 512) and ``key_rope`` the paged rotary cache (D 64). Scores are
``scale * (q . k + q_rope . k_rope)``, the output ``softmax @ value`` (D 512).

Only the doc's "sparse 不为4" variant is implemented (the sparse_mode 4 variant, BSND with 128
heads, raises NotImplementedError). Its constraints, each enforced by ``check_mla``:
* query_rope and key_rope both given or both absent;
* query_rope has the query's dtype, key_rope the key's; none of them non-contiguous;
* query S 1..16, N 32/64/128, D 512; query_rope shaped like the query with D 64;
* key N 1 (num_key_value_heads 1), D 512; key_rope shaped like the key with D 64;
* layouts BSH, BSND, BNSD (the doc lists no TND for this variant);
* page attention is required, block_size 16 or 128;
* sparse_mode: Q_S = 1 takes 0 without a mask (or 4 with one); Q_S > 1 takes 3 with the
  compressed mask (or 4).
"""

from __future__ import annotations

import torch

MLA_HEAD_DIM = 512
MLA_ROPE_DIM = 64
MLA_HEADS = (32, 64, 128)
MLA_BLOCK_SIZES = (16, 128)
MLA_MAX_Q_S = 16
MLA_LAYOUTS = ("BSH", "BSND", "BNSD")

_WHERE = "doc: npu_fused_infer_attention_score, query_rope/key_rope constraints"


def _fail(msg: str, exc: type[Exception] = ValueError) -> None:
    raise exc(f"npu_fused_infer_attention_score: {msg} ({_WHERE})")


def check_mla(*, query, key, value, query_rope, key_rope, block_table, input_layout, num_heads,
              kv_heads, sparse_mode, atten_mask) -> None:
    """Raise unless this MLA call is one the NPU kernel accepts (see the module doc)."""
    if (query_rope is None) != (key_rope is None):
        _fail("query_rope and key_rope must be given together")
    if query_rope.dtype != query.dtype or key_rope.dtype != key.dtype:
        _fail(f"query_rope/key_rope dtypes {query_rope.dtype}/{key_rope.dtype} must equal the "
              f"query's/key's {query.dtype}/{key.dtype}", TypeError)
    for name, t in (("query_rope", query_rope), ("key_rope", key_rope)):
        if not t.is_contiguous():
            _fail(f"{name} must be contiguous (stride {tuple(t.stride())})")
    if input_layout not in MLA_LAYOUTS:
        _fail(f"input_layout {input_layout!r} is not one of {MLA_LAYOUTS} for MLA")
    if sparse_mode == 4:
        raise NotImplementedError("npu_fused_infer_attention_score: the MLA sparse_mode 4 "
                                  "variant is not implemented on CPU")
    if block_table is None:
        _fail("MLA needs page attention (block_table)")
    if num_heads not in MLA_HEADS:
        _fail(f"MLA needs num_heads in {MLA_HEADS}, got {num_heads}")
    if kv_heads != 1:
        _fail(f"MLA needs one key/value head, got num_key_value_heads {kv_heads}")
    q_shape = _bsnd(query, input_layout, num_heads)
    r_shape = _bsnd(query_rope, input_layout, num_heads)
    if q_shape[-1] != MLA_HEAD_DIM:
        _fail(f"MLA needs query D {MLA_HEAD_DIM}, got {q_shape[-1]}")
    if r_shape != q_shape[:-1] + (MLA_ROPE_DIM,):
        _fail(f"query_rope {tuple(query_rope.shape)} must match the query "
              f"{tuple(query.shape)} except for D {MLA_ROPE_DIM}")
    if not 1 <= q_shape[1] <= MLA_MAX_Q_S:
        _fail(f"MLA needs query S in 1..{MLA_MAX_Q_S}, got {q_shape[1]}")
    if key.shape[-1] != MLA_HEAD_DIM * (1 if key.dim() == 4 else kv_heads):
        _fail(f"MLA needs key D {MLA_HEAD_DIM}, got key {tuple(key.shape)}")
    if tuple(key_rope.shape) != tuple(key.shape[:-1]) + (MLA_ROPE_DIM,):
        _fail(f"key_rope {tuple(key_rope.shape)} must match the key {tuple(key.shape)} except "
              f"for D {MLA_ROPE_DIM}")
    if tuple(value.shape) != tuple(key.shape):
        _fail(f"value {tuple(value.shape)} must have the key's shape {tuple(key.shape)}")
    block_size = key.shape[1] if key.dim() == 3 else key.shape[2]
    if block_size not in MLA_BLOCK_SIZES:
        _fail(f"MLA page attention takes block_size {MLA_BLOCK_SIZES}, got {block_size}")
    if q_shape[1] == 1:
        if sparse_mode != 0 or atten_mask is not None:
            _fail(f"MLA with Q_S 1 takes sparse_mode 0 without atten_mask, got sparse_mode "
                  f"{sparse_mode} with {'a' if atten_mask is not None else 'no'} mask")
    elif sparse_mode != 3 or atten_mask is None:
        _fail(f"MLA with Q_S > 1 takes sparse_mode 3 with the compressed mask, got sparse_mode "
              f"{sparse_mode}")


def _bsnd(t: torch.Tensor, layout: str, num_heads: int) -> tuple[int, int, int, int]:
    if t.dim() != (3 if layout == "BSH" else 4):
        _fail(f"{tuple(t.shape)} does not have layout {layout}")
    if layout == "BSH":
        b, s, h = t.shape
        if h % num_heads:
            _fail(f"hidden size {h} is not divisible by num_heads {num_heads}")
        return b, s, num_heads, h // num_heads
    if layout == "BSND":
        return tuple(t.shape)
    b, n, s, d = t.shape
    return b, s, n, d


def rope_rows(query_rope: torch.Tensor, layout: str, num_heads: int) -> torch.Tensor:
    """query_rope as flat query rows [B*S, N, 64], in the order of the query's rows."""
    b, s, n, d = _bsnd(query_rope, layout, num_heads)
    if layout == "BNSD":
        query_rope = query_rope.transpose(1, 2)
    return query_rope.reshape(b * s, n, d)


def rope_cache(key_rope: torch.Tensor) -> torch.Tensor:
    """key_rope as [num_blocks, block_size, 1, 64] (the key cache's two paged formats)."""
    if key_rope.dim() == 3:
        return key_rope.unsqueeze(2)
    return key_rope.transpose(1, 2)
