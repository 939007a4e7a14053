"""The registry of every change vllm-ascend makes to code it does not own.

Each entry says what it changes, why no extension point serves, and when it can go. Patches are
applied once per process by the ``register_ops`` general plugin, only while the plugin is active.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vllm_ascend import device


@dataclass(frozen=True)
class Patch:
    target: str  # dotted path of the attribute replaced
    backends: tuple[str, ...]  # where it applies: "npu", "cpu"
    why: str
    remove_when: str
    replacement: Callable[[], Any]  # builds the new attribute value


def _device_attr(name: str) -> Callable[[], Any]:
    return lambda: getattr(device.current(), name)


_ACCELERATOR_WHY = (
    "GPUModelRunner, the GPU worker and vLLM's shutdown cleanup "
    "(distributed.parallel_state.cleanup_dist_env_and_memory) call torch.accelerator.* "
    "unconditionally on every non-CPU platform. On the CPU backend there is no accelerator and "
    "these raise; on an NPU they reach torch's generic accelerator API, which torch_npu 2.13 "
    "does not fully back. The device layer answers on both (torch.npu on the NPU, no-ops for "
    "the host's synchronous work)."
)
_REMOVE_ACCELERATOR = "vLLM routes synchronisation and cache release through Platform hooks"
_STREAM_WHY = (
    "GPUModelRunner builds its async-output copy stream and events with torch.cuda.* by name; "
    "the device layer provides the NPU (torch.npu) or host equivalents."
)
_REMOVE_STREAMS = "vLLM creates streams through torch.Stream/torch.accelerator or a Platform hook"
_BOTH = ("npu", "cpu")

PATCHES: tuple[Patch, ...] = (
    Patch("torch.accelerator.synchronize", _BOTH, _ACCELERATOR_WHY, _REMOVE_ACCELERATOR,
          _device_attr("synchronize")),
    Patch("torch.accelerator.empty_cache", _BOTH, _ACCELERATOR_WHY, _REMOVE_ACCELERATOR,
          _device_attr("empty_cache")),
    Patch("torch.accelerator.empty_host_cache", _BOTH, _ACCELERATOR_WHY, _REMOVE_ACCELERATOR,
          _device_attr("empty_host_cache")),
    Patch("torch.accelerator.get_memory_info", _BOTH,
          "GPUModelRunner.profile_cudagraph_memory and capture_model measure graph memory with "
          "torch.accelerator.get_memory_info(); the CPU backend has no accelerator and torch_npu "
          "2.13 does not back it. The device layer answers (free, total) on both.",
          _REMOVE_ACCELERATOR, _device_attr("get_memory_info")),
    Patch("torch.Event", _BOTH,
          "GPUModelRunner records a torch.Event each step to wait for the sampled-token copy; "
          "torch's CPU backend has no events and torch_npu backs torch.npu.Event, not the "
          "generic torch.Event.",
          "vLLM makes the transfer event a Platform hook", _device_attr("Event")),
    Patch("torch.cuda.Stream", _BOTH, _STREAM_WHY, _REMOVE_STREAMS, _device_attr("Stream")),
    Patch("torch.cuda.Event", _BOTH, _STREAM_WHY, _REMOVE_STREAMS, _device_attr("Event")),
    Patch("torch.cuda.current_stream", _BOTH, _STREAM_WHY, _REMOVE_STREAMS,
          _device_attr("current_stream")),
    Patch("torch.cuda.stream", _BOTH, _STREAM_WHY, _REMOVE_STREAMS, _device_attr("stream")),
    Patch("vllm.distributed.parallel_state.GroupCoordinator.graph_capture", _BOTH,
          "Every graph capture enters GroupCoordinator.graph_capture for the TP/PP/DP groups, "
          "which asserts a CUDA or XPU device communicator on any group of more than one rank "
          "(to enter their custom all-reduce capture modes) and uses torch.cuda streams. With "
          "tensor parallel the assertion stops every capture. The replacement keeps the stream "
          "discipline on the device layer (distributed/graph_capture.py).",
          "vLLM asks the device communicator for its capture context instead of asserting "
          "CUDA/XPU", lambda: _graph_capture()),
    Patch("vllm.v1.engine.core.EngineCoreProc._handle_shutdown", _BOTH,
          "On SIGTERM vLLM 0.32's engine core drains without a deadline and the process manager "
          "SIGKILLs it at shutdown_timeout; with streams in flight their last outputs are lost "
          "and AsyncLLM.shutdown cancels its output handler before the streams hear of the "
          "engine's end, so `vllm serve` waits forever for their "
          "connections. The wrapper aborts what is still running at half the window and lets "
          "the output thread send it before teardown (engine_shutdown.py). No hook exists.",
          "vLLM's engine core enforces the drain deadline itself, or AsyncLLM.shutdown "
          "propagates the engine's end to open streams before cancelling its output handler",
          lambda: _bounded_drain()),
)


def _bounded_drain():
    from vllm.v1.engine.core import EngineCoreProc

    from vllm_ascend.engine_shutdown import bounded_drain

    current = EngineCoreProc._handle_shutdown
    if hasattr(current, "__wrapped__"):  # applied once per process; never wrap twice
        return current
    return bounded_drain(current)


def _graph_capture():
    from vllm_ascend.distributed.graph_capture import group_graph_capture

    return group_graph_capture


def _resolve_owner(target: str) -> tuple[Any, str]:
    """The object owning ``target``'s attribute: the longest importable module prefix, then
    attributes (``torch.accelerator.synchronize``, ``vllm.x.y.Class.method``)."""
    owner_path, attr = target.rsplit(".", 1)
    parts = owner_path.split(".")
    for end in range(len(parts), 0, -1):
        try:
            owner: Any = importlib.import_module(".".join(parts[:end]))
            break
        except ImportError:
            continue
    for part in parts[end:]:
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
