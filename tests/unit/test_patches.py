"""The patch registry: every entry says why and when it goes, names an attribute the device layer
provides on both backends, and, applied, routes vLLM's calls to the device layer."""

from __future__ import annotations

import ast
import pathlib

import torch

from vllm_ascend import patches
from vllm_ascend.device.cpu import CpuDevice

DEVICE_DIR = pathlib.Path(__file__).resolve().parents[2] / "vllm_ascend" / "device"


def npu_device_members() -> set[str]:
    # npu.py imports torch_npu, so its class is read, not imported.
    tree = ast.parse((DEVICE_DIR / "npu.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "NpuDevice")
    names = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
    for node in cls.body:
        if isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def test_every_patch_is_explained():
    for patch in patches.PATCHES:
        assert patch.why and patch.remove_when, patch.target
        assert set(patch.backends) <= {"npu", "cpu"}


def test_accelerator_calls_are_routed_on_the_npu_too():
    # torch_npu does not fully back torch.accelerator.* and torch.Event: on an NPU they must
    # reach torch.npu through the device layer, as they reach the host stand-ins on the CPU.
    targets = {p.target: p for p in patches.PATCHES}
    for name in ("torch.accelerator.synchronize", "torch.accelerator.empty_cache",
                 "torch.accelerator.empty_host_cache", "torch.Event"):
        assert targets[name].backends == ("npu", "cpu"), name
    npu = npu_device_members()
    for patch in patches.PATCHES:
        if not patch.target.startswith("torch."):
            continue
        attr = patch.target.rsplit(".", 1)[1]
        assert attr in npu and hasattr(CpuDevice, attr), attr


def test_applied_on_the_cpu_backend_they_reach_the_device_layer():
    applied = patches.apply()
    assert set(applied) == {p.target for p in patches.PATCHES}
    assert torch.accelerator.synchronize is CpuDevice.synchronize
    assert torch.accelerator.empty_cache is CpuDevice.empty_cache
    assert torch.Event is CpuDevice.Event
    from vllm.distributed.parallel_state import GroupCoordinator

    from vllm_ascend.distributed.graph_capture import group_graph_capture

    assert GroupCoordinator.graph_capture is group_graph_capture
    torch.accelerator.synchronize()
    torch.accelerator.empty_host_cache()
    event = torch.Event()
    event.record()
    assert event.query()


def test_group_graph_capture_runs_on_the_context_stream():
    """The replacement asserts nothing about the group's communicator (a TP group's gloo or
    HCCL one) and makes the capture stream current inside the context."""
    from vllm.distributed.parallel_state import GraphCaptureContext

    from vllm_ascend import device
    from vllm_ascend.distributed.graph_capture import group_graph_capture

    class Group:  # a coordinator with a communicator vLLM's own method would refuse
        device_communicator = object()

    dev = device.current()
    context = GraphCaptureContext(dev.Stream())
    with group_graph_capture(Group(), context) as entered:
        assert entered is context
    with group_graph_capture(Group()) as fresh:
        assert isinstance(fresh.stream, dev.Stream)
