"""Kernel tests that take the ``cpu_kernel_impl`` fixture run twice: once through the fast C++
CPU kernels (the CPU backend's default) and once through the Python references, so every corner
case and every constraint check holds for both (vllm_ascend/kernels/fast_cpu.py)."""

from __future__ import annotations

import pytest

import vllm_ascend.kernels.npu_ops  # noqa: F401  (registers the ops and installs the fast kernels)
from vllm_ascend.kernels import fast_cpu


@pytest.fixture(params=["fast", "reference"])
def cpu_kernel_impl(request):
    if request.param == "reference":
        with fast_cpu.references_only():
            yield request.param
        return
    # Fail loudly rather than test the references twice under the "fast" label.
    assert fast_cpu.mode() == "fast" and fast_cpu.counters(), (
        "the fast CPU kernels are not installed in this test process "
        f"(VLLM_ASCEND_CPU_KERNELS resolves to {fast_cpu.mode()!r})")
    yield request.param
