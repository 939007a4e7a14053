"""Quantized MoE experts of msModelSlim checkpoints.

Routing, expert parallelism and the combine are the unquantized method's
(ops/fused_moe.py); only the expert MLP differs.

W8A8_DYNAMIC experts (msModelSlim writes each expert's gate/up/down projection as a
W8A8_DYNAMIC linear; vLLM stacks them per layer):
    w13_weight int8 [E, 2I, H], w2_weight int8 [E, H, I] (gate rows, then up rows);
    w13_weight_scale float32 [E, 2I, 1], w2_weight_scale float32 [E, H, 1];
    w13_weight_offset, w2_weight_offset the same shapes, all zero (symmetric weights).
Per expert group of rows:
    x_q, s   = npu_dynamic_quant(rows)                                 (s = rowmax|x| / 127)
    gate_up  = npu_grouped_matmul(x_q, w13^T, scale=w13_scale, per_token_scale=s)
    h        = npu_swiglu(gate_up)
    h_q, s2  = npu_dynamic_quant(h)
    out      = npu_grouped_matmul(h_q, w2^T, scale=w2_scale, per_token_scale=s2)
The grouped matmul's documented dtype pairs fix the scale's dtype: bfloat16 scales for a
bfloat16 output, float32 for float16 (and for the CPU backend's float32).

W4A8_DYNAMIC experts: the weights are int4, two per byte along the output dim (byte j of a row
pair holds w[2j] in its low nibble and w[2j+1] in its high one), so w13_weight is int8
[E, I, H] and w2_weight int8 [E, H/2, I]; per-channel float32 scales and zero offsets as above;
and scale_bias float32 ([E, 2I, 1]; [E, H, 16] for w2, 16 column chunks), which msModelSlim
sets to 8 * sum_k(w4 * scale) per channel: the term that makes up for the kernel's unsigned
view of int4, so that the product is s_x * scale * (x_q @ w4^T). torch-npu 2.13.0's
npu_grouped_matmul documents no int4-weight form, so the int4 values are widened to int8 once
at load and run through the W8A8_DYNAMIC experts above: the same arithmetic, W8A8's weight
memory (logged once). A scale_bias other than msModelSlim's value is refused, since the int8
path has no place for it.
"""

from __future__ import annotations

import torch
from vllm.model_executor.layers.fused_moe.config import FusedMoEConfig
from vllm.model_executor.layers.fused_moe.routed_experts import FusedMoeWeightScaleSupported
from vllm.model_executor.utils import replace_parameter, set_weight_attrs

from vllm_ascend.logger import init_logger
from vllm_ascend.ops.fused_moe import (
    AscendUnquantizedFusedMoEMethod,
    transpose_for_grouped_matmul,
)

logger = init_logger(__name__)


def _param(layer, name: str, shape: tuple[int, ...], dtype: torch.dtype, attrs: dict) -> None:
    param = torch.nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=False)
    layer.register_parameter(name, param)
    set_weight_attrs(param, attrs)


class AscendW8A8DynamicMoEMethod(AscendUnquantizedFusedMoEMethod):
    def __init__(self, moe: FusedMoEConfig, layer_name: str):
        super().__init__(moe)
        if moe.has_bias:
            raise NotImplementedError(
                f"W8A8_DYNAMIC MoE layer {layer_name!r}: expert biases are not supported")
        self.layer_name = layer_name

    def create_weights(self, layer, num_experts: int, hidden_size: int,
                       intermediate_size_per_partition: int, params_dtype: torch.dtype,
                       **extra_weight_attrs) -> None:
        inter = intermediate_size_per_partition
        _param(layer, "w13_weight", (num_experts, 2 * inter, hidden_size), torch.int8,
               extra_weight_attrs)
        _param(layer, "w2_weight", (num_experts, hidden_size, inter), torch.int8,
               extra_weight_attrs)
        per_channel = {**extra_weight_attrs,
                       "quant_method": FusedMoeWeightScaleSupported.CHANNEL.value}
        for kind in ("scale", "offset"):
            _param(layer, f"w13_weight_{kind}", (num_experts, 2 * inter, 1), torch.float32,
                   per_channel)
            _param(layer, f"w2_weight_{kind}", (num_experts, hidden_size, 1), torch.float32,
                   per_channel)

    def process_weights_after_loading(self, layer) -> None:
        self.prepare_routing(layer)
        scale_dtype = torch.bfloat16 if layer.moe_config.in_dtype == torch.bfloat16 \
            else torch.float32
        for stem in ("w13", "w2"):
            offset = getattr(layer, f"{stem}_weight_offset")
            if bool(offset.data.ne(0).any()):
                raise ValueError(f"W8A8_DYNAMIC MoE layer {self.layer_name!r} has non-zero "
                                 f"{stem}_weight_offset: only symmetric int8 weights are "
                                 "supported")
            delattr(layer, f"{stem}_weight_offset")
            transpose_for_grouped_matmul(layer, f"{stem}_weight")
            scale = getattr(layer, f"{stem}_weight_scale").data
            replace_parameter(layer, f"{stem}_weight_scale",
                              scale.reshape(scale.shape[0], -1).to(scale_dtype))
        self.moe_quant_config = self.get_fused_moe_quant_config(layer)

    def _expert_mlp(self, layer, rows: torch.Tensor,
                    tokens_per_expert: torch.Tensor) -> torch.Tensor:
        gate_up = _int8_grouped_matmul(rows, layer.w13_weight, layer.w13_weight_scale,
                                       tokens_per_expert)
        hidden = torch.ops.npu.npu_swiglu(gate_up, -1)
        return _int8_grouped_matmul(hidden, layer.w2_weight, layer.w2_weight_scale,
                                    tokens_per_expert)


