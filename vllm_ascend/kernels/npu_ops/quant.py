"""CPU and fake kernels of torch_npu's quantization ops (W8A8 static and dynamic, W8A16, int4).

    npu_quantize                  float -> int8/uint8/int32 (or packed int4), static scale
    npu_dynamic_quant             float -> int8 (or packed int4) per token, rowmax|x| / DTYPE_MAX
    npu_trans_quant_param         float32 scale (+ offset) -> the int64 "quant param" encoding
    npu_quant_matmul              int8 x int8 (or packed int4) -> int32 accumulate -> dequantised
    npu_weight_quant_batchmatmul  fp16/bf16 x int8 (or packed int4) weight, dequantised in the op

The quantized forms of npu_grouped_matmul and npu_moe_init_routing_v2 live in moe.py and use the
helpers of this module. Semantics follow the torch-npu 2.13.0 ``_op_plugin_docs.py`` entry of the
same name; output shapes and dtypes follow ``op_plugin/meta/_meta_registrations.py``. Where the
torch_npu doc gives no formula (npu_quant_matmul, npu_trans_quant_param's bit layout) the CANN
operator docs of the kernel it calls fill in, named at the code.

Conventions shared by every kernel here:
  * ``int`` dtype arguments (``dtype``, ``dst_type``, ``output_dtype``) carry torch's ScalarType
    number: the dispatcher turns a ``torch.dtype`` passed for an ``int`` into it, and torch_npu's
    meta functions read the same table (``_ENUM_TO_DTYPE``).
  * Rounding to an integer is to nearest, ties to even, then saturating to the output type. The
    torch_npu docs just say "round"; AscendQuant's "round" mode casts with CAST_RINT, and the
    other kernels are assumed to do the same.
  * Packed int4 (``torch.quint4x2`` outputs, int32 "int4" inputs): eight signed nibbles per int32,
    element j of each group of eight in bits [4j, 4j+4) (little-endian nibble order, which is how
    consecutive half-bytes land in memory). Assumption: the docs only say "8 int4 per int32".
  * Integer matmuls accumulate exactly in int32, as the cube unit does; dequantisation arithmetic
    is float32, and results are rounded once to the output dtype.
  * fp32 activations/outputs are accepted where the NPU kernel takes only fp16/bf16: the CPU
    backend's one deliberate relaxation (DESIGN.md §2), there following the bfloat16 rules.
Arguments outside the supported subset raise NotImplementedError naming them; arguments the NPU
kernel would reject raise ValueError/TypeError naming the doc constraint.
"""

from __future__ import annotations

import math

import torch

from vllm_ascend.kernels.npu_library import npu_op

# torch ScalarType numbers (c10/core/ScalarType.h order) of the dtypes these ops take.
_ENUM_TO_DTYPE = {
    0: torch.uint8,
    1: torch.int8,
    3: torch.int32,
    5: torch.float16,
    6: torch.float32,
    12: torch.qint8,
    13: torch.quint8,
    15: torch.bfloat16,
    16: torch.quint4x2,
}
DTYPE_TO_ENUM = {v: k for k, v in _ENUM_TO_DTYPE.items()}
_HALF = (torch.float16, torch.bfloat16)
_FLOATS = (torch.float16, torch.bfloat16, torch.float32)  # fp32: the CPU-backend relaxation
_INT_RANGE = {
    torch.int8: (-128, 127),
    torch.uint8: (0, 255),
    # float32 cannot hold 2**31 - 1; its largest value below 2**31 is the upper clamp.
    torch.int32: (-(2**31), 2**31 - 128),
}
_INT4_RANGE = (-8, 7)
INT4_PER_INT32 = 8


def dtype_of(value: int | None, op: str, arg: str) -> torch.dtype | None:
    """The torch dtype an ``int`` dtype argument names (None stays None)."""
    if value is None:
        return None
    if value not in _ENUM_TO_DTYPE:
        raise TypeError(f"{op}: {arg}={value} is not a dtype this op takes (a torch ScalarType "
                        f"number, e.g. {DTYPE_TO_ENUM[torch.int8]} for torch.int8)")
    return _ENUM_TO_DTYPE[value]


def _fail(op: str, msg: str, where: str, exc: type[Exception] = ValueError) -> None:
    """Raise naming the violated constraint and its place in the doc entry ``op``."""
    raise exc(f"{op}: {msg} (doc: {op} {where})")


def _unsupported(op: str, **given: bool) -> None:
    bad = [name for name, is_bad in given.items() if is_bad]
    if bad:
        raise NotImplementedError(f"{op}: the CPU backend does not implement {', '.join(bad)}")


def is_transposed(t: torch.Tensor) -> bool:
    """torch_npu's test for "the last two dims are a transpose" (a [.., n, k] tensor viewed as
    [.., k, n]): unit stride on dim -2, dense batch dims."""
    if not 2 <= t.dim() <= 6 or t.stride(-2) != 1 or t.stride(-1) != t.size(-2):
        return False
    span = t.size(-1) * t.size(-2)
    for d in range(t.dim() - 3, -1, -1):
        if t.stride(d) != span:
            return False
        span *= t.size(d)
    return not (t.size(-1) == 1 and t.size(-2) == 1)


def nd_layout_ok(t: torch.Tensor) -> bool:
    """ND operand the Ascend matmuls accept: contiguous, or the transpose of a contiguous one."""
    return t.is_contiguous() or is_transposed(t)


