"""npu_rms_norm / npu_add_rms_norm / npu_swiglu against float64 references written with loops."""

from __future__ import annotations

import math

import pytest
import torch

import vllm_ascend.kernels.npu_ops  # noqa: F401

# Each test runs through the fast C++ CPU kernels and through the Python references.
pytestmark = pytest.mark.usefixtures("cpu_kernel_impl")

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def ref_rms_norm(x, gamma, eps):
    """Loop over the rows that share one rstd (the leading x.dim()-gamma.dim() dims)."""
    x64, g64 = x.double(), gamma.double()
    lead = x.shape[: x.dim() - gamma.dim()]
    rows = x64.reshape(-1, gamma.numel())
    y = torch.empty_like(rows)
    rstd = torch.empty(rows.shape[0], dtype=torch.float64)
    for r in range(rows.shape[0]):
        ms = sum(float(v) ** 2 for v in rows[r]) / gamma.numel()
        rstd[r] = 1.0 / math.sqrt(ms + eps)
        y[r] = rows[r] * rstd[r] * g64.reshape(-1)
    rstd_shape = list(lead) + [1] * gamma.dim()
    return y.reshape(x.shape), rstd.reshape(rstd_shape)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape,g_shape", [((5, 16), (16,)), ((2, 3, 8), (8,)),
                                             ((2, 3, 8), (3, 8)), ((24, 1, 128), (128,))])
def test_rms_norm(dtype, x_shape, g_shape):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(x_shape, generator=g) * 3).to(dtype)
    gamma = torch.randn(g_shape, generator=g).to(dtype)
    y, rstd = torch.ops.npu.npu_rms_norm(x, gamma, 1e-5)
    ry, rr = ref_rms_norm(x, gamma, 1e-5)
    assert y.dtype == dtype and y.shape == x.shape
    assert rstd.dtype == torch.float32 and rstd.shape == rr.shape
    torch.testing.assert_close(y.double(), ry, atol=TOL[dtype] * 4, rtol=TOL[dtype] * 2)
    torch.testing.assert_close(rstd.double(), rr, atol=1e-6, rtol=1e-5)


def test_rms_norm_default_eps_and_zero_row():
    x = torch.zeros(2, 4)
    x[1] = torch.tensor([1.0, -2.0, 3.0, -4.0])
    y, rstd = torch.ops.npu.npu_rms_norm(x, torch.ones(4))
    assert rstd[0, 0].item() == pytest.approx(1 / math.sqrt(1e-6), rel=1e-5)
    assert torch.all(y[0] == 0)
    torch.testing.assert_close(y[1], x[1] / math.sqrt(7.5 + 1e-6))


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_rms_norm(dtype):
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(6, 32, generator=g).to(dtype)
    x2 = torch.randn(6, 32, generator=g).to(dtype)
    gamma = torch.randn(32, generator=g).to(dtype)
    y, rstd, xs = torch.ops.npu.npu_add_rms_norm(x1, x2, gamma, 1e-6)
    ref_sum = x1.double() + x2.double()
    ry, rr = ref_rms_norm(ref_sum, gamma, 1e-6)
    assert (y.dtype, xs.dtype, rstd.dtype) == (dtype, dtype, torch.float32)
    assert rstd.shape == (6, 1)
    torch.testing.assert_close(xs.double(), ref_sum, atol=TOL[dtype] * 4, rtol=TOL[dtype])
    torch.testing.assert_close(y.double(), ry, atol=TOL[dtype] * 4, rtol=TOL[dtype] * 2)
    torch.testing.assert_close(rstd.double(), rr, atol=1e-6, rtol=1e-5)


def test_rms_norm_rejects_bad_gamma():
    with pytest.raises(ValueError):
        torch.ops.npu.npu_rms_norm(torch.randn(2, 8), torch.randn(4))


def ref_swiglu(x, dim):
    x64 = x.double().movedim(dim, -1)
    half = x64.shape[-1] // 2
    out = torch.empty(*x64.shape[:-1], half, dtype=torch.float64)
    flat_in = x64.reshape(-1, x64.shape[-1])
    flat_out = out.reshape(-1, half)
    for r in range(flat_in.shape[0]):
        for c in range(half):
            a, b = float(flat_in[r, c]), float(flat_in[r, c + half])
            flat_out[r, c] = a / (1 + math.exp(-a)) * b
    return out.movedim(-1, dim)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,dim", [((4, 12), -1), ((2, 6, 3), 1), ((2, 32, 6, 6), -1),
                                       ((8,), 0)])
def test_swiglu(dtype, shape, dim):
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(2)) * 2).to(dtype)
    out = torch.ops.npu.npu_swiglu(x, dim)
    ref = ref_swiglu(x, dim)
    assert out.dtype == dtype and out.shape == ref.shape
    torch.testing.assert_close(out.double(), ref, atol=TOL[dtype] * 4, rtol=TOL[dtype] * 2)


def test_swiglu_activates_first_half():
    x = torch.tensor([[10.0, -10.0, 2.0, 3.0]])
    out = torch.ops.npu.npu_swiglu(x)
    # silu(10)*2 and silu(-10)*3, not silu(2)*10
    torch.testing.assert_close(out, torch.tensor([[10 / (1 + math.exp(-10)) * 2,
                                                   -10 / (1 + math.exp(10)) * 3]]))


def test_swiglu_odd_dim_raises():
    with pytest.raises(ValueError):
        torch.ops.npu.npu_swiglu(torch.randn(3, 5))
