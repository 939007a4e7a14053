"""CPU kernel of torch_npu.npu_fused_infer_attention_score (FIA), the inference attention op.

Covered (doc entry ``npu_fused_infer_attention_score`` of torch-npu 2.13.0):

* layouts ``BSH``, ``BSND``, ``BNSD``, ``BNSD_BSND`` (BNSD in, BSND out) and ``TND``;
* ``actual_seq_lengths``: per-batch valid query length for B-layouts (one value is broadcast, extra
  values are ignored, and it is ignored when the query's S is 1); for ``TND`` it is required and
  CUMULATIVE (entry b = total query tokens of batches 0..b), its length is the batch count;
* ``actual_seq_lengths_kv``: per-batch valid kv length; for ``TND`` without paging it is required
  and CUMULATIVE, with paging (``block_table``) it is the PER-SEQUENCE kv length in every layout;
* paged KV (``block_table`` [B, max_blocks] int32 + ``block_size``): key/value are the caches
  [num_blocks, block_size, KV_N*D] (all layouts) or [num_blocks, KV_N, block_size, D] (query
  layout BNSD/BNSD_BSND/TND only, as the doc restricts); the kv tokens of sequence b are the first
  ``actual_seq_lengths_kv[b]`` slots of its blocks, in block-table order;
* GQA (``num_key_value_heads``; 0 means equal to ``num_heads``), ``scale``;
* ``sparse_mode`` 0 (optional full ``atten_mask``; with a mask, ``pre_tokens``/``next_tokens``
  bound a band whose origin is the top-left corner), 1 (full mask, required), 2 (left-up causal),
  3 (right-down causal) and 4 (band with ``pre_tokens``/``next_tokens`` from the bottom-right
  corner, i.e. a sliding window). Modes 2-4 require the compressed 2048x2048 mask, whose values
  are not read: the doc makes the caller guarantee it is the lower-triangular template.
  "Right-down" means query row i of a sequence with q_len query and kv_len kv tokens sits at kv
  position kv_len - q_len + i (the queries are the LAST tokens of the kv sequence);
* ``softmax_lse_flag``: LSE (natural log, of the scaled and masked scores) as float32
  [B, N, S, 1] or [T, N, 1] for TND; otherwise the meta function's placeholder, an empty [0].

Mask values: True/1 = masked (not attended). Everything is computed in float32 and the output is
returned in the query dtype. Everything quantisation-, rope-, prefix-, padding- or pse-related
raises NotImplementedError naming the argument.
"""

from __future__ import annotations

import math

import torch

from vllm_ascend.kernels.npu_library import npu_op

INT_MAX = 2147483647
COMPRESSED_MASK_SIZE = 2048

# Working-set limits (float32 elements) per vectorised chunk of sequences: the score tensor and the
# gathered key+value. Module attributes so tests can shrink them to exercise the chunking.
SCORE_BUDGET = 1 << 24
KV_BUDGET = 1 << 25

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# (query layout, output layout) per input_layout this implementation supports.
_LAYOUTS = {
    "BSH": ("BSH", "BSH"),
    "BSND": ("BSND", "BSND"),
    "BNSD": ("BNSD", "BNSD"),
    "BNSD_BSND": ("BNSD", "BSND"),
    "TND": ("TND", "TND"),
}
_QUERY_DIMS = {"BSH": 3, "BSND": 4, "BNSD": 4, "TND": 3}

_UNSUPPORTED_TENSOR_ARGS = (
    "pse_shift", "dequant_scale1", "quant_scale1", "dequant_scale2", "quant_scale2",
    "quant_offset2", "antiquant_scale", "antiquant_offset", "key_antiquant_scale",
    "key_antiquant_offset", "value_antiquant_scale", "value_antiquant_offset",
    "query_padding_size", "kv_padding_size", "key_shared_prefix", "value_shared_prefix",
    "actual_shared_prefix_len", "query_rope", "key_rope", "key_rope_antiquant_scale",
)
_UNSUPPORTED_MODE_ARGS = ("antiquant_mode", "key_antiquant_mode", "value_antiquant_mode")

