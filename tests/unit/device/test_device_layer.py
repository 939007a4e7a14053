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


@pytest.mark.parametrize("cpus, ranks, threads", [(2, 1, 1), (16, 1, 15), (16, 2, 7), (2, 2, 1),
                                                   (1, 1, 1), (64, 4, 15)])
def test_cpu_compute_threads_leave_a_cpu_per_rank(monkeypatch, cpus, ranks, threads):
    """vLLM's serving thread count is one (right for a device); the CPU backend's workers do the
    compute, so they share the host's CPUs less one per rank for the front-end and scheduler."""
    import vllm.utils.torch_utils as tu

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(tu, "available_cpu_count", lambda: cpus)
    assert CpuDevice.compute_threads(ranks) == threads


def test_cpu_compute_threads_keep_the_users_omp_num_threads(monkeypatch):
    from vllm.utils.torch_utils import OMP_NUM_THREADS_SET_BY_VLLM

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv(OMP_NUM_THREADS_SET_BY_VLLM, raising=False)
    assert CpuDevice.compute_threads(1) is None
    # vLLM's own start-up value (marked as such) is not the user's choice.
    monkeypatch.setenv(OMP_NUM_THREADS_SET_BY_VLLM, "1")
    assert CpuDevice.compute_threads(1) is not None
