"""Device layer facade: everything device-specific above the kernels goes through ``current()``."""

from __future__ import annotations

import functools

from vllm_ascend.device.select import active_backend


@functools.cache
def current():
    """The device backend class (NpuDevice or CpuDevice) for the active backend."""
    backend = active_backend()
    if backend == "npu":
        from vllm_ascend.device.npu import NpuDevice

        return NpuDevice
    if backend == "cpu":
        from vllm_ascend.device.cpu import CpuDevice

        return CpuDevice
    raise RuntimeError(
        "vllm-ascend is inactive on this host: no usable NPU and VLLM_ASCEND_DEVICE is not 'cpu'"
    )
