"""Quantized checkpoints on Ascend: msModelSlim (``--quantization ascend``, config.py) and
compressed-tensors int8 (vLLM's own config, with the int8 kernel from compressed_tensors.py).

``register()`` runs in every process (the general plugin, vllm_ascend.register_ops) before any
model is built, and in the front-end process through the platform's pre-registration hook.
"""

from __future__ import annotations

_registered = False


def register() -> None:
    global _registered
    if _registered:
        return
    from vllm.model_executor.kernels.linear import register_linear_kernel
    from vllm.model_executor.layers.quantization import register_quantization_config
    from vllm.platforms import PlatformEnum

    from vllm_ascend.quantization.compressed_tensors import AscendInt8ScaledMMLinearKernel
    from vllm_ascend.quantization.config import NAME, AscendQuantConfig

    register_quantization_config(NAME)(AscendQuantConfig)
    register_linear_kernel(AscendInt8ScaledMMLinearKernel, PlatformEnum.OOT, "int8")
    _registered = True
