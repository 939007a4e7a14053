"""The NPU runtime through torch_npu (``torch.npu``). Imported only on an Ascend host."""

from __future__ import annotations

import torch
import torch_npu  # noqa: F401  (registers torch.npu and the PrivateUse1 "npu" device)


class NpuRuntimeNotInitialised(RuntimeError):
    """A memory query from a process that has not set an NPU device (by design: no context)."""


def _require_initialised(what: str) -> None:
    if not torch.npu.is_initialized():
        raise NpuRuntimeNotInitialised(
            f"vllm-ascend: NPU {what} is only queried in a process that set its device; this "
            "process (e.g. the API server) creates no NPU context"
        )


class NpuDevice:
    """The device layer's NPU backend: thin forwards to torch.npu."""

    device_type = "npu"
    device_name = "npu"
    dist_backend = "hccl"
    dispatch_key = "PrivateUse1"
    Stream = torch.npu.Stream
    Event = torch.npu.Event
    # Graphs: torch_npu's NPUGraph (update(cpu_update_input) replaces the length arguments of
    # captured fused-attention calls; needs auto_dispatch_capture=True in graph()).
    Graph = torch.npu.NPUGraph
    graph = torch.npu.graph

    @staticmethod
    def device_count() -> int:
        return torch.npu.device_count()

    @staticmethod
    def compute_threads(ranks: int) -> int | None:
        """None: vLLM's one serving thread per worker stays (the NPU does the compute)."""
        return None

    @staticmethod
    def set_device(device: torch.device) -> None:
        torch.npu.set_device(device)

    @staticmethod
    def synchronize(device=None) -> None:
        torch.npu.synchronize(device)

    @staticmethod
    def empty_cache() -> None:
        torch.npu.empty_cache()

    @staticmethod
    def empty_host_cache() -> None:
        # torch_npu 2.13 exposes no call that releases its pinned-host cache; nothing to do.
        return None

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
        # mem_get_info() initialises the NPU runtime (a device context on the current device).
        # vLLM also asks from its API-server process, which never runs a model: a context there
        # would hold NPU 0 and shrink rank 0's measured free memory. Only a process that has
        # already set its device answers; vLLM's frontend catches this and keeps its defaults.
        _require_initialised("total memory")
        return torch.npu.mem_get_info()[1]

    @staticmethod
    def memory_used() -> int:
        _require_initialised("memory in use")
        free, total = torch.npu.mem_get_info()
        return total - free

    @staticmethod
    def begin_memory_accounting() -> None:
        # The NPU runtime counts device memory itself; there is no baseline to take.
        pass

    @staticmethod
    def reset_peak_memory() -> None:
        torch.npu.reset_peak_memory_stats()

    @staticmethod
    def peak_memory_used() -> int:
        """Memory in use now, with the caching allocator's pool at its peak since
        reset_peak_memory() (what it has released since is counted back in)."""
        used = NpuDevice.memory_used()
        return used - torch.npu.memory_reserved() + torch.npu.max_memory_reserved()

    @staticmethod
    def allocatable_memory() -> int:
        """Free device memory now (other processes on the NPU included)."""
        _require_initialised("free memory")
        return torch.npu.mem_get_info()[0]

    @staticmethod
    def mem_get_info(device=None) -> tuple[int, int]:
        _require_initialised("free memory")
        return torch.npu.mem_get_info()

    # torch.accelerator's name for the same query (vllm_ascend/patches.py routes it here).
    get_memory_info = mem_get_info

    @staticmethod
    def manual_seed_all(seed: int) -> None:
        torch.npu.manual_seed_all(seed)

    @staticmethod
    def graph_pool_handle():
        return torch.npu.graph_pool_handle()

    @staticmethod
    def is_current_stream_capturing() -> bool:
        return torch.npu.is_current_stream_capturing()


class NpuSleepOffloader:
    """Sleep-mode backups on an NPU (device/sleep.py): pinned host tensors.

    UNTESTED on an NPU (written from torch_npu 2.13's Python API; the CPU backend runs the same
    backend with its own offloader). A storage freed with ``resize_(0)`` goes back to torch_npu's
    caching allocator and ``empty_cache`` returns it to the driver; on wake-up ``resize_(n)``
    allocates anew, at another device address. NPUGraph replays the addresses captured, so the
    worker captures its graphs again after wake-up (graphs_survive_reallocation = False).

    Not done: an address-stable pool. torch_npu 2.13 documents the pieces
    (``torch_npu.npu.memory.NPUPluggableAllocator(so, alloc_fn, free_fn)``, ``MemPool(allocator)``,
    ``use_mem_pool``); with an allocator .so built on CANN's virtual-memory calls (reserve an
    address range, map and unmap physical memory) weights and KV cache would keep their addresses
    across sleep and graphs would not need re-capture.
    """

    graphs_survive_reallocation = False

    def __init__(self) -> None:
        self._backups: list[torch.Tensor] = []

    def save(self, storage: torch.UntypedStorage) -> int:
        from vllm_ascend.device.sleep import byte_view

        host = torch.empty(storage.nbytes(), dtype=torch.uint8, pin_memory=True)
        host.copy_(byte_view(storage))  # synchronous copy: the device buffer is freed next
        self._backups.append(host)
        return len(self._backups) - 1

    def load(self, handle: object, storage: torch.UntypedStorage) -> None:
        from vllm_ascend.device.sleep import byte_view

        byte_view(storage).copy_(self._backups[handle])  # type: ignore[index]

    def drop(self) -> None:
        self._backups.clear()

    def release_cache(self) -> None:
        torch.npu.synchronize()
        torch.npu.empty_cache()
