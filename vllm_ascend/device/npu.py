"""The NPU runtime through torch_npu (``torch.npu``). Imported only on an Ascend host."""

from __future__ import annotations

import torch
import torch_npu  # noqa: F401  (registers torch.npu and the PrivateUse1 "npu" device)


class NpuDevice:
    """The device layer's NPU backend: thin forwards to torch.npu."""

    device_type = "npu"
    device_name = "npu"
    dist_backend = "hccl"
    dispatch_key = "PrivateUse1"
    Stream = torch.npu.Stream
    Event = torch.npu.Event

    @staticmethod
    def device_count() -> int:
        return torch.npu.device_count()

    @staticmethod
    def set_device(device: torch.device) -> None:
        torch.npu.set_device(device)

    @staticmethod
    def synchronize() -> None:
        torch.npu.synchronize()

    @staticmethod
    def current_stream():
        return torch.npu.current_stream()

    @staticmethod
    def stream(stream):
        return torch.npu.stream(stream)

    @staticmethod
    def get_device_name(device_id: int = 0) -> str:
        return torch.npu.get_device_name(device_id)

    @staticmethod
    def total_memory() -> int:
        return torch.npu.mem_get_info()[1]

    @staticmethod
    def memory_used() -> int:
        free, total = torch.npu.mem_get_info()
        return total - free

    @staticmethod
    def manual_seed_all(seed: int) -> None:
        torch.npu.manual_seed_all(seed)
