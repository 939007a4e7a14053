"""Pooling models through the plugin, against Hugging Face transformers in float64.

- all-MiniLM-L6-v2 (the real model: BERT, encoder-only, head size 32): attention without a KV
  cache, bidirectional, through the fused attention in TND layout with the head dim zero-padded
  to 64 (attention/impl.py); sentence-transformers' mean pooling and normalization.
- A decoder model as an embedding model (`--runner pooling`): causal attention with the paged
  KV cache, last-token pooling, normalized.
- `vllm serve --runner pooling` answering /v1/embeddings.
"""

from __future__ import annotations

import json

import pytest
import torch
from engine import engine, random_prompts

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "vLLM on Ascend NPUs",
    "Embeddings map sentences to vectors that capture their meaning. " * 6,
    "a",
]
TOLERANCE = 1e-5


def minilm_reference(path, texts) -> torch.Tensor:
    """Mean of the last hidden states over the tokens, L2-normalized (the model's
    sentence-transformers modules: Pooling(mean) + Normalize), in float64."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float64).eval()
    out = []
    for text in texts:
        enc = tok(text, return_tensors="pt", truncation=True, max_length=256)
        with torch.no_grad():
            mean = model(**enc).last_hidden_state[0].mean(0)
        out.append(mean / mean.norm())
    return torch.stack(out)


def test_encoder_only_embeddings_match_hf(minilm_path):
    with engine(minilm_path, runner="pooling", max_model_len=256,
                kv_cache_memory_bytes=None) as llm:
        config = llm.llm_engine.vllm_config
        got = torch.tensor([o.outputs.embedding for o in llm.embed(TEXTS, use_tqdm=False)])
    assert config.model_config.get_head_size() == 32  # padded to 64 for the kernel
    ref = minilm_reference(minilm_path, TEXTS)
    diff = (got.double() - ref).abs().max().item()
    print(f"\n[metric] all-MiniLM-L6-v2 embeddings: max |diff| vs HF float64 {diff:.2e}")
    assert diff < TOLERANCE


@pytest.mark.parametrize("model", ["qwen3", "llama"])
def test_decoder_embeddings_match_hf(checkpoints, model):
    """Last-token pooling of a causal model, normalized (vLLM's default for `--runner
    pooling` on a *ForCausalLM checkpoint), with the default piecewise graphs."""
    from transformers import AutoModel
    from vllm import TokensPrompt

    path = checkpoints(model)
    vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    prompts = random_prompts([1, 5, 37, 130, 300], vocab, seed=3)
    with engine(path, runner="pooling") as llm:
        mode = llm.llm_engine.vllm_config.compilation_config.cudagraph_mode
        outs = llm.embed([TokensPrompt(prompt_token_ids=p) for p in prompts], use_tqdm=False)
        got = [torch.tensor(o.outputs.embedding) for o in outs]
    assert mode.name == "PIECEWISE"
    hf = AutoModel.from_pretrained(path, dtype=torch.float64).eval()
    for prompt, emb in zip(prompts, got, strict=True):
        with torch.no_grad():
            last = hf(input_ids=torch.tensor([prompt])).last_hidden_state[0, -1]
        assert (emb.double() - last / last.norm()).abs().max().item() < TOLERANCE, len(prompt)


def test_vllm_serve_embeddings_endpoint(minilm_path):
    import openai
    from server import Server

    srv = Server(minilm_path, "--runner", "pooling", "--max-model-len", "256",
                 "--dtype", "float32")
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        out = client.embeddings.create(model="test", input=TEXTS)
        got = torch.tensor([d.embedding for d in out.data])
    finally:
        code = srv.stop()
    assert code == 0, srv.output()
    assert (got.double() - minilm_reference(minilm_path, TEXTS)).abs().max().item() < TOLERANCE
