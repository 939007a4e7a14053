"""The layers that replace vLLM's through its out-of-tree registration: one explicit table.

vLLM swaps in a registered class when it builds a CustomOp or PluggableLayer whose *exact* class
name is registered (one registry, keyed by class name): a subclass is not replaced through its
parent. So every vLLM class a supported model builds is accounted for here, by name:

* ``OOT_LAYERS``: replaced by a plugin class running the plugin's kernels.
* ``NATIVE_FALLBACKS``: vLLM's forward computes something the plugin has no kernel for; the class
  is replaced by ``AscendNative<Name>`` (vLLM's forward unchanged) so that building one logs the
  fallback once. Entries whose class vLLM does not build through the CustomOp hook are only listed.
* ``NATIVE_BY_DESIGN``: vLLM's forward is already what runs best here (a device-agnostic composition
  of other layers, or one aten op that torch_npu implements as a device kernel); no log.

Registering happens once per process (vLLM forbids duplicates), from ``register_layers``.
tests/unit/ops/test_layer_registry.py checks the tables against vLLM's classes, and
tests/e2e/test_layer_coverage.py checks every such layer of real engines against them.
"""

from __future__ import annotations

import functools
import importlib

from vllm.model_executor.custom_op import CustomOp, PluggableLayer

_ROPE = "vllm_ascend.ops.rotary_embedding"

OOT_LAYERS: dict[str, tuple[str, str]] = {
    "RMSNorm": ("vllm_ascend.ops.layernorm", "AscendRMSNorm"),
    "GemmaRMSNorm": ("vllm_ascend.ops.layernorm", "AscendGemmaRMSNorm"),
    "SiluAndMul": ("vllm_ascend.ops.activation", "AscendSiluAndMul"),
    "QuickGELU": ("vllm_ascend.ops.activation", "AscendQuickGELU"),
    # Rotary: RotaryEmbedding and the subclasses that share its forward and differ only in the
    # cos/sin cache (rotary_embedding.SAME_FORWARD_AS_ROTARY_EMBEDDING; partial rotary included).
    "RotaryEmbedding": (_ROPE, "AscendRotaryEmbedding"),
    "Llama3RotaryEmbedding": (_ROPE, "AscendLlama3RotaryEmbedding"),
    "YaRNScalingRotaryEmbedding": (_ROPE, "AscendYaRNScalingRotaryEmbedding"),
    "LinearScalingRotaryEmbedding": (_ROPE, "AscendLinearScalingRotaryEmbedding"),
    "NTKScalingRotaryEmbedding": (_ROPE, "AscendNTKScalingRotaryEmbedding"),
    "DynamicNTKScalingRotaryEmbedding": (_ROPE, "AscendDynamicNTKScalingRotaryEmbedding"),
    "DynamicNTKAlphaRotaryEmbedding": (_ROPE, "AscendDynamicNTKAlphaRotaryEmbedding"),
    "Gemma4RotaryEmbedding": (_ROPE, "AscendGemma4RotaryEmbedding"),
    # Same rotation, own forward signature: DeepSeek YaRN (MLA), multimodal rope (Qwen2/2.5-VL).
    "DeepseekScalingRotaryEmbedding": (_ROPE, "AscendDeepseekScalingRotaryEmbedding"),
    "MRotaryEmbedding": (_ROPE, "AscendMRotaryEmbedding"),
    # Vision encoders: the rotary vLLM applies to q/k directly, and the attention without cache.
    "ApplyRotaryEmb": ("vllm_ascend.ops.vision_rotary", "AscendApplyRotaryEmb"),
    "MMEncoderAttention": ("vllm_ascend.ops.mm_encoder_attention", "AscendMMEncoderAttention"),
    # A PluggableLayer in vLLM 0.32: the whole forward is replaced.
    "VocabParallelEmbedding": (
        "vllm_ascend.ops.vocab_parallel_embedding",
        "AscendVocabParallelEmbedding",
    ),
    # vLLM 0.32 gives an out-of-tree platform no MoE kernel and a router that needs a CUDA op.
    "UnquantizedFusedMoEMethod": ("vllm_ascend.ops.fused_moe", "AscendUnquantizedFusedMoEMethod"),
}

_VLLM_ROPE = "vllm.model_executor.layers.rotary_embedding"
_VLLM_NORM = "vllm.model_executor.layers.layernorm"

