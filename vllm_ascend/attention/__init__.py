"""Ascend attention backend: torch_npu fused inference attention over a paged KV cache."""

from __future__ import annotations

import functools


@functools.cache
def register_backend() -> None:
    """Make the backend selectable: vLLM looks backends up by AttentionBackendEnum member name,
    and out-of-tree backends use the CUSTOM member."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    from vllm_ascend.platform import ATTENTION_BACKEND_CLS

    register_backend(AttentionBackendEnum.CUSTOM, ATTENTION_BACKEND_CLS)
