"""The registration table against vLLM's own classes: every rotary and norm class vLLM defines is
either replaced by a plugin kernel class or listed as native with a reason, the classes the one
rotary rule covers really share RotaryEmbedding's forward, and a native fallback logs when built."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
import torch
import vllm.model_executor.layers.layernorm as vllm_layernorm
import vllm.model_executor.layers.rotary_embedding as rope_pkg
from torch import nn
from vllm.config import DeviceConfig, VllmConfig, set_current_vllm_config
from vllm.model_executor.custom_op import CustomOp, PluggableLayer, op_registry_oot
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding

from vllm_ascend import kernels, ops
from vllm_ascend.ops import native
from vllm_ascend.ops.rotary_embedding import SAME_FORWARD_AS_ROTARY_EMBEDDING

# What decides a rotary layer's output besides its cos/sin cache.
FORWARD_METHODS = ("forward", "forward_native", "forward_static", "forward_oot", "forward_cpu",
                   "forward_cuda", "_match_cos_sin_cache_dtype")


@pytest.fixture(autouse=True)
def plugin_layers():
    kernels.load()
    ops.register_layers()
    with set_current_vllm_config(VllmConfig(device_config=DeviceConfig(device="cpu"))):
        yield


def accounted_for() -> set[str]:
    return set(ops.OOT_LAYERS) | set(ops.NATIVE_FALLBACKS) | set(ops.NATIVE_BY_DESIGN)


def classes_defined_in(module_names) -> list[type]:
    found = []
    for name in module_names:
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if obj.__module__ == name and issubclass(obj, nn.Module):
                found.append(obj)
    return found


def rope_modules() -> list[str]:
    return [rope_pkg.__name__] + [
        f"{rope_pkg.__name__}.{m.name}" for m in pkgutil.iter_modules(rope_pkg.__path__)
    ]


def test_every_vllm_rotary_and_norm_class_is_accounted_for():
    rope_classes = classes_defined_in(rope_modules())
    norm_classes = classes_defined_in([vllm_layernorm.__name__])
    names = {c.__name__ for c in rope_classes + norm_classes}
    # sanity: the scan sees the classes this issue is about
    assert {"Llama3RotaryEmbedding", "YaRNScalingRotaryEmbedding", "MRotaryEmbedding",
            "DeepseekScalingRotaryEmbedding", "Phi3LongRoPEScaledRotaryEmbedding",
            "DualChunkRotaryEmbedding", "RMSNorm", "GemmaRMSNorm"} <= names
    # RotaryEmbeddingBase: the abstract base (no forward of its own), never built by a model.
    missing = sorted(names - accounted_for() - {"RotaryEmbeddingBase"})
    assert not missing, f"vLLM layer classes neither replaced nor listed as native: {missing}"


def test_rotary_rule_covers_exactly_the_subclasses_sharing_the_base_forward():
    def shares_forward(cls):
        return all(getattr(cls, m) is getattr(RotaryEmbedding, m) for m in FORWARD_METHODS)

    subclasses = [c for c in classes_defined_in(rope_modules()) if issubclass(c, RotaryEmbedding)]
    sharing = {c for c in subclasses if shares_forward(c)}
    assert sharing == set(SAME_FORWARD_AS_ROTARY_EMBEDDING)
    for cls in SAME_FORWARD_AS_ROTARY_EMBEDDING:
        assert cls.__name__ in ops.OOT_LAYERS


def test_tables_are_disjoint_and_give_reasons():
    oot, fallbacks, by_design = set(ops.OOT_LAYERS), set(ops.NATIVE_FALLBACKS), set(
        ops.NATIVE_BY_DESIGN)
    assert not (oot & fallbacks) and not (oot & by_design) and not (fallbacks & by_design)
    for _, reason in ops.NATIVE_FALLBACKS.values():
        assert len(reason) > 30
    for reason in ops.NATIVE_BY_DESIGN.values():
        assert len(reason) > 30


@pytest.mark.parametrize("vllm_name", sorted(ops.OOT_LAYERS))
def test_replacement_is_registered_and_extends_the_vllm_class(vllm_name):
    cls = ops.ascend_class(vllm_name)
    assert op_registry_oot[vllm_name] is cls
    assert cls.__module__.startswith("vllm_ascend.ops.")
    vllm_bases = [b for b in cls.__mro__ if b.__name__ == vllm_name]
    assert len(vllm_bases) == 1 and vllm_bases[0].__module__.startswith("vllm.")
    if issubclass(cls, CustomOp):  # the kernel path is the plugin's own forward_oot
        owner = next(b for b in cls.__mro__ if "forward_oot" in vars(b))
        assert owner.__module__.startswith("vllm_ascend."), (vllm_name, owner)
    else:
        assert issubclass(cls, PluggableLayer) or vllm_name == "UnquantizedFusedMoEMethod"


@pytest.mark.parametrize("vllm_name", sorted(ops.NATIVE_FALLBACKS))
def test_native_fallback_is_vllms_class_plus_a_log(vllm_name):
    module, _ = ops.NATIVE_FALLBACKS[vllm_name]
    if module is None:  # not a CustomOp: no hook to replace it through
        assert vllm_name not in op_registry_oot
        vllm_cls = getattr(rope_pkg, vllm_name)
        assert not issubclass(vllm_cls, (CustomOp, PluggableLayer))
        return
    cls = op_registry_oot[vllm_name]
    vllm_cls = getattr(importlib.import_module(module), vllm_name)
    assert cls.__bases__ == (native.NativeFallback, vllm_cls)
    for name in FORWARD_METHODS:  # vLLM's forward, untouched
        assert getattr(cls, name, None) is getattr(vllm_cls, name, None)


def test_building_a_native_fallback_logs_it(monkeypatch):
    logged = []
    monkeypatch.setattr(native, "log_fallback_once", lambda layer, why: logged.append((layer, why)))
    layer = vllm_layernorm.RMSNormGated(64, eps=1e-5, group_size=16, norm_before_gate=True)
    assert type(layer).__name__ == "AscendNativeRMSNormGated"
    assert logged == [("RMSNormGated", ops.NATIVE_FALLBACKS["RMSNormGated"][1])]
    # vLLM's forward, exactly
    x, z = torch.randn(7, 64), torch.randn(7, 64)
    want = vllm_layernorm.RMSNormGated.forward_native(layer, x, z)
    torch.testing.assert_close(layer(x, z), want, atol=0, rtol=0)

    monkeypatch.setattr(rope_pkg, "_ROPE_DICT", {})
    rope = get_rope(64, 256, rope_parameters=dict(
        rope_type="deepseek_yarn", rope_theta=10000.0, factor=4.0,
        original_max_position_embeddings=64, is_deepseek_v4=True), dtype=torch.float32)
    assert type(rope).__name__ == "AscendNativeDeepseekV4ScalingRotaryEmbedding"
    assert logged[-1] == ("DeepseekV4ScalingRotaryEmbedding",
                          ops.NATIVE_FALLBACKS["DeepseekV4ScalingRotaryEmbedding"][1])
