"""Rotary embedding on the _C_ascend kernel.

``AscendRotaryEmbedding`` replaces vLLM's ``RotaryEmbedding`` (CustomOp "rotary_embedding",
replaced by class name through ``CustomOp.register_oot``). ``forward_oot`` — the method vLLM's
CustomOp dispatch picks on an out-of-tree platform — rotates query and key in place with
``torch.ops._C_ascend.rotary_embedding`` (Ascend C on the NPU, the C++ kernel on the CPU
backend), computing in fp32. The cos/sin cache, partial rotary (rotary_dim < head_size),
neox/gptj style and optional key are handled exactly as in ``RotaryEmbedding.forward_native``.
"""

from __future__ import annotations

import torch
from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding

from vllm_ascend.kernels.extension import ops as _ascend_ops


class AscendRotaryEmbedding(RotaryEmbedding):
    def forward_oot(
        self,
        positions: torch.Tensor,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        cos_sin_cache = self._match_cos_sin_cache_dtype(query)
        # In place on query/key (their storage, any token stride), like vLLM's CUDA kernel.
        _ascend_ops().rotary_embedding(
            positions, query, key, self.head_size, cos_sin_cache, self.is_neox_style
        )
        return query, key

