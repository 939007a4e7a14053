"""compressed-tensors int8 (LLM-Compressor's W8A8) on the Ascend quant ops.

vLLM's own ``CompressedTensorsW8A8Int8`` scheme parses the checkpoint and creates the weights
(``weight`` int8 [n, k]; ``weight_scale`` float [n, 1] per channel or one per shard per tensor;
``input_scale`` [1] for static activations); it asks the int8 scaled-mm kernel registry for a
kernel, where vLLM has none for an out-of-tree platform. This module's kernel is registered
there (``register_linear_kernel(..., PlatformEnum.OOT, "int8")``):

static (per-tensor symmetric activations):
    x_q = npu_quantize(x, input_scale, None, qint8, div_mode=True) = clamp(round(x / s_x))
    y   = npu_quant_matmul(x_q, weight^T, s_x * weight_scale) + bias
dynamic (per-token symmetric activations):
    x_q, s = npu_dynamic_quant(x)
    y      = npu_quant_matmul(x_q, weight^T, weight_scale, pertoken_scale=s) + bias

Asymmetric activations (a zero point) are refused: LLM-Compressor's int8 W8A8 recipes write
symmetric ones, and the zero-point correction is not implemented here.
"""

from __future__ import annotations

import torch
from vllm.model_executor.kernels.linear.scaled_mm.ScaledMMLinearKernel import (
    Int8ScaledMMLinearKernel,
    Int8ScaledMMLinearLayerConfig,
)
from vllm.model_executor.utils import replace_parameter


class AscendInt8ScaledMMLinearKernel(Int8ScaledMMLinearKernel):
    @classmethod
    def is_supported(cls, compute_capability: int | None = None) -> tuple[bool, str | None]:
        return True, None  # registered for the out-of-tree platform only

    @classmethod
    def can_implement(cls, c: Int8ScaledMMLinearLayerConfig) -> tuple[bool, str | None]:
        if not c.input_symmetric:
            return False, ("vllm-ascend runs compressed-tensors int8 with symmetric "
                           "activations only (this checkpoint has an activation zero point)")
        return True, None

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        w_name, s_name, i_name, _, _ = self.layer_param_names
        weight = getattr(layer, w_name)
        replace_parameter(layer, w_name, weight.data.t().contiguous())  # [k, n]
        scale = getattr(layer, s_name).data.float()
        if not self.config.is_channelwise:  # one scale per fused shard -> per channel
            widths = layer.logical_widths
            scale = torch.cat([s.expand(w) for s, w in zip(scale.reshape(-1), widths,
                                                          strict=True)])
        scale = scale.reshape(-1)
        if self.config.is_static_input_scheme:
            input_scale = getattr(layer, i_name).data.float().max().reshape(1)
            replace_parameter(layer, i_name, input_scale)
            scale = scale * input_scale  # the dequantization scale s_x * s_w
        replace_parameter(layer, s_name, scale.contiguous())

    def apply_weights(self, layer: torch.nn.Module, x: torch.Tensor,
                      bias: torch.Tensor | None = None) -> torch.Tensor:
        w, scale, input_scale, _, _ = self._get_layer_params(layer)
        rows = x.reshape(-1, x.shape[-1])
        if self.config.is_static_input_scheme:
            rows_q = torch.ops.npu.npu_quantize(rows, input_scale, None, torch.qint8, -1, True)
            y = torch.ops.npu.npu_quant_matmul(rows_q, w, scale, output_dtype=x.dtype)
        else:
            rows_q, row_scale = torch.ops.npu.npu_dynamic_quant(rows)
            y = torch.ops.npu.npu_quant_matmul(rows_q, w, scale, pertoken_scale=row_scale,
                                               output_dtype=x.dtype)
        y = y.reshape(*x.shape[:-1], y.shape[-1])
        return y if bias is None else y + bias
