"""AscendUnquantizedFusedMoEMethod vs a dense float64 per-token MoE reference.

Layers are real vLLM 0.32 MoE layers (FusedMoEFactory -> MoERunner + RoutedExperts) built under
vLLM's own set_current_vllm_config; the method is substituted the way the plugin does it, through
vLLM's out-of-tree registry entry "UnquantizedFusedMoEMethod" (patched per test, not left behind).
"""

from __future__ import annotations

import pytest
import torch
from vllm.config import DeviceConfig, VllmConfig, set_current_vllm_config
from vllm.forward_context import set_forward_context
from vllm.model_executor import custom_op
from vllm.model_executor.layers.fused_moe import FusedMoEFactory

import vllm_ascend.kernels.npu_ops  # noqa: F401  (registers torch.ops.npu.*)
from vllm_ascend.ops.fused_moe import REPLACES, AscendUnquantizedFusedMoEMethod

HIDDEN, INTER = 64, 32


@pytest.fixture
def oot_registered(monkeypatch):
    monkeypatch.setitem(custom_op.op_registry_oot, REPLACES, AscendUnquantizedFusedMoEMethod)


def build(num_experts, top_k, renormalize, dtype, *, has_bias=False, **kwargs):
    vllm_config = VllmConfig(device_config=DeviceConfig(device="cpu"))
    with set_current_vllm_config(vllm_config):
        runner = FusedMoEFactory(
            num_experts=num_experts,
            top_k=top_k,
            hidden_size=HIDDEN,
            intermediate_size=INTER,
            params_dtype=dtype,
            renormalize=renormalize,
            tp_size=1,
            dp_size=1,
            pcp_size=1,
            prefix=f"moe_{num_experts}_{top_k}_{renormalize}_{dtype}_{has_bias}",
            has_bias=has_bias,
            **kwargs,
        )
    layer = runner.routed_experts
    assert type(layer.quant_method) is AscendUnquantizedFusedMoEMethod
    return vllm_config, runner, layer


def load_random_weights(layer, seed=0):
    """Fill the vLLM-layout weights (w13 [E, 2I, H], w2 [E, H, I]); return float64 copies."""
    g = torch.Generator().manual_seed(seed)
    e = layer.w13_weight.shape[0]
    assert tuple(layer.w13_weight.shape) == (e, 2 * INTER, HIDDEN)
    assert tuple(layer.w2_weight.shape) == (e, HIDDEN, INTER)
    ref = {}
    with torch.no_grad():
        for name in ("w13_weight", "w2_weight", "w13_bias", "w2_bias"):
            p = getattr(layer, name, None)
            if p is None:
                continue
            fan_in = p.shape[-1] if p.dim() == 3 else 4
            p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
            ref[name] = p.detach().double().clone()
    return ref


def dense_reference(x, logits, ref, top_k, renormalize, weight_on_input=False):
    """Per token, float64: softmax -> top-k -> (renormalize) -> sum_j w_j * FFN_{e_j}(x)."""
    out = torch.zeros(x.shape[0], HIDDEN, dtype=torch.float64)
    w13, w2 = ref["w13_weight"], ref["w2_weight"]
    for t in range(x.shape[0]):
        p = torch.softmax(logits[t].double(), dim=-1)
        # ties (common with bfloat16 logits) go to the lower expert id, as the gating op documents
        order = sorted(range(p.shape[0]), key=lambda e: (-p[e].item(), e))[:top_k]
        ids = torch.tensor(order)
        weights = p[ids]
        if renormalize:
            weights = weights / weights.sum()
        xt = x[t].double()
        for w, e in zip(weights.tolist(), ids.tolist(), strict=True):
            xin = xt * w if weight_on_input else xt
            gate_up = w13[e] @ xin
            if "w13_bias" in ref:
                gate_up = gate_up + ref["w13_bias"][e]
            h = torch.nn.functional.silu(gate_up[:INTER]) * gate_up[INTER:]
            y = w2[e] @ h
            if "w2_bias" in ref:
                y = y + ref["w2_bias"][e]
            out[t] += y if weight_on_input else w * y
    return out


def assert_matches(out, expected, dtype):
    assert out.dtype == dtype and out.shape == expected.shape
    scale = expected.abs().max().item()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.double(), expected, atol=tol * scale, rtol=tol)


