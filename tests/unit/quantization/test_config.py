"""The msModelSlim description file -> per-layer quant types, and every way it can be wrong."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("VLLM_ASCEND_DEVICE", "cpu")

from vllm_ascend.quantization.config import AscendQuantConfig  # noqa: E402

LAYER = "model.layers.0"
META = {"version": "1.0.0", "model_quant_type": "W8A8_DYNAMIC", "group_size": 0,
        "metadata": {}, "optional": {}}


def config(types: dict[str, str], **meta) -> AscendQuantConfig:
    cfg = AscendQuantConfig({**META, **meta, **types})
    cfg.packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"],
                                  "gate_up_proj": ["gate_proj", "up_proj"]}
    return cfg


def dense(kind: str, **overrides) -> dict[str, str]:
    names = [f"{LAYER}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")] + [
        f"{LAYER}.mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")]
    types = {f"{n}.weight": kind for n in names}
    types.update({f"{n}.weight_scale": kind for n in names})
    types["model.embed_tokens.weight"] = "FLOAT"
    types.update(overrides)
    return types


@pytest.mark.parametrize("kind", ["W8A8", "W8A8_DYNAMIC", "W8A16", "FLOAT"])
def test_fused_and_plain_layers_take_their_shards_type(kind):
    cfg = config(dense(kind))
    for layer in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj",
                  "mlp.down_proj"):
        assert cfg.linear_type(f"{LAYER}.{layer}") == kind


def test_shards_that_disagree_are_an_error_naming_the_layer():
    cfg = config(dense("W8A8", **{f"{LAYER}.self_attn.k_proj.weight": "W8A8_DYNAMIC"}))
    with pytest.raises(ValueError, match=r"'model.layers.0.self_attn.qkv_proj' fuses q_proj, "
                                         r"k_proj, v_proj, whose quant types differ"):
        cfg.linear_type(f"{LAYER}.self_attn.qkv_proj")


def test_unsupported_type_is_named_with_the_supported_ones():
    cfg = config(dense("W4A4_DYNAMIC"))
    with pytest.raises(NotImplementedError, match=r"'W4A4_DYNAMIC' of linear layer "
                                                  r"'model.layers.0.mlp.down_proj'.*W8A8, "
                                                  r"W8A8_DYNAMIC, W8A16 \(and FLOAT\)"):
        cfg.linear_type(f"{LAYER}.mlp.down_proj")


def test_a_layer_missing_from_the_description_is_an_error():
    with pytest.raises(ValueError, match="has no entry 'model.layers.1.mlp.down_proj.weight'"):
        config(dense("W8A8")).linear_type("model.layers.1.mlp.down_proj")


def test_experts_share_one_type():
    experts = {f"{LAYER}.mlp.experts.{e}.{p}.weight": "W8A8_DYNAMIC"
               for e in range(4) for p in ("gate_proj", "up_proj", "down_proj")}
    cfg = config({**experts, f"{LAYER}.mlp.gate.weight": "FLOAT"})
    assert cfg.experts_type(f"{LAYER}.mlp.experts") == "W8A8_DYNAMIC"
    assert cfg.linear_type(f"{LAYER}.mlp.gate") == "FLOAT"
    experts[f"{LAYER}.mlp.experts.3.down_proj.weight"] = "W8A16"
    with pytest.raises(ValueError, match=r"experts of 'model.layers.0.mlp.experts' mix quant "
                                         r"types \['W8A16', 'W8A8_DYNAMIC'\]"):
        config(experts).experts_type(f"{LAYER}.mlp.experts")


@pytest.mark.parametrize("meta, message", [
    ({"kv_cache_type": "C8"}, "kv_cache_type='C8'"),
    ({"fa_quant_type": "FAKQuant"}, "fa_quant_type='FAKQuant'"),
    ({"group_size": 128}, "group_size=128"),
    ({f"{LAYER}.input_layernorm.bias": "FLOAT"}, "norm biases from anti-outlier smoothing"),
])
def test_what_the_checkpoint_needs_but_is_not_supported_is_refused(meta, message):
    with pytest.raises(NotImplementedError, match=message):
        config(dense("W8A8"), **meta)
