"""The registry of every change vllm-ascend makes to code it does not own.

Each entry says what it changes, why no extension point serves, and when it can go. Patches are
applied once per process by the ``register_ops`` general plugin, only while the plugin is active.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from vllm_ascend import device


@dataclass(frozen=True)
class Patch:
    target: str  # dotted path of the attribute replaced
    backends: tuple[str, ...]  # where it applies: "npu", "cpu"
    why: str
    remove_when: str
    replacement: Callable[[], Any]  # builds the new attribute value


def _noop(*args, **kwargs) -> None:
    return None


def _device_attr(name: str) -> Callable[[], Any]:
    return lambda: getattr(device.current(), name)


_ACCELERATOR_WHY = (
    "GPUModelRunner, the GPU worker and vLLM's shutdown cleanup "
    "(distributed.parallel_state.cleanup_dist_env_and_memory) call torch.accelerator.* "
    "unconditionally on every non-CPU platform; on the CPU backend there is no accelerator and "
    "these raise. Host work is synchronous, so they are no-ops there."
)
_STREAM_WHY = (
    "GPUModelRunner builds its async-output copy stream and events with torch.cuda.* by name; "
    "the device layer provides the NPU (torch.npu) or host equivalents."
)
_REMOVE_STREAMS = "vLLM creates streams through torch.Stream/torch.accelerator or a Platform hook"

PATCHES: tuple[Patch, ...] = (
    Patch("torch.accelerator.synchronize", ("cpu",), _ACCELERATOR_WHY,
          "vLLM routes device synchronisation through a Platform hook", lambda: _noop),
    Patch("torch.accelerator.empty_cache", ("cpu",), _ACCELERATOR_WHY,
          "vLLM routes cache release through a Platform hook", lambda: _noop),
    Patch("torch.accelerator.empty_host_cache", ("cpu",), _ACCELERATOR_WHY,
          "vLLM's cleanup checks for an accelerator first", lambda: _noop),
    Patch("torch.Event", ("cpu",),
          "GPUModelRunner records a torch.Event each step to wait for the sampled-token copy; "
          "torch's CPU backend has no events.",
          "vLLM makes the transfer event a Platform hook", _device_attr("Event")),
    Patch("torch.cuda.Stream", ("npu", "cpu"), _STREAM_WHY, _REMOVE_STREAMS,
          _device_attr("Stream")),
    Patch("torch.cuda.Event", ("npu", "cpu"), _STREAM_WHY, _REMOVE_STREAMS,
          _device_attr("Event")),
    Patch("torch.cuda.current_stream", ("npu", "cpu"), _STREAM_WHY, _REMOVE_STREAMS,
          _device_attr("current_stream")),
    Patch("torch.cuda.stream", ("npu", "cpu"), _STREAM_WHY, _REMOVE_STREAMS,
          _device_attr("stream")),
)


def _resolve_owner(target: str) -> tuple[Any, str]:
    owner_path, attr = target.rsplit(".", 1)
    owner: Any = torch
    for part in owner_path.split(".")[1:]:
        owner = getattr(owner, part)
    return owner, attr


@functools.cache
def apply() -> list[str]:
    """Apply the patches for the active backend; returns the targets patched."""
    backend = device.current().device_type
    applied = []
    for patch in PATCHES:
        if backend in patch.backends:
            owner, attr = _resolve_owner(patch.target)
            setattr(owner, attr, patch.replacement())
            applied.append(patch.target)
    return applied
