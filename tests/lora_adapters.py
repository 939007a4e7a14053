"""Tiny random LoRA adapters (PEFT format) for the test checkpoints, and their reference.

``build_adapter(base_name, adapter)`` writes, next to the test checkpoints and keyed by a hash of
what determines them, a directory with ``adapter_config.json`` and ``adapter_model.safetensors``
as PEFT saves them: for every decoder layer and every projection in ``TARGET_MODULES``, an A of
``[rank, in]`` and a B of ``[out, rank]`` under ``base_model.model.<module>.lora_{A,B}.weight``,
scaled by ``lora_alpha / rank``. B is random, not zero as at the start of training, so an
adapter changes the generated tokens.

``merged_greedy(base_path, adapter_path, prompts, max_tokens)`` is the reference: Hugging Face
transformers in float32 with ``W + scale * B @ A`` merged into each target weight (what PEFT's
``merge_and_unload`` does), decoding greedily (EOS ignored).
"""

from __future__ import annotations

import hashlib
import json
import pathlib

import torch
from checkpoints import build_atomically, build_checkpoint, cache_root

BUILDER_VERSION = 1
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Same spread as the checkpoints' weights (checkpoints.WEIGHT_STD): with scale 2 and rank 8
# the merged delta is about as large as the weight itself.
ADAPTER_STD = 0.2
# name -> (rank, lora_alpha, seed). Two ranks: a rank below --max-lora-rank is padded.
ADAPTERS = {
    "alpha": (8, 16, 101),
    "beta": (16, 16, 202),
}


def _hash(base_name: str, adapter: str) -> str:
    payload = {"builder": BUILDER_VERSION, "base": base_name, "spec": ADAPTERS[adapter],
               "targets": TARGET_MODULES, "std": ADAPTER_STD}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def _target_shapes(base_path: pathlib.Path) -> dict[str, tuple[int, int]]:
    """``<module name> -> (out, in)`` of every target projection of the base checkpoint."""
    from safetensors import safe_open

    shapes = {}
    for file in sorted(base_path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                module, _, leaf = key.rpartition(".")
                if leaf == "weight" and module.rpartition(".")[2] in TARGET_MODULES:
                    out_size, in_size = f.get_slice(key).get_shape()
                    shapes[module] = (out_size, in_size)
    if not shapes:
        raise ValueError(f"no LoRA target modules in {base_path}")
    return shapes


def _build_into(base_name: str, adapter: str, out_dir: pathlib.Path) -> None:
    from safetensors.torch import save_file

    base_path = build_checkpoint(base_name)
    rank, alpha, seed = ADAPTERS[adapter]
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for module, (out_size, in_size) in sorted(_target_shapes(base_path).items()):
        prefix = f"base_model.model.{module}"
        tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, in_size, generator=g) * ADAPTER_STD
        tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_size, rank, generator=g) * ADAPTER_STD
    save_file(tensors, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "base_model_name_or_path": str(base_path),
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "target_modules": list(TARGET_MODULES),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "modules_to_save": None,
        "inference_mode": True,
    }
    (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2))


def build_adapter(base_name: str, adapter: str) -> pathlib.Path:
    """Directory of LoRA adapter ``adapter`` (a key of ADAPTERS) for checkpoint ``base_name``."""
    final = cache_root() / "lora" / f"{base_name}-{adapter}-{_hash(base_name, adapter)}"
    # build_atomically waits for a config.json; an adapter directory has adapter_config.json.
    if (final / "adapter_config.json").is_file():
        return final

    def build(tmp: pathlib.Path) -> None:
        _build_into(base_name, adapter, tmp)
        (tmp / "config.json").write_text("{}")  # the completion marker build_atomically reads

    return build_atomically(final, build)


def merged_greedy(base_path: pathlib.Path, adapter_path: pathlib.Path | None,
                  prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    """Hugging Face float32 greedy tokens of the base model with the adapter merged (none: the
    base model itself), EOS ignored."""
    from hf_reference import _greedy_loop
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32,
                                                 local_files_only=True)
    model.eval()
    if adapter_path is not None:
        config = json.loads((adapter_path / "adapter_config.json").read_text())
        scale = config["lora_alpha"] / config["r"]
        weights = load_file(str(adapter_path / "adapter_model.safetensors"))
        modules = dict(model.named_modules())
        merged = 0
        with torch.no_grad():
            for key, a in weights.items():
                if not key.endswith(".lora_A.weight"):
                    continue
                name = key[len("base_model.model."):-len(".lora_A.weight")]
                b = weights[key.replace(".lora_A.", ".lora_B.")]
                modules[name].weight += scale * (b.float() @ a.float())
                merged += 1
        assert merged == len(weights) // 2
    return [_greedy_loop(model, torch.tensor([p]), max_tokens) for p in prompts]
