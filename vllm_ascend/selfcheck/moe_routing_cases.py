"""Self-check cases of DeepSeek MoE routing (ops/moe_routing.py): npu_moe_gating_top_k with the
arguments ``select_experts`` passes, alone and chained with the expert pipeline.

Inputs are drawn so that every decision (which groups stay, which k experts win) has a clear
float64 margin: a kernel computing in float32 must then pick exactly the reference's experts.
The order of the k experts within a token is not something the engine relies on (the combine
sums them), so outputs are compared with each token's experts sorted by id.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm_ascend.selfcheck.cases import (
    TOLS,
    Case,
    _host,
    _randn,
    _routing,
    _swiglu64,
    _to,
    assert_close,
    assert_equal,
)

OP = "npu::npu_moe_gating_top_k"
SITE = "ops/moe_routing.py select_experts"
MARGIN = 1e-3  # relative to the row's largest selection value


@dataclass(frozen=True)
class Gating:
    tokens: int
    experts: int
    k: int
    groups: int = 1
    k_group: int = 1
    norm_type: int = 0  # 0 softmax, 1 sigmoid
    biased: bool = False  # with a bias the groups rank by their top-2 sum (mode 1)
    scale: float = 1.0
    out_flag: bool = False
    dtype: torch.dtype = torch.bfloat16

    def kwargs(self) -> dict:
        return dict(k_group=self.k_group, group_count=self.groups,
                    group_select_mode=1 if self.biased else 0, renorm=0,
                    norm_type=self.norm_type, out_flag=self.out_flag,
                    routed_scaling_factor=self.scale, eps=1e-20)


def gating64(s: Gating, x: torch.Tensor, bias: torch.Tensor | None):
    """Float64, per row: (expert ids sorted by id, their weights, norm, decision margin)."""
    ids, weights, norms, margins = [], [], [], []
    per = s.experts // s.groups
    for row in x.double():
        norm = torch.softmax(row, -1) if s.norm_type == 0 else torch.sigmoid(row)
        value = norm + bias.double() if bias is not None else norm
        gaps, eligible = [], torch.arange(s.experts)
        if s.groups > 1:
            grouped = value.reshape(s.groups, per)
            score = grouped.topk(2).values.sum(-1) if s.biased else grouped.amax(-1)
            ranked = score.sort(descending=True).values
            if s.k_group < s.groups:
                gaps.append(float(ranked[s.k_group - 1] - ranked[s.k_group]))
            best = score.topk(s.k_group).indices
            eligible = (best[:, None] * per + torch.arange(per)).reshape(-1)
        vals, order = value[eligible].sort(descending=True)
        if s.k < eligible.numel():
            gaps.append(float(vals[s.k - 1] - vals[s.k]))
        chosen = eligible[order[:s.k]].sort().values
        w = norm[chosen]
        if s.norm_type == 1:
            w = w / w.sum()
        ids.append(chosen)
        weights.append(w * s.scale)
        norms.append(norm)
        margins.append(min(gaps, default=1.0) / float(value.abs().max()))
    return torch.stack(ids), torch.stack(weights), torch.stack(norms), torch.tensor(margins)


def _draw(g: torch.Generator, s: Gating, bias: torch.Tensor | None) -> torch.Tensor:
    """Logits (tokens, experts) whose every row has a clear decision margin."""
    rows = []
    for _ in range(100 * s.tokens):
        row = _randn(g, 1, s.experts, dtype=s.dtype, scale=2.0)
        if float(gating64(s, row, bias)[3][0]) > MARGIN:
            rows.append(row)
            if len(rows) == s.tokens:
                return torch.cat(rows)
    raise AssertionError(f"{s}: too few rows with a clear routing margin")


def _build(s: Gating):
    def build(g: torch.Generator) -> dict:
        bias = _randn(g, s.experts, dtype=s.dtype, scale=0.1) if s.biased else None
        return dict(logits=_draw(g, s, bias), bias=bias)
    return build


def _by_id(ids: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ids_sorted, order = ids.long().sort(dim=-1)
    return ids_sorted.to(torch.int32), weights.gather(1, order)


def _gating_case(name: str, s: Gating) -> Case:
    tol = TOLS[s.dtype]

    def run(inputs, device):
        x = _to(inputs, device)
        y, ids, out = torch.ops.npu.npu_moe_gating_top_k(x["logits"], s.k, bias=x["bias"],
                                                         **s.kwargs())
        host = _host(dict(y=y, ids=ids, norm=out))
        ids, weights = _by_id(host["ids"], host["y"])
        result = dict(weights=weights, expert_ids=ids)
        return result | (dict(norm=host["norm"]) if s.out_flag else {})

    def verify(inputs, out):
        ids, weights, norm, _ = gating64(s, inputs["logits"], inputs["bias"])
        assert_equal("expert_ids", out["expert_ids"], ids.to(torch.int32))
        assert_close("weights", out["weights"], weights, tol)
        if s.out_flag:
            assert_close("norm", out["norm"], norm, TOLS[torch.float32])

    return Case(name, OP, SITE, _build(s), run, verify, tol)


def _chain_case(name: str, s: Gating, hidden: int, inter: int) -> Case:
    """DeepSeek-V3-like layer: bfloat16 tokens, float32 logits and bias (the call site widens
    the logits to the bias' float32), routing then the expert pipeline of ops/fused_moe.py."""
    tol = TOLS[torch.bfloat16]
    tol = tol | dict(atol=tol["atol"] * 2)
    bf16 = torch.bfloat16

    def build(g):
        inputs = _build(s)(g)
        return inputs | dict(
            x=_randn(g, s.tokens, hidden, dtype=bf16),
            w13=_randn(g, s.experts, hidden, 2 * inter, dtype=bf16, scale=hidden ** -0.5),
            w2=_randn(g, s.experts, inter, hidden, dtype=bf16, scale=inter ** -0.5))

    def run(inputs, device):
        x = _to(inputs, device)
        weights, ids, _ = torch.ops.npu.npu_moe_gating_top_k(x["logits"], s.k, bias=x["bias"],
                                                             **s.kwargs())
        ex, row_idx, counts, _ = _routing(x["x"], ids, s.experts)
        gmm = dict(bias=None, group_list=counts, split_item=2, group_type=0, group_list_type=1)
        gate_up = torch.ops.npu.npu_grouped_matmul([ex], [x["w13"]], **gmm)[0]
        down = torch.ops.npu.npu_grouped_matmul([torch.ops.npu.npu_swiglu(gate_up, -1)],
                                                [x["w2"]], **gmm)[0]
        y = torch.ops.npu.npu_moe_token_unpermute(down, row_idx, weights.float().to(bf16))
        return _host(dict(y=y))

    def verify(inputs, out):
        ids, weights, _, _ = gating64(s, inputs["logits"], inputs["bias"])
        x = inputs["x"].double()
        ref = torch.zeros_like(x)
        for i in range(s.tokens):
            for e, w in zip(ids[i].tolist(), weights[i].tolist(), strict=True):
                ref[i] += w * (_swiglu64(x[i] @ inputs["w13"][e].double())
                               @ inputs["w2"][e].double())
        assert_close("y", out["y"], ref, tol)

    return Case(name, OP + "+npu_moe_init_routing_v2+npu_grouped_matmul+npu_swiglu+"
                "npu_moe_token_unpermute", "ops/fused_moe.py apply_monolithic (DeepSeek)",
                build, run, verify, tol)


def build() -> list[Case]:
    f32 = torch.float32
    return [
        # DeepSeek-V3 (256 experts, 8 groups, 4 kept, top 8): float32 logits and bias
        _gating_case("moe_gating_top_k_deepseek_v3",
                     Gating(33, 256, 8, 8, 4, norm_type=1, biased=True, dtype=f32)),
        _gating_case("moe_gating_top_k_sigmoid_scaled_bf16",
                     Gating(17, 64, 6, 4, 2, norm_type=1, biased=True, scale=2.5)),
        # DeepSeek-V2 (160 experts, 8 groups of 20, 3 kept, top 6): softmax group maxima
        _gating_case("moe_gating_top_k_deepseek_v2", Gating(21, 160, 6, 8, 3)),
        # sigmoid without renormalize: the call site reads the op's scores (out_flag)
        _gating_case("moe_gating_top_k_sigmoid_out_flag_fp16",
                     Gating(9, 96, 4, 8, 4, norm_type=1, biased=True, out_flag=True,
                            dtype=torch.float16)),
        _chain_case("moe_chain_deepseek_v3_like",
                    Gating(16, 32, 4, 8, 4, norm_type=1, biased=True, dtype=f32), 128, 64),
    ]
