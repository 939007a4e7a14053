"""RMSNorm variants through torch_npu's fused kernels (npu_rms_norm / npu_add_rms_norm).

``AscendRMSNorm`` replaces vLLM's ``RMSNorm`` (y = w * x / rms(x)); ``AscendGemmaRMSNorm`` replaces
``GemmaRMSNorm`` (y = (1 + w) * x / rms(x), the scale formed in float32 as vLLM does).
"""

from __future__ import annotations

import torch
from vllm.model_executor.layers.layernorm import GemmaRMSNorm, RMSNorm

from vllm_ascend.ops.fallback import log_fallback_once


class AscendRMSNorm(RMSNorm):
    def forward_oot(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.variance_size_override is not None or not self.has_weight:
            log_fallback_once("RMSNorm", "partial-variance or weightless norm has no fused kernel")
            return self.forward_native(x, residual)
        if residual is None:
            y, _rstd = torch.ops.npu.npu_rms_norm(x, self.weight, self.variance_epsilon)
            return y
        if getattr(self, "feeds_int8_dynamic", False):
            # Add + norm + per-token int8 quantization in one op for the W8A8_DYNAMIC layer
            # this norm feeds (quantization/norm_fusion.py).
            from vllm_ascend.quantization.norm_fusion import add_rms_norm_quant

            return add_rms_norm_quant(self, x, residual)
        # npu_add_rms_norm returns (norm(x + residual), rstd, x + residual): the sum is the
        # residual stream for the next layer.
        y, _rstd, summed = torch.ops.npu.npu_add_rms_norm(
            x, residual, self.weight, self.variance_epsilon
        )
        return y, summed


class AscendGemmaRMSNorm(GemmaRMSNorm):
    """vLLM computes ``x_normalised * (1 + w)`` in float32 and rounds once to x's dtype. The
    kernels take gamma in x's dtype (doc entry ``npu_rms_norm``), so for that exactness the scale
    ``1 + w`` stays float32 and half-precision inputs are normalised in float32 (a cast in, a
    cast out) instead of rounding ``1 + w`` to bfloat16/float16."""

    def forward_oot(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        gamma = self.weight.float() + 1.0
        if residual is None:
            y, _rstd = torch.ops.npu.npu_rms_norm(x.float(), gamma, self.variance_epsilon)
            return y.to(x.dtype)
        # vLLM: the sum formed in float32 is normalised unrounded; the residual stream it returns
        # is that sum rounded to x's dtype.
        y, _rstd, summed = torch.ops.npu.npu_add_rms_norm(
            x.float(), residual.float(), gamma, self.variance_epsilon
        )
        return y.to(x.dtype), summed.to(x.dtype)
