"""Sleep mode on the device layer: freeing a tensor's memory while the tensor object lives on.

Sleep mode frees the memory behind the model's weights and KV cache without touching the tensor
objects that the model, the attention layers and captured graphs hold. The unit is the storage:
``UntypedStorage.resize_(0)`` releases its memory, and every tensor viewing it (parameters,
transposed views, the per-layer K/V views) keeps its sizes, strides and offset; ``resize_(n)``
gives it memory again, possibly at another address, and the contents are copied back or zeroed.

What differs per device is where a backup goes and whether captured graphs survive a new address
(``Offloader``):

* CPU backend (``HostFileOffloader``, here): the process's memory stands in for device memory,
  so a backup must leave the process's resident set to free anything. It goes to an unlinked
  temporary file (``tempfile``: TMPDIR, else /tmp) — the stand-in for host RAM — and is read
  back on wake-up. The op tape (device/tape_graph.py) holds tensors by identity and calls ops on
  them at replay, so a storage given new memory is simply read from its new address: captured
  graphs stay valid.
* NPU (``device/npu.py`` ``NpuSleepOffloader``): pinned host tensors; an NPUGraph holds raw
  device addresses, so graphs are captured again after wake-up.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import tempfile
from typing import Protocol

import torch


class Offloader(Protocol):
    # Whether captured graphs stay valid when a storage gets new memory at another address.
    graphs_survive_reallocation: bool

    def save(self, storage: torch.UntypedStorage) -> object:
        """Copy the storage's bytes out; returns a handle for ``load``."""

    def load(self, handle: object, storage: torch.UntypedStorage) -> None:
        """Copy the bytes saved under ``handle`` into ``storage`` (already of the saved size)."""

    def drop(self) -> None:
        """Forget every backup (after all were loaded or are no longer wanted)."""

    def release_cache(self) -> None:
        """Hand memory freed by ``resize_(0)`` back to the system / driver."""


def byte_view(storage: torch.UntypedStorage) -> torch.Tensor:
    """A uint8 tensor over the whole storage (no copy)."""
    return torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)


def free_storage(storage: torch.UntypedStorage) -> int:
    """Release the storage's memory; returns the bytes freed. The storage object (and every
    tensor over it) stays; using such a tensor before ``reallocate_storage`` raises."""
    nbytes = storage.nbytes()
    storage.resize_(0)
    return nbytes


def reallocate_storage(storage: torch.UntypedStorage, nbytes: int, zero: bool) -> None:
    storage.resize_(nbytes)
    if zero:
        byte_view(storage).zero_()


def can_free(storage: torch.UntypedStorage) -> bool:
    """Storages that own resizable memory (not a borrowed pointer, an mmap'd file, numpy's)."""
    return storage.resizable() and storage.nbytes() > 0


class HostFileOffloader:
    """The CPU backend's backup tier: one unlinked temporary file per sleep."""

    graphs_survive_reallocation = True

    def __init__(self) -> None:
        self._file = None
        self._end = 0

    def save(self, storage: torch.UntypedStorage) -> tuple[int, int]:
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="vllm-ascend-sleep-")
            self._end = 0
        data = _host_bytes(storage)
        offset = self._end
        written = 0
        while written < len(data):  # pwrite may write less than asked
            written += os.pwrite(self._file.fileno(), data[written:], offset + written)
        self._end += len(data)
        return offset, len(data)

    def load(self, handle: object, storage: torch.UntypedStorage) -> None:
        offset, nbytes = handle  # type: ignore[misc]
        assert self._file is not None and storage.nbytes() == nbytes
        view = _host_bytes(storage)
        done = 0
        while done < nbytes:
            got = os.preadv(self._file.fileno(), [view[done:]], offset + done)
            if got <= 0:
                raise OSError(f"sleep backup file ended early ({done} of {nbytes} bytes)")
            done += got

    def drop(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None
        self._end = 0

    def release_cache(self) -> None:
        _malloc_trim()


def _host_bytes(storage: torch.UntypedStorage) -> memoryview:
    """The bytes of a host storage as a writable memoryview, without numpy (``Tensor.numpy()``
    marks a storage not resizable for good)."""
    assert storage.device.type == "cpu"
    return memoryview((ctypes.c_char * storage.nbytes()).from_address(storage.data_ptr())).cast("B")


_trim = None


def _malloc_trim() -> None:
    """glibc keeps freed chunks below its mmap threshold in the heap: trim so they leave RSS."""
    global _trim
    if _trim is None:
        try:
            _trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _trim = False
    if _trim:
        _trim(0)


def offloader_for(device_type: str) -> Offloader:
    if device_type == "cpu":
        return HostFileOffloader()
    if device_type == "npu":
        from vllm_ascend.device.npu import NpuSleepOffloader

        return NpuSleepOffloader()
    raise ValueError(f"no sleep-mode offloader for device type {device_type!r}")