_SCHEMA = (
    "npu_fused_infer_attention_score(Tensor query, Tensor key, Tensor value, *, "
    "Tensor? pse_shift=None, Tensor? atten_mask=None, SymInt[]? actual_seq_lengths=None, "
    "SymInt[]? actual_seq_lengths_kv=None, Tensor? dequant_scale1=None, "
    "Tensor? quant_scale1=None, Tensor? dequant_scale2=None, Tensor? quant_scale2=None, "
    "Tensor? quant_offset2=None, Tensor? antiquant_scale=None, Tensor? antiquant_offset=None, "
    "Tensor? key_antiquant_scale=None, Tensor? key_antiquant_offset=None, "
    "Tensor? value_antiquant_scale=None, Tensor? value_antiquant_offset=None, "
    "Tensor? block_table=None, Tensor? query_padding_size=None, Tensor? kv_padding_size=None, "
    "Tensor? key_shared_prefix=None, Tensor? value_shared_prefix=None, "
    "SymInt[]? actual_shared_prefix_len=None, Tensor? query_rope=None, Tensor? key_rope=None, "
    "Tensor? key_rope_antiquant_scale=None, int num_heads=1, float scale=1.0, "
    "int pre_tokens=2147483647, int next_tokens=2147483647, str input_layout=\"BSH\", "
    "int num_key_value_heads=0, int sparse_mode=0, int inner_precise=0, int block_size=0, "
    "int antiquant_mode=0, int key_antiquant_mode=0, int value_antiquant_mode=0, "
    "bool softmax_lse_flag=False) -> (Tensor, Tensor)"
)


def _err(msg: str) -> str:
    return f"npu_fused_infer_attention_score: {msg}"


# ----------------------------------------------------------------------------------------------
# shapes (shared by the fake and the CPU kernel)
# ----------------------------------------------------------------------------------------------


def _query_bsnd(query: torch.Tensor, q_layout: str, num_heads: int):
    """(B, S, N, D) of a B-layout query."""
    if q_layout == "BSH":
        b, s, h = query.shape
        if h % num_heads:
            raise ValueError(_err(f"query hidden size {h} is not divisible by num_heads "
                                  f"{num_heads}"))
        return b, s, num_heads, h // num_heads
    if q_layout == "BSND":
        b, s, n, d = query.shape
        return b, s, n, d
    b, n, s, d = query.shape  # BNSD
    return b, s, n, d


def _value_head_dim(value: torch.Tensor, paged: bool, q_layout: str, kv_heads: int) -> int:
    if paged:
        if value.dim() == 3:
            return value.shape[2] // kv_heads
        if value.dim() == 4:
            return value.shape[3]
        raise NotImplementedError(_err(
            f"paged value with {value.dim()} dims: only [num_blocks, block_size, H] and "
            "[num_blocks, KV_N, block_size, D] are implemented (the 5-D NZ cache is not)"))
    if q_layout == "BSH":
        return value.shape[2] // kv_heads
    if q_layout in ("BSND", "BNSD"):
        return value.shape[3]
    return value.shape[2]  # TND


def _out_shapes(query, value, num_heads, input_layout, num_key_value_heads, paged):
    if input_layout not in _LAYOUTS:
        raise NotImplementedError(_err(
            f"input_layout {input_layout!r} is not implemented (supported: {', '.join(_LAYOUTS)})"))
    q_layout, out_layout = _LAYOUTS[input_layout]
    if query.dim() != _QUERY_DIMS[q_layout]:
        raise ValueError(_err(f"layout {input_layout} needs a {_QUERY_DIMS[q_layout]}-D query, "
                              f"got shape {tuple(query.shape)}"))
    if num_heads <= 0:
        raise ValueError(_err(f"num_heads must be > 0, got {num_heads}"))
    kv_heads = num_key_value_heads or num_heads
    dv = _value_head_dim(value, paged, q_layout, kv_heads)
    if q_layout == "TND":
        t, n, d = query.shape
        dv = dv or d
        return q_layout, out_layout, [t, n, dv], [t, n, 1]
    b, s, n, d = _query_bsnd(query, q_layout, num_heads)
    dv = dv or d
    out = {"BSH": [b, s, n * dv], "BSND": [b, s, n, dv], "BNSD": [b, n, s, dv]}[out_layout]
    return q_layout, out_layout, out, [b, n, s, 1]