def _int8_grouped_matmul(rows: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                         tokens_per_expert: torch.Tensor) -> torch.Tensor:
    """Float rows grouped by expert -> per-token int8 -> grouped int8 matmul, dequantized."""
    rows_q, row_scale = torch.ops.npu.npu_dynamic_quant(rows)
    return torch.ops.npu.npu_grouped_matmul(
        [rows_q], [weight], scale=[scale], per_token_scale=[row_scale],
        group_list=tokens_per_expert, split_item=2, group_type=0, group_list_type=1,
        output_dtype=rows.dtype,
    )[0]


def unpack_int4_rows(packed: torch.Tensor) -> torch.Tensor:
    """[..., n/2, k] int8 holding two signed int4 per byte along n -> [..., n, k] int8."""
    low = (packed << 4) >> 4  # arithmetic shifts sign-extend each nibble
    high = packed >> 4
    return torch.stack([low, high], dim=-2).reshape(*packed.shape[:-2], -1, packed.shape[-1])


class AscendW4A8DynamicMoEMethod(AscendW8A8DynamicMoEMethod):
    def __init__(self, moe: FusedMoEConfig, layer_name: str):
        super().__init__(moe, layer_name)
        if moe.moe_parallel_config.tp_size > 1:
            raise NotImplementedError(
                f"W4A8_DYNAMIC MoE layer {layer_name!r} with tensor-parallel expert shards "
                "(its scale_bias is split in 16 column chunks for that, not supported yet); "
                "pass --enable-expert-parallel to keep each expert whole")
        log_int4_widening_once()

    def create_weights(self, layer, num_experts: int, hidden_size: int,
                       intermediate_size_per_partition: int, params_dtype: torch.dtype,
                       **extra_weight_attrs) -> None:
        inter = intermediate_size_per_partition
        super().create_weights(layer, num_experts, hidden_size, inter, params_dtype,
                               **extra_weight_attrs)
        # Packed int4: half the rows of the output dim.
        for name, shape in (("w13_weight", (num_experts, inter, hidden_size)),
                            ("w2_weight", (num_experts, hidden_size // 2, inter))):
            delattr(layer, name)
            _param(layer, name, shape, torch.int8, extra_weight_attrs)
        _param(layer, "w13_scale_bias", (num_experts, 2 * inter, 1), torch.float32,
               extra_weight_attrs)
        _param(layer, "w2_scale_bias", (num_experts, hidden_size, 16), torch.float32,
               extra_weight_attrs)

    def process_weights_after_loading(self, layer) -> None:
        for stem in ("w13", "w2"):
            weight = unpack_int4_rows(getattr(layer, f"{stem}_weight").data)
            scale = getattr(layer, f"{stem}_weight_scale").data  # [E, n, 1]
            expected = 8 * (weight.double() * scale.double()).sum(-1)
            got = getattr(layer, f"{stem}_scale_bias").data.double().sum(-1)
            if not torch.allclose(got, expected, rtol=1e-3, atol=1e-3 * float(
                    expected.abs().max()) + 1e-6):
                raise ValueError(
                    f"W4A8_DYNAMIC MoE layer {self.layer_name!r}: {stem}_scale_bias is not "
                    "8 * sum(weight * scale) per channel as msModelSlim writes it; the int8 "
                    "path cannot apply another value")
            replace_parameter(layer, f"{stem}_weight", weight)
            delattr(layer, f"{stem}_scale_bias")
        super().process_weights_after_loading(layer)


_widening_logged = False


def log_int4_widening_once() -> None:
    global _widening_logged
    if not _widening_logged:
        _widening_logged = True
        logger.warning("vllm-ascend: W4A8_DYNAMIC experts run with their int4 weights widened "
                       "to int8 (torch-npu 2.13.0 documents no int4-weight grouped matmul): "
                       "W4A8 arithmetic, W8A8 weight memory")


def moe_method(quant_type: str, moe: FusedMoEConfig, layer_name: str):
    if quant_type == "W8A8_DYNAMIC":
        return AscendW8A8DynamicMoEMethod(moe, layer_name)
    if quant_type == "W4A8_DYNAMIC":
        return AscendW4A8DynamicMoEMethod(moe, layer_name)
    raise NotImplementedError(f"MoE layer {layer_name!r}: {quant_type} experts are not "
                              "supported; supported: W8A8_DYNAMIC, W4A8_DYNAMIC")
