"""DeepSeek routing in the plugin's MoE method (ops/moe_routing.py) vs a float64 reference.

Real vLLM 0.32 MoE layers (built as test_fused_moe.py builds them) with grouped top-k, sigmoid
scoring, e_score_correction_bias and routed_scaling_factor; the reference routes each token the
way vLLM's grouped_topk defines it (the HF DeepSeek-V2/V3 gates) and sums its experts' SwiGLU
MLPs in float64. Through MoERunner.forward, shared experts and the routed scale that the runner
applies (apply_routed_scale_to_output, as deepseek_v2.py builds its layers) are checked too.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_fused_moe import HIDDEN, INTER, assert_matches, build, load_random_weights
from vllm.forward_context import set_forward_context
from vllm.model_executor import custom_op

from vllm_ascend.ops.fused_moe import REPLACES, AscendUnquantizedFusedMoEMethod
from vllm_ascend.ops.moe_routing import GATING_OP, SOFTMAX_OP, TORCH, routing_plan


@pytest.fixture
def oot_registered(monkeypatch):
    monkeypatch.setitem(custom_op.op_registry_oot, REPLACES, AscendUnquantizedFusedMoEMethod)


def route64(logits, *, top_k, renormalize, groups, topk_group, scoring, bias, scale):
    """Per token, float64: [(expert, weight)] as vLLM's grouped_topk defines them."""
    routes = []
    experts = logits.shape[1]
    per = experts // groups
    for row in logits.double():
        s = torch.softmax(row, -1) if scoring == "softmax" else torch.sigmoid(row)
        choice = (s + bias.double() if bias is not None else s).tolist()
        eligible = list(range(experts))
        if groups > 1:
            score = []
            for g in range(groups):
                members = sorted(choice[g * per:(g + 1) * per], reverse=True)
                score.append(members[0] + members[1] if bias is not None else members[0])
            best = sorted(range(groups), key=lambda g: (-score[g], g))[:topk_group]
            eligible = [e for g in best for e in range(g * per, (g + 1) * per)]
        ids = sorted(eligible, key=lambda e: (-choice[e], e))[:top_k]
        w = [float(s[e]) for e in ids]
        if renormalize:
            w = [v / sum(w) for v in w]
        routes.append([(e, v * scale) for e, v in zip(ids, w, strict=True)])
    return routes


def moe64(x, routes, ref):
    out = torch.zeros(x.shape[0], HIDDEN, dtype=torch.float64)
    for t, token_routes in enumerate(routes):
        for e, w in token_routes:
            gate_up = ref["w13_weight"][e] @ x[t].double()
            h = torch.nn.functional.silu(gate_up[:INTER]) * gate_up[INTER:]
            out[t] += w * (ref["w2_weight"][e] @ h)
    return out


# name, experts, top_k, groups, topk_group, scoring, bias, renormalize, scale, kernel
CASES = [
    ("deepseek_v3", 32, 4, 8, 4, "sigmoid", True, True, 2.5, GATING_OP),
    ("deepseek_v2", 24, 4, 4, 2, "softmax", False, False, 16.0, GATING_OP),
    ("deepseek_v2_lite_greedy", 16, 4, 1, 1, "softmax", False, False, 1.0, SOFTMAX_OP),
    ("softmax_groups_renormalize", 24, 3, 4, 2, "softmax", False, True, 2.0, GATING_OP),
    ("sigmoid_no_renormalize", 32, 4, 8, 4, "sigmoid", True, False, 1.5, GATING_OP),
    ("sigmoid_ungrouped", 16, 2, 1, 1, "sigmoid", False, True, 1.0, GATING_OP),
    ("all_groups_eligible", 16, 2, 8, 8, "sigmoid", True, True, 1.0, GATING_OP),
    # 2 experts per group: outside the op's limits, routed in torch ops (logged once)
    ("two_per_group_torch", 16, 4, 8, 4, "sigmoid", True, True, 2.5, TORCH),
]


def _layer(experts, top_k, groups, topk_group, scoring, biased, renormalize, scale, dtype,
           seed=0):
    bias = None
    if biased:  # float32, as DeepSeek-V3 keeps it
        bias = 0.05 * torch.randn(experts, generator=torch.Generator().manual_seed(seed + 7))
    _, runner, layer = build(experts, top_k, renormalize, dtype, use_grouped_topk=True,
                             num_expert_group=groups, topk_group=topk_group,
                             scoring_func=scoring, e_score_correction_bias=bias,
                             routed_scaling_factor=scale)
    return runner, layer, bias


