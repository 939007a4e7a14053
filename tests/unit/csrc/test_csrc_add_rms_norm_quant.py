"""_C_ascend.add_rms_norm_dynamic_quant against a float64 reference."""

import pytest
import torch
from csrc_test_utils import DTYPES


def reference(x, residual, weight, eps):
    r = x.double() + residual.double()
    y = r * torch.rsqrt(r.pow(2).mean(-1, keepdim=True) + eps) * weight.double()
    absmax = y.abs().amax(-1, keepdim=True)
    scale = absmax / 127.0
    q = torch.where(absmax > 0, torch.round(y / scale.clamp_min(1e-300)), torch.zeros_like(y))
    return q.clamp(-128, 127), scale.squeeze(-1), r, y


def check_against_float64_reference(op, dtype, shape):
    """``op`` (the op's schema) on random inputs against ``reference``. Shared with the torch
    composition's tests (test_csrc_composed.py)."""
    hidden = shape[-1]
    x = torch.randn(shape, dtype=dtype)
    residual = torch.randn(shape, dtype=dtype)
    weight = (1 + 0.1 * torch.randn(hidden)).to(dtype)
    x0, res0 = x.clone(), residual.clone()
    y, scale, res_out = op(x, residual, weight, 1e-6)

    assert torch.equal(x, x0) and torch.equal(residual, res0)  # functional: inputs untouched
    q_ref, scale_ref, r_ref, y_ref = reference(x, residual, weight, 1e-6)
    assert y.dtype == torch.int8 and y.shape == x.shape
    assert scale.dtype == torch.float32 and scale.shape == x.shape[:-1]
    assert res_out.dtype == dtype and res_out.shape == x.shape
    torch.testing.assert_close(res_out, r_ref.to(dtype), atol=0, rtol=0)
    torch.testing.assert_close(scale.double(), scale_ref, atol=0, rtol=1e-5)
    diff = (y.double() - q_ref).abs()
    assert diff.max() <= 1  # fp32 vs float64 rounding at .5 boundaries only
    assert (diff > 0).double().mean() < 1e-3
    # Dequantised output is within half a quantisation step of the exact normed value.
    deq = y.double() * scale.double().unsqueeze(-1)
    assert ((deq - y_ref).abs() <= scale.double().unsqueeze(-1) * 0.5 + 1e-6).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 64), (8, 4096), (64, 1000), (2048, 128), (3, 5, 257)],
                         ids=str)
def test_matches_float64_reference(C, dtype, shape):
    check_against_float64_reference(C.add_rms_norm_dynamic_quant, dtype, shape)


def test_zero_row(C):
    x = torch.zeros(2, 48)
    x[1] = torch.randn(48)
    y, scale, res_out = C.add_rms_norm_dynamic_quant(x, torch.zeros_like(x), torch.ones(48), 1e-6)
    assert scale[0] == 0 and (y[0] == 0).all() and scale[1] > 0
    assert y[1].abs().max() == 127


def test_rejects_mismatched_shapes(C):
    with pytest.raises(RuntimeError, match="residual"):
        C.add_rms_norm_dynamic_quant(torch.randn(2, 8), torch.randn(2, 9), torch.ones(8), 1e-6)
    with pytest.raises(RuntimeError, match="weight"):
        C.add_rms_norm_dynamic_quant(torch.randn(2, 8), torch.randn(2, 8), torch.ones(9), 1e-6)


def test_opcheck(C):
    x = torch.randn(5, 96, dtype=torch.bfloat16)
    torch.library.opcheck(
        C.add_rms_norm_dynamic_quant.default,
        (x, torch.randn_like(x), torch.ones(96, dtype=torch.bfloat16), 1e-5),
    )
