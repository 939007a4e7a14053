"""CPU kernels of torch_npu's quantization ops (vllm_ascend/kernels/npu_ops/quant.py) against
float64 references written from the doc semantics, plus one negative test per enforced
constraint. The grouped-matmul and init-routing quantized forms are tested in test_moe_ops.py.

References round with Python's round() (ties to even) and pack int4 with their own bit loops,
independently of the kernels. Inputs for the exact tests are built so that float32 arithmetic is
exact (multiples of powers of two), so ties are real ties; elsewhere a result may differ from the
float64 reference by one only where that reference lies within 1e-4 of a tie.
"""

from __future__ import annotations

import math
import struct

import pytest
import torch
from test_moe_ops import _fake_shapes, _shapes

import vllm_ascend.kernels.npu_ops  # noqa: F401  (registers torch.ops.npu.*)

OPS = torch.ops.npu
RTOL = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float32: 1e-6}


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def _round_sat(values: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    return torch.tensor([min(max(round(v), lo), hi) for v in values.reshape(-1).tolist()],
                        dtype=torch.int64).reshape(values.shape)


def _assert_quantized(actual: torch.Tensor, ref: torch.Tensor, lo=-128, hi=127, exact=False):
    """actual (integers) == round-half-even(ref) saturated; off by one allowed only next to a tie
    (float32 vs float64) unless ``exact``."""
    want = _round_sat(ref, lo, hi)
    diff = (actual.to(torch.int64) - want).abs()
    if exact:
        assert torch.equal(diff, torch.zeros_like(diff)), f"{actual}\nvs\n{want}"
        return
    near_tie = ((ref - ref.floor()) - 0.5).abs() < 1e-4
    assert bool((diff <= 1).all()) and bool((diff[~near_tie] == 0).all()), f"{actual}\n{want}"


def _close(actual: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert actual.dtype == dtype
    atol = 1e-5 * max(float(ref.abs().max()), 1.0)
    torch.testing.assert_close(actual.double(), ref, rtol=RTOL[dtype], atol=atol)


def _f32_bits(v: float) -> int:
    return struct.unpack("<I", struct.pack("<f", v))[0]


def _bits_f32(b: int) -> float:
    return struct.unpack("<f", struct.pack("<I", b & 0xFFFFFFFF))[0]


def _fp19(t: torch.Tensor) -> torch.Tensor:
    """float32 values truncated to the 19 bits the int64 scale keeps (sign, exponent, 10)."""
    return torch.tensor([_bits_f32(_f32_bits(v) & 0xFFFFE000) for v in t.reshape(-1).tolist()],
                        dtype=torch.float64).reshape(t.shape)


def _pack_ref(vals: torch.Tensor) -> torch.Tensor:
    """int4 values [..., 8n] -> int32 [..., n], element j of each 8 in bits [4j, 4j+4)."""
    rows = vals.reshape(-1, vals.shape[-1]).tolist()
    words = []
    for row in rows:
        for i in range(0, len(row), 8):
            w = sum((v & 0xF) << (4 * j) for j, v in enumerate(row[i:i + 8]))
            words.append(w - 2**32 if w >= 2**31 else w)
    return torch.tensor(words, dtype=torch.int32).reshape(*vals.shape[:-1], -1)


def _int4(shape, seed=0):
    return torch.randint(-8, 8, shape, generator=_g(seed))


def _int8(shape, seed=0):
    return torch.randint(-128, 128, shape, generator=_g(seed)).to(torch.int8)


# ---- int4 packing layout --------------------------------------------------------------------


def test_int4_layout_and_round_trip():
    vals = torch.tensor([[1, -1, 2, -2, 3, -3, 7, -8]])
    assert _pack_ref(vals).tolist() == [[0x87D3E2F1 - 2**32]]  # nibble j at bits 4j..4j+3
    x = vals.float().repeat(2, 2) / 4  # quantize(x * 4) reproduces vals
    y = OPS.npu_quantize(x, torch.tensor([4.0]), None, torch.quint4x2, -1, False)
    assert y.dtype == torch.int32 and y.tolist() == [[0x87D3E2F1 - 2**32] * 2] * 2


# ---- npu_quantize ---------------------------------------------------------------------------


def _grid(shape, seed=0, lo=-40.0, hi=40.0):
    """float32 multiples of 1/8 (exact products with power-of-two scales)."""
    return (torch.randint(int(lo * 8), int(hi * 8) + 1, shape, generator=_g(seed)) / 8).float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("per_channel", [False, True])
def test_quantize_mul_mode_int8(dtype, per_channel):
    """div_mode=False: round(x * scale + zero_point), saturated to int8 (doc formula)."""
    x = _grid((3, 4, 16)).to(dtype)
    scales = 2.0 ** (torch.arange(16) % 5 - 1.0) if per_channel else torch.tensor([4.0])
    zp = torch.randint(-3, 4, scales.shape, generator=_g(2)).float()
    scales, zp = scales.to(dtype), zp.to(dtype)
    y = OPS.npu_quantize(x, scales, zp, torch.qint8, -1, False)
    ref = x.double() * scales.double() + zp.double()
    assert y.dtype == torch.int8
    _assert_quantized(y, ref, exact=True)
    assert bool((ref > 127.5).any()) and bool((ref < -128.5).any())  # saturation exercised
    assert bool(((ref - ref.floor()) == 0.5).any())  # ties exercised
    assert _fake_shapes(OPS.npu_quantize, x, scales, zp, torch.qint8, -1, False) == _shapes(y)


def test_quantize_mul_mode_axis_minus_2():
    """axis=-2: the scales run along the second-to-last axis, 1-D or with x's rank."""
    x = _grid((2, 5, 8))
    scales = 2.0 ** torch.arange(-2, 3).float()
    ref = x.double() * scales.double().reshape(5, 1)
    _assert_quantized(OPS.npu_quantize(x, scales, None, torch.qint8, -2, False), ref, exact=True)
    y = OPS.npu_quantize(x, scales.reshape(1, 5, 1), None, torch.qint8, -2, False)
    _assert_quantized(y, ref, exact=True)


@pytest.mark.parametrize("dtype,zp_dtype,lo,hi", [
    (torch.qint8, torch.int8, -128, 127), (torch.quint8, torch.uint8, 0, 255),
    (torch.int32, torch.int32, -(2**31), 2**31 - 1)])
def test_quantize_div_mode(dtype, zp_dtype, lo, hi):
    """div_mode=True: round(x / scale + zero_point) along ``axis`` (default 1)."""
    x = _grid((4, 6, 3), lo=-300, hi=300)
    scales = 2.0 ** torch.randint(-1, 3, (6,), generator=_g(3)).float()
    zp = torch.randint(0, 5, (6,), generator=_g(4)).to(zp_dtype)
    y = OPS.npu_quantize(x, scales, zp, dtype)
    ref = x.double() / scales.double().reshape(1, 6, 1) + zp.double().reshape(1, 6, 1)
    assert y.dtype == {torch.qint8: torch.int8, torch.quint8: torch.uint8}.get(dtype, torch.int32)
    _assert_quantized(y, ref, lo, hi, exact=True)
    assert _fake_shapes(OPS.npu_quantize, x, scales, zp, dtype) == _shapes(y)


def test_quantize_int4_matches_reference():
    x = _grid((3, 16), lo=-5, hi=5).half()
    scales = torch.full((16,), 2.0).half()
    y = OPS.npu_quantize(x, scales, None, torch.quint4x2, -1, False)
    want = _round_sat(x.double() * 2, -8, 7)
    assert y.shape == (3, 2) and torch.equal(y, _pack_ref(want))
    assert _fake_shapes(OPS.npu_quantize, x, scales, None, torch.quint4x2, -1, False) == [
        ((3, 2), torch.int32)]


@pytest.mark.parametrize("args,exc,match", [
    ((torch.ones(4, 8), torch.ones(1), None, torch.quint8, -1, False), TypeError, "qint8"),
    ((torch.ones(4, 8), torch.ones(1).half(), None, torch.qint8, -1, False), TypeError, "dtype"),
    ((torch.ones(4, 8), torch.ones(3), None, torch.qint8, -1, False), ValueError, "scales"),
    ((torch.ones(4, 8), torch.ones(8), torch.ones(1), torch.qint8, -1, False), ValueError,
     "zero_points"),
    ((torch.ones(4, 12), torch.ones(1), None, torch.quint4x2, -1, False), ValueError,
     "multiple of 8"),
    ((torch.ones(4, 8), torch.ones(1), None, torch.qint8, -3, False), ValueError, "axis"),
    ((torch.ones(4, 8), torch.ones(1), torch.ones(1), torch.qint8, 1, True), TypeError,
     "zero_points"),
    ((torch.ones(4, 8), torch.ones(1).half(), None, torch.qint8, 1, True), TypeError, "scales"),
    ((torch.ones(4, 8), torch.ones(1), None, torch.quint4x2, 1, True), TypeError, "dtype"),
    ((torch.ones(4, 8, dtype=torch.int32), torch.ones(1), None, torch.qint8, 1, True),
     TypeError, "input"),
])
def test_quantize_rejects(args, exc, match):
    with pytest.raises(exc, match=match):
        OPS.npu_quantize(*args)


# ---- npu_dynamic_quant ----------------------------------------------------------------------


def _ref_dynamic(x: torch.Tensor, smooth_rows: torch.Tensor | None, dtype_max: float):
    rows = x.double().reshape(-1, x.shape[-1])
    if smooth_rows is not None:
        rows = rows * smooth_rows.double()
    scale = rows.abs().amax(-1) / dtype_max
    return rows / scale.unsqueeze(-1), scale


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(5, 32), (2, 3, 16)])
@pytest.mark.parametrize("smooth", [False, True])
def test_dynamic_quant_per_token(dtype, shape, smooth):
    """scale = rowMax(|x * smooth|) / 127, y = round(x * smooth / scale) (doc formulas)."""
    x = torch.randn(shape, generator=_g(5)).to(dtype)
    sm = (torch.rand(shape[-1], generator=_g(6)) + 0.5).to(dtype) if smooth else None
    y, scale = OPS.npu_dynamic_quant(x, smooth_scales=sm)
    ref_y, ref_s = _ref_dynamic(x, sm, 127.0)
    assert y.dtype == torch.int8 and y.shape == x.shape
    assert scale.dtype == torch.float32 and scale.shape == x.shape[:-1]
    torch.testing.assert_close(scale.double().reshape(-1), ref_s, rtol=1e-6, atol=0)
    _assert_quantized(y.reshape(ref_y.shape), ref_y)
    assert int(y.abs().max()) == 127
    assert _fake_shapes(OPS.npu_dynamic_quant, x, smooth_scales=sm) == _shapes((y, scale))


