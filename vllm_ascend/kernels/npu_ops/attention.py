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
  corner, i.e. a sliding window). Modes 2-4 require the compressed 2048x2048 mask; the doc makes
  the caller guarantee it is the triangular template, and this kernel checks that it is (once per
  mask tensor and version).
  "Right-down" means query row i of a sequence with q_len query and kv_len kv tokens sits at kv
  position kv_len - q_len + i (the queries are the LAST tokens of the kv sequence);
* ``softmax_lse_flag``: LSE (natural log, of the scaled and masked scores) as float32
  [B, N, S, 1] or [T, N, 1] for TND; otherwise the meta function's placeholder, an empty [0].

Strict: every input constraint the doc (or, where it is silent, CANN's kernel) states for Atlas
A2/A3 is enforced and a violation raises naming it (see "NPU input constraints" below), so a call
that passes here is legal on an NPU. The one relaxation: float32 inputs on CPU tensors.

* MLA (``query_rope``/``key_rope``, the doc's "query_rope和key_rope参数约束" section, the
  sparse_mode != 4 variant): scores are ``scale * (q . k + q_rope . k_rope)`` and the output is
  ``softmax @ value``; the latent query (D 512) and rope parts (D 64) arrive separately, the
  key/value are the paged latent cache (KV_N 1). Its constraints are enforced in
  ``fia_mla.check_mla``.

Mask values: True/1 = masked (not attended). Everything is computed in float32 and the output is
returned in the query dtype. Everything quantisation-, prefix-, padding- or pse-related raises
NotImplementedError naming the argument.
"""

from __future__ import annotations

import math
import weakref

import torch

from vllm_ascend.kernels.npu_library import npu_op
from vllm_ascend.kernels.npu_ops import fia_mla

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
    "actual_shared_prefix_len", "key_rope_antiquant_scale",
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
# NPU input constraints (Atlas A2/A3). Each violation raises naming the constraint and where the
# doc states it: ``doc:`` is torch-npu 2.13.0's _op_plugin_docs.py entry
# npu_fused_infer_attention_score (parameter name or constraint section), ``CANN:`` a check of
# the CANN kernel that the torch doc omits. Every check here reads host values only (shapes,
# dtypes, the SymInt[] length lists); the mask contents check is cached per mask tensor.
# ----------------------------------------------------------------------------------------------

_DOC = "doc: npu_fused_infer_attention_score"
_NPU_DTYPES = (torch.float16, torch.bfloat16)
MAX_GROUP = 64  # num_heads / num_key_value_heads
MAX_HEADS = 256
MAX_BATCH = 65536
MAX_HEAD_DIM = 512
MAX_IFA_KV_S = 262144
MAX_PAGED_H = 65535  # KV_N * D of a (blocknum, blocksize, H) cache
MAX_BLOCK_SIZE = 512
# CANN's PromptFlashAttention tiling (CheckInputShapeWhenLayoutIsTND) for layout TND: q/k/v head
# dims all 64, 128 or 192, or q/k 192 with v 128. The torch doc omits it; its error text is quoted
# in vllm-project/vllm-ascend PR #9632 (head_dim 256 rejected) and issue #8045.
TND_HEAD_DIMS = ((64, 64), (128, 128), (192, 192), (192, 128))


def _violation(msg: str, where: str) -> str:
    return _err(f"{msg} ({_DOC}: {where})")


def _require(cond: bool, msg: str, where: str, exc: type[Exception] = ValueError) -> None:
    if not cond:
        raise exc(_violation(msg, where))


def _check_dtype(name: str, t: torch.Tensor) -> None:
    if t.dtype in _NPU_DTYPES:
        return
    # CPU relaxation: float32 is not an NPU dtype of this op (query: float16/bfloat16/int8), but
    # the CPU backend keeps it for exact comparison with Hugging Face; only on CPU tensors.
    if t.dtype == torch.float32 and t.device.type == "cpu":
        return
    if t.dtype in (torch.int8, torch.int32):
        raise NotImplementedError(_violation(
            f"{name} dtype {t.dtype} (quantised attention) is not implemented on CPU",
            f"'{name}'"))
    raise TypeError(_violation(f"{name} must be float16 or bfloat16 (float32 on the CPU "
                               f"backend only), got {t.dtype}", f"'{name}' dtype"))


def _check_contiguous(name: str, t: torch.Tensor | None) -> None:
    if t is not None and not t.is_contiguous():
        raise ValueError(_violation(
            f"{name} must be contiguous (stride {tuple(t.stride())} for shape "
            f"{tuple(t.shape)})", f"'{name}': non-contiguous tensors are not supported"))


def _check_mask_dtype(mask: torch.Tensor) -> None:
    if mask.dtype not in (torch.bool, torch.int8, torch.uint8):
        raise TypeError(_violation(f"atten_mask must be bool, int8 or uint8, got {mask.dtype}",
                                   "'atten_mask' dtype"))


# Masks whose contents were verified: weak reference -> version counter at verification time.
# The engine passes the same mask every step, so the O(2048^2) comparison runs once.
_VERIFIED_MASKS: list[tuple[weakref.ref, int]] = []
_MAX_VERIFIED = 8
_TEMPLATE: torch.Tensor | None = None


def _compressed_template() -> torch.Tensor:
    global _TEMPLATE
    if _TEMPLATE is None:
        n = COMPRESSED_MASK_SIZE
        _TEMPLATE = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    return _TEMPLATE


def _check_compressed_contents(mask: torch.Tensor) -> None:
    # The check is cached per tensor and version counter. Inference tensors have no version
    # counter, so theirs is re-checked on every call (the engine's mask is a normal tensor:
    # attention/metadata.py builds it outside inference mode).
    version = None if mask.is_inference() else mask._version
    for ref, ver in _VERIFIED_MASKS:
        if version is not None and ref() is mask and ver == version:
            return
    plane = mask.reshape(COMPRESSED_MASK_SIZE, COMPRESSED_MASK_SIZE) != 0
    if not torch.equal(plane, _compressed_template()):
        raise ValueError(_violation(
            "the compressed atten_mask of sparse_mode 2/3/4 must be the 2048x2048 template: "
            "masked (True/1) exactly above the diagonal, i.e. torch.triu(ones, diagonal=1)",
            "'sparse_mode'/constraints: the caller must guarantee the mask is lower-triangular"))
    if version is None:
        return
    _VERIFIED_MASKS[:] = [(r, v) for r, v in _VERIFIED_MASKS if r() is not None and r() is not mask]
    _VERIFIED_MASKS.append((weakref.ref(mask), version))
    del _VERIFIED_MASKS[:-_MAX_VERIFIED]


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
        raise ValueError(_violation(f"{name} has {len(values)} entries for batch {batch} "
                                    "(need 1 or >= batch)", f"'{name}' lengths"))
    if any(v < 0 for v in values):
        raise ValueError(_violation(f"{name} must be non-negative, got {values}", f"'{name}'"))
    return values


def _cumulative(values, name: str, total: int) -> tuple[list[int], list[int]]:
    """Doc rule for TND: entry b is the running total; returns (starts, lengths)."""
    if values is None:
        raise ValueError(_err(f"{name} is required for layout TND (cumulative lengths)"))
    ends = [int(v) for v in values]
    starts = [0] + ends[:-1]
    lengths = [e - s for s, e in zip(starts, ends, strict=False)]
    if any(n < 0 for n in lengths) or (ends and ends[0] < 0):
        raise ValueError(_violation(f"{name} must be non-decreasing and non-negative, got {ends}",
                                    f"'{name}' (TND: cumulative lengths)"))
    # T is by definition the sum of all sequence lengths, so the last cumulative entry is T.
    if (ends[-1] if ends else 0) != total:
        raise ValueError(_violation(
            f"{name} ends at {ends[-1] if ends else 0} but the tensor has T={total} tokens "
            "(the last cumulative length must equal T)",
            f"'{name}' (TND) and the definition of T as the sum of all sequence lengths"))
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
    _check_mask_dtype(mask)
    _check_contiguous("atten_mask", mask)
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


def _check_block_ids(block_table: torch.Tensor, need: list[int], n_blocks: int) -> None:
    """The block ids a sequence uses (its first ceil(kv_len / block_size) entries) must name
    cache blocks: the NPU kernel does not validate them (the caller must), the CPU one does."""
    if max(need, default=0) == 0:
        return
    used = torch.arange(block_table.shape[1]) < torch.tensor(need)[:, None]
    ids = block_table[used]
    lo, hi = int(ids.min()), int(ids.max())
    _require(lo >= 0 and hi < n_blocks,
             f"block_table names block ids in [{lo}, {hi}] for used blocks, the cache has "
             f"{n_blocks} blocks", "page attention: block ids are not validated, the caller must "
             "guarantee them", IndexError)


def _check_compressed(mask: torch.Tensor | None, sparse_mode: int) -> None:
    n = COMPRESSED_MASK_SIZE
    if mask is None:
        raise ValueError(_err(f"sparse_mode {sparse_mode} requires the compressed {n}x{n} "
                              "atten_mask"))
    if tuple(mask.shape) not in ((n, n), (1, n, n), (1, 1, n, n)):
        raise ValueError(_violation(
            f"sparse_mode {sparse_mode} requires atten_mask of shape ({n},{n}), (1,{n},{n}) or "
            f"(1,1,{n},{n}), got {tuple(mask.shape)}", "'atten_mask' shapes for sparse_mode 2/3/4"))
    _check_mask_dtype(mask)
    _check_contiguous("atten_mask", mask)
    _check_compressed_contents(mask)


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
    _require(inner_precise in (0, 1, 2, 3), f"inner_precise must be 0..3, got {inner_precise}",
             "'inner_precise'")
    if sparse_mode not in (0, 1, 2, 3, 4):
        raise NotImplementedError(_err(f"sparse_mode {sparse_mode} is not implemented "
                                       "(supported: 0, 1, 2, 3, 4)"))
    for name, t in (("query", query), ("key", key), ("value", value)):
        _check_dtype(name, t)
    if key.dtype != query.dtype or value.dtype != query.dtype:
        raise TypeError(_violation(
            f"query/key/value dtypes differ: {query.dtype}, {key.dtype}, {value.dtype}",
            "'key'/'value' (unquantised: the query's dtype)"))
    for name, t in (("query", query), ("key", key), ("value", value)):
        _check_contiguous(name, t)
    # The doc defines scale as 1/sqrt(d): a positive finite number.
    _require(math.isfinite(scale) and scale > 0, f"scale must be positive and finite, got {scale}",
             "'scale' (the reciprocal of sqrt(d))")

    mla = query_rope is not None or key_rope is not None
    if mla:
        fia_mla.check_mla(query=query, key=key, value=value, query_rope=query_rope,
                          key_rope=key_rope, block_table=block_table, input_layout=input_layout,
                          num_heads=num_heads, kv_heads=num_key_value_heads or num_heads,
                          sparse_mode=sparse_mode, atten_mask=atten_mask)
    paged = block_table is not None
    q_layout, out_layout, out_shape, lse_shape = _out_shapes(
        query, value, num_heads, input_layout, num_key_value_heads, paged)
    kv_heads = num_key_value_heads or num_heads
    _require(num_heads % kv_heads == 0, f"num_heads {num_heads} is not a multiple of "
             f"num_key_value_heads {kv_heads}", "'num_key_value_heads'")
    group = num_heads // kv_heads
    # MLA's own section takes 128 query heads over its one kv head (fia_mla.check_mla).
    _require(group <= MAX_GROUP or query_rope is not None,
             f"num_heads / num_key_value_heads = {group} exceeds {MAX_GROUP}",
             "'num_key_value_heads'")
    _require(num_heads <= MAX_HEADS, f"num_heads {num_heads} exceeds {MAX_HEADS}",
             "constraints: N <= 256")

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
        _require(all(n <= q_s for n in q_lens),
                 f"actual_seq_lengths {q_lens} exceed the query S {q_s}", "'actual_seq_lengths'")
    _require(n_q == num_heads, f"query has {n_q} heads but num_heads is {num_heads}",
             "'num_heads'")
    q_rope_flat = k_rope_cache = None
    if mla:
        q_rope_flat = fia_mla.rope_rows(query_rope, q_layout, num_heads)
        k_rope_cache = fia_mla.rope_cache(key_rope)
    # The PromptFlashAttention branch serves Q_S > 1 and (CANN) every TND query; the
    # IncreFlashAttention branch Q_S = 1.
    prompt = tnd or q_s > 1
    _require(input_layout != "BNSD_BSND" or prompt, "input_layout BNSD_BSND needs Q_S > 1",
             "'input_layout': BNSD_BSND only for Q_S > 1")
    _require(prompt or inner_precise in (0, 1),
             f"inner_precise {inner_precise} with Q_S = 1 (only 0 or 1)", "'inner_precise'")
    _require(batch <= MAX_BATCH, f"batch {batch} exceeds {MAX_BATCH}", "constraints: B <= 65536")
    _require(d <= MAX_HEAD_DIM, f"head dim {d} exceeds {MAX_HEAD_DIM}",
             "constraints: D <= 512")
    if prompt and not tnd:
        # 16-element alignment for float16/bfloat16 (float32 on CPU held to the same rule).
        _require(d % 16 == 0, f"head dim {d} must be a multiple of 16 when Q_S > 1",
                 "constraints (Q_S > 1): D 16-aligned for float16/bfloat16")
        _require(q_layout != "BSH" and input_layout != "BSND" or num_heads * d < 65535,
                 f"N*D = {num_heads * d} must be < 65535 for layout {input_layout}",
                 "constraints (Q_S > 1): BSH/BSND need N*D < 65535")

    # ---- key/value ----
    if paged:
        _require(block_table.dtype == torch.int32,
                 f"block_table must be int32, got {block_table.dtype}", "'block_table' dtype")
        _require(block_table.dim() == 2 and block_table.shape[0] == batch,
                 f"block_table must be 2-D [B={batch}, max_blocks], got "
                 f"{tuple(block_table.shape)}", "page attention: block_table 2-D, first dim B")
        _require(tuple(key.shape) == tuple(value.shape),
                 f"paged key {tuple(key.shape)} and value {tuple(value.shape)} must have the "
                 "same shape", "page attention: key and value shapes identical")
        for name, t in (("key", key), ("value", value)):
            _require(t.numel() <= INT_MAX, f"paged {name} has {t.numel()} elements (> int32)",
                     "page attention: element count within int32")
        k_cache = _cache_view(key, q_layout, kv_heads, "key")
        v_cache = _cache_view(value, q_layout, kv_heads, "value")
        n_blocks, bs = k_cache.shape[:2]
        if key.dim() == 3:
            _require(key.shape[2] <= MAX_PAGED_H, f"KV_N*D = {key.shape[2]} exceeds "
                     f"{MAX_PAGED_H} for a (blocknum, blocksize, H) cache",
                     "page attention: KV_N*D <= 65535 in the (blocknum, blocksize, H) format")
        _require(block_size == bs, f"block_size {block_size} does not match the cache's block "
                 f"size {bs}", "'block_size'")
        if mla:
            pass  # MLA's own block sizes (16/128), checked in fia_mla.check_mla
        elif prompt:
            _require(128 <= bs <= MAX_BLOCK_SIZE and bs % 128 == 0,
                     f"block_size {bs} must be a multiple of 128 in [128, 512] (Q_S > 1 or TND)",
                     "constraints (Q_S > 1), page attention: block_size 128..512, multiple of 128")
        else:
            # float16/bfloat16 need 16-alignment (float32 on CPU held to the same rule).
            _require(0 < bs <= MAX_BLOCK_SIZE and bs % 16 == 0,
                     f"block_size {bs} must be a non-zero multiple of 16 up to 512 (Q_S = 1)",
                     "constraints (Q_S = 1), page attention: block_size <= 512, 16-aligned")
        _require(actual_seq_lengths_kv is not None, "actual_seq_lengths_kv is required with "
                 "block_table", "page attention: actual_seq_lengths_kv must be passed")
        if tnd:
            _require(len(actual_seq_lengths_kv) == batch,
                     f"actual_seq_lengths_kv has {len(actual_seq_lengths_kv)} entries for "
                     f"batch {batch} (TND paged: one per sequence)",
                     "'actual_seq_lengths_kv' (TND, page attention: length equals B)")
        kv_lens = _per_batch(actual_seq_lengths_kv, batch, 0, "actual_seq_lengths_kv")
        max_blocks = block_table.shape[1]
        need = [-(-n // bs) for n in kv_lens]
        _require(max(need, default=0) <= max_blocks,
                 f"actual_seq_lengths_kv {kv_lens} need more than the {max_blocks} blocks per "
                 "sequence of block_table",
                 "page attention: block_table dim 1 >= maxBlockNumPerSeq")
        # Not enforced, on purpose: the doc's "blocknum >= the blocks all sequences need" counts
        # a block once per sequence. With every used id valid (checked below), the sum can only
        # exceed blocknum when sequences share blocks, which is exactly what vLLM's prefix
        # caching does. We read the rule as stating capacity for unshared tables; the self-check
        # (vllm_ascend/selfcheck) has a shared-prefix case past the sum that tests this reading
        # on a real NPU.
        _check_block_ids(block_table, need, n_blocks)
        kv_starts = None
        dk = k_cache.shape[3]
        dv_in = v_cache.shape[3]
    else:
        # TND's only exception is CANN's q/k 192 with v 128 (checked below with the head dims).
        _require(tnd or tuple(key.shape) == tuple(value.shape),
                 f"key {tuple(key.shape)} and value {tuple(value.shape)} must have the same shape",
                 "constraints: key and value shapes identical")
        k_dense = _kv_view(key, q_layout, kv_heads, "key")
        v_dense = _kv_view(value, q_layout, kv_heads, "value")
        if tuple(k_dense.shape[:-1]) != tuple(v_dense.shape[:-1]):
            raise ValueError(_err(f"key {tuple(key.shape)} and value {tuple(value.shape)} differ"))
        if tnd:
            kv_starts, kv_lens = _cumulative(actual_seq_lengths_kv, "actual_seq_lengths_kv",
                                             k_dense.shape[0])
            _require(len(kv_lens) == batch, f"actual_seq_lengths_kv has {len(kv_lens)} entries, "
                     f"actual_seq_lengths {batch}", "'actual_seq_lengths_kv' (TND: length B)")
            k_rows, v_rows = k_dense, v_dense
        else:
            if k_dense.shape[0] != batch:
                raise ValueError(_err(f"key batch {k_dense.shape[0]} != query batch {batch}"))
            s_kv = k_dense.shape[1]
            kv_lens = _per_batch(actual_seq_lengths_kv, batch, s_kv, "actual_seq_lengths_kv")
            _require(all(n <= s_kv for n in kv_lens),
                     f"actual_seq_lengths_kv {kv_lens} exceed key S {s_kv}",
                     "'actual_seq_lengths_kv'")
            kv_starts = [b * s_kv for b in range(batch)]
            k_rows = k_dense.reshape(batch * s_kv, kv_heads, k_dense.shape[-1])
            v_rows = v_dense.reshape(batch * s_kv, kv_heads, v_dense.shape[-1])
        dk = k_dense.shape[-1]
        dv_in = v_dense.shape[-1]
    _require(dk == d, f"key head dim {dk} != query head dim {d}", "'key' (D equal to the query's)")
    if tnd:
        _require((d, dv_in) in TND_HEAD_DIMS,
                 f"layout TND needs q/k/v head dims all 64, 128 or 192 (or q/k 192 with v 128), "
                 f"got q/k {d}, v {dv_in}",
                 "not stated; CANN: PromptFlashAttention tiling CheckInputShapeWhenLayoutIsTND")
    if not prompt:
        _require(max(kv_lens, default=0) <= MAX_IFA_KV_S,
                 f"kv length {max(kv_lens, default=0)} exceeds {MAX_IFA_KV_S} with Q_S = 1",
                 "constraints (Q_S = 1): S <= 262144")

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
        _require(atten_mask is not None, "sparse_mode 1 requires a full atten_mask",
                 "'sparse_mode' 1 (allMask)")
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
            _require(pre_tokens + next_tokens >= 0
                     and pre_tokens >= -min(q_lens, default=0)
                     and next_tokens >= -min(kv_lens, default=0),
                     f"sparse_mode 4 band pre_tokens={pre_tokens}, next_tokens={next_tokens} "
                     "must satisfy pre+next >= 0, pre >= -q_len, next >= -kv_len",
                     "TND constraints: sparse_mode=4 pre/next token ranges")
            if q_s == 1 and pre_tokens < max(kv_lens, default=0) - 1:
                raise NotImplementedError(_violation(
                    "sparse_mode 4 with Q_S = 1: the NPU ignores sparse_mode (and pre_tokens) "
                    "for single-token B-layout queries, so this window would be dropped there",
                    "'sparse_mode': void when Q_S is 1; 'pre_tokens': void when Q_S is 1"))
            band = ("right_down", pre_tokens, next_tokens)
    if full_mask is not None:
        if full_mask.shape[0] not in (1, batch):
            raise ValueError(_err(f"atten_mask batch {full_mask.shape[0]} != {batch}"))
        if (max(q_lens, default=0) > full_mask.shape[1]
                or max(kv_lens, default=0) > full_mask.shape[2]):
            raise ValueError(_err(f"atten_mask {tuple(atten_mask.shape)} is smaller than the "
                                  f"query/kv lengths {q_lens}/{kv_lens}"))
        if paged:
            _require(full_mask.shape[2] >= block_table.shape[1] * block_size,
                     f"atten_mask last dim {full_mask.shape[2]} < block_table.shape[1] * "
                     f"block_size = {block_table.shape[1] * block_size}",
                     "page attention with atten_mask (sparse_mode 0/1)")

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
                ctx.update(paged=True, k_cache=k_cache, v_cache=v_cache, block_table=block_table,
                           q_rope=q_rope_flat, k_rope=k_rope_cache)
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
    if ctx.get("q_rope") is not None:
        q = torch.cat([q, ctx["q_rope"][q_idx].float()], dim=-1)
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
        if ctx.get("k_rope") is not None:
            # MLA: q . k + q_rope . k_rope is one product over the concatenated head dims.
            k_rope = ctx["k_rope"][blocks].reshape(c, n_blk * bs, kv_heads, -1)[:, :max_kv]
            k = torch.cat([k, k_rope], dim=-1)
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