# The torch-routed case runs on float32 logits only: torch.topk breaks bf16 ties its own way.
ROUTING_PARAMS = [pytest.param(dtype, *case, id=f"{case[0]}-{str(dtype)[6:]}")
                  for case in CASES for dtype in (torch.float32, torch.bfloat16)
                  if case[-1] != TORCH or dtype == torch.float32]


@pytest.mark.parametrize(
    "dtype,name,experts,top_k,groups,topk_group,scoring,biased,renorm,scale,kernel",
    ROUTING_PARAMS)
def test_grouped_routing_matches_float64(oot_registered, dtype, name, experts, top_k, groups,
                                         topk_group, scoring, biased, renorm, scale, kernel):
    _, layer, bias = _layer(experts, top_k, groups, topk_group, scoring, biased, renorm, scale,
                            dtype)
    assert layer.routed_scaling_factor == scale
    ref = load_random_weights(layer)
    method = layer.quant_method
    method.process_weights_after_loading(layer)
    assert routing_plan(layer).kernel == kernel
    g = torch.Generator().manual_seed(1)
    x = torch.randn(21, HIDDEN, generator=g).to(dtype)
    logits = (2 * torch.randn(21, experts, generator=g)).to(dtype)
    out = method.apply_monolithic(layer, x, logits)
    routes = route64(logits, top_k=top_k, renormalize=renorm, groups=groups,
                     topk_group=topk_group, scoring=scoring, bias=bias, scale=scale)
    assert_matches(out, moe64(x, routes, ref), dtype)


class SharedMLP(torch.nn.Module):
    """A shared expert as deepseek_v2.py has one (SwiGLU MLP), in float64 for the reference."""

    def __init__(self, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w13 = torch.randn(2 * INTER, HIDDEN, generator=g) / math.sqrt(HIDDEN)
        self.w2 = torch.randn(HIDDEN, INTER, generator=g) / math.sqrt(INTER)

    def forward(self, x):
        gate_up = x.double() @ self.w13.double().t()
        h = torch.nn.functional.silu(gate_up[:, :INTER]) * gate_up[:, INTER:]
        return (h @ self.w2.double().t()).to(x.dtype)


class Gate(torch.nn.Module):
    def __init__(self, experts, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(experts, HIDDEN, generator=g)

    def forward(self, x):
        return x @ self.weight.t(), None


def test_runner_deepseek_v3_layer_scales_once_and_adds_shared_experts(oot_registered):
    """As deepseek_v2.py builds DeepseekV2MoE: gate and shared experts in the runner,
    apply_routed_scale_to_output=True. The layer routes with scale 1, the runner scales the
    routed output by routed_scaling_factor once, then adds the shared experts' output."""
    experts, scale = 32, 2.5
    bias = 0.05 * torch.randn(experts, generator=torch.Generator().manual_seed(5))
    gate, shared = Gate(experts, 6), SharedMLP(8)
    vllm_config, runner, layer = build(
        experts, 4, True, torch.float32, use_grouped_topk=True, num_expert_group=8,
        topk_group=4, scoring_func="sigmoid", e_score_correction_bias=bias,
        routed_scaling_factor=scale, apply_routed_scale_to_output=True, gate=gate,
        shared_experts=shared)
    assert layer.routed_scaling_factor == 1.0  # the runner scales the output instead
    ref = load_random_weights(layer, seed=2)
    layer.quant_method.process_weights_after_loading(layer)
    x = torch.randn(13, HIDDEN, generator=torch.Generator().manual_seed(3))
    from vllm.config import set_current_vllm_config

    with set_current_vllm_config(vllm_config), set_forward_context(None, vllm_config):
        out = runner.forward(x, x)  # router_logits=hidden_states: the runner applies the gate
    routes = route64(gate(x)[0], top_k=4, renormalize=True, groups=8, topk_group=4,
                     scoring="sigmoid", bias=bias, scale=scale)
    expected = moe64(x, routes, ref) + shared(x.double()).double()
    assert_matches(out, expected, torch.float32)
