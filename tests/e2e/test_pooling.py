"""Pooling models through the plugin, against Hugging Face transformers in float64.

- all-MiniLM-L6-v2 (the real model: BERT, encoder-only, head size 32): attention without a KV
  cache, bidirectional, through the fused attention in TND layout with the head dim zero-padded
  to 64 (attention/impl.py); sentence-transformers' mean pooling and normalization.
- A decoder model as an embedding model (`--runner pooling`): causal attention with the paged
  KV cache, last-token pooling, normalized.
- A BERT cross-encoder (random weights, MiniLM's tokenizer): query/document scores with
  token type ids, offline and through `vllm serve`'s /rerank.
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


CE_QUERY = "what is the capital of france"
CE_DOCS = ["paris", "bananas are yellow",
           "The capital of France is Paris, a city on the Seine with many museums and cafes."]


@pytest.fixture(scope="module")
def cross_encoder(minilm_path):
    """A 2-layer BERT cross-encoder (one label, head size 32) with random weights and
    all-MiniLM-L6-v2's WordPiece tokenizer (which gives token type ids for pairs)."""
    from checkpoints import build_atomically, cache_root

    def build(out):
        from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

        torch.manual_seed(0)
        config = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=128, num_labels=1,
                            max_position_embeddings=512, initializer_range=0.2)
        BertForSequenceClassification(config).eval().save_pretrained(out)
        AutoTokenizer.from_pretrained(minilm_path).save_pretrained(out)

    return build_atomically(cache_root() / "checkpoints" / "bert-cross-encoder-v1", build)


def cross_encoder_reference(path) -> list[float]:
    """sigmoid of the classifier logit of each (query, document) pair, in float64."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float64).eval()
    scores = []
    for doc in CE_DOCS:
        with torch.no_grad():
            logit = model(**tok(CE_QUERY, doc, return_tensors="pt")).logits[0, 0]
        scores.append(float(torch.sigmoid(logit)))
    return scores


def test_cross_encoder_scores_match_hf(cross_encoder):
    """Each pair alone (the short ones fit a captured graph size; they carry token type ids the
    graphs were not captured with, so those steps run eagerly) and all pairs in one batch."""
    with engine(cross_encoder, runner="pooling", max_model_len=256,
                kv_cache_memory_bytes=None) as llm:
        alone = [llm.score(CE_QUERY, doc, use_tqdm=False)[0].outputs.score for doc in CE_DOCS]
        batched = [o.outputs.score for o in llm.score(CE_QUERY, CE_DOCS, use_tqdm=False)]
    ref = cross_encoder_reference(cross_encoder)
    assert max(ref) - min(ref) > 0.05  # the pairs score differently: a mix-up would show
    for got in (alone, batched):
        assert max(abs(a - b) for a, b in zip(got, ref, strict=True)) < TOLERANCE, (got, ref)


def test_vllm_serve_rerank_endpoint(cross_encoder):
    import requests
    from server import Server

    srv = Server(cross_encoder, "--runner", "pooling", "--max-model-len", "256",
                 "--dtype", "float32")
    try:
        resp = requests.post(srv.url + "/rerank", json={
            "model": "test", "query": CE_QUERY, "documents": CE_DOCS}, timeout=60)
        resp.raise_for_status()
        results = resp.json()["results"]
    finally:
        code = srv.stop()
    assert code == 0, srv.output()
    ref = cross_encoder_reference(cross_encoder)
    got = {r["index"]: r["relevance_score"] for r in results}
    assert max(abs(got[i] - ref[i]) for i in range(len(CE_DOCS))) < TOLERANCE, (got, ref)
