"""Real engines (in this process) run every vLLM layer of their model through the plugin: each
CustomOp / PluggableLayer module in the built model is the plugin's registered class (and, for a
CustomOp, dispatches to its forward_oot), or a vLLM class listed in vllm_ascend.ops.NATIVE_BY_DESIGN
with its reason. A layer that silently kept vLLM's native forward fails here.

Models: Llama with Llama-3 rope scaling (a copy of the tiny llama checkpoint with its config
edited) and the tiny Qwen3-MoE (q/k norms, MoE). The Llama-3 engine's greedy output also equals
Hugging Face transformers'.
"""

from __future__ import annotations

import json
import shutil

import pytest
from engine import engine, greedy, random_prompts
from hf_reference import hf_greedy

from vllm_ascend import ops

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    # small, so that most frequencies of the tiny model are rescaled
    "original_max_position_embeddings": 64,
}


def layer_inventory(model) -> list[dict]:
    """Run inside the worker: every CustomOp / PluggableLayer module of the model."""
    from vllm.model_executor import custom_op
    from vllm.model_executor.hw_agnostic import custom_op as hw_custom_op

    bases = (custom_op.CustomOp, custom_op.PluggableLayer,
             hw_custom_op.CustomOp, hw_custom_op.PluggableLayer)
    out = []
    for path, module in model.named_modules():
        if not isinstance(module, bases):
            continue
        cls = type(module)
        forward = getattr(module, "_forward_method", None)
        out.append({
            "path": path,
            "module": cls.__module__,
            "qualname": cls.__qualname__,
            "registered_as": getattr(cls, "name", None),
            "custom_op": isinstance(module, (custom_op.CustomOp, hw_custom_op.CustomOp)),
            "dispatch": getattr(forward, "__qualname__", repr(forward)),
            "dispatch_oot": forward is not None
            and getattr(forward, "__func__", None) is getattr(cls, "forward_oot", None),
        })
    return out


def coverage_problems(inventory: list[dict]) -> list[str]:
    problems = []
    for layer in inventory:
        where = f"{layer['path']} ({layer['module']}.{layer['qualname']})"
        if layer["module"].startswith("vllm_ascend."):
            name = layer["registered_as"]
            if name not in ops.OOT_LAYERS and name not in ops.NATIVE_FALLBACKS:
                problems.append(f"{where}: plugin class registered as {name!r}, not in the table")
                continue
            expected = ops.ascend_class(name)
            if (expected.__module__, expected.__qualname__) != (layer["module"],
                                                                 layer["qualname"]):
                problems.append(f"{where}: expected {expected.__qualname__} for {name}")
            if layer["custom_op"] and not layer["dispatch_oot"]:
                problems.append(f"{where}: dispatches to {layer['dispatch']}, not forward_oot")
        else:
            name = layer["qualname"]
            if name in ops.OOT_LAYERS or name in ops.NATIVE_FALLBACKS:
                problems.append(f"{where}: vLLM's class was built although the plugin registers "
                                f"a replacement for {name}")
            elif name not in ops.NATIVE_BY_DESIGN:
                problems.append(f"{where}: vLLM's native layer, not in the plugin's table")
    return problems


@pytest.fixture(scope="module")
def llama3_path(checkpoints, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "llama3_scaled"
    shutil.copytree(checkpoints("llama"), path)
    config_file = path / "config.json"
    config = json.loads(config_file.read_text())
    config["rope_parameters"] = dict(LLAMA3_ROPE)
    config_file.write_text(json.dumps(config, indent=2))
    return path


PROMPT_LENGTHS = [9, 70]  # the second one runs past original_max_position_embeddings
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def llama3_run(llama3_path):
    """One engine (started, inspected, used, shut down: engines do not overlap in a process)."""
    vocab = json.loads((llama3_path / "config.json").read_text())["vocab_size"]
    prompts = random_prompts(PROMPT_LENGTHS, vocab, seed=5)
    with engine(llama3_path) as llm:
        inventory = llm.apply_model(layer_inventory)[0]
        outputs = greedy(llm, prompts, MAX_TOKENS)
    return inventory, prompts, outputs


@pytest.fixture(scope="module")
def qwen3_moe_inventory(checkpoints):
    with engine(checkpoints("qwen3_moe")) as llm:
        return llm.apply_model(layer_inventory)[0]


def plugin_names(inventory) -> set[str]:
    return {layer["registered_as"] for layer in inventory
            if layer["module"].startswith("vllm_ascend.")}


def test_llama3_scaled_layers_run_on_the_plugin(llama3_run):
    inventory, _, _ = llama3_run
    problems = coverage_problems(inventory)
    assert not problems, "\n".join(problems)
    names = plugin_names(inventory)
    # the rope-scaled rotary is the covered variant, not the base class
    assert {"Llama3RotaryEmbedding", "RMSNorm", "SiluAndMul", "VocabParallelEmbedding"} <= names
    assert "RotaryEmbedding" not in names


def test_llama3_scaled_greedy_matches_hf(llama3_run, llama3_path):
    _, prompts, outputs = llama3_run
    assert outputs == hf_greedy(llama3_path, prompts, MAX_TOKENS, ignore_eos=True)


def test_qwen3_moe_layers_run_on_the_plugin(qwen3_moe_inventory):
    inventory = qwen3_moe_inventory
    problems = coverage_problems(inventory)
    assert not problems, "\n".join(problems)
    norms = [layer["path"] for layer in inventory if layer["registered_as"] == "RMSNorm"]
    assert any(p.endswith("q_norm") for p in norms) and any(p.endswith("k_norm") for p in norms)
    assert {"UnquantizedFusedMoEMethod", "RotaryEmbedding"} <= plugin_names(inventory)


def test_coverage_check_flags_a_native_layer(qwen3_moe_inventory):
    # The check itself: a vLLM RMSNorm (what an unregistered variant looks like) is reported.
    inventory = qwen3_moe_inventory
    native = dict(inventory[0], module="vllm.model_executor.layers.layernorm",
                  qualname="RMSNorm", path="fake.norm")
    unknown = dict(native, qualname="SomeNewRotaryEmbedding")
    problems = coverage_problems([native, unknown])
    assert len(problems) == 2 and "fake.norm" in problems[0]
