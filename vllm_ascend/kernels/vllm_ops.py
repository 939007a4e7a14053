"""Ops of vLLM's own ``_C`` extension that vLLM's device-agnostic Python calls and that the empty
build (``VLLM_TARGET_DEVICE=empty``) does not ship.

Only ``_C::weak_ref_tensor``: vLLM's graph capture (``vllm.utils.torch_utils.weak_ref_tensor``,
used by the breakable-graph capture around attention and for captured outputs) hands out
tensors that view a graph's memory without keeping it alive, so the graph pool can reuse it
for the next capture. The schema is vLLM's (``csrc/torch_bindings.cpp``); nothing is defined
when a vLLM build already provides the op.
"""

from __future__ import annotations

import functools

import torch

SCHEMA = "weak_ref_tensor(Tensor input) -> Tensor"


def weak_ref_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor over ``tensor``'s memory (same storage pointer, offset, sizes and strides) whose
    storage does not own or free that memory. The caller keeps the memory alive otherwise (a
    graph's pool, or the CPU tape's recorded buffers)."""
    storage = tensor.untyped_storage()
    borrowed = torch._C._construct_storage_from_data_pointer(
        storage.data_ptr(), tensor.device, storage.nbytes())
    return torch.empty(0, dtype=tensor.dtype, device=tensor.device).set_(
        borrowed, tensor.storage_offset(), tensor.size(), tensor.stride())


def _exists() -> bool:
    try:
        torch._C._get_schema("_C::weak_ref_tensor", "")
        return True
    except RuntimeError:
        return False


@functools.cache
def register() -> bool:
    """Define ``_C::weak_ref_tensor`` for CPU and the NPU (PrivateUse1) unless it exists.
    Returns whether this call defined it."""
    if _exists():
        return False
    lib = torch.library.Library("_C", "FRAGMENT")
    lib.define(SCHEMA)
    lib.impl("weak_ref_tensor", weak_ref_tensor, "PrivateUse1")
    # CPU: the same construction in C++ (graph replay calls it per layer and step).
    from vllm_ascend.kernels import extension

    extension.load(require_npu_kernels=False).install_weak_ref_tensor_cpu()
    register.lib = lib  # the registrations live as long as the library object
    return True
