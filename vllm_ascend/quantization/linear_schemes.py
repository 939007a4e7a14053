"""Quantized linear layers of msModelSlim checkpoints, one small scheme class per quant type.

Tensors per layer as msModelSlim writes them (``n`` = output features, ``k`` = input features;
a fused layer concatenates its shards' rows) and the kernels that consume them:

W8A8 (static: per-tensor asymmetric activations, per-channel symmetric weights)
    weight int8 [n, k]; input_scale, input_offset float32 [1] (one per shard: they must agree,
    the input is quantized once); quant_bias int32 [n]; deq_scale [n] float32 (bf16/fp32
    models) or int64 (fp16 models: the float32 bits, as npu_quant_matmul takes them).
        x_q = npu_quantize(x, input_scale, input_offset, qint8, div_mode=True)
            = clamp(round(x / input_scale + input_offset), -128, 127)
        y   = npu_quant_matmul(x_q, weight^T, deq_scale, bias=quant_bias)
            = (x_q @ weight^T + quant_bias) * deq_scale
    quant_bias already holds the float bias (and the offset's correction), so the layer's own
    bias tensor is not added again; under tensor parallel a row-parallel layer adds quant_bias
    on rank 0 only (its partial sums are all-reduced).
W8A8_DYNAMIC (per-token symmetric activations, per-channel symmetric weights)
    weight int8 [n, k]; weight_scale float32 [n, 1]; weight_offset [n, 1] (all zero).
        x_q, s = npu_dynamic_quant(x)          (s = rowmax|x| / 127)
        y      = npu_quant_matmul(x_q, weight^T, weight_scale, pertoken_scale=s) + bias
W8A16 (int8 weights, floating activations)
    weight int8 [n, k]; weight_scale, weight_offset float32 [n, 1].
        y = npu_weight_quant_batchmatmul(x, weight^T, weight_scale, -weight_offset) + bias
          = x @ ((weight - weight_offset) * weight_scale)^T + bias
    msModelSlim dequantizes as (w - offset) * scale; the NPU op computes (w + offset) * scale,
    so the offset is negated once at load.

Sources: msModelSlim's AscendV1 exporter and format page, torch_npu's op docs for each op.
"""

from __future__ import annotations

import torch
from vllm.model_executor.layers.linear import (
    LinearMethodBase,
    RowParallelLinear,
    register_weight_loader_v2_supported_method,
)
from vllm.model_executor.parameter import (
    ChannelQuantScaleParameter,
    ModelWeightParameter,
    PerTensorScaleParameter,
)
from vllm.model_executor.utils import replace_parameter


def _flat_matmul(x: torch.Tensor, compute) -> torch.Tensor:
    """Run a 2-D kernel on x's rows and restore x's leading dims."""
    out = compute(x.reshape(-1, x.shape[-1]))
    return out.reshape(*x.shape[:-1], out.shape[-1])