def _fia_fake(query, key, value, *, atten_mask=None, block_table=None, num_heads=1,
              input_layout="BSH", num_key_value_heads=0, softmax_lse_flag=False, **_unused):
    _, _, out_shape, lse_shape = _out_shapes(query, value, num_heads, input_layout,
                                             num_key_value_heads, block_table is not None)
    out = query.new_empty(out_shape)
    lse = query.new_empty(lse_shape if softmax_lse_flag else [0], dtype=torch.float32)
    return out, lse


# ----------------------------------------------------------------------------------------------
# CPU kernel
# ----------------------------------------------------------------------------------------------


def _per_batch(values, batch: int, default: int, name: str) -> list[int]:
    """Doc rule for non-cumulative length lists: length 1 broadcasts, >= B uses the first B."""
    if values is None:
        return [default] * batch
    values = [int(v) for v in values]
    if len(values) == 1:
        values = values * batch
    elif len(values) >= batch:
        values = values[:batch]
    else:
        raise ValueError(_err(f"{name} has {len(values)} entries for batch {batch} "
                              "(need 1 or >= batch)"))
    if any(v < 0 for v in values):
        raise ValueError(_err(f"{name} must be non-negative, got {values}"))
    return values


def _cumulative(values, name: str, total: int) -> tuple[list[int], list[int]]:
    """Doc rule for TND: entry b is the running total; returns (starts, lengths)."""
    if values is None:
        raise ValueError(_err(f"{name} is required for layout TND (cumulative lengths)"))
    ends = [int(v) for v in values]
    starts = [0] + ends[:-1]
    lengths = [e - s for s, e in zip(starts, ends, strict=False)]
    if any(n < 0 for n in lengths) or (ends and ends[0] < 0):
        raise ValueError(_err(f"{name} must be non-decreasing and non-negative, got {ends}"))
    if ends and ends[-1] > total:
        raise ValueError(_err(f"{name} ends at {ends[-1]} but the tensor has {total} tokens"))
    return starts, lengths


