"""SiluAndMul (SwiGLU) through torch_npu's fused npu_swiglu; QuickGELU (vision towers) through
npu_fast_gelu."""

from __future__ import annotations

import torch
from vllm.model_executor.layers.activation import QuickGELU, SiluAndMul


class AscendSiluAndMul(SiluAndMul):
    def forward_oot(self, x: torch.Tensor) -> torch.Tensor:
        # npu_swiglu activates the first half along `dim` and multiplies by the second half,
        # matching vLLM's gate/up packing of merged column-parallel linears.
        return torch.ops.npu.npu_swiglu(x, -1)


class AscendQuickGELU(QuickGELU):
    def forward_oot(self, x: torch.Tensor) -> torch.Tensor:
        # x * sigmoid(1.702 x) is npu_fast_gelu's formula on Atlas A2/A3.
        return torch.ops.npu.npu_fast_gelu(x)
