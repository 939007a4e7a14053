"""Rotary embeddings on the _C_ascend kernel, for every vLLM rotary class whose rotation is the
plain one.

``torch.ops._C_ascend.rotary_embedding`` (Ascend C on the NPU, the C++ kernel on the CPU backend)
rotates query and key in place, in fp32, with rows of a cos/sin cache picked by position; partial
rotary (rotary_dim < head_size), neox/gptj style and an absent key are handled as in vLLM's
``RotaryEmbedding.forward_native``.

vLLM replaces a CustomOp only under its exact class name, so each covered vLLM class gets its own
Ascend class here: the vLLM class with the plugin's forward mixed in. Three families:

* ``SAME_FORWARD_AS_ROTARY_EMBEDDING``: ``RotaryEmbedding`` and the subclasses that inherit its
  forward and differ only in how they fill ``cos_sin_cache`` (Llama-3, YaRN, linear, NTK and
  dynamic-NTK scaling, Gemma-4 proportional). The kernel reads whatever cache the class built.
* ``DeepseekScalingRotaryEmbedding``: the same rotation of the leading ``rotary_dim`` of each head,
  with its own forward signature (``offsets``; q/k as ``[tokens, heads, head_dim]``).
* ``MRotaryEmbedding`` (Qwen2-VL / Qwen2.5-VL text): with 1-D positions it is the plain rotation;
  with 3-row (T/H/W) positions each frequency takes its cos/sin from one of the rows: torch_npu's
  ``npu_mrope`` for consecutive sections (Qwen2/2.5-VL); for interleaved sections (Qwen3-VL) the
  per-token rows are gathered first and the kernel runs on them with positions 0..T-1.

Classes whose forward computes something else keep vLLM's forward; they are listed with the reason
in ``vllm_ascend.ops.NATIVE_FALLBACKS`` and logged once when built (``ops/native.py``).
"""

from __future__ import annotations

import torch
from vllm.model_executor.layers.rotary_embedding import (
    DeepseekScalingRotaryEmbedding,
    DynamicNTKAlphaRotaryEmbedding,
    DynamicNTKScalingRotaryEmbedding,
    Gemma4RotaryEmbedding,
    LinearScalingRotaryEmbedding,
    Llama3RotaryEmbedding,
    MRotaryEmbedding,
    NTKScalingRotaryEmbedding,
    YaRNScalingRotaryEmbedding,
)
from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding
from vllm.model_executor.layers.rotary_embedding.mrope import apply_interleaved_rope

from vllm_ascend.kernels.extension import ops as _ascend_ops


