"""The layers that replace vLLM's through ``CustomOp.register_oot``: one explicit table.

Each entry: vLLM's registered op name -> (module, class). Registering happens once per process
(vLLM forbids duplicates), from the ``register_ops`` general plugin.
"""

from __future__ import annotations

import functools
import importlib

from vllm.model_executor.custom_op import CustomOp

OOT_LAYERS: dict[str, tuple[str, str]] = {
    "RMSNorm": ("vllm_ascend.ops.layernorm", "AscendRMSNorm"),
    "SiluAndMul": ("vllm_ascend.ops.activation", "AscendSiluAndMul"),
    # vLLM 0.32 gives an out-of-tree platform no MoE kernel and a router that needs a CUDA op.
    "UnquantizedFusedMoEMethod": ("vllm_ascend.ops.fused_moe", "AscendUnquantizedFusedMoEMethod"),
}


@functools.cache
def register_layers() -> None:
    for vllm_name, (module, cls_name) in OOT_LAYERS.items():
        layer_cls = getattr(importlib.import_module(module), cls_name)
        CustomOp.register_oot(layer_cls, name=vllm_name)
