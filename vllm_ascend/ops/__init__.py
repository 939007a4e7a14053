"""The layers that replace vLLM's through its out-of-tree registration: one explicit table.

Each entry: vLLM's class name -> (module, class). vLLM swaps in the registered class when it
builds its own (CustomOp and PluggableLayer share one registry keyed by class name).
Registering happens once per process (vLLM forbids duplicates), from ``register_ops``.
"""

from __future__ import annotations

import functools
import importlib

from vllm.model_executor.custom_op import CustomOp, PluggableLayer

OOT_LAYERS: dict[str, tuple[str, str]] = {
    "RMSNorm": ("vllm_ascend.ops.layernorm", "AscendRMSNorm"),
    "SiluAndMul": ("vllm_ascend.ops.activation", "AscendSiluAndMul"),
    "RotaryEmbedding": ("vllm_ascend.ops.rotary_embedding", "AscendRotaryEmbedding"),
    # A PluggableLayer in vLLM 0.32: the whole forward is replaced.
    "VocabParallelEmbedding": (
        "vllm_ascend.ops.vocab_parallel_embedding",
        "AscendVocabParallelEmbedding",
    ),
    # vLLM 0.32 gives an out-of-tree platform no MoE kernel and a router that needs a CUDA op.
    "UnquantizedFusedMoEMethod": ("vllm_ascend.ops.fused_moe", "AscendUnquantizedFusedMoEMethod"),
}


@functools.cache
def register_layers() -> None:
    for vllm_name, (module, cls_name) in OOT_LAYERS.items():
        layer_cls = getattr(importlib.import_module(module), cls_name)
        base = PluggableLayer if issubclass(layer_cls, PluggableLayer) else CustomOp
        base.register_oot(layer_cls, name=vllm_name)
