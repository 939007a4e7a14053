"""RMSNorm through torch_npu's fused kernels (npu_rms_norm / npu_add_rms_norm)."""

from __future__ import annotations

import torch
from vllm.model_executor.layers.layernorm import RMSNorm

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
        # npu_add_rms_norm returns (norm(x + residual), rstd, x + residual): the sum is the
        # residual stream for the next layer.
        y, _rstd, summed = torch.ops.npu.npu_add_rms_norm(
            x, residual, self.weight, self.variance_epsilon
        )
        return y, summed