def _rotate_in_place(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor | None,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox_style: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    # In place on query/key (their storage, any token stride), like vLLM's CUDA kernel.
    _ascend_ops().rotary_embedding(positions, query, key, head_size, cos_sin_cache, is_neox_style)
    return query, key


class AscendRotaryForward:
    """``forward_oot`` of the classes that share ``RotaryEmbedding``'s forward (mixed in first)."""

    def forward_oot(
        self,
        positions: torch.Tensor,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        cos_sin_cache = self._match_cos_sin_cache_dtype(query)
        return _rotate_in_place(
            positions, query, key, self.head_size, cos_sin_cache, self.is_neox_style
        )


class AscendRotaryEmbedding(AscendRotaryForward, RotaryEmbedding):
    pass


# vLLM's RotaryEmbedding subclasses that inherit its forward and differ only in their cos/sin
# cache (tests/unit/ops/test_rotary_variants.py checks that none of them overrides a forward).
SAME_FORWARD_AS_ROTARY_EMBEDDING: tuple[type[RotaryEmbedding], ...] = (
    RotaryEmbedding,
    Llama3RotaryEmbedding,
    YaRNScalingRotaryEmbedding,
    LinearScalingRotaryEmbedding,
    NTKScalingRotaryEmbedding,
    DynamicNTKScalingRotaryEmbedding,
    DynamicNTKAlphaRotaryEmbedding,
    Gemma4RotaryEmbedding,
)


def _with_ascend_forward(vllm_cls: type[RotaryEmbedding]) -> type[RotaryEmbedding]:
    """The one rule: ``Ascend<Name>(AscendRotaryForward, <Name>)``."""
    if vllm_cls is RotaryEmbedding:
        return AscendRotaryEmbedding
    name = f"Ascend{vllm_cls.__name__}"
    cls = type(name, (AscendRotaryForward, vllm_cls), {"__module__": __name__})
    cls.__qualname__ = name
    globals()[name] = cls  # importable (and picklable) by name, like a class statement
    return cls


class AscendDeepseekScalingRotaryEmbedding(DeepseekScalingRotaryEmbedding):
    """DeepSeek YaRN: vLLM's forward rotates the leading ``rotary_dim`` of the last dimension of
    ``[tokens, heads, head_dim]`` q/k with cache rows ``positions + offsets``; so does the kernel,
    given the head size of the tensors passed (MLA hands over the rope slice of each head)."""

    def forward_oot(
        self,
        positions: torch.Tensor,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        offsets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if offsets is not None:
            positions = positions + offsets
        cos_sin_cache = self._match_cos_sin_cache_dtype(query)
        return _rotate_in_place(
            positions, query, key, query.shape[-1], cos_sin_cache, self.is_neox_style
        )


class AscendMRotaryEmbedding(MRotaryEmbedding):
    """Multimodal rotary (mrope), chunked or interleaved sections."""

    def forward_oot(
        self,
        positions: torch.Tensor,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        offsets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if offsets is not None:
            # vLLM's forward_native ignores offsets; refuse rather than guess.
            raise NotImplementedError("Ascend MRotaryEmbedding: position offsets")
        cos_sin_cache = self._match_cos_sin_cache_dtype(query)
        if positions.ndim == 1:
            return _rotate_in_place(
                positions, query, key, self.head_size, cos_sin_cache, self.is_neox_style
            )
        if positions.ndim != 2 or not self.mrope_section:
            raise ValueError(
                f"MRotaryEmbedding: positions must be [tokens] or [sections, tokens] with "
                f"mrope_section set; got {tuple(positions.shape)}, {self.mrope_section}"
            )
        if self.mrope_interleaved or key is None:
            return self._gathered(positions, query, key, cos_sin_cache)
        # npu_mrope takes q/k as [tokens, heads * head_size] and returns new tensors.
        q_out, k_out = torch.ops.npu.npu_mrope(
            positions, query.reshape(query.shape[0], -1), key.reshape(key.shape[0], -1),
            cos_sin_cache, self.head_size, mrope_section=list(self.mrope_section),
            rotary_mode="half" if self.is_neox_style else "interleave")
        return q_out.view(query.shape), k_out.view(key.shape)

    def _gathered(self, positions, query, key, cos_sin_cache):
        """Without npu_mrope: Qwen3-VL's interleaved sections (T/H/W cycling over frequencies;
        npu_mrope's 'interleave' cache mode is not defined by its doc) or no key. The per-token
        cos/sin rows are gathered here (frequency j from the row its section names) and the
        kernel reads row t for token t."""
        cos, sin = cos_sin_cache[positions].chunk(2, dim=-1)  # each [sections, tokens, rot/2]
        if self.mrope_interleaved:
            cos = apply_interleaved_rope(cos, self.mrope_section)
            sin = apply_interleaved_rope(sin, self.mrope_section)
        else:
            cos, sin = (
                torch.cat([part[i] for i, part in enumerate(t.split(self.mrope_section, dim=-1))],
                          dim=-1)
                for t in (cos, sin)
            )
        per_token = torch.cat((cos, sin), dim=-1).contiguous()
        rows = torch.arange(per_token.shape[0], device=positions.device)
        return _rotate_in_place(rows, query, key, self.head_size, per_token, self.is_neox_style)


# vLLM class name -> the Ascend class that replaces it (registered by vllm_ascend.ops).
ROTARY_REPLACEMENTS: dict[str, type] = {
    **{cls.__name__: _with_ascend_forward(cls) for cls in SAME_FORWARD_AS_ROTARY_EMBEDDING},
    "DeepseekScalingRotaryEmbedding": AscendDeepseekScalingRotaryEmbedding,
    "MRotaryEmbedding": AscendMRotaryEmbedding,
}
