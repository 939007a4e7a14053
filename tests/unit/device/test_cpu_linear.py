"""The CPU backend's GEMMs (device/cpu_linear.py): the oneDNN LM head and the half-precision
float32 panels, x @ W.T + b against a float64 reference, and which layers ``enable`` switches
(vLLM's own method classes on small modules: a vLLM layer needs an initialised tensor-parallel
group; the engine tests check the real layers of the test models and of SmolLM2)."""

from __future__ import annotations

import pytest
import torch
from vllm.model_executor.layers.linear import UnquantizedLinearMethod
from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

from vllm_ascend.device import cpu_linear


def reference(x, w, b):
    y = x.double() @ w.double().t()
    return y if b is None else y + b.double()


# 0 rows; 1, 3 (padded to 4), 16 and 3x5 (15, padded to 16) rows through oneDNN; 17 and 300
# rows through F.linear.
@pytest.mark.parametrize("shape", [(0, 64), (1, 64), (3, 64), (16, 64), (3, 5, 64), (17, 64),
                                   (300, 64)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_onednn_linear_matches_float64(shape, with_bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    w = torch.randn(96, 64, generator=g)
    b = torch.randn(96, generator=g) if with_bias else None
    y = cpu_linear.cpu_gemm(x, w, b)
    assert y.shape == (*shape[:-1], 96) and y.dtype == torch.float32
    torch.testing.assert_close(y.double(), reference(x, w, b), rtol=1e-5, atol=1e-4)


def test_onednn_linear_takes_strided_inputs():
    """A column slice of a wider activation (as after a split) is read through its strides."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 128, generator=g)[:, ::2]
    w = torch.randn(33, 64, generator=g)
    assert not x.is_contiguous()
    torch.testing.assert_close(cpu_linear.cpu_gemm(x, w).double(), reference(x, w, None),
                               rtol=1e-5, atol=1e-4)


def test_onednn_linear_is_opaque_to_torch_compile():
    """Compiled with dynamic row counts (as vLLM's piecewise graphs are), the op is one node whose
    result does not depend on the row count the graph was traced with."""
    g = torch.Generator().manual_seed(2)
    w = torch.randn(40, 64, generator=g)
    b = torch.randn(40, generator=g)
    f = torch.compile(lambda x: cpu_linear.cpu_gemm(x, w, b) * 2, backend="eager",
                      fullgraph=True, dynamic=True)
    for rows in (5, 9, 16, 33):
        x = torch.randn(rows, 64, generator=g)
        torch.testing.assert_close(f(x).double(), 2 * reference(x, w, b), rtol=1e-5, atol=1e-4)


class _Layer(torch.nn.Module):
    def __init__(self, method, rows, cols, dtype):
        super().__init__()
        self.quant_method = method
        self.weight = torch.nn.Parameter(torch.randn(rows, cols).to(dtype), requires_grad=False)


def build(dtype, head_rows=8192):
    """A linear layer and a vocabulary embedding of head_rows x 1024 (8192 rows: exactly the
    2**23-element threshold)."""
    model = torch.nn.Module()
    model.proj = _Layer(UnquantizedLinearMethod(), 96, 1024, dtype)
    model.head = _Layer(UnquantizedEmbeddingMethod(), head_rows, 1024, dtype)
    return model


@pytest.fixture
def fast_cpu_backend(monkeypatch):
    monkeypatch.setenv("VLLM_ASCEND_DEVICE", "cpu")
    monkeypatch.setenv("VLLM_ASCEND_CPU_KERNELS", "fast")


def test_enable_switches_a_large_float32_head_and_keeps_its_weight(fast_cpu_backend):
    model = build(torch.float32)
    weight = model.head.weight
    assert cpu_linear.enable(model, None) == 1
    assert type(model.head.quant_method) is cpu_linear.OneDnnEmbeddingMethod
    assert type(model.proj.quant_method) is UnquantizedLinearMethod  # linear layers stay
    assert model.head.weight is weight  # no packed copy: the parameter stays
    x = torch.randn(5, 1024)
    logits = model.head.quant_method.apply(model.head, x)
    torch.testing.assert_close(logits.double(), reference(x, weight, None), rtol=1e-5, atol=1e-3)
    assert cpu_linear.enable(model) == 0  # already switched


def test_enable_leaves_a_head_below_the_threshold(fast_cpu_backend):
    model = build(torch.float32, head_rows=8191)
    assert cpu_linear.enable(model) == 0
    assert type(model.head.quant_method) is UnquantizedEmbeddingMethod


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_enable_puts_half_precision_layers_and_heads_on_panels(fast_cpu_backend, dtype):
    model = build(dtype, head_rows=100)  # any size: the panels serve small heads too
    weights = (model.proj.weight, model.head.weight)
    assert cpu_linear.enable(model) == 2
    assert type(model.proj.quant_method) is cpu_linear.HalfPanelLinearMethod
    assert type(model.head.quant_method) is cpu_linear.HalfPanelEmbeddingMethod
    assert (model.proj.weight, model.head.weight) == weights  # the parameters stay
    x = torch.randn(9, 1024).to(dtype)
    for layer in (model.proj, model.head):
        y = layer.quant_method.apply(layer, x)
        assert y.dtype == dtype
        torch.testing.assert_close(y.double(), reference(x, layer.weight, None),
                                   rtol=HALF_RTOL[dtype], atol=1e-2)


# Relative rounding of one final rounding to the type (half an ulp), doubled for the float32
# accumulation's own error.
HALF_RTOL = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -10}


# 7 rows and 0 rows: F.linear; 8, 3x5 and 300 rows: the panels, 10 output columns each (the last
# panel 6 wide).
@pytest.mark.parametrize("shape", [(0, 64), (7, 64), (8, 64), (3, 5, 64), (300, 64)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_half_panels_match_float64(shape, dtype, with_bias, monkeypatch):
    monkeypatch.setattr(cpu_linear, "PANEL_ELEMENTS", 64 * 10)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g).to(dtype)
    w = torch.randn(96, 64, generator=g).to(dtype)
    b = torch.randn(96, generator=g).to(dtype) if with_bias else None
    y = cpu_linear.cpu_gemm(x, w, b)
    assert y.shape == (*shape[:-1], 96) and y.dtype == dtype
    torch.testing.assert_close(y.double(), reference(x, w, b), rtol=HALF_RTOL[dtype], atol=1e-2)


def test_half_panels_take_strided_inputs_and_compile():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(40, 64, generator=g).to(torch.bfloat16)
    x = torch.randn(12, 128, generator=g).to(torch.bfloat16)[:, ::2]
    assert not x.is_contiguous()
    torch.testing.assert_close(cpu_linear.cpu_gemm(x, w).double(), reference(x, w, None),
                               rtol=HALF_RTOL[torch.bfloat16], atol=1e-2)
    f = torch.compile(lambda x: cpu_linear.cpu_gemm(x, w), backend="eager",
                      fullgraph=True, dynamic=True)
    for rows in (5, 9, 33):
        x = torch.randn(rows, 64, generator=g).to(torch.bfloat16)
        torch.testing.assert_close(f(x).double(), reference(x, w, None),
                                   rtol=HALF_RTOL[torch.bfloat16], atol=1e-2)


def test_reference_kernels_keep_f_linear(monkeypatch):
    """VLLM_ASCEND_CPU_KERNELS=reference (debugging) keeps vLLM's own F.linear path."""
    monkeypatch.setenv("VLLM_ASCEND_DEVICE", "cpu")
    monkeypatch.setenv("VLLM_ASCEND_CPU_KERNELS", "reference")
    model = build(torch.float32)
    assert cpu_linear.enable(model) == 0
    assert type(model.head.quant_method) is UnquantizedEmbeddingMethod