def test_dynamic_quant_moe_groups_and_zero_row():
    """group_index: smooth_scales[g] applies to rows [group_index[g-1], group_index[g])."""
    x = torch.randn(7, 16, generator=_g(7)).bfloat16()
    x[3] = 0
    sm = (torch.rand(3, 16, generator=_g(8)) + 0.5).bfloat16()
    gi = torch.tensor([2, 2, 7], dtype=torch.int32)  # an empty middle group
    y, scale = OPS.npu_dynamic_quant(x, smooth_scales=sm, group_index=gi)
    per_row = torch.stack([sm[0]] * 2 + [sm[2]] * 5)
    ref_y, ref_s = _ref_dynamic(x, per_row, 127.0)
    assert float(scale[3]) == 0.0 and not bool(y[3].any())  # all-zero row: scale 0, y 0
    keep = torch.arange(7) != 3
    torch.testing.assert_close(scale.double()[keep], ref_s[keep], rtol=1e-6, atol=0)
    _assert_quantized(y[keep], ref_y[keep])
    assert _fake_shapes(OPS.npu_dynamic_quant, x, smooth_scales=sm, group_index=gi) == _shapes(
        (y, scale))


def test_dynamic_quant_int4():
    x = torch.randn(4, 16, generator=_g(9)).half()
    y, scale = OPS.npu_dynamic_quant(x, dst_type=torch.quint4x2)
    ref_y, ref_s = _ref_dynamic(x, None, 7.0)
    assert y.dtype == torch.int32 and y.shape == (4, 2)
    torch.testing.assert_close(scale.double(), ref_s, rtol=1e-6, atol=0)
    got = torch.tensor([[(w >> (4 * j)) & 0xF for w in row for j in range(8)]
                        for row in (y.to(torch.int64) & 0xFFFFFFFF).tolist()])
    _assert_quantized(torch.where(got >= 8, got - 16, got), ref_y, -8, 7)
    assert _fake_shapes(OPS.npu_dynamic_quant, x, dst_type=torch.quint4x2) == _shapes((y, scale))


