"""RMSNorm variants: built by their vLLM constructors after the plugin's layers are registered they
are the plugin's classes, and their forward (torch_npu's fused RMSNorm ops, CPU kernels here)
equals a float64 reference and vLLM's own forward_native on the same layer."""

from __future__ import annotations

import pytest
import torch
from vllm.config import DeviceConfig, VllmConfig, set_current_vllm_config
from vllm.model_executor.layers.layernorm import GemmaRMSNorm, RMSNorm

from vllm_ascend import kernels
from vllm_ascend.ops import ascend_class, register_layers

HIDDEN, EPS = 96, 1e-6
# Output rounded once from fp32 vs float64; vs vLLM's forward_native in the same dtype.
TOLS = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=3e-2, rtol=1.6e-2)}


@pytest.fixture(autouse=True)
def plugin_layers():
    kernels.load()
    register_layers()
    with set_current_vllm_config(VllmConfig(device_config=DeviceConfig(device="cpu"))):
        yield


def reference(x, residual, scale):
    """float64: (x [+ residual]) / rms * scale, and the sum."""
    s = x.double() if residual is None else x.double() + residual.double()
    y = s * torch.rsqrt(s.square().mean(-1, keepdim=True) + EPS) * scale.double()
    return y, s


def build(vllm_cls, dtype, gemma):
    layer = vllm_cls(HIDDEN, eps=EPS) if gemma else vllm_cls(HIDDEN, eps=EPS, dtype=dtype)
    assert type(layer) is ascend_class(vllm_cls.__name__)
    assert layer._forward_method == layer.forward_oot
    with torch.no_grad():
        if gemma:  # zero-centred weights, kept in the model dtype as vLLM loads them
            layer.weight.copy_(torch.randn(HIDDEN) * 0.5)
            layer.weight.data = layer.weight.data.to(dtype)
        else:
            layer.weight.copy_(1 + torch.randn(HIDDEN) * 0.3)
    return layer


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("shape", [(13, HIDDEN), (5, 4, HIDDEN)], ids=["tokens", "heads"])
@pytest.mark.parametrize("vllm_cls", [RMSNorm, GemmaRMSNorm], ids=lambda c: c.__name__)
def test_rms_norm_variant(vllm_cls, shape, with_residual, dtype):
    gemma = vllm_cls is GemmaRMSNorm
    layer = build(vllm_cls, dtype, gemma)
    scale = layer.weight.double() + 1 if gemma else layer.weight.double()
    x = (torch.randn(shape) * 3).to(dtype)
    residual = torch.randn(shape).to(dtype) if with_residual else None

    want, want_sum = reference(x, residual, scale)
    native = vllm_cls.forward_native(layer, x.clone(),
                                     None if residual is None else residual.clone())
    got = layer(x.clone(), None if residual is None else residual.clone())

    if residual is None:
        assert got.dtype == dtype and got.shape == x.shape
        torch.testing.assert_close(got.double(), want, **TOLS[dtype])
        torch.testing.assert_close(got, native, **TOLS[dtype])
    else:
        y, summed = got
        assert y.dtype == summed.dtype == dtype
        torch.testing.assert_close(y.double(), want, **TOLS[dtype])
        torch.testing.assert_close(y, native[0], **TOLS[dtype])
        # the residual stream is the sum rounded once to the dtype, as vLLM returns it
        torch.testing.assert_close(summed, want_sum.to(dtype), atol=0, rtol=0)
        torch.testing.assert_close(summed, native[1], atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gemma_rms_norm_is_exact_to_vllm(dtype):
    # The (1 + w) scale stays float32, so the plugin rounds exactly where vLLM does.
    layer = build(GemmaRMSNorm, dtype, gemma=True)
    x = (torch.randn(31, HIDDEN) * 3).to(dtype)
    torch.testing.assert_close(layer(x), GemmaRMSNorm.forward_native(layer, x),
                               atol=1e-6 if dtype == torch.float32 else 0, rtol=1e-6)
