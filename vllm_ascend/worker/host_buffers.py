"""CPU backend only: the model runner's "device" input buffers become its host buffers.

vLLM's GPU runner keeps each per-step input twice, a host tensor it fills and a device tensor it
copies that into every step (``CpuGpuBuffer``, and the ``*_cpu_tensor`` twins of the input
batch). On an NPU those copies are the host-to-device transfers the step needs. On the CPU
backend both halves live in the same memory, so the copies only cost time: pointing each device
half at its host half turns every one of them into a copy of a tensor onto itself, which ATen
returns from without work (vLLM's own CPU runner does the same). Safe because the CPU backend
runs without async scheduling (platform.py): no step reads a buffer while the next step's input
preparation writes it.
"""

from __future__ import annotations

import torch
from vllm.v1.utils import CpuGpuBuffer

_HOST_SUFFIX = "_cpu_tensor"


def alias_device_buffers(runner) -> int:
    """Alias every device buffer of ``runner`` (and of its input batch and block tables) to its
    host twin; returns how many were aliased (already-aliased ones are not counted)."""
    holders: list = [runner]
    batch = getattr(runner, "input_batch", None)
    aliased = 0
    if batch is not None:
        holders.extend(batch.block_table.block_tables)
        for name, host in list(vars(batch).items()):
            if not (name.endswith(_HOST_SUFFIX) and isinstance(host, torch.Tensor)):
                continue
            device_name = name[: -len(_HOST_SUFFIX)]
            dev = getattr(batch, device_name, None)
            if (isinstance(dev, torch.Tensor) and dev is not host and dev.shape == host.shape
                    and dev.dtype == host.dtype):
                setattr(batch, device_name, host)
                aliased += 1
    for holder in holders:
        for buf in vars(holder).values():
            if isinstance(buf, CpuGpuBuffer) and buf.gpu is not buf.cpu:
                buf.gpu = buf.cpu
                aliased += 1
    return aliased
