"""Tiny EAGLE and EAGLE-3 draft heads for the tiny llama test checkpoints.

vLLM loads an EAGLE head (speculative_config method "eagle") from a directory with a Llama
``config.json`` (architectures ``LlamaForCausalLM``; vLLM's EAGLEConfig renames it
``EagleLlamaForCausalLM``) and weights without the ``model.`` prefix (llama_eagle.py):

* ``fc.weight`` ``[hidden, 2 * hidden]`` over ``[embedding(token p+1), target hidden p]``, where
  the target hidden is the target model's output (after its final norm);
* ``layers.<i>.*`` Llama decoder layers, the first without ``input_layernorm`` (vLLM replaces it
  with the identity); the head's output is the last layer's ``hidden + residual``, with no final
  norm, fed to the target's ``lm_head``;
* no ``embed_tokens`` and no ``lm_head``: vLLM shares the target's.

An EAGLE-3 head (method "eagle3", llama_eagle3.py, ``Eagle3LlamaForCausalLM``) has
``fc.weight`` ``[hidden, 3 * hidden]`` over three of the target's intermediate hidden states
(``eagle_config.eagle_aux_hidden_state_layer_ids``: 0 is the embedding, i the output of layer
i - 1), one ``midlayer.*`` decoder layer whose q/k/v read ``[input_layernorm(embedding),
hidden_norm(fc(...))]`` (``2 * hidden``), and a final ``norm``; again no embeddings or
``lm_head`` (shared).

Heads (``build_eagle_head(name) -> (target_dir, head_dir)``):

* ``eagle3_random``: a random EAGLE-3 head for the stock ``llama`` checkpoint (aux layers 0,
  1, 2). Its drafts are noise, so almost all are rejected.
* ``eagle_mirror``: an EAGLE head that agrees with its target by construction. The target
  (``llama_eagle_target``) is ``llama`` cut to its first decoder layer, with unit-RMS embedding
  rows and ones for that layer's ``input_layernorm`` and for the final norm. Then the target's
  ``input_layernorm`` is the identity on embeddings (what EAGLE's layer 0 has), and the final
  norm only rescales each row (the greedy choice is that of the un-normed hidden, what the head
  feeds the ``lm_head``). The head is the target's layer with ``fc = [I, 0]`` (pass the
  embedding, drop the target hidden): at position p it reads token p+1 through the target's
  layer over its own cache of the tokens before (shifted by one position, which rotary
  attention does not see), i.e. it recomputes the target's next-token choice one token ahead.
  It differs only by what it cannot see, the first token of the sequence (on the prompts of
  tests/e2e/test_eagle.py Hugging Face puts the agreement at ~0.85 for one layer, ~0.5 for the
  full two-layer llama, where the missing token's effect compounds).

Built like tests/checkpoints.py: from fixed seeds, cached under the test cache keyed by a hash
of what determines them, renamed into place atomically.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil

import torch
from checkpoints import (
    NORM_JITTER,
    SEED,
    WEIGHT_STD,
    _unit_rms_rows,
    build_atomically,
    build_checkpoint,
    cache_root,
)

BUILDER_VERSION = 2

# name -> (base checkpoint of tests/checkpoints.py, method, weights)
HEADS = {
    "eagle3_random": ("llama", "eagle3", "random"),
    "eagle_mirror": ("llama", "eagle", "mirror"),
}
EAGLE3_AUX_LAYERS = [0, 1, 2]


def _hash(payload) -> str:
    blob = json.dumps({"builder": BUILDER_VERSION, **payload}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _read(path: pathlib.Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    tensors = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            tensors.update({k: f.get_tensor(k) for k in f.keys()})
    return tensors


def _write(tensors: dict[str, torch.Tensor], out_dir: pathlib.Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sorted(tensors.items())},
              str(out_dir / "model.safetensors"), metadata={"format": "pt"})


def build_mirror_target(base: str = "llama") -> pathlib.Path:
    """``base`` cut to its first layer, with unit-RMS embedding rows and ones for that layer's
    input_layernorm and the final norm (see the module docstring); tokenizer unchanged."""
    base_dir = build_checkpoint(base)
    final = cache_root() / "checkpoints" / (
        f"{base}_eagle_target-{_hash({'base': base_dir.name, 'kind': 'mirror_target'})}")

    def build(out: pathlib.Path) -> None:
        for file in base_dir.iterdir():
            if file.suffix != ".safetensors" and file.name != "config.json":
                shutil.copy(file, out / file.name)
        config = json.loads((base_dir / "config.json").read_text())
        config["num_hidden_layers"] = 1
        (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        tensors = {k: v for k, v in _read(base_dir).items()
                   if not k.startswith("model.layers.") or k.startswith("model.layers.0.")}
        embed = tensors["model.embed_tokens.weight"].float()
        _unit_rms_rows(embed)
        dtype = tensors["model.embed_tokens.weight"].dtype
        tensors["model.embed_tokens.weight"] = embed.to(dtype)
        for key in ("model.layers.0.input_layernorm.weight", "model.norm.weight"):
            tensors[key] = torch.ones_like(tensors[key])
        _write(tensors, out)

    return build_atomically(final, build)


def _random_like(shapes: dict[str, list[int]], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(shapes):
        shape = shapes[name]
        if len(shape) == 1:  # RMSNorm weights
            out[name] = 1.0 + torch.randn(shape, generator=gen) * NORM_JITTER
        else:
            out[name] = torch.randn(shape, generator=gen) * WEIGHT_STD
    return {k: v.to(torch.bfloat16) for k, v in out.items()}


def _layer(tensors: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    prefix = f"model.layers.{index}."
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _eagle_mirror_weights(target: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """The target's decoder layers under EAGLE's names, fc = [I, 0]."""
    hidden = config["hidden_size"]
    tensors = {f"layers.{i}.{k}": v for i in range(config["num_hidden_layers"])
               for k, v in _layer(target, i).items()}
    tensors["fc.weight"] = torch.cat(
        [torch.eye(hidden), torch.zeros(hidden, hidden)], dim=1).to(torch.bfloat16)
    # vLLM's EAGLE layer 0 has no input_layernorm (the identity; the target's is ones).
    del tensors["layers.0.input_layernorm.weight"]
    return tensors


def _eagle3_weights(target: dict[str, torch.Tensor], config: dict,
                    seed: int) -> dict[str, torch.Tensor]:
    hidden = config["hidden_size"]
    shapes = {f"midlayer.{k}": list(v.shape) for k, v in _layer(target, 0).items()}
    for proj in ("q_proj", "k_proj", "v_proj"):  # over [embedding, hidden]: twice as wide
        out_size, in_size = shapes[f"midlayer.self_attn.{proj}.weight"]
        shapes[f"midlayer.self_attn.{proj}.weight"] = [out_size, 2 * in_size]
    shapes["midlayer.hidden_norm.weight"] = [hidden]
    shapes["fc.weight"] = [hidden, len(EAGLE3_AUX_LAYERS) * hidden]
    shapes["norm.weight"] = [hidden]
    return _random_like(shapes, seed)


def build_eagle_head(name: str) -> tuple[pathlib.Path, pathlib.Path]:
    """``(target checkpoint dir, draft head dir)`` of head ``name`` (see ``HEADS``)."""
    if name not in HEADS:
        raise ValueError(f"unknown EAGLE head {name!r}; known: {sorted(HEADS)}")
    base, method, mode = HEADS[name]
    target_dir = build_mirror_target(base) if mode == "mirror" else build_checkpoint(base)
    seed = SEED + int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 100000
    key = {"name": name, "spec": HEADS[name], "target": target_dir.name, "seed": seed,
           "std": [WEIGHT_STD, NORM_JITTER], "aux": EAGLE3_AUX_LAYERS}
    final = cache_root() / "checkpoints" / f"{base}-{name}-{_hash(key)}"

    def build(out: pathlib.Path) -> None:
        config = json.loads((target_dir / "config.json").read_text())
        target = _read(target_dir)
        if (method, mode) == ("eagle", "mirror"):
            tensors = _eagle_mirror_weights(target, config)
        elif (method, mode) == ("eagle3", "random"):
            tensors = _eagle3_weights(target, config, seed)
            config.update(num_hidden_layers=1,
                          eagle_config={"eagle_aux_hidden_state_layer_ids": EAGLE3_AUX_LAYERS})
        else:
            raise ValueError(f"no builder for {method} {mode}")
        config["architectures"] = ["LlamaForCausalLM"]
        (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        _write(tensors, out)

    return target_dir, build_atomically(final, build)


if __name__ == "__main__":
    for head in HEADS:
        print(head, *build_eagle_head(head))