# vLLM class name -> (vLLM module, or None when vLLM builds it without the CustomOp hook; reason).
NATIVE_FALLBACKS: dict[str, tuple[str | None, str]] = {
    "DeepseekV4ScalingRotaryEmbedding": (
        f"{_VLLM_ROPE}.deepseek_scaling_rope",
        "rotates the trailing rotary_dim of each head, optionally inverted (sin negated), with an "
        "fp32 cache; the kernel rotates the leading rotary_dim forwards",
    ),
    "DualChunkRotaryEmbedding": (
        f"{_VLLM_ROPE}.dual_chunk_rope",
        "dual-chunk attention rotates the query with three caches (intra, successor and "
        "inter-chunk) concatenated along the head dim, not one cache lookup",
    ),
    "FourierRotaryEmbedding": (
        f"{_VLLM_ROPE}.fope",
        "Fourier position embedding: a per-head cos/sin cache built from learned coefficients, "
        "not the kernel's one cache row per position",
    ),
    "MRotaryEmbeddingInterleaved": (
        f"{_VLLM_ROPE}.mrope_interleaved",
        "openPangu's interleaved multimodal rope has its own forward (per-dimension section map)",
    ),
    "BailingMRotaryEmbedding": (
        f"{_VLLM_ROPE}.bailing_mrope",
        "Bailing multimodal rope: alternating H/W frequencies and a temporal tail, own forward",
    ),
    "Ernie4_5_VLRotaryEmbedding": (
        f"{_VLLM_ROPE}.ernie45_vl_rope",
        "Ernie-4.5-VL multimodal rope: interleaved H/W sections and a temporal tail, own forward",
    ),
    "Llama4VisionRotaryEmbedding": (
        f"{_VLLM_ROPE}.llama4_vision_rope",
        "Llama-4 vision tower: a complex-valued cache over image patches, applied without "
        "positions",
    ),
    "Phi3LongRoPEScaledRotaryEmbedding": (
        None,
        "Phi-3 long-rope: a plain nn.Module (not a CustomOp), so vLLM offers no out-of-tree "
        "replacement and building it cannot be logged",
    ),
    "RMSNormGated": (
        _VLLM_NORM,
        "gated and grouped RMSNorm (norm(x) * act(z)); no fused kernel in the plugin",
    ),
}

NATIVE_BY_DESIGN: dict[str, str] = {
    "LayerNorm": "F.layer_norm, one aten op that torch_npu runs as a device kernel",
    "FusedMMInputNorm": (
        "pixel normalisation on the device, (x - mean) / std per channel: one multiply-add of "
        "elementwise aten ops (its CUDA path is a Triton kernel)"
    ),
    **dict.fromkeys(
        ("Conv2dLayer", "Conv3dLayer"),
        "vision patch embedding: with kernel == stride (Qwen2-VL, Qwen2.5-VL) an unfold and one "
        "F.linear matmul, else F.conv2d/F.conv3d; aten ops torch_npu runs as device kernels",
    ),
    **dict.fromkeys(
        ("ColumnParallelLinear", "MergedColumnParallelLinear", "QKVParallelLinear",
         "RowParallelLinear", "ReplicatedLinear"),
        "hands the matmul to its quant method (unquantized: F.linear, a torch_npu device "
        "matmul) and the collectives to the platform's device communicator",
    ),
    "GateLinear": (
        "the MoE router matmul: its CUDA/ROCm GEMM tiers are off on this platform, leaving "
        "ReplicatedLinear's F.linear"
    ),
    "ParallelLMHead": (
        "holds the LM-head weight; its forward is never called (LogitsProcessor computes the "
        "logits through the head's quant method)"
    ),
    "LogitsProcessor": (
        "the LM-head matmul through the quant method, then gather and scaling: device-agnostic"
    ),
    "MoERunner": (
        "orchestrates router, shared and routed experts; the routed compute is the plugin's "
        "AscendUnquantizedFusedMoEMethod (monolithic)"
    ),
    "RoutedExperts": (
        "holds the expert weights; its compute is its quant method, the plugin's "
        "AscendUnquantizedFusedMoEMethod"
    ),
}


def ascend_class(vllm_name: str) -> type:
    """The class registered for a vLLM class name (kernel-backed or native-fallback)."""
    if vllm_name in OOT_LAYERS:
        module, cls_name = OOT_LAYERS[vllm_name]
        return getattr(importlib.import_module(module), cls_name)
    module, reason = NATIVE_FALLBACKS[vllm_name]
    if module is None:
        raise KeyError(f"{vllm_name} is built without vLLM's CustomOp hook; nothing to register")
    from vllm_ascend.ops.native import native_fallback

    return native_fallback(getattr(importlib.import_module(module), vllm_name), reason)


@functools.cache
def register_layers() -> None:
    names = list(OOT_LAYERS) + [n for n, (mod, _) in NATIVE_FALLBACKS.items() if mod is not None]
    for vllm_name in names:
        layer_cls = ascend_class(vllm_name)
        base = PluggableLayer if issubclass(layer_cls, PluggableLayer) else CustomOp
        base.register_oot(layer_cls, name=vllm_name)
