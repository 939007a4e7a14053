"""Expert selection of the Ascend MoE methods: router logits -> (top-k weights, expert ids).

vLLM 0.32 hands each MoE layer (RoutedExperts) its routing as attributes: top_k, renormalize,
use_grouped_topk with num_expert_group / topk_group, scoring_func, e_score_correction_bias and
routed_scaling_factor. Its routers define what they mean (router/grouped_topk_router.py
``grouped_topk``, router/fused_topk_bias_router.py ``fused_topk_bias``):

    scores  = softmax(logits) or sigmoid(logits)
    choice  = scores + e_score_correction_bias (when there is one)
    groups  : a group's score is the max of its choice values, or with a bias the sum of its
              two largest; only the topk_group best groups are eligible
    ids     = the top_k largest choice values;  weights = scores[ids]
    weights = weights / sum(weights) if renormalize;  weights *= routed_scaling_factor

DeepSeek-V2 is softmax with group maxima (V2-Lite: one group, i.e. plain top-k); DeepSeek-V3
is sigmoid with a bias, top-2 group sums and renormalize. The layer's routed_scaling_factor is
applied here, to the weights. A model built with ``apply_routed_scale_to_output`` (DeepSeek-V2/V3
on every platform but ROCm AITER) has 1.0 on the layer and its MoERunner scales the routed
output instead (``_maybe_apply_routed_scale_to_output``), so the factor is applied exactly once.

Kernels, chosen per layer by ``routing_plan``:
- softmax, no bias, no effective grouping: ``npu_moe_gating_top_k_softmax`` (Mixtral, Qwen-MoE).
- otherwise ``npu_moe_gating_top_k`` (norm_type 0/1; group_select_mode 1 with a bias, else 0;
  renorm 0, the only value the op takes). Its weights differ from vLLM's in two cases, bridged
  around the call: softmax weights are never renormalised by the op (renormalize: the op gets
  routed_scaling_factor 1 and the weights are renormalised and scaled after it), and sigmoid
  weights always are (no renormalize: ``out_flag`` returns the op's sigmoid scores and the
  weights are gathered from them).
- where the op's documented limits rule it out (more than 2048 experts, at most 2 experts per
  group, groups padded to 32 experts totalling more than 2048), the same routing in plain torch
  ops, logged once: such a model is valid and routing is small next to its experts.
Refused: scoring functions other than softmax and sigmoid, and group settings vLLM's own
routers cannot route either (groups that do not divide the experts, topk_group outside
[1, groups], top_k above the experts of the eligible groups, top-2 group sums over 1 expert).
A topk_group equal to the group count selects every group, so it routes as one group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from vllm_ascend.ops.fallback import log_fallback_once

if TYPE_CHECKING:
    from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts

SOFTMAX_OP, GATING_OP, TORCH = "npu_moe_gating_top_k_softmax", "npu_moe_gating_top_k", "torch"
_NORM_TYPES = {"softmax": 0, "sigmoid": 1}
# npu_moe_gating_top_k's documented limits (torch-npu 2.13.0 doc, 'x' and 'group_count').
_OP_MAX_EXPERTS = 2048
_EPS = 1e-20  # the op's default; HF DeepSeek-V3 renormalises with the same


@dataclass(frozen=True)
class RoutingPlan:
    kernel: str  # SOFTMAX_OP, GATING_OP or TORCH
    norm_type: int  # 0 softmax, 1 sigmoid
    group_count: int  # 1: no grouping
    k_group: int
    group_select_mode: int  # 0 group max, 1 sum of the group's top 2


def routing_plan(layer: RoutedExperts) -> RoutingPlan:
    """How ``layer`` routes; raises for routing vLLM's semantics do not define."""
    scoring = layer.scoring_func
    if scoring not in _NORM_TYPES:
        raise NotImplementedError(
            f"Ascend fused MoE does not support scoring_func={scoring!r} "
            f"(supported: {', '.join(_NORM_TYPES)})")
    experts, top_k = layer.global_num_experts, layer.top_k
    biased = layer.e_score_correction_bias is not None
    groups, k_group = 1, 1
    if layer.use_grouped_topk:
        groups, k_group = int(layer.num_expert_group or 1), int(layer.topk_group or 1)
        if experts % groups or not 1 <= k_group <= groups:
            raise ValueError(
                f"grouped top-k needs num_expert_group dividing the {experts} experts and "
                f"1 <= topk_group <= num_expert_group; got {groups} groups, topk_group {k_group}")
        if top_k > experts // groups * k_group:
            raise ValueError(
                f"top_k={top_k} exceeds the {experts // groups * k_group} experts of the "
                f"topk_group={k_group} eligible groups")
        if biased and experts // groups < 2 and k_group < groups:
            raise ValueError("grouped top-k with a score correction bias ranks groups by their "
                             "top-2 sum: each group needs at least 2 experts")
        if k_group == groups:  # every group eligible: no grouping
            groups, k_group = 1, 1
    mode = 1 if biased else 0
    norm_type = _NORM_TYPES[scoring]
    if norm_type == 0 and not biased and groups == 1:
        return RoutingPlan(SOFTMAX_OP, 0, 1, 1, 0)
    per_group = experts // groups
    limit = _op_limit(experts, groups, per_group)
    if limit:
        log_fallback_once("FusedMoE routing", f"npu_moe_gating_top_k does not take {limit} "
                                              "(torch-npu 2.13.0 doc); routing in torch ops")
        return RoutingPlan(TORCH, norm_type, groups, k_group, mode)
    return RoutingPlan(GATING_OP, norm_type, groups, k_group, mode)