def rint_saturate(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round a float32 tensor to nearest-even and saturate to ``dtype`` (int8/uint8/int32)."""
    lo, hi = _INT_RANGE[dtype]
    return torch.round(y).clamp_(lo, hi).to(dtype)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack int values in [-8, 7] along the last dim (a multiple of 8) into int32, 8 per word."""
    nib = (q.to(torch.int64) & 0xF).reshape(*q.shape[:-1], q.shape[-1] // INT4_PER_INT32,
                                            INT4_PER_INT32)
    word = (nib << (4 * torch.arange(INT4_PER_INT32))).sum(-1)
    return torch.where(word >= 2**31, word - 2**32, word).to(torch.int32)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pack_int4``: int32 [..., n] -> int8 [..., 8n] with values in [-8, 7]."""
    nib = (packed.to(torch.int64).unsqueeze(-1) >> (4 * torch.arange(INT4_PER_INT32))) & 0xF
    return torch.where(nib >= 8, nib - 16, nib).reshape(*packed.shape[:-1], -1).to(torch.int8)


def unpack_int4_operand(t: torch.Tensor) -> torch.Tensor:
    """A packed-int4 matmul operand as int8: a contiguous [.., r, c/8] packs along its last dim;
    a transposed view [.., r/8, c] of a contiguous [.., c, r/8] packs along dim -2."""
    if is_transposed(t):
        return unpack_int4(t.transpose(-1, -2)).transpose(-1, -2)
    return unpack_int4(t)


# ---------------------------------------------------------------------------------------------
# npu_trans_quant_param and the int64 scale encoding
# ---------------------------------------------------------------------------------------------

_SCALE_MASK = 0xFFFFE000  # sign, exponent and the top 10 mantissa bits: float32 -> "FP19"
_SCALE_FLAG = 1 << 46
_OFFSET_SHIFT = 37
_OFFSET_BITS = 0x1FF  # a 9-bit two's-complement integer in bits 37..45


def encode_quant_param(scale: torch.Tensor, offset: torch.Tensor | None,
                       round_mode: int = 0) -> torch.Tensor:
    """float32 scale (+ offset) -> int64, per CANN aclnnTransQuantParamV3's formula:
    out = (scale_bits & 0xFFFFE000) | 1 << 46 | (clamp(round(offset), -256, 255) & 0x1FF) << 37.

    round_mode 1 ("R_INT") first rounds the float32 bits to the kept 19 -- assumption: to nearest,
    ties to even, as RINT means elsewhere in CANN. The offset's Round is assumed to be C's round()
    (ties away from zero), the CANN host code's language.
    """
    bits = scale.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    if round_mode == 1:
        bits = bits + 0xFFF + ((bits >> 13) & 1)
    out = (bits & _SCALE_MASK) | _SCALE_FLAG
    if offset is not None:
        off = offset.to(torch.float64)
        off = (torch.sign(off) * torch.floor(off.abs() + 0.5)).clamp(-256, 255).to(torch.int64)
        out = out | ((off & _OFFSET_BITS) << _OFFSET_SHIFT)
    return out


def decode_quant_param(param: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 quant param -> (float32 scale, float32 offset) as the hardware reads them: the low
    32 bits as a float32 of which only the FP19 part counts (assumption for int64 scales not made
    by npu_trans_quant_param, e.g. raw float32 bits: the dequantisation unit reads FP19, which
    is why npu_trans_quant_param truncates), and the 9-bit offset in bits 37..45."""
    low = param & _SCALE_MASK
    scale = torch.where(low >= 2**31, low - 2**32, low).to(torch.int32).view(torch.float32)
    off = (param >> _OFFSET_SHIFT) & _OFFSET_BITS
    off = torch.where(off >= 256, off - 512, off)
    return scale, off.to(torch.float32)


def _trans_quant_param_check(scale, offset, round_mode) -> tuple[int, ...]:
    op = "npu_trans_quant_param"
    if scale.dtype != torch.float32:
        _fail(op, f"scale must be float32, got {scale.dtype}", "'scale' dtype", TypeError)
    if not (scale.dim() == 1 or (scale.dim() == 2 and scale.size(0) == 1)) or not scale.numel():
        _fail(op, f"scale must be 1-D (t,) or 2-D (1, n) and not empty, got "
              f"{tuple(scale.shape)}", "'scale' shape")
    if round_mode not in (None, 0, 1):
        _fail(op, f"round_mode must be 0 or 1, got {round_mode}", "'round_mode'")
    out_shape = tuple(scale.shape)
    if offset is not None:
        if offset.dtype != torch.float32:
            _fail(op, f"offset must be float32, got {offset.dtype}", "'offset' dtype", TypeError)
        if offset.dim() != scale.dim() or not offset.numel():
            _fail(op, f"offset {tuple(offset.shape)} must have scale's rank "
                  f"{tuple(scale.shape)}", "'offset' shape")
        if scale.dim() == 2 and offset.shape != scale.shape:
            _fail(op, f"with a (1, n) scale, offset must have the same shape, got "
                  f"{tuple(offset.shape)} vs {tuple(scale.shape)}", "constraints")
        if scale.dim() == 1:
            t_s, t_o = scale.size(0), offset.size(0)
            if 1 not in (t_s, t_o) and t_s != t_o:
                _fail(op, f"scale (t={t_s}) and offset (t={t_o}) sizes must be equal or 1",
                      "constraints: t = 1 or n")
            out_shape = (max(t_s, t_o),)
    return out_shape


def _trans_quant_param_fake(scale, offset=None, round_mode=0):
    return scale.new_empty(_trans_quant_param_check(scale, offset, round_mode), dtype=torch.int64)


@npu_op(
    "npu_trans_quant_param(Tensor scale, Tensor? offset=None, int? round_mode=0) -> Tensor",
    fake=_trans_quant_param_fake,
)
def npu_trans_quant_param(scale, offset=None, round_mode=0):
    """Doc entry ``npu_trans_quant_param``: float32 scale (and offset) -> the int64 scale that
    npu_quant_matmul / npu_weight_quant_batchmatmul read (bit layout: ``encode_quant_param``).

    Shapes: (t,) -> (max(t_scale, t_offset),); (1, n) -> (1, n). NaN/Inf are rejected (CANN:
    "the user must ensure scale has no NaN or Inf").
    """
    out_shape = _trans_quant_param_check(scale, offset, round_mode)
    for name, t in (("scale", scale), ("offset", offset)):
        if t is not None and not bool(torch.isfinite(t).all()):
            _fail("npu_trans_quant_param", f"{name} holds NaN or Inf",
                  "(CANN aclnnTransQuantParamV3: values must be finite)")
    s = scale.expand(out_shape) if scale.dim() == 1 else scale
    o = None if offset is None else (offset.expand(out_shape) if offset.dim() == 1 else offset)
    return encode_quant_param(s, o, round_mode or 0)


# ---------------------------------------------------------------------------------------------
# npu_quantize
# ---------------------------------------------------------------------------------------------

_QUANTIZE_OUT = {torch.qint8: torch.int8, torch.quint8: torch.uint8, torch.int32: torch.int32}


def _quantize_check(x, scales, zero_points, dtype, axis, div_mode):
    """Validate; returns (output dtype, quant dtype or 'int4', the elementwise axis index)."""
    op = "npu_quantize"
    want = dtype_of(dtype, op, "dtype")
    if x.dtype not in _FLOATS:
        _fail(op, f"input must be float32/float16/bfloat16, got {x.dtype}", "'input' dtype",
              TypeError)
    if not 1 <= x.dim() <= 8 or not x.numel():
        _fail(op, f"input must have 1..8 dims and not be empty, got {tuple(x.shape)}",
              "'input' (CANN AscendQuant: 1-8 dims)")
    if div_mode:
        if want not in _QUANTIZE_OUT:
            _fail(op, f"with div_mode=True dtype must be torch.qint8, torch.quint8 or "
                  f"torch.int32, got {want}", "'dtype'", TypeError)
        if scales.dtype not in (torch.float32, torch.bfloat16):
            _fail(op, f"with div_mode=True scales must be float32/bfloat16, got {scales.dtype}",
                  "'scales' dtype", TypeError)
        if zero_points is not None and zero_points.dtype not in (
                torch.int8, torch.uint8, torch.int32, torch.bfloat16):
            _fail(op, f"with div_mode=True zero_points must be int8/uint8/int32/bfloat16, got "
                  f"{zero_points.dtype}", "'zero_points' dtype", TypeError)
        if not -x.dim() <= axis < x.dim():
            _fail(op, f"axis {axis} out of range for a {x.dim()}-D input", "'axis'")
        ax = axis % x.dim()
        # Assumption (the doc gives no shapes for div_mode=True): scales is 1-D, one value or one
        # per element of the quantization axis, and zero_points matches it.
        if scales.dim() != 1 or scales.numel() not in (1, x.size(ax)):
            _fail(op, f"scales must be 1-D with 1 or input.size({ax})={x.size(ax)} values, got "
                  f"{tuple(scales.shape)}", "'axis': the elementwise axis, others broadcast")
        if zero_points is not None and zero_points.shape != scales.shape:
            _fail(op, f"zero_points {tuple(zero_points.shape)} must have scales' shape "
                  f"{tuple(scales.shape)}", "'zero_points'")
        return _QUANTIZE_OUT[want], want, ax
    if want not in (torch.qint8, torch.quint4x2):
        _fail(op, f"with div_mode=False dtype must be torch.qint8 or torch.quint4x2, got {want}",
              "'dtype'", TypeError)
    if scales.dtype != x.dtype:
        # torch_npu lists float/float16/bfloat16; the kernel (aclnnAscendQuantV3) needs x's type.
        _fail(op, f"with div_mode=False scales must have input's dtype {x.dtype}, got "
              f"{scales.dtype}", "'scales' dtype (CANN aclnnAscendQuantV3: same as x)", TypeError)
    if not -2 <= axis < x.dim():
        _fail(op, f"with div_mode=False axis must be in [-2, input.dim()), got {axis}", "'axis'")
    if axis == -2 and x.dim() < 2:
        _fail(op, "axis=-2 needs an input of 2 or more dims", "'axis'")
    # axis=-2 quantizes along the second-to-last axis, any axis > -2 along the last one (doc).
    ax = x.dim() - 2 if axis == -2 else x.dim() - 1
    ok = (scales.dim() == 1 and scales.size(0) in (1, x.size(ax))) or (
        scales.dim() == x.dim() and scales.size(ax) in (1, x.size(ax))
        and all(scales.size(d) == 1 for d in range(x.dim()) if d != ax))
    if not ok:
        _fail(op, f"scales {tuple(scales.shape)} must be 1-D of size 1 or {x.size(ax)}, or have "
              f"input's rank with size 1 everywhere but dim {ax}", "'scales' shape")
    if zero_points is not None and (zero_points.shape != scales.shape
                                    or zero_points.dtype != scales.dtype):
        _fail(op, f"zero_points ({tuple(zero_points.shape)}, {zero_points.dtype}) must have "
              f"scales' shape and dtype ({tuple(scales.shape)}, {scales.dtype})",
              "'zero_points'")
    if want == torch.quint4x2:
        if x.size(-1) % INT4_PER_INT32:
            _fail(op, f"with dtype=torch.quint4x2 the last dim ({x.size(-1)}) must be a multiple "
                  "of 8", "'input'")
        return torch.int32, "int4", ax
    return torch.int8, want, ax


def _quantize_fake(self, scales, zero_points, dtype, axis=1, div_mode=True):
    out_dtype, kind, _ = _quantize_check(self, scales, zero_points, dtype, axis, div_mode)
    shape = list(self.shape)
    if kind == "int4":
        shape[-1] //= INT4_PER_INT32
    return self.new_empty(shape, dtype=out_dtype)


@npu_op(
    "npu_quantize(Tensor self, Tensor scales, Tensor? zero_points, int dtype, int axis=1, "
    "bool div_mode=True) -> Tensor",
    fake=_quantize_fake,
)
def npu_quantize(self, scales, zero_points, dtype, axis=1, div_mode=True):
    """Doc entry ``npu_quantize``: y = round(input / scales + zero_points) (div_mode=True) or
    round(input * scales + zero_points) (div_mode=False), saturated to the output type.

    dtype: torch.qint8 -> int8, torch.quint8 -> uint8, torch.int32 -> int32 (div_mode=True);
    torch.qint8 -> int8, torch.quint4x2 -> int32 with 8 int4 per element (div_mode=False).
    scales/zero_points broadcast along the quantization axis (``axis``; with div_mode=False -2
    means the second-to-last axis and anything larger the last). Computed in float32, rounded to
    nearest-even once (AscendQuant "round" = CAST_RINT).
    """
    out_dtype, kind, ax = _quantize_check(self, scales, zero_points, dtype, axis, div_mode)
    shape = [1] * self.dim()
    shape[ax] = -1

    def along_axis(t: torch.Tensor) -> torch.Tensor:
        return t.float().reshape(shape) if t.dim() == 1 else t.float()

    x = self.float()
    y = x / along_axis(scales) if div_mode else x * along_axis(scales)
    if zero_points is not None:
        y = y + along_axis(zero_points)
    if kind == "int4":
        return pack_int4(torch.round(y).clamp_(*_INT4_RANGE))
    return rint_saturate(y, out_dtype)


# ---------------------------------------------------------------------------------------------
# npu_dynamic_quant
# ---------------------------------------------------------------------------------------------


def dynamic_quant_rows(x32: torch.Tensor, dtype_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric quantization of float32 rows (last dim): scale = rowmax|x| / dtype_max,
    q = round(x / scale), returned unclamped as float32 (|q| <= dtype_max by construction).

    Assumption (the doc is silent): an all-zero row gets scale 0 and q = 0 (x / 0 would be NaN,
    which Ascend's float->int cast turns into 0).
    """
    scale = x32.abs().amax(dim=-1) / dtype_max
    q = torch.round(x32 / scale.unsqueeze(-1))
    return torch.nan_to_num(q, nan=0.0), scale


def _dynamic_quant_check(x, smooth_scales, group_index, dst_type, quant_mode, dst_type_max):
    op = "npu_dynamic_quant"
    _unsupported(op, **{f"quant_mode={quant_mode!r} (only 'pertoken' is documented)":
                        quant_mode != "pertoken",
                        f"dst_type_max={dst_type_max} (undocumented)": dst_type_max != 0.0})
    out = dtype_of(dst_type, op, "dst_type") or torch.int8
    if out not in (torch.int8, torch.quint4x2):
        _fail(op, f"dst_type must be torch.int8 or torch.quint4x2, got {out}", "'dst_type'",
              TypeError)
    if x.dtype not in _FLOATS:
        _fail(op, f"x must be float16/bfloat16, got {x.dtype}", "'x' dtype", TypeError)
    if x.dim() < 2 or not x.size(-1):
        _fail(op, f"x must have more than 1 dim and a non-empty last dim, got {tuple(x.shape)}",
              "'x': dims > 1")
    if out == torch.quint4x2 and x.size(-1) % INT4_PER_INT32:
        _fail(op, f"int4 quantization needs the last dim ({x.size(-1)}) to be a multiple of 8",
              "'x'")
    rows = x.numel() // x.size(-1)
    if group_index is not None:
        if smooth_scales is None:
            _fail(op, "group_index needs smooth_scales", "'group_index'")
        if group_index.dtype != torch.int32 or group_index.dim() != 1:
            _fail(op, f"group_index must be 1-D int32, got {group_index.dtype} "
                  f"{tuple(group_index.shape)}", "'group_index'", TypeError)
    if smooth_scales is not None:
        if smooth_scales.dtype != x.dtype:
            _fail(op, f"smooth_scales dtype {smooth_scales.dtype} must equal x's {x.dtype}",
                  "'smooth_scales': single-op mode, dtype same as x", TypeError)
        if group_index is None and tuple(smooth_scales.shape) != (x.size(-1),):
            _fail(op, f"without group_index smooth_scales must be 1-D [{x.size(-1)}], got "
                  f"{tuple(smooth_scales.shape)}", "constraints: smooth_scales")
        if group_index is not None and (smooth_scales.dim() != 2
                                        or smooth_scales.size(1) != x.size(-1)
                                        or smooth_scales.size(0) != group_index.size(0)):
            _fail(op, f"with group_index smooth_scales must be 2-D [{group_index.size(0)}, "
                  f"{x.size(-1)}], got {tuple(smooth_scales.shape)}", "constraints: smooth_scales")
    return out, rows


def _dynamic_quant_fake(input, *, smooth_scales=None, group_index=None, dst_type=None,
                        quant_mode="pertoken", dst_type_max=0.0):
    out, _ = _dynamic_quant_check(input, smooth_scales, group_index, dst_type, quant_mode,
                                  dst_type_max)
    shape = list(input.shape)
    if out == torch.quint4x2:
        shape[-1] //= INT4_PER_INT32
    return (input.new_empty(shape, dtype=torch.int8 if out == torch.int8 else torch.int32),
            input.new_empty(input.shape[:-1], dtype=torch.float32))


@npu_op(
    "npu_dynamic_quant(Tensor input, *, Tensor? smooth_scales=None, Tensor? group_index=None, "
    "int? dst_type=None, str quant_mode=\"pertoken\", float dst_type_max=0.0) -> (Tensor, Tensor)",
    fake=_dynamic_quant_fake,
)
def npu_dynamic_quant(input, *, smooth_scales=None, group_index=None, dst_type=None,
                      quant_mode="pertoken", dst_type_max=0.0):
    """Doc entry ``npu_dynamic_quant``: per-token symmetric quantization of the last dim.

    scale = rowMax(|x * smooth|) / DTYPE_MAX (127 for int8, 7 for int4), y = round(x * smooth /
    scale); returns (y, scale) with scale float32 of shape x.shape[:-1]. smooth_scales: one [H]
    vector, or with group_index (MoE) G vectors [G, H], vector g applying to rows
    [group_index[g-1], group_index[g]). dst_type torch.quint4x2 packs 8 int4 per int32.
    Computed in float32 (the smoothed x is never rounded to x's dtype).
    """
    out, rows = _dynamic_quant_check(input, smooth_scales, group_index, dst_type, quant_mode,
                                     dst_type_max)
    x = input.float().reshape(rows, input.size(-1))
    if smooth_scales is not None and group_index is None:
        x = x * smooth_scales.float()
    elif smooth_scales is not None:
        ends = group_index.to(torch.int64)
        if ends.numel() and (bool((ends[1:] < ends[:-1]).any()) or int(ends[0]) < 0
                             or int(ends[-1]) != rows):
            # The doc says "monotonically increasing"; equal neighbours (empty groups) are
            # accepted, as MoE token counts have them.
            _fail("npu_dynamic_quant", f"group_index {ends.tolist()} must be non-decreasing, "
                  f"non-negative and end at the row count {rows}", "constraints: group_index")
        sizes = torch.diff(ends, prepend=ends.new_zeros(1))
        x = x * torch.repeat_interleave(smooth_scales.float(), sizes, dim=0)
    q, scale = dynamic_quant_rows(x, 127.0 if out == torch.int8 else 7.0)
    scale = scale.reshape(input.shape[:-1])
    if out == torch.quint4x2:
        return pack_int4(q).reshape(*input.shape[:-1], -1), scale
    return q.to(torch.int8).reshape(input.shape), scale


# ---------------------------------------------------------------------------------------------
# npu_quant_matmul
# ---------------------------------------------------------------------------------------------

_INNER_LIMIT = 65535
_F32, _BF16, _F16, _I8, _I32, _I64 = (torch.float32, torch.bfloat16, torch.float16, torch.int8,
                                      torch.int32, torch.int64)
# The doc's dtype table (Atlas A2/A3), one row per (int4 inputs, output dtype, pertoken_scale
# given): allowed scale dtypes, whether offset may be given, allowed bias dtypes (None = absent).
# The float32-output rows are the CPU-backend relaxation, mirroring the bfloat16 rows.
_QMM_TABLE = {
    (False, _F16, False): ((_I64, _F32), False, (None, _I32)),
    (False, _I8, False): ((_I64, _F32), True, (None, _I32)),
    (False, _BF16, False): ((_F32, _BF16), False, (None, _I32, _BF16, _F32)),
    (False, _BF16, True): ((_F32, _BF16), False, (None, _I32, _BF16, _F32)),
    (False, _F16, True): ((_F32,), False, (None, _I32, _F16, _F32)),
    (False, _I32, False): ((_F32, _BF16), False, (None, _I32)),
    (True, _F16, False): ((_I64, _F32), False, (None, _I32)),
    (False, _F32, False): ((_F32, _BF16), False, (None, _I32, _F32)),
    (False, _F32, True): ((_F32, _BF16), False, (None, _I32, _F32)),
}
_QMM_OUT = (_I8, _F16, _BF16, _I32, _F32)


def _names(dtypes) -> str:
    return "/".join("None" if d is None else str(d).replace("torch.", "") for d in dtypes)


def _qmm_check(x1, x2, scale, offset, pertoken_scale, bias, output_dtype, x1_dtype, x2_dtype,
               pertoken_scale_dtype, scale_dtype, group_sizes, y_scale):
    """Validate; returns (int4 inputs, output dtype, output shape)."""
    op = "npu_quant_matmul"
    _unsupported(op, x1_dtype=x1_dtype is not None, x2_dtype=x2_dtype is not None,
                 pertoken_scale_dtype=pertoken_scale_dtype is not None,
                 scale_dtype=scale_dtype is not None, group_sizes=group_sizes is not None,
                 y_scale=y_scale is not None)
    if (x1.dtype, x2.dtype) not in ((_I8, _I8), (_I32, _I32)):
        _fail(op, f"x1/x2 must both be int8, or both int32 (packed int4), got {x1.dtype}/"
              f"{x2.dtype}", "'x1'/'x2' dtype", TypeError)
    int4 = x1.dtype == _I32
    out = dtype_of(output_dtype, op, "output_dtype") or _I8
    if out not in _QMM_OUT:
        _fail(op, f"output_dtype must be int8, float16, bfloat16 or int32, got {out}",
              "'output_dtype'", TypeError)
    if not 2 <= x1.dim() <= 6 or not 2 <= x2.dim() <= 6 or (int4 and x2.dim() != 2):
        _fail(op, f"x1/x2 must have 2..6 dims (x2 2 dims for int4), got {tuple(x1.shape)}/"
              f"{tuple(x2.shape)}", "'x1'/'x2' shape")
    if not x1.numel() or not x2.numel():
        _fail(op, "x1 and x2 must not be empty", "constraints")
    if int4:
        if not x1.is_contiguous():
            _fail(op, "int4: x1 must be a contiguous (m, k//8)", "int4 constraints")
        x2_t = is_transposed(x2)
        if not (x2.is_contiguous() or x2_t):
            _fail(op, "int4: x2 must be a contiguous (k, n//8) or the transpose of a contiguous "
                  "(n, k//8)", "int4 constraints")
        k = x1.size(-1) * INT4_PER_INT32
        k2, n = (x2.size(-2) * INT4_PER_INT32, x2.size(-1)) if x2_t else (
            x2.size(-2), x2.size(-1) * INT4_PER_INT32)
    else:
        for name, t in (("x1", x1), ("x2", x2)):
            if not nd_layout_ok(t):
                _fail(op, f"{name} must be contiguous or a transpose of its last two dims, got "
                      f"strides {tuple(t.stride())}", f"'{name}' (ND)")
        k, k2, n = x1.size(-1), x2.size(-2), x2.size(-1)
    if k != k2:
        _fail(op, f"k of x1 ({k}) and x2 ({k2}) differ", "'x2' shape")
    try:
        batch = torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2])
    except RuntimeError:
        _fail(op, f"batch dims {tuple(x1.shape[:-2])} and {tuple(x2.shape[:-2])} do not "
              "broadcast", "'bias': batch = broadcast of x1 and x2")
    m = x1.size(-2)
    out_shape = (*batch, m, n)
    # Inner-axis limit: the last dim in memory of x1 and x2 (k or m / n or k); int8 with a
    # float32/bfloat16 1-D scale is exempt (CANN aclnnQuantMatmulV4).
    if int4 or scale.dtype == _I64:
        for name, t in (("x1", x1), ("x2", x2)):
            inner = t.size(-2) if is_transposed(t) else t.size(-1)
            if inner > _INNER_LIMIT:
                _fail(op, f"the last dim of {name} in memory ({inner}) exceeds {_INNER_LIMIT}",
                      "constraints")
    if scale.dim() != 1 or scale.size(0) not in (1, n):
        _fail(op, f"scale must be 1-D (1,) or (n={n},), got {tuple(scale.shape)}", "'scale'")
    if offset is not None and (offset.dtype != _F32 or offset.dim() != 1
                               or offset.size(0) not in (1, n)):
        _fail(op, f"offset must be float32 (1,) or (n={n},), got {offset.dtype} "
              f"{tuple(offset.shape)}", "'offset'")
    if pertoken_scale is not None and (pertoken_scale.dtype != _F32
                                       or tuple(pertoken_scale.shape) != (m,)):
        _fail(op, f"pertoken_scale must be float32 (m={m},), got {pertoken_scale.dtype} "
              f"{tuple(pertoken_scale.shape)}", "'pertoken_scale'")
    if bias is not None:
        ok = tuple(bias.shape) == (n,) or (
            len(out_shape) == 3 and tuple(bias.shape) == (out_shape[0], 1, n))
        if not ok:
            _fail(op, f"bias must be (n={n},), or (batch, 1, n) with a 3-D output, got "
                  f"{tuple(bias.shape)}", "'bias' shape")
    _unsupported(op, **{"offset with an int64 scale (whether the kernel then reads the given or "
                        "the encoded offset is undocumented; encode it with "
                        "npu_trans_quant_param(scale, offset))":
                        offset is not None and scale.dtype == _I64})
    row = _QMM_TABLE.get((int4, out, pertoken_scale is not None))
    bias_dtype = None if bias is None else bias.dtype
    if row is None or scale.dtype not in row[0] or (offset is not None and not row[1]) or (
            bias_dtype not in row[2]):
        allowed = ("no such row" if row is None else
                   f"scale {_names(row[0])}, offset {'float32/None' if row[1] else 'None'}, "
                   f"bias {_names(row[2])}")
        _fail(op, f"x1 {x1.dtype}, scale {scale.dtype}, offset "
              f"{None if offset is None else offset.dtype}, bias {bias_dtype}, pertoken_scale "
              f"{'float32' if pertoken_scale is not None else None}, output {out}: not in the "
              f"dtype table (for that output and pertoken_scale: {allowed})",
              "dtype combination table (Atlas A2/A3)", TypeError)
    return int4, out, out_shape


def _qmm_fake(x1, x2, scale, *, offset=None, pertoken_scale=None, bias=None, output_dtype=None,
              x1_dtype=None, x2_dtype=None, pertoken_scale_dtype=None, scale_dtype=None,
              group_sizes=None, y_scale=None):
    _, out, shape = _qmm_check(x1, x2, scale, offset, pertoken_scale, bias, output_dtype,
                               x1_dtype, x2_dtype, pertoken_scale_dtype, scale_dtype,
                               group_sizes, y_scale)
    return x1.new_empty(shape, dtype=out)


# int8 products are at most 128 * 128 = 2**14 in magnitude, so any partial sum of up to 1024 of
# them is an integer of magnitude <= 2**24: exact in float32 whatever the summation order.
_EXACT_F32_TERMS = 1024
# Output columns per float32 weight panel: the float32 copy of the int8 weight exists one
# [1024, 1024] panel at a time (4 MiB), not whole (4x the int8 weight at the activations' peak).
_PANEL_COLS = 1024


def exact_int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b of small integers (int8 / unpacked int4) as the exact int32 accumulator.

    Two int8 operands go through float32 BLAS in panels of at most 1024 output columns by 1024
    inner terms (each panel's result is exact, see above), summed in int32: the same integers as
    an int32 accumulator, about 40x faster than ``torch._int_mm`` on the CPU (measured,
    512x1024x2816). Other integer dtypes (and vectors) in float64, exact the same way (every
    partial sum far below 2**53).
    """
    if a.dtype != torch.int8 or b.dtype != torch.int8 or a.dim() < 2 or b.dim() < 2:
        return torch.matmul(a.double(), b.double()).to(_I32)
    acc = torch.zeros(torch.matmul(a.to("meta", _F32), b.to("meta", _F32)).shape, dtype=_I32)
    for j in range(0, acc.shape[-1], _PANEL_COLS):
        for i in range(0, a.shape[-1], _EXACT_F32_TERMS):
            part = torch.matmul(a[..., i:i + _EXACT_F32_TERMS].float(),
                                b[..., i:i + _EXACT_F32_TERMS, j:j + _PANEL_COLS].float())
            acc[..., j:j + _PANEL_COLS] += part.to(_I32)
    return acc


def dequant_int32(acc: torch.Tensor, scale, offset, pertoken_scale, bias, out: torch.dtype):
    """The dequantisation every quantized matmul here ends with (CANN aclnnQuantMatmulV4 /
    aclnnGroupedMatmulV4 formulas): int32 bias joins the accumulator, then
    y = acc * scale [* pertoken_scale] [+ offset] [+ float bias], rounded once to ``out``.
    ``scale``/``offset`` are float32 broadcastable over the last dim, pertoken_scale over rows.
    int32 output is the raw accumulator (+ int32 bias): assumption, the docs give no formula for
    it, and the dequantisation scale cannot apply to an integer result.
    """
    if bias is not None and bias.dtype == _I32:
        acc = acc + bias
    if out == _I32:
        return acc.to(_I32)
    # Built in place: one output-sized float32 temporary beside the accumulator, not four.
    y = _in_place(acc.float(), torch.Tensor.mul_, torch.mul, scale)
    if pertoken_scale is not None:
        y = _in_place(y, torch.Tensor.mul_, torch.mul, pertoken_scale.float().unsqueeze(-1))
    if offset is not None:
        y = _in_place(y, torch.Tensor.add_, torch.add, offset)
    if bias is not None and bias.dtype != _I32:
        y = _in_place(y, torch.Tensor.add_, torch.add, bias.float())
    return rint_saturate(y, out) if out == _I8 else y.to(out)


def _in_place(y: torch.Tensor, inplace, outofplace, other: torch.Tensor) -> torch.Tensor:
    """y op other, in place when broadcasting leaves y's shape unchanged."""
    if torch.broadcast_shapes(y.shape, other.shape) == y.shape:
        return inplace(y, other)
    return outofplace(y, other)


@npu_op(
    "npu_quant_matmul(Tensor x1, Tensor x2, Tensor scale, *, Tensor? offset=None, "
    "Tensor? pertoken_scale=None, Tensor? bias=None, int? output_dtype=None, int? x1_dtype=None, "
    "int? x2_dtype=None, int? pertoken_scale_dtype=None, int? scale_dtype=None, "
    "int[]? group_sizes=None, Tensor? y_scale=None) -> Tensor",
    fake=_qmm_fake,
)
def npu_quant_matmul(x1, x2, scale, *, offset=None, pertoken_scale=None, bias=None,
                     output_dtype=None, x1_dtype=None, x2_dtype=None, pertoken_scale_dtype=None,
                     scale_dtype=None, group_sizes=None, y_scale=None):
    """Doc entry ``npu_quant_matmul``: int8 (or packed-int4) x1 [.., m, k] @ x2 [.., k, n]
    (x2 may be the transpose of a contiguous [.., n, k]), exact int32 accumulation, then

        (acc + bias_int32) * scale [* pertoken_scale] [+ offset] [+ bias_float]

    (the doc gives no formula; these are CANN aclnnQuantMatmulV4's). output_dtype None -> int8
    (round to nearest-even, saturate), float16/bfloat16, or int32 (raw accumulator + int32 bias).
    scale: float32/bfloat16, or int64 from npu_trans_quant_param (its FP19 scale is used, and for
    int8 output its 9-bit offset). As torch_npu's adapter does, a float32 scale without
    pertoken_scale for float16/int8 output is first encoded with npu_trans_quant_param (so the
    scale is truncated to FP19 and the offset rounded to an integer in [-256, 255]); an offset
    inside an int64 scale is applied for int8 output only (assumption: the doc allows offset
    nowhere else). The supported combinations are the doc's dtype table (Atlas A2/A3).
    """
    int4, out, _ = _qmm_check(x1, x2, scale, offset, pertoken_scale, bias, output_dtype, x1_dtype,
                              x2_dtype, pertoken_scale_dtype, scale_dtype, group_sizes, y_scale)
    a = unpack_int4(x1) if int4 else x1
    b = unpack_int4_operand(x2) if int4 else x2
    acc = exact_int_matmul(a, b)
    off = None
    if scale.dtype == _I64:
        s, off = decode_quant_param(scale)
    elif scale.dtype == _F32 and pertoken_scale is None and out in (_F16, _I8):
        s, off = decode_quant_param(npu_trans_quant_param(scale, offset))
    else:
        s = scale.float()
    # Only an int8 output takes an offset (the int64 encoding of a scale without one holds 0).
    return dequant_int32(acc, s, off if out == _I8 else None, pertoken_scale, bias, out)


# ---------------------------------------------------------------------------------------------
# npu_weight_quant_batchmatmul
# ---------------------------------------------------------------------------------------------

_WQBMM_BIAS = {torch.float16: torch.float16, torch.bfloat16: torch.float32,
               torch.float32: torch.float32}


def _wqbmm_check(x, weight, antiquant_scale, antiquant_offset, quant_scale, quant_offset, bias,
                 antiquant_group_size, inner_precise, weight_dtype):
    """Validate; returns (K, N, int4 weight, group size or 0)."""
    op = "npu_weight_quant_batchmatmul"
    _unsupported(op, weight_dtype=weight_dtype is not None)
    if x.dtype not in _FLOATS:
        _fail(op, f"x must be float16/bfloat16, got {x.dtype}", "'x' dtype", TypeError)
    if weight.dtype not in (_I8, _I32):
        _fail(op, f"weight must be int8, or int32 carrying int4, got {weight.dtype}",
              "'weight' dtype", TypeError)
    if x.dim() != 2 or weight.dim() != 2:
        _fail(op, f"x and weight must be 2-D (M, K) and (K, N), got {tuple(x.shape)} and "
              f"{tuple(weight.shape)}", "'x'/'weight' shape")
    if not x.numel() or not weight.numel():
        _fail(op, "empty tensors are not supported", "constraints")
    for name, t in (("x", x), ("weight", weight)):
        if not nd_layout_ok(t):
            _fail(op, f"{name} must be contiguous or a transposed view, got strides "
                  f"{tuple(t.stride())}", f"'{name}'")
    int4 = weight.dtype == _I32
    w_t = is_transposed(weight)
    if int4:
        k, n = ((weight.size(0) * INT4_PER_INT32, weight.size(1)) if w_t else
                (weight.size(0), weight.size(1) * INT4_PER_INT32))
    else:
        k, n = weight.shape
    if x.size(1) != k:
        _fail(op, f"K of x ({x.size(1)}) and weight ({k}) differ", "constraints: (M, K), (K, N)")
    if not (1 <= k <= 65535 and 1 <= n <= 65535):
        _fail(op, f"K={k} and N={n} must lie in [1, 65535]", "constraints")
    if is_transposed(x) and x.size(0) > 65535:
        _fail(op, f"with a transposed x, M ({x.size(0)}) must be <= 65535", "constraints")
    if inner_precise not in (0, 1):
        _fail(op, f"inner_precise must be 0 or 1, got {inner_precise}", "'inner_precise'")
    group = antiquant_group_size
    if group and not (group % 32 == 0 and 32 <= group <= k - 1):
        _fail(op, f"antiquant_group_size must be 0 or a multiple of 32 in [32, K-1={k - 1}], got "
              f"{group}", "'antiquant_group_size'")
    s = antiquant_scale
    if s.dtype == _I64:
        # The int64 (npu_trans_quant_param) scale's own rules.
        if (x.dtype != _F16 or is_transposed(x) or int4 or not w_t or group
                or quant_scale is not None or quant_offset is not None):
            _fail(op, "an int64 antiquant_scale needs float16 non-transposed x, a transposed "
                  "int8 weight, per-channel scales and no quant_scale/quant_offset",
                  "'antiquant_scale' int64")
        if not (1 <= x.size(0) <= 96 and k % 64 == 0 and n % 64 == 0):
            _fail(op, f"an int64 antiquant_scale needs M in [1, 96] and K, N multiples of 64, "
                  f"got M={x.size(0)}, K={k}, N={n}", "'antiquant_scale' int64")
    elif s.dtype != x.dtype:
        _fail(op, f"antiquant_scale must have x's dtype {x.dtype} (or be int64), got {s.dtype}",
              "'antiquant_scale' dtype", TypeError)
    if group:
        if tuple(s.shape) != (math.ceil(k / group), n):
            _fail(op, f"per-group antiquant_scale must be (ceil(K/group)={math.ceil(k / group)}, "
                  f"N={n}), got {tuple(s.shape)}", "'antiquant_scale' per_group shape")
    elif tuple(s.shape) not in ((1,), (1, 1), (n,), (1, n)):
        _fail(op, f"antiquant_scale must be (1,)/(1, 1) per tensor or (N,)/(1, N) per channel "
              f"with N={n}, got {tuple(s.shape)}", "'antiquant_scale' shape")
    if antiquant_offset is not None:
        want = _I32 if s.dtype == _I64 else s.dtype
        if antiquant_offset.dtype != want or antiquant_offset.shape != s.shape:
            _fail(op, f"antiquant_offset must be {want} with antiquant_scale's shape "
                  f"{tuple(s.shape)}, got {antiquant_offset.dtype} "
                  f"{tuple(antiquant_offset.shape)}", "'antiquant_offset'")
    if quant_offset is not None and quant_scale is None:
        _fail(op, "quant_offset cannot be given without quant_scale", "constraints")
    if quant_scale is not None:
        if quant_scale.dtype not in (_F32, _I64) or tuple(quant_scale.shape) not in (
                (1,), (n,), (1, n)):
            _fail(op, f"quant_scale must be float32/int64 of shape (1,), (N,) or (1, N), got "
                  f"{quant_scale.dtype} {tuple(quant_scale.shape)}", "'quant_scale'")
        if quant_offset is not None:
            _unsupported(op, **{"quant_offset with an int64 quant_scale (the offset travels in "
                                "the int64)": quant_scale.dtype == _I64})
            if quant_offset.dtype != _F32 or quant_offset.shape != quant_scale.shape:
                _fail(op, "quant_offset must be float32 with quant_scale's shape",
                      "constraints: quant_scale and quant_offset shapes match")
    if bias is not None:
        if bias.dtype != _WQBMM_BIAS[x.dtype]:
            _fail(op, f"bias must be {_WQBMM_BIAS[x.dtype]} with {x.dtype} x, got {bias.dtype}",
                  "'bias' dtype", TypeError)
        if tuple(bias.shape) not in ((1,), (n,), (1, n)) or not bias.is_contiguous():
            _fail(op, f"bias must be a contiguous (1,), (N,) or (1, N), got "
                  f"{tuple(bias.shape)}", "'bias'")
    return k, n, int4, group


def _wqbmm_fake(x, weight, antiquant_scale, antiquant_offset=None, quant_scale=None,
                quant_offset=None, bias=None, antiquant_group_size=0, inner_precise=0,
                weight_dtype=None):
    _, n, _, _ = _wqbmm_check(x, weight, antiquant_scale, antiquant_offset, quant_scale,
                              quant_offset, bias, antiquant_group_size, inner_precise,
                              weight_dtype)
    return x.new_empty((x.size(0), n), dtype=_I8 if quant_scale is not None else x.dtype)


@npu_op(
    "npu_weight_quant_batchmatmul(Tensor x, Tensor weight, Tensor antiquant_scale, "
    "Tensor? antiquant_offset=None, Tensor? quant_scale=None, Tensor? quant_offset=None, "
    "Tensor? bias=None, int antiquant_group_size=0, int inner_precise=0, "
    "int? weight_dtype=None) -> Tensor",
    fake=_wqbmm_fake,
)
def npu_weight_quant_batchmatmul(x, weight, antiquant_scale, antiquant_offset=None,
                                 quant_scale=None, quant_offset=None, bias=None,
                                 antiquant_group_size=0, inner_precise=0, weight_dtype=None):
    """Doc entry ``npu_weight_quant_batchmatmul`` (formula: CANN aclnnWeightQuantBatchMatmulV2):

        y = x @ ((weight + antiquant_offset) * antiquant_scale) + bias
        y_int8 = round((x @ ANTIQUANT(weight) + bias) * quant_scale + quant_offset)   (quant_scale)

    x (M, K) float16/bfloat16; weight (K, N) int8, or int32 carrying 8 int4 (a contiguous
    (K, N/8), or the transpose of a contiguous (N, K/8)); either may be a transposed view.
    antiquant scale/offset per tensor ((1,), (1, 1)), per channel ((N,), (1, N)) or per group
    ((ceil(K/G), N), group g covering rows [g*G, (g+1)*G)); an int64 scale is decoded like
    npu_trans_quant_param's. inner_precise is a performance hint and ignored.
    Assumption (doc silent): the dequantized weight is rounded to x's dtype (the cube unit's
    input type), the matmul accumulates in float32, bias is added in float32 and the result
    rounded once.
    """
    k, n, int4, group = _wqbmm_check(x, weight, antiquant_scale, antiquant_offset, quant_scale,
                                     quant_offset, bias, antiquant_group_size, inner_precise,
                                     weight_dtype)
    w = (unpack_int4_operand(weight) if int4 else weight).float()
    if antiquant_scale.dtype == _I64:
        s = decode_quant_param(antiquant_scale)[0]
    else:
        s = antiquant_scale.float()
    off = None if antiquant_offset is None else antiquant_offset.float()
    if group:
        s = s.repeat_interleave(group, dim=0)[:k]
        off = None if off is None else off.repeat_interleave(group, dim=0)[:k]
    else:
        s = s.reshape(1, -1)
        off = None if off is None else off.reshape(1, -1)
    w_deq = ((w if off is None else w + off) * s).to(x.dtype).float()
    acc = x.float() @ w_deq
    if bias is not None:
        acc = acc + bias.float().reshape(1, -1)
    if quant_scale is None:
        return acc.to(x.dtype)
    if quant_scale.dtype == _I64:
        qs, qo = decode_quant_param(quant_scale.reshape(1, -1))
    else:
        qs = quant_scale.reshape(1, -1)
        qo = None if quant_offset is None else quant_offset.reshape(1, -1)
    y = acc * qs
    return rint_saturate(y if qo is None else y + qo, _I8)
