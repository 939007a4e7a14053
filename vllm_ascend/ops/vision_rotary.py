"""The vision encoders' rotary (vLLM's ApplyRotaryEmb) through torch_npu's ``npu_rotary_mul``.

vLLM's vision towers (Qwen2-VL, Qwen2.5-VL, ...) compute per-patch cos/sin of shape
[seq, head_size / 2] and call ApplyRotaryEmb on q/k of shape [batch, seq, heads, head_size] (or
[seq, heads, head_size]). ``npu_rotary_mul`` takes the same rotation with cos/sin expanded to the
full head (repeated halves for NeoX style, repeated pairs for GPT-J style) in the BSND layout with
cos/sin as 1S1D.
"""

from __future__ import annotations

import torch
from vllm.model_executor.layers.rotary_embedding.common import ApplyRotaryEmb

from vllm_ascend.logger import init_logger

logger = init_logger(__name__)


class AscendApplyRotaryEmb(ApplyRotaryEmb):
    def forward_oot(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        head = x.shape[-1]
        if x.dim() not in (3, 4) or cos.dim() != 2 or cos.shape != (x.shape[-3], head // 2):
            logger.warning_once(
                "vllm-ascend: ApplyRotaryEmb with x %s and cos %s is not the vision-encoder "
                "shape npu_rotary_mul takes; vLLM's torch forward runs instead",
                tuple(x.shape), tuple(cos.shape))
            return self.forward_native(x, cos, sin)
        dtype = torch.float32 if self.enable_fp32_compute else x.dtype
        bsnd = (x if x.dim() == 4 else x.unsqueeze(0)).to(dtype)
        if self.is_neox_style:
            r1, r2 = (torch.cat((t, t), dim=-1) for t in (cos, sin))
        else:
            r1, r2 = (t.repeat_interleave(2, dim=-1) for t in (cos, sin))
        r1, r2 = (t.to(dtype).reshape(1, -1, 1, head) for t in (r1, r2))
        out = torch.ops.npu.npu_rotary_mul(bsnd.contiguous(), r1, r2,
                                           "half" if self.is_neox_style else "interleave")
        return out.reshape(x.shape).to(x.dtype)
