"""``--quantization ascend``: msModelSlim checkpoints.

A ModelSlim checkpoint carries ``quant_model_description.json``: every tensor name of the
Hugging Face checkpoint (unfused: ``...self_attn.q_proj.weight``) mapped to its quant type
(``W8A8``, ``W8A8_DYNAMIC``, ``W8A16``, ``W4A8_DYNAMIC``, ... or ``FLOAT``), plus a few
top-level keys (``version``, ``model_quant_type``, ``group_size``, ``metadata``, ``optional``).
vLLM reads that file for this config (``get_config_filenames``) and asks it for each layer's
method (``get_quant_method(layer, prefix)``):

- a linear layer gets the scheme of its ``.weight`` entry; a fused layer (``qkv_proj``,
  ``gate_up_proj``) looks up each shard through the model's ``packed_modules_mapping``, and
  shards that disagree are an error naming the layer;
- an MoE layer (``...mlp.experts``) gets the scheme its experts' entries share;
- ``FLOAT`` layers keep their unquantized methods; anything else is left to vLLM.

The checkpoint's config.json has no ``quantization_config`` (msModelSlim removes it), so vLLM
cannot detect the format itself: ``detect`` (called by the platform before the config is final)
selects ``ascend`` when the description file is there and nothing was asked for, and warns when
the user asked for another method.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from vllm.model_executor.layers.quantization.base_config import (
    QuantizationConfig,
    QuantizeMethodBase,
)

from vllm_ascend.logger import init_logger

if TYPE_CHECKING:
    from vllm.config import VllmConfig

logger = init_logger(__name__)

NAME = "ascend"
DESCRIPTION_FILE = "quant_model_description.json"
FLOAT = "FLOAT"
LINEAR_TYPES = ("W8A8", "W8A8_DYNAMIC", "W8A16")
MOE_TYPES = ("W8A8_DYNAMIC", "W4A8_DYNAMIC")
# Top-level keys of the description that are not tensor entries.
_META_KEYS = frozenset({"version", "model_quant_type", "group_size", "metadata", "optional",
                        "kv_cache_type", "kv_quant_type", "fa_quant_type", "reduce_quant_type"})


class AscendQuantConfig(QuantizationConfig):
    def __init__(self, description: dict[str, Any]):
        super().__init__()
        self.group_size = int(description.get("group_size", 0) or 0)
        self.types: dict[str, str] = {
            k: v for k, v in description.items() if k not in _META_KEYS and isinstance(v, str)
        }
        for key in ("kv_cache_type", "kv_quant_type", "fa_quant_type"):
            if description.get(key):
                raise NotImplementedError(
                    f"{DESCRIPTION_FILE}: {key}={description[key]!r} (KV-cache / attention "
                    "quantization) is not supported by vllm-ascend yet; export the checkpoint "
                    "without it"
                )
        norm_bias = sorted(k for k in self.types if k.endswith("norm.bias"))
        if norm_bias:
            # vLLM's loader would drop these silently (a .bias with no parameter is ignored).
            raise NotImplementedError(
                f"{DESCRIPTION_FILE}: norm biases from anti-outlier smoothing ({norm_bias[0]}, "
                f"... {len(norm_bias)} in all) are not supported by vllm-ascend yet; export "
                "without the anti-outlier norm bias"
            )
        if self.group_size:
            raise NotImplementedError(
                f"{DESCRIPTION_FILE}: group_size={self.group_size} (per-group weight scales) "
                "is not supported by vllm-ascend yet; export per-channel scales (group_size 0)"
            )

    # ---- vLLM's QuantizationConfig interface ------------------------------------------------
    def get_name(self) -> str:
        return NAME

    def get_supported_act_dtypes(self) -> list[torch.dtype]:
        # float32 is the CPU backend's relaxation (platform.check_if_supports_dtype refuses it
        # on an NPU).
        return [torch.bfloat16, torch.float16, torch.float32]

    @classmethod
    def get_min_capability(cls) -> int:
        return 0  # not a CUDA capability: the platform reports none

    @staticmethod
    def get_config_filenames() -> list[str]:
        return [DESCRIPTION_FILE]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AscendQuantConfig:
        return cls(config)

    def apply_vllm_mapper(self, hf_to_vllm_mapper) -> None:
        # The description names Hugging Face tensors; a model that renames modules
        # (e.g. a vision-language wrapper) gets its layers' prefixes looked up renamed too.
        self.types = hf_to_vllm_mapper.apply_dict(self.types)

    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> QuantizeMethodBase | None:
        from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts
        from vllm.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod

        if isinstance(layer, LinearBase):
            quant_type = self.linear_type(prefix)
            if quant_type == FLOAT:
                return UnquantizedLinearMethod()
            from vllm_ascend.quantization.linear_schemes import AscendLinearMethod

            return AscendLinearMethod(quant_type, layer_name=prefix)
        if isinstance(layer, RoutedExperts):
            quant_type = self.experts_type(prefix)
            if quant_type == FLOAT:
                return None  # vLLM's unquantized MoE method (the plugin's OOT one)
            from vllm_ascend.quantization.moe_schemes import moe_method

            return moe_method(quant_type, layer.moe_config, prefix)
        return None

    # ---- type look-up -------------------------------------------------------------------------
    def _type_of(self, module: str, layer_name: str) -> str:
        key = f"{module}.weight"
        if key not in self.types:
            raise ValueError(
                f"{DESCRIPTION_FILE} has no entry {key!r} for layer {layer_name!r}: the "
                "description does not match this model (exported from another one?)"
            )
        return self.types[key]

    def linear_type(self, prefix: str) -> str:
        """The quant type of a linear layer; every shard of a fused one must agree."""
        parent, _, name = prefix.rpartition(".")
        shards = self.packed_modules_mapping.get(name, [name])
        found = {
            shard: self._type_of(f"{parent}.{shard}" if parent else shard, prefix)
            for shard in shards
        }
        kinds = set(found.values())
        if len(kinds) > 1:
            raise ValueError(
                f"layer {prefix!r} fuses {', '.join(shards)}, whose quant types differ in "
                f"{DESCRIPTION_FILE} ({found}); one fused layer runs one scheme: export its "
                "shards with the same type"
            )
        (quant_type,) = kinds
        return _checked(quant_type, prefix, LINEAR_TYPES, "linear")

    def experts_type(self, prefix: str) -> str:
        """The quant type shared by every expert weight under ``prefix`` (...mlp.experts)."""
        start = f"{prefix}."
        found = {v for k, v in self.types.items() if k.startswith(start) and k.endswith(".weight")}
        if not found:
            raise ValueError(
                f"{DESCRIPTION_FILE} has no expert weights under {prefix!r}: the description "
                "does not match this model"
            )
        if len(found) > 1:
            raise ValueError(
                f"the experts of {prefix!r} mix quant types {sorted(found)} in "
                f"{DESCRIPTION_FILE}; one MoE layer runs one scheme"
            )
        (quant_type,) = found
        return _checked(quant_type, prefix, MOE_TYPES, "MoE")


def _checked(quant_type: str, prefix: str, supported: tuple[str, ...], kind: str) -> str:
    if quant_type == FLOAT or quant_type in supported:
        return quant_type
    raise NotImplementedError(
        f"quant type {quant_type!r} of {kind} layer {prefix!r} is not supported by "
        f"vllm-ascend; supported {kind} types: {', '.join(supported)} (and {FLOAT})"
    )


# ---- detection ---------------------------------------------------------------------------------
def _has_description(model_config) -> bool:
    from vllm.transformers_utils.repo_utils import file_or_path_exists

    try:  # a local directory, or a hub id (looked up without downloading weights)
        return file_or_path_exists(model_config.model, DESCRIPTION_FILE,
                                   revision=model_config.revision)
    except Exception as exc:  # offline, or an unknown repo: nothing to detect
        logger.debug("vllm-ascend: could not look for %s: %s", DESCRIPTION_FILE, exc)
        return False


def detect(vllm_config: VllmConfig) -> None:
    """Select ``--quantization ascend`` for a ModelSlim checkpoint nobody chose a method for;
    the user's explicit choice wins, with a warning when it is not ``ascend``."""
    model_config = vllm_config.model_config
    if model_config is None or not _has_description(model_config):
        return
    chosen = model_config.quantization
    if chosen == NAME:
        return
    if chosen is not None:
        logger.warning("vllm-ascend: %s has %s (an msModelSlim checkpoint) but --quantization "
                       "%s was given; using %s as asked (--quantization %s reads the "
                       "checkpoint's own format)", model_config.model, DESCRIPTION_FILE, chosen,
                       chosen, NAME)
        return
    from vllm.config import VllmConfig as _VllmConfig

    logger.info("vllm-ascend: %s found; quantization method %r", DESCRIPTION_FILE, NAME)
    model_config.quantization = NAME
    vllm_config.quant_config = _VllmConfig._get_quantization_config(
        model_config, vllm_config.load_config)

