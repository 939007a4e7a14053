"""Kernel layer, Python side: CPU/fake implementations of the torch_npu ops the plugin calls, and
the compiled ``_C_ascend`` extension. ``load()`` is idempotent and runs in every process."""

from __future__ import annotations

import functools


@functools.cache
def load() -> None:
    # CPU kernels of torch_npu ops: the CPU backend's implementation, and on an Ascend host the
    # golden references the NPU tests compare against (torch_npu owns the schemas there).
    from vllm_ascend.kernels import extension, npu_ops  # noqa: F401

    extension.load()
