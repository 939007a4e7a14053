"""The device layer's two backends expose the same interface, and the CPU backend's memory
figures follow its documented host budget."""

from __future__ import annotations

import ast
import pathlib

import pytest

from vllm_ascend.device.cpu import CpuDevice, GiB

DEVICE_DIR = pathlib.Path(__file__).resolve().parents[3] / "vllm_ascend" / "device"


def public_members(path: pathlib.Path, cls_name: str) -> set[str]:
    # npu.py imports torch_npu, so its class is read, not imported.
    tree = ast.parse(path.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls_name)
    names = set()
    for node in cls.body:
        if isinstance(node, ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return {n for n in names if not n.startswith("_")}


def test_cpu_and_npu_backends_have_the_same_interface():
    npu = public_members(DEVICE_DIR / "npu.py", "NpuDevice")
    cpu = public_members(DEVICE_DIR / "cpu.py", "CpuDevice")
    assert npu == cpu
    assert {"synchronize", "total_memory", "memory_used", "Stream", "Event"} <= cpu


@pytest.mark.parametrize("budget_gb", [1.0, 2.5])
def test_cpu_memory_budget(monkeypatch, budget_gb):
    monkeypatch.setenv("VLLM_ASCEND_CPU_MEMORY_GB", str(budget_gb))
    total = CpuDevice.total_memory()
    assert 0 < total <= budget_gb * GiB
    assert 0 <= CpuDevice.memory_used() < 64 * GiB


def test_cpu_memory_budget_rejects_nonsense(monkeypatch):
    monkeypatch.setenv("VLLM_ASCEND_CPU_MEMORY_GB", "-3")
    with pytest.raises(ValueError, match="must be positive"):
        CpuDevice.total_memory()


def test_host_streams_and_events_are_inert():
    s = CpuDevice.Stream()
    e = CpuDevice.Event()
    e.record(s)
    s.wait_event(e)
    s.wait_stream(CpuDevice.current_stream())
    assert e.query() and s.query()
    with CpuDevice.stream(s):
        pass
