"""Kernel layer, Python side: CPU/fake implementations of the torch_npu ops the plugin calls, and
the compiled ``_C_ascend`` extension (with, for a build that opted out of Ascend C, the torch
compositions in ``composed.py`` serving its ops on the NPU). ``load()`` is idempotent and runs in
every process."""

from __future__ import annotations

import functools


@functools.cache
def load() -> None:
    # CPU kernels of torch_npu ops: the CPU backend's implementation, and on an Ascend host the
    # golden references the NPU tests compare against (torch_npu owns the schemas there).
    from vllm_ascend.kernels import extension, npu_ops, vllm_ops  # noqa: F401

    # vLLM's graph capture calls _C.weak_ref_tensor, absent in the empty build.
    vllm_ops.register()

    # On an NPU host: the Ascend C kernels, or the compositions (announced once) for a build made
    # with VLLM_ASCEND_BUILD_ASCENDC=0; an accidental CPU-only build is an error here.
    extension.load()
