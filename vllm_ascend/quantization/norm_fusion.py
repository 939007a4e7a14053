"""Residual add + RMSNorm + per-token int8 quantization as one op before W8A8-dynamic layers.

In a standard decoder layer the second and later RMSNorms (``input_layernorm`` with a residual,
``post_attention_layernorm``) feed exactly one linear layer: ``self_attn.qkv_proj`` and
``mlp.gate_up_proj``. When that layer is W8A8_DYNAMIC it would quantize the norm's output per
token straight away; ``_C_ascend.add_rms_norm_dynamic_quant`` does the add, the norm and the
quantization in one kernel, and the norm hands the linear layer vLLM's ``QuantizedActivation``
(int8 rows and their float32 scales) instead of a tensor.

``enable(model)`` marks those norms after the weights are loaded (the model runner calls it).
Only decoder layers of the families below are marked, where the pairing is known to hold; a
norm whose output has another reader (parallel attention and MLP, an MoE block) is never
marked, and a marked norm without a residual (the first layer) runs unfused.
"""

from __future__ import annotations

import torch
from vllm.model_executor.layers.fusion.quant_activation import QuantizedActivation
from vllm.model_executor.layers.quantization.utils.quant_utils import kInt8DynamicTokenSym

from vllm_ascend.logger import init_logger

logger = init_logger(__name__)

# Decoder layers whose input_layernorm feeds only self_attn.qkv_proj and whose
# post_attention_layernorm feeds only mlp (and, when the MLP is dense, its gate_up_proj).
DECODER_LAYERS = frozenset({
    "LlamaDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer", "Qwen3MoeDecoderLayer",
    "MistralDecoderLayer",
})
PAIRS = (("input_layernorm", "self_attn", "qkv_proj"),
         ("post_attention_layernorm", "mlp", "gate_up_proj"))


def _is_w8a8_dynamic(linear) -> bool:
    from vllm_ascend.quantization.linear_schemes import AscendLinearMethod, W8A8Dynamic

    method = getattr(linear, "quant_method", None)
    return isinstance(method, AscendLinearMethod) and isinstance(method.scheme, W8A8Dynamic)


def enable(model: torch.nn.Module) -> int:
    """Mark the norms that feed a W8A8_DYNAMIC layer; returns how many."""
    from vllm_ascend.ops.layernorm import AscendRMSNorm

    marked = 0
    for module in model.modules():
        if type(module).__name__ not in DECODER_LAYERS:
            continue
        for norm_name, block_name, linear_name in PAIRS:
            norm = getattr(module, norm_name, None)
            linear = getattr(getattr(module, block_name, None), linear_name, None)
            if (type(norm) is AscendRMSNorm and norm.has_weight
                    and norm.variance_size_override is None and _is_w8a8_dynamic(linear)):
                norm.feeds_int8_dynamic = True
                marked += 1
    if marked:
        logger.info("vllm-ascend: %d RMSNorms fused with the dynamic int8 quantization of "
                    "the W8A8_DYNAMIC layer they feed", marked)
    return marked


def add_rms_norm_quant(norm, x: torch.Tensor, residual: torch.Tensor):
    """(QuantizedActivation of rms_norm(x + residual) * weight, x + residual)."""
    y, scale, summed = torch.ops._C_ascend.add_rms_norm_dynamic_quant(
        x, residual, norm.weight, norm.variance_epsilon)
    return QuantizedActivation(data=y, scale=scale, orig_dtype=x.dtype, orig_shape=x.shape,
                               quant_key=kInt8DynamicTokenSym), summed


def take_quantized(x) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(int8 rows [T, k], float32 scales [T]) of a pre-quantized activation, else None."""
    if not isinstance(x, QuantizedActivation):
        return None
    if x.quant_key != kInt8DynamicTokenSym:
        raise RuntimeError(f"a W8A8_DYNAMIC layer was handed an activation quantized as "
                           f"{x.quant_key}; it takes per-token symmetric int8")
    rows = x.data.reshape(-1, x.data.shape[-1])
    return rows, x.scale.reshape(-1)
