"""CPU stand-ins for the NPU runtime: host memory figures, no-op streams and events, op-tape graphs.

Used by the CPU backend (VLLM_ASCEND_DEVICE=cpu), which runs the plugin's NPU code path on the host.
"""

from __future__ import annotations

import contextlib
import os

import torch

from vllm_ascend import envs
from vllm_ascend.device import tape_graph

GiB = 1 << 30


def _host_available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


_malloc_trim = None


def _release_free_heap() -> None:
    """Hand memory that C's allocator holds but nothing uses back to the system, so the RSS
    read next counts live memory (freed weight copies from loading would otherwise look like
    memory in use). glibc only; elsewhere a no-op."""
    global _malloc_trim
    if _malloc_trim is None:
        import ctypes
        import ctypes.util

        try:
            _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


def _process_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Stream:
    """Work on the host is synchronous: a stream orders nothing and waits for nothing."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def wait_stream(self, other: Stream) -> None:
        pass

    def wait_event(self, event: Event) -> None:
        pass

    def record_event(self, event: Event | None = None) -> Event:
        return event or Event()

    def query(self) -> bool:
        return True


class Event:
    def __init__(self, *args, **kwargs) -> None:
        pass

    def record(self, stream: Stream | None = None) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def wait(self, stream: Stream | None = None) -> None:
        pass

    def query(self) -> bool:
        return True


_DEFAULT_STREAM = Stream()


class CpuDevice:
    """The device layer's CPU backend."""

    device_type = "cpu"
    device_name = "cpu"
    dist_backend = "gloo"
    dispatch_key = "CPU"
    Stream = Stream
    Event = Event
    # Graphs: an op tape with NPUGraph's interface (capture_begin/capture_end/replay/reset/pool/
    # update) and torch.npu.graph's context manager.
    Graph = tape_graph.TapeGraph
    graph = tape_graph.graph

    @staticmethod
    def device_count() -> int:
        # Tensor-parallel ranks on the CPU backend share the host.
        return 1

    @staticmethod
    def set_device(device: torch.device) -> None:
        pass

    @staticmethod
    def synchronize(device=None) -> None:
        pass

    @staticmethod
    def empty_cache() -> None:
        pass

    @staticmethod
    def empty_host_cache() -> None:
        pass

    @staticmethod
    def current_stream() -> Stream:
        return _DEFAULT_STREAM

    @staticmethod
    def stream(stream: Stream | None):
        return contextlib.nullcontext()

    @staticmethod
    def get_device_name(device_id: int = 0) -> str:
        return "CPU backend (host)"

    @staticmethod
    def total_memory() -> int:
        """The documented host budget standing in for device memory (VLLM_ASCEND_CPU_MEMORY_GB)."""
        budget = int(envs.VLLM_ASCEND_CPU_MEMORY_GB * GiB)
        return min(budget, _host_available_bytes() + _process_rss_bytes())

    @staticmethod
    def memory_used() -> int:
        _release_free_heap()
        return _process_rss_bytes()

    @staticmethod
    def mem_get_info(device=None) -> tuple[int, int]:
        """(free, total) like torch.npu.mem_get_info: the host budget less this process's RSS."""
        total = CpuDevice.total_memory()
        return max(total - _process_rss_bytes(), 0), total

    # torch.accelerator's name for the same query (vllm_ascend/patches.py routes it here).
    get_memory_info = mem_get_info

    @staticmethod
    def manual_seed_all(seed: int) -> None:
        torch.manual_seed(seed)

    @staticmethod
    def graph_pool_handle():
        return tape_graph.graph_pool_handle()

    @staticmethod
    def is_current_stream_capturing() -> bool:
        return tape_graph.is_current_stream_capturing()
