"""vLLM platform plugin for Huawei Ascend NPUs (entry points only).

Importing this package imports neither torch_npu nor vLLM's ``current_platform``.
"""


def register() -> str | None:
    """``vllm.platform_plugins`` entry point: the platform class, or None when inactive."""
    from vllm_ascend.device.select import active_backend

    return "vllm_ascend.platform.NPUPlatform" if active_backend() else None


def register_ops() -> None:
    """``vllm.general_plugins`` entry point: kernels, custom-op layers and the attention backend.

    vLLM runs general plugins in every process (engine core and each worker) before models are
    built; this does nothing while the plugin is inactive.
    """
    from vllm_ascend.device.select import active_backend

    if active_backend() is None:
        return
    from vllm_ascend import kernels, ops, patches, process_heap, quantization
    from vllm_ascend.attention import register_backend

    process_heap.skip_exit_collection()

    patches.apply()
    kernels.load()
    ops.register_layers()
    register_backend()
    quantization.register()
