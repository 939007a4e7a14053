"""Unquantized fused MoE on Ascend: routing and experts through torch_npu's MoE ops.

vLLM 0.32 builds every unquantized MoE layer's method as ``UnquantizedFusedMoEMethod(moe_config)``
(RoutedExperts._get_quant_method); being a CustomOp, that constructor returns the class registered
with ``CustomOp.register_oot(..., name="UnquantizedFusedMoEMethod")`` instead. The MoE runner then
asks ``quant_method.is_monolithic``: when True it calls
``apply_monolithic(layer, x, router_logits, input_ids)`` with the raw router logits; otherwise it
first routes with its own router (for an OOT platform that is FusedTopKRouter, which needs vLLM's
CUDA ``topk_softmax`` kernel) and calls ``apply(layer, x, topk_weights, topk_ids, ...)``. The stock
method on an OOT platform has no kernel (backend OOT, experts_cls None), so this class is
monolithic and routes itself:

    npu_moe_gating_top_k_softmax or npu_moe_gating_top_k (ops/moe_routing.py)
    -> npu_moe_init_routing_v2 (count mode) -> npu_grouped_matmul(w13) -> npu_swiglu
    -> npu_grouped_matmul(w2) -> npu_moe_token_unpermute

Routing covers vLLM's softmax and sigmoid scoring, grouped top-k (DeepSeek-V2's group maxima,
DeepSeek-V3's biased top-2 group sums), e_score_correction_bias, renormalize and the layer's
routed_scaling_factor (moe_routing.py says which side of vLLM applies that factor). Shared
experts (DeepSeek, Qwen-MoE) are not this method's: on the monolithic path vLLM's MoERunner
runs them itself and adds their output to this method's.

Weights: vLLM allocates w13 [E, 2I, H] (gate rows, then up rows) and w2 [E, H, I], i.e. (out, in)
per expert. The grouped matmul computes rows @ W[e] with W[e] of shape (in, out), so
``process_weights_after_loading`` transposes both once, to w13 [E, H, 2I] and w2 [E, I, H]
(contiguous), through vLLM's ``replace_parameter`` so a weight reload still works.

Expert parallelism (``--enable-expert-parallel``): each rank holds a contiguous range of the
global experts (vLLM's linear placement) and computes only those. Tokens reach them one of two
ways (``additional_config`` ``expert_dispatch``, ascend_config.py):

- ``alltoall`` (default): each routed row goes only to the rank owning its expert and comes
  back (distributed/moe_dispatch.py). The method tells vLLM's MoE runner it moves tokens
  itself (``supports_internal_mk``), so the runner skips its all-gather dispatch. Under tensor
  parallelism without sequence-parallel MoE the tokens are replicated on the tensor-parallel
  ranks: each dispatches its share and leaves zeros elsewhere, and the runner's final
  all-reduce over the tensor-parallel group assembles the whole output.
- ``allgather``: vLLM's runner gives every rank every token (all-gather across data-parallel
  ranks; replicated under tensor parallelism). Routing keeps only the rows of the local range
  (``npu_moe_init_routing_v2``'s ``active_expert_range``: they come first, the rest are not
  emitted), the grouped matmuls run on those rows only, the non-emitted positions are combined
  as zero rows, and the runner all-reduces or reduce-scatters the partial sums.

Both read a row count on the host (the grouped matmul takes exactly as many rows as its group
list covers; ``all_to_all_single`` takes split sizes as lists): a host synchronisation, which no
graph can hold, so expert parallelism runs eager (graph_modes.py).

Not supported, and rejected with NotImplementedError rather than silently computed differently:
non-linear expert placement, scoring other than softmax/sigmoid, custom routing functions, hash
routing, activations other than silu (and swiglu clamp/alpha/beta),
apply_router_weight_on_input with top_k > 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from vllm.model_executor.layers.fused_moe.activation import MoEActivation
from vllm.model_executor.layers.fused_moe.config import FusedMoEConfig
from vllm.model_executor.layers.fused_moe.fused_moe_method_base import FusedMoEMethodBase
from vllm.model_executor.layers.fused_moe.oracle.unquantized import UnquantizedMoeBackend
from vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method import (
    UnquantizedFusedMoEMethod,
)
from vllm.model_executor.utils import replace_parameter

from vllm_ascend.ascend_config import get_ascend_config
from vllm_ascend.distributed.moe_dispatch import AllToAllDispatch, token_slice
from vllm_ascend.ops.moe_routing import routing_plan, select_experts

if TYPE_CHECKING:
    from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts
    from vllm.model_executor.layers.fused_moe.runner.shared_experts import SharedExperts

# vLLM class (CustomOp registry key) this method replaces.
REPLACES = "UnquantizedFusedMoEMethod"

# Marks a weight already transposed into the grouped-matmul layout (carried by replace_parameter;
# a reloaded parameter does not have it and is transposed again).
_GMM_LAYOUT_ATTR = "ascend_gmm_layout"


def _unsupported(what: str) -> NotImplementedError:
    return NotImplementedError(f"Ascend unquantized fused MoE does not support {what}")


def check_moe_config(moe: FusedMoEConfig) -> None:
    """Reject, at construction, what the config alone shows is unsupported."""
    if moe.activation != MoEActivation.SILU:
        raise _unsupported(f"activation {moe.activation.value!r} (only 'silu', as SwiGLU)")
    if moe.has_hash_routing:
        raise _unsupported("hash routing")
    for name in ("swiglu_limit", "swiglu_alpha", "swiglu_beta"):
        if getattr(moe, name, None) is not None:
            raise _unsupported(f"{name}")


def check_layer(layer: RoutedExperts) -> None:
    """Reject the routing features this method does not implement (see the module docstring)."""
    if layer.custom_routing_function is not None:
        raise _unsupported("custom_routing_function")
    routing_plan(layer)  # raises for scoring or grouping it cannot route
    if layer.activation != MoEActivation.SILU:
        raise _unsupported(f"activation {layer.activation.value!r} (only 'silu')")
    for name in ("swiglu_limit", "swiglu_alpha", "swiglu_beta"):
        if getattr(layer, name, None) is not None:
            raise _unsupported(name)
    if layer.apply_router_weight_on_input and layer.top_k != 1:
        raise _unsupported("apply_router_weight_on_input with top_k > 1")


class AscendUnquantizedFusedMoEMethod(UnquantizedFusedMoEMethod):
    """Replaces vLLM's ``UnquantizedFusedMoEMethod`` (register_oot name of the same spelling).

    The runner calls ``apply_monolithic`` (``is_monolithic`` is True). ``apply`` (router output
    given) runs the same expert pipeline for callers that route elsewhere.
    """

    def __init__(self, moe: FusedMoEConfig):
        # Skip UnquantizedFusedMoEMethod.__init__: it picks a GPU/CPU kernel backend via
        # select_unquantized_moe_backend. FusedMoEMethodBase.__init__ still runs CustomOp.__init__.
        FusedMoEMethodBase.__init__(self, moe)
        check_moe_config(moe)
        self.unquantized_backend = UnquantizedMoeBackend.OOT
        self.experts_cls = None
        # ipc_cache-style pre-processed loads would hand over weights in vLLM's layout.
        self.supports_pre_processed_weights = False
        from vllm.config import get_current_vllm_config

        self.use_all_to_all = (
            moe.moe_parallel_config.use_ep
            and get_ascend_config(get_current_vllm_config()).expert_dispatch == "alltoall"
        )
        self.dispatcher: AllToAllDispatch | None = None

    @property
    def supports_internal_mk(self) -> bool:
        # True: this method moves tokens between expert-parallel ranks itself, so vLLM's MoE
        # runner does not all-gather them first (runner.do_naive_dispatch_combine).
        return self.use_all_to_all

    @property
    def is_monolithic(self) -> bool:
        return True

    @property
    def supports_eplb(self) -> bool:
        return False

    # ---- weights ---------------------------------------------------------------------------
    def process_weights_after_loading(self, layer: RoutedExperts) -> None:
        self.prepare_routing(layer)
        for name in ("w13_weight", "w2_weight"):
            transpose_for_grouped_matmul(layer, name)
        self.moe_quant_config = self.get_fused_moe_quant_config(layer)

    def prepare_routing(self, layer: RoutedExperts) -> None:
        """Checks, this rank's expert range and the all-to-all dispatcher: what every MoE
        method here (unquantized and quantized) does once the weights are in."""
        check_layer(layer)
        self.local_range = local_expert_range(layer)
        if self.use_all_to_all:
            from vllm.distributed import get_ep_group

            self.dispatcher = AllToAllDispatch(
                get_ep_group(), layer.global_num_experts, self.local_range
            )

    # ---- forward ---------------------------------------------------------------------------
    def apply_monolithic(
        self,
        layer: RoutedExperts,
        x: torch.Tensor,
        router_logits: torch.Tensor,
        input_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        check_layer(layer)
        if x.shape[0] == 0 and self.dispatcher is None:
            return x.new_empty(x.shape)
        if x.shape[0] == 0:  # the rank still joins the all-to-all exchanges
            topk_weights = x.new_empty((0, layer.top_k), dtype=torch.float32)
            topk_ids = x.new_empty((0, layer.top_k), dtype=torch.int32)
        else:
            topk_weights, topk_ids = select_experts(layer, router_logits)
        sink = layer.routing_sink
        if sink is not None:  # routed-experts capture (RL replay)
            replay = sink.buffer[: topk_ids.shape[0]]
            replay.copy_(topk_ids)
            sink.capture_fn(replay)
        return self._experts(layer, x, topk_weights, topk_ids)

    def apply(
        self,
        layer: RoutedExperts,
        x: torch.Tensor,
        topk_weights: torch.Tensor,
        topk_ids: torch.Tensor,
        shared_experts: SharedExperts | None,
        shared_experts_input: torch.Tensor | None,
    ) -> torch.Tensor:
        # Not through CustomOp dispatch: forward_native would need vLLM's modular kernel.
        return self.forward_oot(
            layer, x, topk_weights, topk_ids, shared_experts, shared_experts_input
        )

    def forward_oot(
        self,
        layer: RoutedExperts,
        x: torch.Tensor,
        topk_weights: torch.Tensor,
        topk_ids: torch.Tensor,
        shared_experts: SharedExperts | None,
        shared_experts_input: torch.Tensor | None,
    ) -> torch.Tensor:
        check_layer(layer)
        if shared_experts is not None:
            # On the monolithic path the runner runs shared experts itself; a modular caller
            # expects the kernel to schedule them, which this method does not do.
            raise _unsupported("shared experts passed to the expert kernel (modular path)")
        if x.shape[0] == 0 and self.dispatcher is None:
            return x.new_empty(x.shape)
        return self._experts(layer, x, topk_weights.float(), topk_ids.to(torch.int32))

    def _experts(
        self,
        layer: RoutedExperts,
        x: torch.Tensor,
        topk_weights: torch.Tensor,
        topk_ids: torch.Tensor,
    ) -> torch.Tensor:
        """x (T, H); topk_weights (T, K) float32; topk_ids (T, K) int32 -> (T, H) in x's dtype."""
        num_tokens, top_k = topk_ids.shape
        num_experts = layer.global_num_experts
        probs: torch.Tensor | None = topk_weights.to(x.dtype)
        if layer.apply_router_weight_on_input:  # top_k == 1 (check_layer)
            x = (x.float() * topk_weights).to(x.dtype)
            probs = None

        if self.dispatcher is not None:
            return self._all_to_all(layer, x, topk_ids, probs)
        start, end = getattr(self, "local_range", None) or (0, num_experts)
        expanded_x, expanded_row_idx, tokens_per_expert, _ = torch.ops.npu.npu_moe_init_routing_v2(
            x,
            topk_ids,
            active_num=num_tokens * top_k,
            expert_num=num_experts,
            expert_tokens_num_type=1,  # counts -> group_list_type=1 below
            expert_tokens_num_flag=True,
            quant_mode=-1,
            active_expert_range=[start, end],
        )
        local_only = (start, end) != (0, num_experts)
        if local_only:
            # The rows of this rank's experts come first; the grouped matmul takes exactly
            # those (a host read: expert parallelism runs eager).
            emitted = int(tokens_per_expert.sum())
            rows = expanded_x[:emitted]
        else:
            rows = expanded_x
        down = self._expert_mlp(layer, rows, tokens_per_expert)
        if local_only:
            down, expanded_row_idx = _zero_rows_for_remote_experts(
                down, expanded_row_idx, expanded_x.shape[0])
        return torch.ops.npu.npu_moe_token_unpermute(down, expanded_row_idx, probs)

    def _expert_mlp(
        self, layer: RoutedExperts, rows: torch.Tensor, tokens_per_expert: torch.Tensor
    ) -> torch.Tensor:
        """Rows grouped by local expert -> SwiGLU expert MLP output rows, same order."""
        bias13 = layer.w13_bias if self.moe.has_bias else None
        bias2 = layer.w2_bias if self.moe.has_bias else None
        gate_up = _expert_matmul(rows, layer.w13_weight, bias13, tokens_per_expert)
        hidden = torch.ops.npu.npu_swiglu(gate_up, -1)  # silu(gate) * up, gate = first half
        return _expert_matmul(hidden, layer.w2_weight, bias2, tokens_per_expert)

    def _all_to_all(
        self,
        layer: RoutedExperts,
        x: torch.Tensor,
        topk_ids: torch.Tensor,
        probs: torch.Tensor | None,
    ) -> torch.Tensor:
        """Dispatch this rank's tokens to the experts' owners and combine (module docstring)."""
        assert self.dispatcher is not None
        from vllm.distributed import get_tp_group

        def mlp(rows: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
            return self._expert_mlp(layer, rows, counts)

        tp = get_tp_group()
        if self.moe.is_sequence_parallel or tp.world_size == 1:
            return self.dispatcher(x, topk_ids, probs, mlp)
        # Replicated tokens: this rank's share; the runner's tensor-parallel all-reduce sums
        # the shares (every other row is zero here).
        share = token_slice(x.shape[0], tp.rank_in_group, tp.world_size)
        out = x.new_zeros(x.shape)
        out[share] = self.dispatcher(
            x[share], topk_ids[share], None if probs is None else probs[share], mlp
        )
        return out


def transpose_for_grouped_matmul(layer: RoutedExperts, name: str) -> None:
    """vLLM's per-expert (out, in) weight -> the grouped matmul's [E, in, out], once."""
    param = getattr(layer, name)
    if getattr(param, _GMM_LAYOUT_ATTR, False):
        return  # already [E, in, out]
    gmm_weight = param.data.transpose(1, 2).contiguous()
    setattr(gmm_weight, _GMM_LAYOUT_ATTR, True)
    replace_parameter(layer, name, gmm_weight)


def _expert_matmul(
    rows: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    tokens_per_expert: torch.Tensor,
) -> torch.Tensor:
    """Rows grouped by expert (counts in tokens_per_expert) times each expert's [in, out]."""
    if bias is not None:
        # npu_grouped_matmul takes float32 bias with bfloat16 x (doc dtype table).
        bias = bias.to(torch.float32 if rows.dtype == torch.bfloat16 else rows.dtype)
    return torch.ops.npu.npu_grouped_matmul(
        [rows],
        [weight],
        bias=[bias] if bias is not None else None,
        group_list=tokens_per_expert,
        split_item=2,
        group_type=0,
        group_list_type=1,
    )[0]


def local_expert_range(layer: RoutedExperts) -> tuple[int, int]:
    """[start, end) of the global experts this rank holds: all of them without expert
    parallelism; a contiguous range (vLLM's linear placement) with it."""
    expert_map = layer.expert_map
    if expert_map is None:
        return 0, layer.global_num_experts
    local = torch.nonzero(expert_map.cpu() >= 0).reshape(-1)
    start, count = int(local[0]), local.numel()
    expected = torch.arange(count, dtype=expert_map.dtype)
    if count != layer.local_num_experts or not torch.equal(
            local, torch.arange(start, start + count)) or not torch.equal(
            expert_map.cpu()[local], expected):
        raise _unsupported(
            f"expert placement {getattr(layer, 'expert_placement_strategy', '?')!r} (only "
            "'linear': each rank a contiguous range of experts); pass "
            "--expert-placement-strategy linear")
    return start, start + count


def _zero_rows_for_remote_experts(
    down: torch.Tensor, expanded_row_idx: torch.Tensor, total_rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The expert outputs padded back to every routed position: positions routed to another
    rank's experts (-1 in expanded_row_idx) point at distinct zero rows after the computed
    ones, so the combine (which takes each index once, in range) adds nothing for them."""
    padded = down.new_zeros((total_rows, down.shape[1]))
    padded[: down.shape[0]] = down
    remote = expanded_row_idx < 0
    fill = down.shape[0] + torch.cumsum(remote.to(torch.int32), 0, dtype=torch.int32) - 1
    return padded, torch.where(remote, fill, expanded_row_idx)

