"""The tiny test checkpoints load in transformers and behave sensibly."""

import json

import checkpoints as ckpt
import pytest
import torch
from hf_reference import hf_greedy, load_hf
from safetensors import safe_open

EXPECTED_ARCH = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "mistral_sw": "MistralForCausalLM",
}

# A key that must be in model.safetensors (checks the on-disk layout that
# vLLM's weight loaders expect, e.g. per-expert MoE weights).
EXPECTED_KEY = {
    "llama": "model.layers.1.mlp.gate_proj.weight",
    "qwen2": "model.layers.0.self_attn.q_proj.bias",
    "qwen3": "model.layers.0.self_attn.q_norm.weight",
    "qwen3_moe": "model.layers.1.mlp.experts.7.down_proj.weight",
    "mixtral": "model.layers.1.block_sparse_moe.experts.3.w1.weight",
    "mistral_sw": "model.layers.1.mlp.down_proj.weight",
}

# MLA checkpoints (tests/e2e/test_deepseek.py, test_mtp.py): architecture and a key that shows
# the part the test relies on (q LoRA, routing bias, the MTP layer in its own file).
DEEPSEEK = {
    "deepseek_v2": ("DeepseekV2ForCausalLM", "model.safetensors",
                    "model.layers.1.mlp.shared_experts.down_proj.weight"),
    "deepseek_v3": ("DeepseekV3ForCausalLM", "model.safetensors",
                    "model.layers.1.mlp.gate.e_score_correction_bias"),
    "deepseek_v3_mtp": ("DeepseekV3ForCausalLM", "mtp.safetensors",
                        "model.layers.3.eh_proj.weight"),
    "deepseek_v3_mtp_mirror": ("DeepseekV3ForCausalLM", "mtp.safetensors",
                               "model.layers.1.eh_proj.weight"),
}

PROMPTS = ["The capital of France is", "Once upon a time a curious fox"]

ALL = ckpt.ALL_CHECKPOINT_NAMES


def test_names():
    assert ckpt.CHECKPOINT_NAMES == ("llama", "qwen2", "qwen3", "qwen3_moe", "mixtral")
    assert set(ALL) == set(EXPECTED_ARCH) | set(DEEPSEEK)
    with pytest.raises(ValueError):
        ckpt.build_checkpoint("nope")


@pytest.mark.parametrize("name", sorted(DEEPSEEK))
def test_deepseek_checkpoints(checkpoints, name):
    arch, weights, key = DEEPSEEK[name]
    path = checkpoints(name)
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == [arch]
    # the only MLA shape the NPU's MLA attention takes
    assert (config["kv_lora_rank"], config["qk_rope_head_dim"]) == (512, 64)
    with safe_open(str(path / weights), "pt") as f:
        assert key in set(f.keys())


@pytest.mark.parametrize("name", sorted(EXPECTED_ARCH))
def test_loads_with_expected_architecture(checkpoints, name):
    path = checkpoints(name)
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == [EXPECTED_ARCH[name]]
    assert config["num_hidden_layers"] == 2
    # Every checkpoint has a head size the NPU's fused attention takes (64 or 128).
    head = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    assert head == (128 if name == "qwen3" else 64)
    assert config["num_attention_heads"] > config["num_key_value_heads"]  # GQA
    assert config["max_position_embeddings"] == 4096
    assert config["dtype"] == "bfloat16"
    assert (path / "generation_config.json").is_file()

    tokenizer, model = load_hf(path)
    assert type(model).__name__ == EXPECTED_ARCH[name]
    assert model.config.vocab_size == len(tokenizer)

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
    assert EXPECTED_KEY[name] in keys
    # qwen2 ties the LM head to the embeddings, the others don't.
    assert ("lm_head.weight" in keys) == (name != "qwen2")
    assert model.config.tie_word_embeddings == (name == "qwen2")
    if name == "mistral_sw":
        assert model.config.sliding_window == 32


@pytest.mark.parametrize("name", ALL)
def test_greedy_not_degenerate(checkpoints, name):
    outs = hf_greedy(checkpoints(name), PROMPTS, max_new_tokens=16, ignore_eos=True)
    assert [len(o) for o in outs] == [16, 16]
    for out in outs:
        assert len(set(out)) >= 6, out
    assert outs[0] != outs[1]


def test_hf_greedy_matches_manual_argmax(checkpoints):
    path = checkpoints("qwen3")
    tokenizer, model = load_hf(path)
    ids = tokenizer(PROMPTS[0])["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    expected, cur = [], list(ids)
    with torch.inference_mode():
        for _ in range(8):
            nxt = int(model(torch.tensor([cur])).logits[0, -1].argmax())
            expected.append(nxt)
            cur.append(nxt)
    assert hf_greedy(path, [ids], 8, ignore_eos=True) == [expected]
    assert hf_greedy(path, [PROMPTS[0]], 8, ignore_eos=True) == [expected]


@pytest.mark.parametrize(
    "text",
    ["Hello world", "The quick brown fox, 42 times!", "  héllo 日本 🙂\n\ttabs"],
)
def test_tokenizer_round_trips(checkpoints, text):
    tokenizer, _ = load_hf(checkpoints("llama"))
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_chat_template(checkpoints):
    tokenizer, _ = load_hf(checkpoints("qwen2"))
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<s><|system|>\nBe brief.</s>\n<|user|>\nHi there</s>\n<|assistant|>\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    for tok in ("<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"):
        assert tokenizer.convert_tokens_to_ids(tok) in ids
    assert ids.count(tokenizer.bos_token_id) == 1


def test_build_is_deterministic_and_atomic(tmp_path, monkeypatch):
    monkeypatch.setenv(ckpt.CACHE_ENV_VAR, str(tmp_path))
    path = ckpt.build_checkpoint("qwen3_moe")
    assert path.parent == tmp_path / "checkpoints"
    assert path.name.startswith("qwen3_moe-")
    assert ckpt.build_checkpoint("qwen3_moe") == path
    # No leftover temp dirs.
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    monkeypatch.delenv(ckpt.CACHE_ENV_VAR)
    cached = ckpt.build_checkpoint("qwen3_moe")
    assert cached.name == path.name
    with (
        safe_open(str(path / "model.safetensors"), "pt") as a,
        safe_open(str(cached / "model.safetensors"), "pt") as b,
    ):
        assert set(a.keys()) == set(b.keys())
        for key in a.keys():
            assert torch.equal(a.get_tensor(key), b.get_tensor(key)), key


@pytest.mark.slow
def test_smollm2_chat(smollm2_path):
    config = json.loads((smollm2_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    tokenizer, _ = load_hf(smollm2_path)
    assert tokenizer.chat_template
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    [out] = hf_greedy(smollm2_path, [ids], max_new_tokens=12)
    assert "Paris" in tokenizer.decode(out, skip_special_tokens=True)