@pytest.mark.parametrize("x,kwargs,exc,match", [
    (torch.ones(4, 8, dtype=torch.int8), {}, TypeError, "float16"),
    (torch.ones(8).half(), {}, ValueError, "more than 1 dim"),
    (torch.ones(4, 8).half(), dict(smooth_scales=torch.ones(8)), TypeError, "smooth_scales"),
    (torch.ones(4, 8).half(), dict(smooth_scales=torch.ones(4).half()), ValueError, "1-D"),
    (torch.ones(4, 8).half(), dict(smooth_scales=torch.ones(2, 8).half(),
                                   group_index=torch.tensor([1, 3], dtype=torch.int32)),
     ValueError, "end at the row count"),
    (torch.ones(4, 8).half(), dict(smooth_scales=torch.ones(2, 8).half(),
                                   group_index=torch.tensor([1, 4])), TypeError, "int32"),
    (torch.ones(4, 12).half(), dict(dst_type=torch.quint4x2), ValueError, "multiple of 8"),
    (torch.ones(4, 8).half(), dict(dst_type=torch.quint8), TypeError, "dst_type"),
    (torch.ones(4, 8).half(), dict(quant_mode="pertensor"), NotImplementedError, "quant_mode"),
])
def test_dynamic_quant_rejects(x, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        OPS.npu_dynamic_quant(x, **kwargs)


# ---- npu_trans_quant_param ------------------------------------------------------------------


def _ref_param(scale: float, offset: float | None, round_mode: int) -> int:
    bits = _f32_bits(scale)
    if round_mode == 1:  # round the dropped 13 bits to nearest, ties to even
        keep, rem = bits >> 13, bits & 0x1FFF
        keep += rem > 0x1000 or (rem == 0x1000 and keep & 1)
        bits = keep << 13
    out = (bits & 0xFFFFE000) | (1 << 46)
    if offset is not None:
        off = int(math.copysign(math.floor(abs(offset) + 0.5), offset))  # C round()
        out |= (max(-256, min(255, off)) & 0x1FF) << 37
    return out


@pytest.mark.parametrize("round_mode", [0, 1])
def test_trans_quant_param_encoding(round_mode):
    half_ulp = 2.0**-10 * 0.5  # exactly halfway between two FP19 values above 1.0
    scale = torch.tensor([1.0, 1 + half_ulp, 1 + 3 * half_ulp, -0.3, 1e-3, 2.0**-20 * 3, 7.77])
    offset = torch.tensor([0.0, 2.5, -2.5, 300.0, -300.0, -1.4, 0.6])
    out = OPS.npu_trans_quant_param(scale, offset, round_mode)
    pairs = zip(scale.tolist(), offset.tolist(), strict=True)
    want = [_ref_param(s, o, round_mode) for s, o in pairs]
    assert out.dtype == torch.int64 and out.tolist() == want
    assert OPS.npu_trans_quant_param(scale).tolist() == [
        _ref_param(s, None, 0) for s in scale.tolist()]


def test_trans_quant_param_shapes():
    s, o = torch.rand(8) + 0.1, torch.rand(1)
    assert OPS.npu_trans_quant_param(s, o).shape == (8,)
    assert OPS.npu_trans_quant_param(s[:1], torch.rand(8)).shape == (8,)
    assert OPS.npu_trans_quant_param(s.reshape(1, 8), o.expand(1, 8)).shape == (1, 8)
    assert _fake_shapes(OPS.npu_trans_quant_param, s[:1], torch.rand(8)) == [((8,), torch.int64)]


@pytest.mark.parametrize("args,exc,match", [
    ((torch.ones(4).half(),), TypeError, "float32"),
    ((torch.ones(2, 4),), ValueError, r"\(1, n\)"),
    ((torch.ones(4), torch.ones(3)), ValueError, "equal or 1"),
    ((torch.ones(1, 4), torch.ones(1, 3)), ValueError, "same shape"),
    ((torch.ones(4), None, 2), ValueError, "round_mode"),
    ((torch.tensor([1.0, float("nan")]),), ValueError, "NaN"),
])
def test_trans_quant_param_rejects(args, exc, match):
    with pytest.raises(exc, match=match):
        OPS.npu_trans_quant_param(*args)


def test_int64_scale_round_trip_through_quant_matmul():
    """The int64 scale carries FP19(scale) and the rounded, clamped offset: a matmul whose
    accumulator is 1 returns the truncated scale exactly (FP19 fits float16's 10-bit mantissa),
    and one whose accumulator is 0 returns the encoded offset as int8."""
    scale = torch.tensor([1 + 2.0**-12, 0.3, -5.123, 2.0**-3 * (1 + 2.0**-11)])
    x1 = torch.ones(1, 1, dtype=torch.int8)
    y = OPS.npu_quant_matmul(x1, torch.ones(1, 4, dtype=torch.int8),
                             OPS.npu_trans_quant_param(scale), output_dtype=torch.float16)
    assert torch.equal(y.double()[0], _fp19(scale))
    offset = torch.tensor([2.5, -2.5, 300.0, -1.4])
    param = OPS.npu_trans_quant_param(scale, offset)
    y8 = OPS.npu_quant_matmul(x1, torch.zeros(1, 4, dtype=torch.int8), param)
    assert y8.tolist() == [[3, -3, 127, -1]]  # 300 -> 255 in the encoding -> 127 in int8
    # a float32 scale (no pertoken_scale, float16/int8 output) is encoded the same way first
    yf = OPS.npu_quant_matmul(x1, torch.ones(1, 4, dtype=torch.int8), scale,
                              output_dtype=torch.float16)
    assert torch.equal(yf, y)
    assert OPS.npu_quant_matmul(x1, torch.zeros(1, 4, dtype=torch.int8), scale,
                                offset=offset).tolist() == [[3, -3, 127, -1]]


# ---- npu_quant_matmul -----------------------------------------------------------------------


def _ref_qmm(a, b, scale, offset=None, pertoken=None, bias=None):
    """float64: (a @ b + bias_int32) * scale [* pertoken] [+ offset] [+ bias_float]."""
    acc = a.double() @ b.double()  # integers well below 2**53: exact
    if bias is not None and bias.dtype == torch.int32:
        acc = acc + bias.double()
    y = acc * scale
    if pertoken is not None:
        y = y * pertoken.double().unsqueeze(-1)
    if offset is not None:
        y = y + offset
    if bias is not None and bias.dtype != torch.int32:
        y = y + bias.double()
    return y


@pytest.mark.parametrize("out,scale_dtype,bias_dtype", [
    (torch.bfloat16, torch.float32, torch.bfloat16), (torch.bfloat16, torch.bfloat16, None),
    (torch.bfloat16, torch.float32, torch.int32), (torch.float16, torch.float32, torch.float32),
    (torch.float16, torch.float32, torch.float16), (torch.float32, torch.float32, torch.float32)])
def test_quant_matmul_pertoken(out, scale_dtype, bias_dtype):
    """The W8A8-dynamic form: per-channel weight scale x per-token activation scale."""
    a, w = _int8((6, 48), 1), _int8((24, 48), 2)  # weight stored [n, k], passed transposed
    scale = (torch.rand(24, generator=_g(3)) / 100).to(scale_dtype)
    pts = torch.rand(6, generator=_g(4)) / 100
    bias = None if bias_dtype is None else (torch.randn(24, generator=_g(5)) * 50).to(bias_dtype)
    kw = dict(pertoken_scale=pts, bias=bias, output_dtype=out)
    y = OPS.npu_quant_matmul(a, w.t(), scale, **kw)
    assert y.shape == (6, 24)
    _close(y, _ref_qmm(a, w.t(), scale.double(), None, pts, bias), out)
    torch.testing.assert_close(OPS.npu_quant_matmul(a, w.t().contiguous(), scale, **kw), y)
    assert _fake_shapes(OPS.npu_quant_matmul, a, w.t(), scale, **kw) == _shapes(y)


@pytest.mark.parametrize("batch_bias", [False, True])
def test_quant_matmul_int64_scale_fp16_batched(batch_bias):
    """Static W8A8: int64 scale from npu_trans_quant_param, int32 bias, batch broadcast."""
    a, b = _int8((2, 5, 32), 6), _int8((32, 16), 7)
    scale = torch.rand(16, generator=_g(8)) / 50
    bias = torch.randint(-500, 500, (2, 1, 16) if batch_bias else (16,), generator=_g(9),
                         dtype=torch.int32)
    y = OPS.npu_quant_matmul(a, b, OPS.npu_trans_quant_param(scale), bias=bias,
                             output_dtype=torch.float16)
    assert y.shape == (2, 5, 16)
    _close(y, _ref_qmm(a, b, _fp19(scale), bias=bias), torch.float16)
    # 3-D x2 with its own batch
    y3 = OPS.npu_quant_matmul(a, b.expand(2, 32, 16).contiguous(),
                              OPS.npu_trans_quant_param(scale), bias=bias,
                              output_dtype=torch.float16)
    torch.testing.assert_close(y3, y)


def test_quant_matmul_int8_output_ties_offset_saturation():
    """int8 output: round-half-even of acc * scale + offset, saturated; acc * 2**-3 lands on
    exact ties, and the offset is rounded to an integer by the encoding."""
    a, b = _int8((8, 16), 10), _int8((16, 12), 11)
    scale = torch.full((12,), 2.0**-3)
    offset = torch.tensor([0.0, 1.0, -2.0, 2.5] * 3)
    y = OPS.npu_quant_matmul(a, b, scale, offset=offset)
    ref = _ref_qmm(a, b, scale.double(), torch.tensor([0.0, 1.0, -2.0, 3.0] * 3).double())
    assert y.dtype == torch.int8
    _assert_quantized(y, ref, exact=True)
    assert bool((ref.abs() > 128).any()) and bool(((ref - ref.floor()) == 0.5).any())


def test_quant_matmul_int32_output_and_int4():
    a, b = _int8((3, 16), 12), _int8((16, 8), 13)
    bias = torch.randint(-9, 9, (8,), generator=_g(14), dtype=torch.int32)
    y = OPS.npu_quant_matmul(a, b, torch.rand(8), bias=bias, output_dtype=torch.int32)
    assert y.dtype == torch.int32 and torch.equal(y.double(), a.double() @ b.double() + bias)
    # int4 (int32 carrying 8 per element): x1 (m, k/8), x2 (k, n/8) or the transpose of (n, k/8)
    a4, b4 = _int4((3, 32), 15), _int4((32, 16), 16)
    scale = torch.rand(16, generator=_g(17)) / 10
    ref = _ref_qmm(a4, b4, _fp19(scale))
    for x2 in (_pack_ref(b4), _pack_ref(b4.t().contiguous()).t()):
        y4 = OPS.npu_quant_matmul(_pack_ref(a4), x2, OPS.npu_trans_quant_param(scale),
                                  output_dtype=torch.float16)
        _close(y4, ref, torch.float16)
        assert _fake_shapes(OPS.npu_quant_matmul, _pack_ref(a4), x2,
                            OPS.npu_trans_quant_param(scale),
                            output_dtype=torch.float16) == _shapes(y4)


def _qmm_args(**over):
    """Legal: int8 (4, 32) @ (32, 8), float32 scale, bfloat16 output."""
    kw = dict(x1=_int8((4, 32)), x2=_int8((32, 8)), scale=torch.rand(8),
              output_dtype=torch.bfloat16)
    kw.update(over)
    return kw


@pytest.mark.parametrize("over,exc,match", [
    (dict(x2=_int8((32, 8)).int()), TypeError, "must both be int8"),
    (dict(x2=_int8((16, 8))), ValueError, "k of x1"),
    (dict(x2=_int8((32, 16))[:, ::2]), ValueError, "x2 must be contiguous"),
    (dict(scale=torch.rand(7)), ValueError, "scale must be 1-D"),
    (dict(pertoken_scale=torch.rand(5)), ValueError, "pertoken_scale"),
    (dict(bias=torch.zeros(8).half()), TypeError, "dtype table"),
    (dict(offset=torch.zeros(8)), TypeError, "dtype table"),
    (dict(scale=torch.zeros(8, dtype=torch.int64)), TypeError, "dtype table"),
    (dict(output_dtype=torch.float16, scale=torch.rand(8).bfloat16()), TypeError, "dtype table"),
    (dict(output_dtype=torch.float64), TypeError, "output_dtype"),
    (dict(bias=torch.zeros(1, 8, dtype=torch.int32)), ValueError, "bias must be"),
    (dict(x1=_int8((8, 32))[::2]), ValueError, "x1 must be contiguous"),
    (dict(group_sizes=[0, 0, 0]), NotImplementedError, "group_sizes"),
    (dict(scale=torch.zeros(8, dtype=torch.int64), offset=torch.zeros(8), output_dtype=None),
     NotImplementedError, "offset with an int64 scale"),
])
def test_quant_matmul_rejects(over, exc, match):
    kw = _qmm_args(**over)
    with pytest.raises(exc, match=match):
        OPS.npu_quant_matmul(kw.pop("x1"), kw.pop("x2"), kw.pop("scale"), **kw)


# ---- npu_weight_quant_batchmatmul -----------------------------------------------------------


def _ref_wqbmm(x, w, scale, offset, group, bias):
    """float64: x @ ((w + offset) * scale) + bias, the dequantized weight rounded to x's dtype;
    per-group scale row g covers weight rows [g*group, (g+1)*group)."""
    k, n = w.shape
    s = scale.double().reshape(-1, scale.shape[-1]).expand(-1, n)
    o = None if offset is None else offset.double().reshape(-1, offset.shape[-1]).expand(-1, n)
    wd = torch.zeros(k, n, dtype=torch.float64)
    for r in range(k):
        g = r // group if group else 0
        wd[r] = (w[r].double() + (0 if o is None else o[g])) * s[g]
    y = x.double() @ wd.to(x.dtype).double()
    return y if bias is None else y + bias.double().reshape(1, -1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("mode", ["tensor", "channel", "group"])
@pytest.mark.parametrize("transposed", [False, True])
def test_weight_quant_batchmatmul_int8(dtype, mode, transposed):
    k, n, group = 96, 24, (32 if mode == "group" else 0)
    x = torch.randn(5, k, generator=_g(20)).to(dtype)
    w = _int8((k, n), 21)
    shape = {"tensor": (1,), "channel": (n,), "group": (3, n)}[mode]
    scale = (torch.rand(shape, generator=_g(22)) / 50).to(dtype)
    offset = torch.randint(-4, 4, shape, generator=_g(23)).to(dtype)
    bias = torch.randn(n, generator=_g(24)).to(torch.float16 if dtype == torch.float16 else
                                                torch.float32)
    weight = w.t().contiguous().t() if transposed else w
    y = OPS.npu_weight_quant_batchmatmul(x, weight, scale, offset, None, None, bias, group)
    assert y.shape == (5, n)
    _close(y, _ref_wqbmm(x, w, scale, offset, group, bias), dtype)
    assert _fake_shapes(OPS.npu_weight_quant_batchmatmul, x, weight, scale, offset, None, None,
                        bias, group) == _shapes(y)


@pytest.mark.parametrize("transposed", [False, True])
def test_weight_quant_batchmatmul_int4_per_group(transposed):
    """W4A16: int4 weight in int32 (K, N/8), or the transpose of a packed (N, K/8)."""
    k, n, group = 64, 16, 32
    x = torch.randn(3, k, generator=_g(25)).half()
    w = _int4((k, n), 26)
    weight = _pack_ref(w.t().contiguous()).t() if transposed else _pack_ref(w)
    scale = (torch.rand(2, n, generator=_g(27)) / 10).half()
    y = OPS.npu_weight_quant_batchmatmul(x, weight, scale, antiquant_group_size=group)
    _close(y, _ref_wqbmm(x, w, scale, None, group, None), torch.float16)
    assert _fake_shapes(OPS.npu_weight_quant_batchmatmul, x, weight, scale,
                        antiquant_group_size=group) == _shapes(y)


def test_weight_quant_batchmatmul_int64_scale_and_quant_output():
    x = torch.randn(4, 64, generator=_g(28)).half()
    w = _int8((64, 64), 29)
    scale = (torch.rand(64, generator=_g(30)) / 50).half()
    offset = torch.randint(-3, 3, (1, 64), generator=_g(31), dtype=torch.int32)
    param = OPS.npu_trans_quant_param(scale.float()).reshape(64, 1).t()
    y = OPS.npu_weight_quant_batchmatmul(x, w.t().contiguous().t(), param, offset)
    _close(y, _ref_wqbmm(x, w, scale, offset, 0, None), torch.float16)  # fp16 fits FP19
    qs, qo = torch.full((64,), 2.0), torch.full((64,), 0.5)
    y8 = OPS.npu_weight_quant_batchmatmul(x, w, scale, None, qs, qo)
    ref = _ref_wqbmm(x, w, scale, None, 0, None) * 2 + 0.5
    assert y8.dtype == torch.int8
    _assert_quantized(y8, ref)


def _wq_args(**over):
    """Legal: bfloat16 x (2, 64), int8 weight (64, 8), per-channel bfloat16 scale."""
    kw = dict(x=torch.randn(2, 64).bfloat16(), weight=_int8((64, 8)),
              antiquant_scale=torch.rand(8).bfloat16())
    kw.update(over)
    return kw


@pytest.mark.parametrize("over,exc,match", [
    (dict(antiquant_scale=torch.rand(8).half()), TypeError, "antiquant_scale"),
    (dict(antiquant_scale=torch.rand(7).bfloat16()), ValueError, "antiquant_scale"),
    (dict(antiquant_offset=torch.rand(8).half()), ValueError, "antiquant_offset"),
    (dict(antiquant_group_size=48, antiquant_scale=torch.rand(2, 8).bfloat16()), ValueError,
     "multiple of 32"),
    (dict(antiquant_group_size=32, antiquant_scale=torch.rand(3, 8).bfloat16()), ValueError,
     "per-group"),
    (dict(bias=torch.rand(8).bfloat16()), TypeError, "bias"),
    (dict(quant_offset=torch.rand(8)), ValueError, "without quant_scale"),
    (dict(weight=_int8((32, 8))), ValueError, "K of x"),
    (dict(weight=_int8((64, 8)).half()), TypeError, "int8"),
    (dict(antiquant_scale=torch.zeros(8, dtype=torch.int64)), ValueError, "int64"),
    (dict(weight_dtype=1), NotImplementedError, "weight_dtype"),
])
def test_weight_quant_batchmatmul_rejects(over, exc, match):
    kw = _wq_args(**over)
    with pytest.raises(exc, match=match):
        OPS.npu_weight_quant_batchmatmul(**kw)


# ---- fidelity to torch-npu's Meta functions ---------------------------------------------------
# Rows in test_fidelity.SAMPLES' format (dtype arguments are the ints the dispatcher passes), run
# below through test_fidelity's own checks. test_fidelity may import them into SAMPLES; this
# module therefore imports test_fidelity only inside the tests.

FIDELITY_SAMPLES = [
    ("npu_quantize", "per_channel_mul", lambda: (
        (torch.randn(2, 3, 16), torch.rand(16) + 0.5, None, 12, -1, False), {})),
    ("npu_quantize", "div_quint8", lambda: (
        (torch.randn(4, 8), torch.tensor([0.05]), torch.tensor([128], dtype=torch.uint8), 13),
        {})),
    ("npu_quantize", "int4", lambda: (
        (torch.randn(4, 16).half(), torch.rand(16).half(), None, 16, -1, False), {})),
    ("npu_dynamic_quant", "3d_smooth", lambda: (
        (torch.randn(2, 3, 16).half(),), dict(smooth_scales=torch.rand(16).half()))),
    ("npu_dynamic_quant", "int4", lambda: ((torch.randn(4, 16).bfloat16(),), dict(dst_type=16))),
    ("npu_trans_quant_param", "offset_1d", lambda: ((torch.rand(1), torch.randn(8)), {})),
    ("npu_trans_quant_param", "2d", lambda: ((torch.rand(1, 8),), dict(round_mode=1))),
    ("npu_quant_matmul", "pertoken_bf16", lambda: (
        (_int8((5, 32)), _int8((16, 32)).t(), torch.rand(16)),
        dict(pertoken_scale=torch.rand(5), bias=torch.rand(16).bfloat16(), output_dtype=15))),
    ("npu_quant_matmul", "int64_fp16_batch", lambda: (
        (_int8((2, 5, 32)), _int8((2, 32, 16)),
         OPS.npu_trans_quant_param(torch.rand(16))),
        dict(bias=torch.zeros(2, 1, 16, dtype=torch.int32), output_dtype=5))),
    ("npu_quant_matmul", "int8_offset", lambda: (
        (_int8((5, 32)), _int8((32, 16)), torch.rand(16)), dict(offset=torch.rand(16)))),
    ("npu_quant_matmul", "int4", lambda: (
        (_pack_ref(_int4((4, 32))), _pack_ref(_int4((32, 16))),
         OPS.npu_trans_quant_param(torch.rand(1))), dict(output_dtype=5))),
    ("npu_weight_quant_batchmatmul", "per_channel_t", lambda: (
        (torch.randn(3, 32).half(), _int8((16, 32)).t(), torch.rand(16).half(),
         torch.rand(16).half(), None, None, torch.rand(16).half()), {})),
    ("npu_weight_quant_batchmatmul", "per_group_int4", lambda: (
        (torch.randn(3, 64).bfloat16(), _pack_ref(_int4((64, 16))),
         torch.rand(2, 16).bfloat16()), dict(antiquant_group_size=32))),
    ("npu_weight_quant_batchmatmul", "quant_out", lambda: (
        (torch.randn(3, 32).half(), _int8((32, 16)), torch.rand(1, 16).half()),
        dict(quant_scale=torch.rand(16)))),
    ("npu_grouped_matmul", "w8a8_pertoken_bf16", lambda: (
        ([_int8((7, 16))], [_int8((3, 16, 8))]),
        dict(scale=[torch.rand(3, 8).bfloat16()], per_token_scale=[torch.rand(7)],
             group_list=torch.tensor([2, 0, 5]), split_item=2, group_type=0, group_list_type=1,
             output_dtype=15))),
    ("npu_grouped_matmul", "w8a8_int32", lambda: (
        ([_int8((7, 16))], [_int8((3, 8, 16)).transpose(1, 2)]),
        dict(group_list=torch.tensor([2, 2, 7]), split_item=3, group_type=0, output_dtype=3))),
    ("npu_grouped_matmul", "w8a8_int64_int8", lambda: (
        ([_int8((7, 16))], [_int8((3, 16, 8))]),
        dict(scale=[OPS.npu_trans_quant_param(torch.rand(24)).reshape(3, 8)],
             bias=[torch.zeros(3, 8, dtype=torch.int32)], group_list=torch.tensor([2, 0, 5]),
             split_item=2, group_type=0, group_list_type=1))),
    ("npu_moe_init_routing_v2", "dynamic_quant", lambda: (
        (torch.randn(6, 16).bfloat16(),
         torch.stack([torch.randperm(8)[:2] for _ in range(6)]).int()),
        dict(scale=torch.rand(8, 16), expert_num=8, expert_tokens_num_type=1,
             expert_tokens_num_flag=True, quant_mode=1))),
]


@pytest.mark.parametrize("k,n", [(0, 5), (1, 5), (1024, 5), (1025, 5), (2500, 5), (1100, 2049)])
def test_exact_int_matmul_is_exact_at_the_int8_extremes(k, n):
    """The int8 matmul runs as float32 BLAS over panels of 1024 inner terms by 1024 output
    columns: every panel sum, up to 1024 * 128 * 128 = 2**24 in magnitude, and their int32 sum
    must be the exact integer, in every panel (n = 2049: three column panels, the last of one
    column)."""
    from vllm_ascend.kernels.npu_ops.quant import exact_int_matmul

    a = torch.full((3, k), -128, dtype=torch.int8)
    b = torch.full((k, n), -128, dtype=torch.int8)
    b[:, 1::2] = 127
    if k:
        b[-1, 2::3] = 1  # one odd term on top of the largest sums
        g = torch.Generator().manual_seed(0)
        a[2] = torch.randint(-128, 128, (k,), generator=g, dtype=torch.int8)
    got = exact_int_matmul(a, b)
    assert got.dtype == torch.int32
    assert torch.equal(got.long(), a.long() @ b.long())


def test_exact_int_matmul_broadcasts_batch_dims_and_transposed_weights():
    """Batched operands broadcast as torch.matmul does; a transposed [n, k] weight view (the
    layout the linear layers pass) gives the same integers."""
    from vllm_ascend.kernels.npu_ops.quant import exact_int_matmul

    g = torch.Generator().manual_seed(1)
    a = torch.randint(-128, 128, (2, 1, 4, 1300), generator=g, dtype=torch.int8)
    w = torch.randint(-128, 128, (1030, 1300), generator=g, dtype=torch.int8)
    got = exact_int_matmul(a, w.t())
    assert got.shape == (2, 1, 4, 1030) and got.dtype == torch.int32
    assert torch.equal(got.long(), a.long() @ w.t().long())
    b = torch.randint(-128, 128, (3, 1300, 7), generator=g, dtype=torch.int8)
    assert torch.equal(exact_int_matmul(a, b).long(), a.long() @ b.long())
