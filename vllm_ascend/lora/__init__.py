"""LoRA on Ascend: the platform's punica wrapper (``NPUPlatform.get_punica_wrapper``, in
punica_wrapper.py) and the configurations it cannot serve yet, refused before weights load."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vllm.config import VllmConfig


def check_lora_support(vllm_config: VllmConfig) -> None:
    if vllm_config.lora_config is None:
        return
    model_config = vllm_config.model_config
    if model_config is not None and model_config.is_moe:
        # vLLM's MoE LoRA layer needs its modular (Triton) expert kernels; the Ascend MoE
        # layer runs the experts as one fused kernel call (ops/fused_moe.py).
        raise ValueError(
            f"vllm-ascend does not support LoRA on MoE models yet ({model_config.model}); "
            "serve it without --enable-lora")
