"""CPU stand-ins for the NPU runtime: host memory figures, no-op streams and events, op-tape graphs.

Used by the CPU backend (VLLM_ASCEND_DEVICE=cpu), which runs the plugin's NPU code path on the host.
"""

from __future__ import annotations

import contextlib
import logging
import os

import torch

from vllm_ascend import envs
from vllm_ascend.device import tape_graph

# Under "vllm." so that vLLM's logging configuration prints it.
logger = logging.getLogger("vllm." + __name__)

GiB = 1 << 30
_NO_LIMIT = 1 << 60  # cgroup "no limit" values are near 2**63


def _meminfo_bytes(field: str) -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            raw = f.read().strip()
    except OSError:
        return None
    return int(raw) if raw.isdigit() else None


def _cgroup_limit_and_usage() -> tuple[int, int] | None:
    """(limit, usage) of this process's memory cgroup when it sets a limit (v2, then v1)."""
    for limit_path, usage_path in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
         "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        limit = _read_int(limit_path)
        if limit is not None and limit < _NO_LIMIT:
            return limit, _read_int(usage_path) or 0
    return None


def _host_total_bytes() -> int:
    """The host's memory (MemTotal, as vLLM's CPU build reads it), or the container's limit."""
    total = _meminfo_bytes("MemTotal")
    if total is None:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cgroup = _cgroup_limit_and_usage()
    return min(total, cgroup[0]) if cgroup else total


def _host_available_bytes() -> int:
    """What the host could still hand this process now (MemAvailable, within a cgroup limit)."""
    available = _meminfo_bytes("MemAvailable")
    if available is None:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    cgroup = _cgroup_limit_and_usage()
    if cgroup:
        available = min(available, max(cgroup[0] - cgroup[1], 0))
    return available


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


def _peak_rss_bytes() -> int | None:
    """The process's RSS high-water mark (VmHWM) since it started or since the last reset."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Restart VmHWM from the current RSS (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _peak_rss_bytes() is not None


class _Accounting:
    """What the CPU backend counts as device memory in use: the growth of this process's RSS
    since the baseline, which the worker takes before it builds the model runner and loads the
    weights. The interpreter, torch and vLLM themselves are not device memory; the weights, the
    runner's buffers, activations and the KV cache are. Until a worker sets it, the baseline is
    the RSS when this module was imported."""

    baseline = _process_rss_bytes()
    peak_tracked = False  # whether VmHWM was reset at the start of the current peak window
    peak_fallback_logged = False


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
    def compute_threads(ranks: int) -> int | None:
        """Torch threads for one of ``ranks`` workers on this host, or None to keep vLLM's choice.

        vLLM's GPU worker serves with one torch thread (the host only launches device work); on
        the CPU backend the torch ops are the compute. As vLLM's CPU build does, one CPU per rank
        is left to the front-end and scheduler and the rest are shared among the ranks: 1 thread
        on a 2-CPU host, 15 on 16. An OMP_NUM_THREADS the user set is kept (vLLM honours it)."""
        from vllm.utils.torch_utils import OMP_NUM_THREADS_SET_BY_VLLM, available_cpu_count

        if "OMP_NUM_THREADS" in os.environ and os.environ.get(OMP_NUM_THREADS_SET_BY_VLLM) != "1":
            return None
        ranks = max(1, ranks)
        return max(1, (available_cpu_count() - ranks) // ranks)

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
        """The device size the CPU backend pretends to have: VLLM_ASCEND_CPU_MEMORY_GB when
        set, else the host's memory (MemTotal, or the container's limit), as vLLM's CPU build
        reads it; --gpu-memory-utilization is a fraction of it."""
        host = _host_total_bytes()
        gb = envs.VLLM_ASCEND_CPU_MEMORY_GB
        return host if gb is None else min(int(gb * GiB), host)

    @staticmethod
    def begin_memory_accounting() -> None:
        """Take the baseline: from here on, growth of this process's memory counts as in use."""
        _release_free_heap()
        _Accounting.baseline = _process_rss_bytes()

    @staticmethod
    def memory_used() -> int:
        """Bytes this process has grown by since the baseline (live memory: freed heap is
        handed back first)."""
        _release_free_heap()
        return max(_process_rss_bytes() - _Accounting.baseline, 0)

    @staticmethod
    def reset_peak_memory() -> None:
        """Start a new window for peak_memory_used()."""
        _release_free_heap()
        _Accounting.peak_tracked = _reset_peak_rss()

    @staticmethod
    def peak_memory_used() -> int:
        """The most memory in use (growth over the baseline) since reset_peak_memory(): the
        RSS high-water mark, which holds a profile run's activations after they are freed."""
        now = CpuDevice.memory_used()
        peak = _peak_rss_bytes() if _Accounting.peak_tracked else None
        if peak is None:
            if not _Accounting.peak_fallback_logged:
                _Accounting.peak_fallback_logged = True
                logger.warning("the host does not report a resettable peak RSS "
                               "(/proc/self/clear_refs); counting the memory in use after the "
                               "profile run instead of its peak, which leaves out activations")
            return now
        return max(peak - _Accounting.baseline, now)

    @staticmethod
    def mem_get_info(device=None) -> tuple[int, int]:
        """(free, total) like torch.npu.mem_get_info, within the budget: total less what this
        process has grown by (deterministic, so memory deltas are this process's own)."""
        total = CpuDevice.total_memory()
        return max(total - CpuDevice.memory_used(), 0), total

    @staticmethod
    def allocatable_memory() -> int:
        """What could be allocated now whatever the budget says: the host's available memory,
        which other processes share."""
        return _host_available_bytes()

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