CASES = [
    # name, experts, top_k, renormalize, tokens
    ("mixtral", 8, 2, True, 37),
    ("qwen3_moe_norm_topk", 64, 8, True, 23),  # few tokens: many experts get none
    ("qwen3_moe_no_norm", 64, 8, False, 300),  # many tokens
    ("top1", 16, 1, False, 19),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name,experts,top_k,renormalize,tokens", CASES, ids=[c[0] for c in CASES])
def test_method_matches_dense_reference(
    oot_registered, dtype, name, experts, top_k, renormalize, tokens
):
    _, _, layer = build(experts, top_k, renormalize, dtype)
    ref = load_random_weights(layer)
    method = layer.quant_method
    method.process_weights_after_loading(layer)
    # weights are now in the grouped-matmul layout [E, in, out]
    assert tuple(layer.w13_weight.shape) == (experts, HIDDEN, 2 * INTER)
    assert tuple(layer.w2_weight.shape) == (experts, INTER, HIDDEN)
    method.process_weights_after_loading(layer)  # idempotent
    assert tuple(layer.w13_weight.shape) == (experts, HIDDEN, 2 * INTER)

    torch.manual_seed(1)
    x = torch.randn(tokens, HIDDEN).to(dtype)
    logits = (2 * torch.randn(tokens, experts)).to(dtype)
    out = method.apply_monolithic(layer, x, logits)
    assert_matches(out, dense_reference(x, logits, ref, top_k, renormalize), dtype)


def test_runner_forward_uses_method(oot_registered):
    """Through vLLM's own MoERunner.forward: the runner takes the monolithic path to our method."""
    vllm_config, runner, layer = build(8, 2, True, torch.float32, has_bias=True)
    ref = load_random_weights(layer, seed=3)
    assert "w13_bias" in ref
    layer.quant_method.process_weights_after_loading(layer)
    x, logits = torch.randn(11, HIDDEN), torch.randn(11, 8)
    with set_current_vllm_config(vllm_config), set_forward_context(None, vllm_config):
        out = runner.forward(x, logits)
    assert_matches(out, dense_reference(x, logits, ref, 2, True), torch.float32)


def test_apply_with_router_output_and_weight_on_input(oot_registered):
    _, _, layer = build(8, 1, False, torch.float32, apply_router_weight_on_input=True)
    ref = load_random_weights(layer, seed=4)
    method = layer.quant_method
    method.process_weights_after_loading(layer)
    x, logits = torch.randn(9, HIDDEN), torch.randn(9, 8)
    expected = dense_reference(x, logits, ref, 1, False, weight_on_input=True)
    assert_matches(method.apply_monolithic(layer, x, logits), expected, torch.float32)
    # apply(): routing given by the caller
    p = torch.softmax(logits, dim=-1)
    w, ids = torch.topk(p, 1)
    out = method.apply(layer, x, w, ids.to(torch.int32), None, None)
    assert_matches(out, expected, torch.float32)
    assert method.apply_monolithic(layer, x[:0], logits[:0]).shape == (0, HIDDEN)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(scoring_func="sqrtsoftplus"), NotImplementedError, "scoring_func"),
        (dict(custom_routing_function=lambda *a, **k: None), NotImplementedError,
         "custom_routing_function"),
        # grouped top-k (ops/moe_routing.py) refuses what vLLM's own router cannot route
        (dict(use_grouped_topk=True, num_expert_group=3, topk_group=1), ValueError, "dividing"),
        (dict(use_grouped_topk=True, num_expert_group=4, topk_group=5), ValueError, "topk_group"),
        (dict(use_grouped_topk=True, num_expert_group=8, topk_group=1), ValueError, "top_k=2"),
    ],
)
def test_unsupported_routing_raises(oot_registered, kwargs, error, match):
    _, _, layer = build(8, 2, True, torch.float32, **kwargs)
    load_random_weights(layer)
    with pytest.raises(error, match=match):
        layer.quant_method.process_weights_after_loading(layer)
    with pytest.raises(error, match=match):
        layer.quant_method.apply_monolithic(layer, torch.randn(2, HIDDEN), torch.randn(2, 8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_expert_parallel_ranks_sum_to_the_dense_reference(oot_registered, dtype):
    """Two expert-parallel ranks, each holding 4 of 8 experts (a contiguous range, vLLM's
    linear placement): each routes only to its range and computes only those rows; the sum of
    the ranks' outputs (what the runner's all-reduce / reduce-scatter forms) is the dense MoE."""
    _, _, layer = build(8, 2, True, dtype)
    ref = load_random_weights(layer)
    method = layer.quant_method
    method.process_weights_after_loading(layer)
    w13, w2 = layer.w13_weight.data, layer.w2_weight.data
    torch.manual_seed(2)
    x = torch.randn(29, HIDDEN).to(dtype)
    logits = (2 * torch.randn(29, 8)).to(dtype)
    total = torch.zeros(29, HIDDEN, dtype=torch.float64)
    for rank in range(2):
        start, end = 4 * rank, 4 * rank + 4
        layer.w13_weight.data, layer.w2_weight.data = w13[start:end], w2[start:end]
        method.local_range = (start, end)
        total += method.apply_monolithic(layer, x, logits).double()
    assert_matches(total.to(dtype), dense_reference(x, logits, ref, 2, True), dtype)


def test_local_expert_range_needs_linear_placement():
    from types import SimpleNamespace

    from vllm_ascend.ops.fused_moe import local_expert_range

    def layer(expert_map, local):
        return SimpleNamespace(expert_map=torch.tensor(expert_map, dtype=torch.int32),
                               global_num_experts=len(expert_map), local_num_experts=local,
                               expert_placement_strategy="round_robin")

    assert local_expert_range(layer([-1, -1, 0, 1], 2)) == (2, 4)
    assert local_expert_range(SimpleNamespace(expert_map=None, global_num_experts=8)) == (0, 8)
    with pytest.raises(NotImplementedError, match="expert-placement-strategy linear"):
        local_expert_range(layer([0, -1, 1, -1], 2))