class _Scheme:
    """One quant type's weights and arithmetic for a linear layer."""

    def create_weights(self, layer, out_sizes: list[int], in_size: int, params_dtype, loader):
        layer.register_parameter("weight", ModelWeightParameter(
            data=torch.empty(sum(out_sizes), in_size, dtype=torch.int8),
            input_dim=1, output_dim=0, weight_loader=loader))

    def process(self, layer) -> None:
        # npu_quant_matmul / npu_weight_quant_batchmatmul take the weight as [k, n].
        replace_parameter(layer, "weight", layer.weight.data.t().contiguous())

    def apply(self, layer, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError


def _channel(out_sizes, dtype, loader, trailing: tuple[int, ...] = (1,)):
    return ChannelQuantScaleParameter(
        data=torch.empty(sum(out_sizes), *trailing, dtype=dtype), output_dim=0,
        weight_loader=loader)


class W8A8Static(_Scheme):
    def create_weights(self, layer, out_sizes, in_size, params_dtype, loader):
        super().create_weights(layer, out_sizes, in_size, params_dtype, loader)
        for name in ("input_scale", "input_offset"):
            layer.register_parameter(name, PerTensorScaleParameter(
                data=torch.empty(len(out_sizes), dtype=torch.float32), weight_loader=loader))
        layer.register_parameter("quant_bias", _channel(out_sizes, torch.int32, loader, ()))
        deq_dtype = torch.int64 if params_dtype == torch.float16 else torch.float32
        layer.register_parameter("deq_scale", _channel(out_sizes, deq_dtype, loader, ()))

    def process(self, layer) -> None:
        super().process(layer)
        for name in ("input_scale", "input_offset"):
            values = getattr(layer, name).data
            if not bool((values == values[0]).all()):
                raise ValueError(
                    f"W8A8 layer {layer.ascend_quant_name!r}: its shards have different "
                    f"{name} values {values.tolist()}, but a fused layer quantizes its input "
                    "once; export the fused shards with one activation scale and offset"
                )
        offset = layer.input_offset.data[0]
        if offset != offset.round() or not -128 <= float(offset) <= 127:
            raise ValueError(f"W8A8 layer {layer.ascend_quant_name!r}: input_offset "
                             f"{float(offset)} is not an int8 value")
        replace_parameter(layer, "input_scale", layer.input_scale.data[:1].clone())
        replace_parameter(layer, "input_offset", offset.to(torch.int8).reshape(1))
        if isinstance(layer, RowParallelLinear) and layer.tp_rank > 0:
            # The partial results are all-reduced: the bias term is added once.
            layer.quant_bias.data.zero_()

    def apply(self, layer, x, bias):
        out_dtype = x.dtype

        def compute(rows):
            x_q = torch.ops.npu.npu_quantize(rows, layer.input_scale, layer.input_offset,
                                             torch.qint8, -1, True)
            return torch.ops.npu.npu_quant_matmul(x_q, layer.weight, layer.deq_scale,
                                                  bias=layer.quant_bias, output_dtype=out_dtype)

        # The float bias is folded into quant_bias (module docstring): not added again.
        return _flat_matmul(x, compute)


class _PerChannelWeights(_Scheme):
    """int8 weights with a float32 scale and offset per output channel, [n, 1] each."""

    def create_weights(self, layer, out_sizes, in_size, params_dtype, loader):
        super().create_weights(layer, out_sizes, in_size, params_dtype, loader)
        layer.register_parameter("weight_scale", _channel(out_sizes, torch.float32, loader))
        layer.register_parameter("weight_offset", _channel(out_sizes, torch.float32, loader))


class W8A8Dynamic(_PerChannelWeights):

    def process(self, layer) -> None:
        super().process(layer)
        if bool(layer.weight_offset.data.ne(0).any()):
            raise ValueError(f"W8A8_DYNAMIC layer {layer.ascend_quant_name!r} has non-zero "
                             "weight_offset: only symmetric int8 weights are supported")
        replace_parameter(layer, "weight_scale", layer.weight_scale.data.reshape(-1).clone())
        del layer.weight_offset

    def apply(self, layer, x, bias):
        from vllm_ascend.quantization.norm_fusion import take_quantized

        out_dtype = x.dtype if isinstance(x, torch.Tensor) else x.orig_dtype
        pre = take_quantized(x)
        if pre is not None:  # from the fused add + RMSNorm + quant before this layer
            x_q, scale = pre
            y = torch.ops.npu.npu_quant_matmul(x_q, layer.weight, layer.weight_scale,
                                               pertoken_scale=scale, output_dtype=out_dtype)
            y = y.reshape(*x.orig_shape[:-1], y.shape[-1])
        else:
            def compute(rows):
                x_q, scale = torch.ops.npu.npu_dynamic_quant(rows)
                return torch.ops.npu.npu_quant_matmul(x_q, layer.weight, layer.weight_scale,
                                                      pertoken_scale=scale,
                                                      output_dtype=out_dtype)

            y = _flat_matmul(x, compute)
        return y if bias is None else y + bias


class W8A16(_PerChannelWeights):
    def process(self, layer) -> None:
        super().process(layer)
        dtype = layer.params_dtype
        # The op takes the scale and offset in the activations' dtype, shaped [n].
        replace_parameter(layer, "weight_scale", layer.weight_scale.data.reshape(-1).to(dtype))
        replace_parameter(layer, "weight_offset",
                          (-layer.weight_offset.data.reshape(-1)).to(dtype))

    def apply(self, layer, x, bias):
        if bias is not None and x.dtype == torch.bfloat16:
            bias = bias.float()  # the op takes a float32 bias with bfloat16 x (doc dtype table)
        return _flat_matmul(x, lambda rows: torch.ops.npu.npu_weight_quant_batchmatmul(
            rows, layer.weight, layer.weight_scale, layer.weight_offset, bias=bias))


SCHEMES: dict[str, type[_Scheme]] = {
    "W8A8": W8A8Static,
    "W8A8_DYNAMIC": W8A8Dynamic,
    "W8A16": W8A16,
}


@register_weight_loader_v2_supported_method
class AscendLinearMethod(LinearMethodBase):
    """A linear layer of an msModelSlim checkpoint, run by its quant type's scheme."""

    def __init__(self, quant_type: str, layer_name: str):
        self.quant_type = quant_type
        self.layer_name = layer_name
        self.scheme = SCHEMES[quant_type]()

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes,
                       input_size, output_size, params_dtype, **extra_weight_attrs):
        layer.ascend_quant_name = self.layer_name
        layer.params_dtype = params_dtype
        self.scheme.create_weights(layer, list(output_partition_sizes),
                                   input_size_per_partition, params_dtype,
                                   extra_weight_attrs["weight_loader"])

    def process_weights_after_loading(self, layer) -> None:
        self.scheme.process(layer)

    def apply(self, layer, x, bias=None):
        return self.scheme.apply(layer, x, bias)
