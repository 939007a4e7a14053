"""The CPU backend's memory accounting: the device is the host (or VLLM_ASCEND_CPU_MEMORY_GB),
what is in use is the worker's growth since its baseline, the peak holds freed activations, and a
model that alone exceeds the budget is refused right after loading with the numbers and the fix."""

from __future__ import annotations

import types

import pytest
import torch

from vllm_ascend.device import cpu
from vllm_ascend.device.cpu import CpuDevice, GiB

MiB = 1 << 20


@pytest.fixture
def accounting():
    """A fresh baseline for the test; the module's own is restored afterwards."""
    saved = (cpu._Accounting.baseline, cpu._Accounting.peak_tracked)
    CpuDevice.begin_memory_accounting()
    yield
    cpu._Accounting.baseline, cpu._Accounting.peak_tracked = saved


def touched(nbytes: int) -> torch.Tensor:
    # ones, not empty: the pages must be written to be resident.
    return torch.ones(nbytes // 4, dtype=torch.float32)


def test_default_device_is_the_host(monkeypatch):
    monkeypatch.delenv("VLLM_ASCEND_CPU_MEMORY_GB", raising=False)
    assert CpuDevice.total_memory() == cpu._host_total_bytes()
    with open("/proc/meminfo") as f:
        mem_total = int(next(line for line in f if line.startswith("MemTotal:")).split()[1]) * 1024
    assert cpu._host_total_bytes() <= mem_total


def test_variable_sets_the_device_size_capped_at_the_host(monkeypatch):
    monkeypatch.setenv("VLLM_ASCEND_CPU_MEMORY_GB", "1.5")
    assert CpuDevice.total_memory() == int(1.5 * GiB)
    monkeypatch.setenv("VLLM_ASCEND_CPU_MEMORY_GB", str(1 << 20))  # a PiB
    assert CpuDevice.total_memory() == cpu._host_total_bytes()


def test_memory_used_is_growth_since_the_baseline(accounting):
    before = CpuDevice.memory_used()
    assert before < 32 * MiB  # the interpreter and libraries loaded so far are not counted
    block = touched(256 * MiB)
    grown = CpuDevice.memory_used()
    assert 240 * MiB < grown - before < 300 * MiB
    free, total = CpuDevice.mem_get_info()
    assert free == max(total - CpuDevice.memory_used(), 0)
    del block
    assert CpuDevice.memory_used() < before + 32 * MiB


def test_peak_holds_memory_freed_since_the_reset(accounting):
    CpuDevice.reset_peak_memory()
    assert cpu._Accounting.peak_tracked, "this host has no resettable VmHWM"
    start = CpuDevice.peak_memory_used()
    activations = touched(192 * MiB)
    del activations
    now = CpuDevice.memory_used()
    peak = CpuDevice.peak_memory_used()
    assert now < start + 32 * MiB
    assert peak - start > 180 * MiB
    # A new window forgets the old peak.
    CpuDevice.reset_peak_memory()
    assert CpuDevice.peak_memory_used() < now + 32 * MiB


def test_allocatable_memory_is_what_the_host_has_now():
    assert 0 < CpuDevice.allocatable_memory() <= cpu._host_total_bytes()


def make_worker(util: float, kv_bytes: int | None = None, tp: int = 1):
    from vllm_ascend.worker.worker import NPUWorker

    worker = object.__new__(NPUWorker)  # only the budget's inputs, no engine
    worker.cache_config = types.SimpleNamespace(gpu_memory_utilization=util,
                                                kv_cache_memory_bytes=kv_bytes)
    worker.parallel_config = types.SimpleNamespace(local_world_size=tp,
                                                   data_parallel_size_local=1)
    worker.model_runner = types.SimpleNamespace(model_memory_usage=200 * MiB)
    return worker


def test_budget_is_a_fraction_of_the_device_shared_by_the_ranks(monkeypatch):
    monkeypatch.setenv("VLLM_ASCEND_CPU_MEMORY_GB", "2")
    assert make_worker(0.3)._memory_budget() == (int(2 * GiB * 0.3), 2 * GiB)
    assert make_worker(0.3, tp=2)._memory_budget() == (int(2 * GiB * 0.3) // 2, 2 * GiB)


def test_a_model_larger_than_the_budget_stops_right_after_loading(monkeypatch, accounting):
    monkeypatch.setenv("VLLM_ASCEND_CPU_MEMORY_GB", "1")
    weights = touched(200 * MiB)  # what loading the model took
    with pytest.raises(ValueError) as err:
        make_worker(0.1)._check_model_fits()  # budget 102 MiB
    message = str(err.value)
    for words in ("after loading", "weights 0.2", "budget 0.1", "--gpu-memory-utilization 0.1",
                  "of 1.0 GiB of host memory", "VLLM_ASCEND_CPU_MEMORY_GB",
                  "--kv-cache-memory-bytes"):
        assert words in message, (words, message)
    make_worker(0.5)._check_model_fits()  # 512 MiB: fits
    make_worker(0.1, kv_bytes=64 * MiB)._check_model_fits()  # explicit KV size: no budget
    del weights