def _kv_view(t: torch.Tensor, q_layout: str, kv_heads: int, name: str) -> torch.Tensor:
    """Dense (non-paged) key/value as [B, S_kv, KV_N, D] or [T_kv, KV_N, D] for TND."""
    want = _QUERY_DIMS[q_layout]
    if t.dim() != want:
        raise ValueError(_err(f"{name} must be {want}-D for layout {q_layout}, "
                              f"got {tuple(t.shape)}"))
    if q_layout == "BSH":
        b, s, h = t.shape
        if h % kv_heads:
            raise ValueError(_err(f"{name} hidden size {h} is not divisible by "
                                  f"num_key_value_heads {kv_heads}"))
        return t.reshape(b, s, kv_heads, h // kv_heads)
    if q_layout == "BNSD":
        t = t.transpose(1, 2)
    if t.shape[-2] != kv_heads:
        raise ValueError(_err(f"{name} has {t.shape[-2]} heads, num_key_value_heads is {kv_heads}"))
    return t


def _cache_view(t: torch.Tensor, q_layout: str, kv_heads: int, name: str) -> torch.Tensor:
    """Paged cache as [num_blocks, block_size, KV_N, D]."""
    if t.dim() == 3:
        nb, bs, h = t.shape
        if h % kv_heads:
            raise ValueError(_err(f"{name} cache hidden size {h} is not divisible by "
                                  f"num_key_value_heads {kv_heads}"))
        return t.reshape(nb, bs, kv_heads, h // kv_heads)
    if t.dim() == 4:
        if q_layout not in ("BNSD", "TND"):
            raise ValueError(_err(
                f"a [num_blocks, KV_N, block_size, D] {name} cache needs query layout BNSD or TND "
                f"(the doc allows only [num_blocks, block_size, H] for {q_layout})"))
        if t.shape[1] != kv_heads:
            raise ValueError(_err(f"{name} cache has {t.shape[1]} heads, num_key_value_heads is "
                                  f"{kv_heads}"))
        return t.transpose(1, 2)
    raise NotImplementedError(_err(
        f"paged {name} with {t.dim()} dims: only [num_blocks, block_size, H] and "
        "[num_blocks, KV_N, block_size, D] are implemented (the 5-D NZ cache is not)"))


def _full_mask(mask: torch.Tensor, batch: int, q_s: int, tnd: bool) -> torch.Tensor:
    """A full (sparse_mode 0/1) mask as bool [1 or B, Q, KV]."""
    if tnd:
        raise NotImplementedError(_err(
            "a full atten_mask with layout TND is not implemented (the doc allows TND only with "
            "sparse_mode 0 without mask, or 3/4 with the compressed mask)"))
    if mask.dtype not in (torch.bool, torch.int8, torch.uint8):
        raise TypeError(_err(f"atten_mask must be bool, int8 or uint8, got {mask.dtype}"))
    m = mask != 0
    if m.dim() == 2:
        # (B, KV_S) when Q_S is 1, else (Q_S, KV_S).
        return m.unsqueeze(1) if q_s == 1 else m.unsqueeze(0)
    if m.dim() == 3 and m.shape[0] == 1:
        return m
    if m.dim() == 4 and m.shape[1] == 1 and m.shape[0] in (1, batch):
        return m[:, 0]
    raise ValueError(_err(f"atten_mask shape {tuple(mask.shape)} is not one of (1,Q_S,KV_S), "
                          "(B,1,Q_S,KV_S), (1,1,Q_S,KV_S), (Q_S,KV_S) or (B,KV_S) for Q_S=1"))


def _check_compressed(mask: torch.Tensor | None, sparse_mode: int) -> None:
    n = COMPRESSED_MASK_SIZE
    if mask is None:
        raise ValueError(_err(f"sparse_mode {sparse_mode} requires the compressed {n}x{n} "
                              "atten_mask"))
    if tuple(mask.shape) not in ((n, n), (1, n, n), (1, 1, n, n)):
        raise ValueError(_err(f"sparse_mode {sparse_mode} requires atten_mask of shape ({n},{n}), "
                              f"(1,{n},{n}) or (1,1,{n},{n}), got {tuple(mask.shape)}"))


@npu_op(_SCHEMA, fake=_fia_fake)
def npu_fused_infer_attention_score(
    query, key, value, *, pse_shift=None, atten_mask=None, actual_seq_lengths=None,
    actual_seq_lengths_kv=None, dequant_scale1=None, quant_scale1=None, dequant_scale2=None,
    quant_scale2=None, quant_offset2=None, antiquant_scale=None, antiquant_offset=None,
    key_antiquant_scale=None, key_antiquant_offset=None, value_antiquant_scale=None,
    value_antiquant_offset=None, block_table=None, query_padding_size=None, kv_padding_size=None,
    key_shared_prefix=None, value_shared_prefix=None, actual_shared_prefix_len=None,
    query_rope=None, key_rope=None, key_rope_antiquant_scale=None, num_heads=1, scale=1.0,
    pre_tokens=INT_MAX, next_tokens=INT_MAX, input_layout="BSH", num_key_value_heads=0,
    sparse_mode=0, inner_precise=0, block_size=0, antiquant_mode=0, key_antiquant_mode=0,
    value_antiquant_mode=0, softmax_lse_flag=False,
):
    """torch_npu.npu_fused_infer_attention_score (doc entry of the same name): see module doc.

    out = softmax(scale * q @ k^T masked) @ v per head, kv head = q head // (N / KV_N).
    Assumptions where the doc is silent:
    * a query row with nothing to attend to (all masked, kv length 0, or past the valid query
      length) gets output 0 and LSE -inf (the doc fills zeros for an empty key);
    * inner_precise only selects NPU precision modes; float32 covers all of them here;
    * with sparse_mode 0 and no mask the doc says pre_tokens/next_tokens are ignored; where they
      would actually cut the attention we raise instead (ambiguous: use sparse_mode 4);
    * sparse_mode 2 with a single-token query (Q_S = 1, where the doc calls sparse_mode void) is
      ambiguous and raises; modes 3/4 keep their right-down meaning there (decode sliding window);
    * a negative slot in block_table past a sequence's last used block is never read.
    """
    args = locals()
    for name in _UNSUPPORTED_TENSOR_ARGS:
        if args[name] is not None:
            raise NotImplementedError(_err(f"argument {name} is not implemented on CPU"))
    for name in _UNSUPPORTED_MODE_ARGS:
        if args[name] != 0:
            raise NotImplementedError(_err(f"argument {name}={args[name]} is not implemented "
                                           "on CPU"))
    if inner_precise not in (0, 1, 2, 3):
        raise ValueError(_err(f"inner_precise must be 0..3, got {inner_precise}"))
    if sparse_mode not in (0, 1, 2, 3, 4):
        raise NotImplementedError(_err(f"sparse_mode {sparse_mode} is not implemented "
                                       "(supported: 0, 1, 2, 3, 4)"))
    for name, t in (("query", query), ("key", key), ("value", value)):
        if t.dtype not in _FLOAT_DTYPES:
            raise NotImplementedError(_err(
                f"{name} dtype {t.dtype} is not implemented (int8/int4 quantised attention)"))
    if key.dtype != query.dtype or value.dtype != query.dtype:
        raise TypeError(_err(f"query/key/value dtypes differ: {query.dtype}, {key.dtype}, "
                             f"{value.dtype}"))

    paged = block_table is not None
    q_layout, out_layout, out_shape, lse_shape = _out_shapes(
        query, value, num_heads, input_layout, num_key_value_heads, paged)
    kv_heads = num_key_value_heads or num_heads
    if num_heads % kv_heads:
        raise ValueError(_err(f"num_heads {num_heads} is not a multiple of num_key_value_heads "
                              f"{kv_heads}"))
    group = num_heads // kv_heads

    # ---- query as flat rows [R, N, D] plus per-sequence (start, length) ----
    tnd = q_layout == "TND"
    if tnd:
        total_rows, n_q, d = query.shape
        q_flat = query
        q_starts, q_lens = _cumulative(actual_seq_lengths, "actual_seq_lengths", total_rows)
        batch = len(q_lens)
        q_s = None
    else:
        batch, q_s, n_q, d = _query_bsnd(query, q_layout, num_heads)
        q_bsnd = query.transpose(1, 2) if q_layout == "BNSD" else query
        q_flat = q_bsnd.reshape(batch * q_s, n_q, d)
        q_starts = [b * q_s for b in range(batch)]
        # The doc: actual_seq_lengths is void when Q_S is 1.
        q_lens = _per_batch(None if q_s == 1 else actual_seq_lengths, batch, q_s,
                            "actual_seq_lengths")
        if any(n > q_s for n in q_lens):
            raise ValueError(_err(f"actual_seq_lengths {q_lens} exceed the query S {q_s}"))
    if n_q != num_heads:
        raise ValueError(_err(f"query has {n_q} heads but num_heads is {num_heads}"))

    # ---- key/value ----
    if paged:
        k_cache = _cache_view(key, q_layout, kv_heads, "key")
        v_cache = _cache_view(value, q_layout, kv_heads, "value")
        n_blocks, bs = k_cache.shape[:2]
        if tuple(v_cache.shape[:3]) != tuple(k_cache.shape[:3]):
            raise ValueError(_err(f"key cache {tuple(key.shape)} and value cache "
                                  f"{tuple(value.shape)} do not match"))
        if block_size != bs:
            raise ValueError(_err(f"block_size {block_size} does not match the cache's block "
                                  f"size {bs}"))
        if block_table.dim() != 2 or block_table.shape[0] != batch:
            raise ValueError(_err(f"block_table must be [B={batch}, max_blocks], got "
                                  f"{tuple(block_table.shape)}"))
        if actual_seq_lengths_kv is None:
            raise ValueError(_err("actual_seq_lengths_kv is required with block_table"))
        kv_lens = _per_batch(actual_seq_lengths_kv, batch, 0, "actual_seq_lengths_kv")
        max_blocks = block_table.shape[1]
        if any(math.ceil(n / bs) > max_blocks for n in kv_lens):
            raise ValueError(_err(f"actual_seq_lengths_kv {kv_lens} need more than the "
                                  f"{max_blocks} blocks per sequence of block_table"))
        kv_starts = None
        dk = k_cache.shape[3]
    else:
        k_dense = _kv_view(key, q_layout, kv_heads, "key")
        v_dense = _kv_view(value, q_layout, kv_heads, "value")
        if tuple(k_dense.shape[:-1]) != tuple(v_dense.shape[:-1]):
            raise ValueError(_err(f"key {tuple(key.shape)} and value {tuple(value.shape)} differ"))
        if tnd:
            kv_starts, kv_lens = _cumulative(actual_seq_lengths_kv, "actual_seq_lengths_kv",
                                             k_dense.shape[0])
            if len(kv_lens) != batch:
                raise ValueError(_err(f"actual_seq_lengths_kv has {len(kv_lens)} entries, "
                                      f"actual_seq_lengths {batch}"))
            k_rows, v_rows = k_dense, v_dense
        else:
            if k_dense.shape[0] != batch:
                raise ValueError(_err(f"key batch {k_dense.shape[0]} != query batch {batch}"))
            s_kv = k_dense.shape[1]
            kv_lens = _per_batch(actual_seq_lengths_kv, batch, s_kv, "actual_seq_lengths_kv")
            if any(n > s_kv for n in kv_lens):
                raise ValueError(_err(f"actual_seq_lengths_kv {kv_lens} exceed key S {s_kv}"))
            kv_starts = [b * s_kv for b in range(batch)]
            k_rows = k_dense.reshape(batch * s_kv, kv_heads, k_dense.shape[-1])
            v_rows = v_dense.reshape(batch * s_kv, kv_heads, v_dense.shape[-1])
        dk = k_dense.shape[-1]
    if dk != d:
        raise ValueError(_err(f"key head dim {dk} != query head dim {d}"))

    # ---- mask semantics ----
    full_mask = None
    band = None  # (origin, pre, next) with origin "left_up" or "right_down"
    causal = None  # "left_up" or "right_down"
    max_len = max([0] + q_lens + kv_lens)
    if sparse_mode == 0:
        if atten_mask is not None:
            full_mask = _full_mask(atten_mask, batch, q_s, tnd)
            if pre_tokens < max_len or next_tokens < max_len:
                band = ("left_up", pre_tokens, next_tokens)
        elif pre_tokens < max_len - 1 or next_tokens < max_len - 1:
            raise NotImplementedError(_err(
                f"pre_tokens={pre_tokens}/next_tokens={next_tokens} with sparse_mode=0 and no "
                "atten_mask: the doc says they are then ignored, so a window here is ambiguous; "
                "use sparse_mode=4 with the compressed 2048x2048 mask for a sliding window"))
    elif sparse_mode == 1:
        if atten_mask is None:
            raise ValueError(_err("sparse_mode 1 requires a full atten_mask"))
        full_mask = _full_mask(atten_mask, batch, q_s, tnd)
    else:
        _check_compressed(atten_mask, sparse_mode)
        if sparse_mode == 2:
            if q_s == 1:
                raise NotImplementedError(_err(
                    "sparse_mode 2 (left-up causal) with a single-token query is ambiguous (the "
                    "doc says sparse_mode is void for Q_S=1); use sparse_mode 3 for decode"))
            causal = "left_up"
        elif sparse_mode == 3:
            causal = "right_down"
        else:
            band = ("right_down", pre_tokens, next_tokens)
    if full_mask is not None:
        if full_mask.shape[0] not in (1, batch):
            raise ValueError(_err(f"atten_mask batch {full_mask.shape[0]} != {batch}"))
        if (max(q_lens, default=0) > full_mask.shape[1]
                or max(kv_lens, default=0) > full_mask.shape[2]):
            raise ValueError(_err(f"atten_mask {tuple(atten_mask.shape)} is smaller than the "
                                  f"query/kv lengths {q_lens}/{kv_lens}"))

    # ---- work items: (batch index, first query row, end query row) ----
    items = []
    for b in range(batch):
        ql, kl = q_lens[b], kv_lens[b]
        if ql == 0 or kl == 0:
            continue
        rows_per = max(1, SCORE_BUDGET // max(1, num_heads * kl))
        for r0 in range(0, ql, rows_per):
            items.append((b, r0, min(ql, r0 + rows_per)))

    dv = out_shape[-1] // num_heads if out_layout == "BSH" else out_shape[-1]
    out_rows = torch.zeros(q_flat.shape[0], num_heads, dv, dtype=torch.float32)
    lse_rows = torch.full((q_flat.shape[0], num_heads), float("-inf"), dtype=torch.float32)

    # Similar kv lengths share a chunk, so little padding is computed.
    items.sort(key=lambda it: (kv_lens[it[0]], it[2] - it[1]))
    chunk: list = []
    for item in items + [None]:
        if item is not None:
            cand = chunk + [item]
            c = len(cand)
            max_r = max(r1 - r0 for _, r0, r1 in cand)
            max_kv = max(kv_lens[b] for b, _, _ in cand)
            fits = (c * num_heads * max_r * max_kv <= SCORE_BUDGET
                    and c * max_kv * kv_heads * (d + dv) <= KV_BUDGET)
            if fits or not chunk:
                chunk = cand
                continue
        if chunk:
            ctx = dict(q_flat=q_flat, q_starts=q_starts, q_lens=q_lens, kv_lens=kv_lens,
                       kv_heads=kv_heads, group=group, scale=scale, full_mask=full_mask,
                       band=band, causal=causal)
            if paged:
                ctx.update(paged=True, k_cache=k_cache, v_cache=v_cache, block_table=block_table)
            else:
                ctx.update(paged=False, k_rows=k_rows, v_rows=v_rows, kv_starts=kv_starts)
            _run_chunk(chunk, ctx, out_rows, lse_rows)
        chunk = [item] if item is not None else []

    # ---- outputs in the documented layouts ----
    if tnd:
        out = out_rows
        lse = lse_rows.unsqueeze(-1)
    else:
        out = out_rows.reshape(batch, q_s, num_heads, dv)
        lse = lse_rows.reshape(batch, q_s, num_heads).transpose(1, 2).unsqueeze(-1)
        if out_layout == "BSH":
            out = out.reshape(batch, q_s, num_heads * dv)
        elif out_layout == "BNSD":
            out = out.transpose(1, 2)
    out = out.to(query.dtype).contiguous()
    assert list(out.shape) == out_shape and list(lse.shape) == lse_shape
    if softmax_lse_flag:
        return out, lse.contiguous()
    return out, torch.empty(0, dtype=torch.float32)


def _run_chunk(chunk, ctx, out_rows, lse_rows) -> None:
    """Attention for a list of (batch, r0, r1) items, padded to one batched computation."""
    q_flat = ctx["q_flat"]
    kv_lens = ctx["kv_lens"]
    kv_heads, group = ctx["kv_heads"], ctx["group"]
    c = len(chunk)
    bidx = torch.tensor([b for b, _, _ in chunk])
    r0s = torch.tensor([r0 for _, r0, _ in chunk])
    nrows = torch.tensor([r1 - r0 for _, r0, r1 in chunk])
    kvl = torch.tensor([kv_lens[b] for b, _, _ in chunk])
    max_r = int(nrows.max())
    max_kv = int(kvl.max())

    ar_r = torch.arange(max_r)
    ar_kv = torch.arange(max_kv)
    row_valid = ar_r[None, :] < nrows[:, None]  # [C, R]
    kv_valid = ar_kv[None, :] < kvl[:, None]  # [C, KV]

    # query rows -> [C, KV_N, G, R, D]
    q_start = torch.tensor([ctx["q_starts"][b] for b, _, _ in chunk]) + r0s
    q_idx = (q_start[:, None] + ar_r[None, :]).clamp(max=q_flat.shape[0] - 1)
    q = q_flat[q_idx].float()  # [C, R, N, D]
    # -> [C, KV_N, G*R, D]: heads sharing a kv head are folded into the rows of one matmul.
    q = q.reshape(c, max_r, kv_heads, group, -1).permute(0, 2, 3, 1, 4)
    q = q.reshape(c, kv_heads, group * max_r, -1)

    # key/value -> [C, KV, KV_N, D]
    if ctx["paged"]:
        k_cache, v_cache = ctx["k_cache"], ctx["v_cache"]
        bs = k_cache.shape[1]
        n_blk = -(-max_kv // bs)
        blocks = ctx["block_table"][bidx, :n_blk].long().clamp(0, k_cache.shape[0] - 1)
        k = k_cache[blocks].reshape(c, n_blk * bs, kv_heads, -1)[:, :max_kv]
        v = v_cache[blocks].reshape(c, n_blk * bs, kv_heads, -1)[:, :max_kv]
    else:
        k_rows, v_rows = ctx["k_rows"], ctx["v_rows"]
        kv_start = torch.tensor([ctx["kv_starts"][b] for b, _, _ in chunk])
        kv_idx = (kv_start[:, None] + ar_kv[None, :]).clamp(max=max(k_rows.shape[0] - 1, 0))
        k = k_rows[kv_idx]
        v = v_rows[kv_idx]
    f32 = dict(dtype=torch.float32, memory_format=torch.contiguous_format)
    k = k.permute(0, 2, 1, 3).to(**f32)  # [C, KV_N, KV, D]
    # Slots past a sequence's kv length may hold garbage (even NaN): zero them so 0 * NaN never
    # reaches the output.
    v = v.permute(0, 2, 1, 3).to(**f32)  # [C, KV_N, KV, Dv]
    if not bool(kv_valid.all()):
        v.masked_fill_(~kv_valid[:, None, :, None], 0.0)

    # allowed[c, i, j]: query row i (position within its sequence) may attend kv position j.
    i = r0s[:, None] + ar_r[None, :]  # [C, R]
    j = ar_kv  # [KV]
    allowed = row_valid[:, :, None] & kv_valid[:, None, :]
    offset = (kvl - torch.tensor([ctx["q_lens"][b] for b, _, _ in chunk]))[:, None, None]
    ii = i[:, :, None]
    jj = j[None, None, :]
    if ctx["causal"] == "left_up":
        allowed &= jj <= ii
    elif ctx["causal"] == "right_down":
        allowed &= jj <= ii + offset
    if ctx["band"] is not None:
        origin, pre, nxt = ctx["band"]
        pos = ii + offset if origin == "right_down" else ii
        allowed &= (pos - jj <= pre) & (jj - pos <= nxt)
    full_mask = ctx["full_mask"]
    if full_mask is not None:
        mb = bidx if full_mask.shape[0] > 1 else torch.zeros_like(bidx)
        mi = i.clamp(max=full_mask.shape[1] - 1)
        mj = j.clamp(max=full_mask.shape[2] - 1)
        masked = full_mask[mb[:, None, None], mi[:, :, None], mj[None, None, :]]
        allowed &= ~masked

    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(ctx["scale"])  # [C, KV_N, G*R, KV]
    scores = scores.view(c, kv_heads, group, max_r, max_kv)
    scores.masked_fill_(~allowed[:, None, None], float("-inf"))
    row_max = scores.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    e = scores.sub_(row_max).exp_()
    denom = e.sum(dim=-1, keepdim=True)
    out = torch.matmul(e.view(c, kv_heads, group * max_r, max_kv), v)
    out = out.view(c, kv_heads, group, max_r, -1) / denom.clamp_min(torch.finfo(torch.float32).tiny)
    lse = (row_max + torch.log(denom)).squeeze(-1)  # -inf where nothing is attended

    # back to rows: [C, R, N, Dv] / [C, R, N]
    out = out.permute(0, 3, 1, 2, 4).reshape(c, max_r, kv_heads * group, -1)
    lse = lse.permute(0, 3, 1, 2).reshape(c, max_r, kv_heads * group)
    dest = (q_start[:, None] + ar_r[None, :])[row_valid]
    out_rows.index_copy_(0, dest, out[row_valid])
    lse_rows.index_copy_(0, dest, lse[row_valid])