def _op_limit(experts: int, groups: int, per_group: int) -> str | None:
    if experts > _OP_MAX_EXPERTS:
        return f"{experts} experts (at most {_OP_MAX_EXPERTS})"
    if per_group <= 2:
        return f"{per_group} experts per group (more than 2 needed)"
    if -(-per_group // 32) * 32 * groups > _OP_MAX_EXPERTS:
        return f"{groups} groups of {per_group} experts (32-aligned, at most {_OP_MAX_EXPERTS})"
    return None


def select_experts(layer: RoutedExperts,
                   router_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits (T, E) -> topk_weights (T, K) float32, topk_ids (T, K) int32."""
    plan = routing_plan(layer)
    k, scale = layer.top_k, float(layer.routed_scaling_factor)
    if plan.kernel == SOFTMAX_OP:
        weights, ids, _ = torch.ops.npu.npu_moe_gating_top_k_softmax(router_logits, None, k=k)
        weights = weights.float()
        if layer.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return (weights * scale if scale != 1.0 else weights), ids
    if plan.kernel == TORCH:
        return _select_in_torch(layer, plan, router_logits)
    logits, bias = _common_dtype(router_logits, layer.e_score_correction_bias)
    sigmoid = plan.norm_type == 1
    # The op's weights are vLLM's when it renormalises exactly for sigmoid scores.
    op_weights = sigmoid == bool(layer.renormalize)
    y, ids, scores = torch.ops.npu.npu_moe_gating_top_k(
        logits, k, bias=bias, k_group=plan.k_group, group_count=plan.group_count,
        group_select_mode=plan.group_select_mode, renorm=0, norm_type=plan.norm_type,
        out_flag=sigmoid and not op_weights, routed_scaling_factor=scale if op_weights else 1.0,
        eps=_EPS)
    if op_weights:
        return y.float(), ids
    if sigmoid:  # no renormalize: the op's sigmoid scores at the chosen experts
        return scores.gather(1, ids.long()) * scale, ids
    weights = y.float()  # softmax + renormalize
    return weights / weights.sum(dim=-1, keepdim=True) * scale, ids


def _common_dtype(logits: torch.Tensor, bias: torch.Tensor | None):
    """The op takes a bias of x's dtype: both in the wider one (DeepSeek-V3 keeps its bias in
    float32; rounding it to bfloat16 would change which experts win)."""
    if bias is None or bias.dtype == logits.dtype:
        return logits, bias
    wide = torch.promote_types(logits.dtype, bias.dtype)
    return logits.to(wide), bias.to(wide)


def _select_in_torch(layer: RoutedExperts, plan: RoutingPlan,
                     logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM's routing (module docstring) in float32 torch ops, for what the op cannot take."""
    x = logits.float()
    scores = torch.softmax(x, dim=-1) if plan.norm_type == 0 else torch.sigmoid(x)
    bias = layer.e_score_correction_bias
    choice = scores if bias is None else scores + bias.float()
    if plan.group_count > 1:
        grouped = choice.reshape(x.shape[0], plan.group_count, -1)
        if plan.group_select_mode == 1:
            group_score = grouped.topk(2, dim=-1).values.sum(dim=-1)
        else:
            group_score = grouped.amax(dim=-1)
        best = group_score.topk(plan.k_group, dim=-1).indices
        keep = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, best, True)
        choice = grouped.masked_fill(~keep.unsqueeze(-1), float("-inf")).reshape(x.shape)
    ids = choice.topk(layer.top_k, dim=-1).indices
    weights = scores.gather(1, ids)
    if layer.renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights * float(layer.routed_scaling_factor), ids.to(torch.int32)
