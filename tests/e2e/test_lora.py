"""LoRA through the plugin, against Hugging Face with the adapter merged into the weights.

Two adapters of different ranks (tests/lora_adapters.py) and the base model, mixed in one batch
with both adapter slots filled (--max-loras 2): each request's tokens must equal transformers'
float32 greedy tokens of the base model with its adapter merged. Once with the default
PIECEWISE graphs (graphs captured for the LoRA case are replayed), and once through the real
`vllm serve` with tensor parallel 2, --lora-modules and an adapter loaded at run time.
"""

from __future__ import annotations

import functools
import json
import urllib.request

import openai
import pytest
from engine import engine, graph_replays, greedy, random_prompts
from lora_adapters import ADAPTERS, build_adapter, merged_greedy
from server import Server

MODEL = "llama"
MAX_TOKENS = 6
LORA_ARGS = dict(enable_lora=True, max_loras=2, max_lora_rank=16)
# The batch: adapter name (None: the base model) per prompt; 6 decode rows (a padded graph
# size, 8) with both slots in use and base-model rows between them.
BATCH = ["alpha", "beta", None, "beta", None, "alpha"]
LENGTHS = [5, 9, 37, 3, 20, 140]


@functools.lru_cache(maxsize=1)
def _setup():
    from checkpoints import build_checkpoint

    path = build_checkpoint(MODEL)
    vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    adapters = {name: build_adapter(MODEL, name) for name in ADAPTERS}
    prompts = random_prompts(LENGTHS, vocab, seed=21)
    return path, adapters, prompts


@functools.lru_cache(maxsize=1)
def _references() -> tuple[list[list[int]], dict]:
    """(the batch's expected tokens, and every prompt's tokens per adapter name)"""
    path, adapters, prompts = _setup()
    refs = {name: merged_greedy(path, None if name is None else adapters[name], prompts,
                                MAX_TOKENS) for name in [None, *ADAPTERS]}
    return [refs[name][i] for i, name in enumerate(BATCH)], refs


def _lora_requests(adapters):
    from vllm.lora.request import LoRARequest

    ids = {name: i + 1 for i, name in enumerate(ADAPTERS)}
    return [None if name is None else LoRARequest(name, ids[name], str(adapters[name]))
            for name in BATCH]


def _generate_mixed(llm) -> list[list[int]]:
    from vllm import SamplingParams, TokensPrompt

    _, adapters, prompts = _setup()
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                        lora_request=_lora_requests(adapters), use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def _lora_graph_keys(llm) -> int:
    """Graphs captured for batches with adapters, counted on the first worker."""
    def read(worker):
        dispatcher = worker.model_runner.cudagraph_dispatcher
        return sum(key.has_lora for keys in dispatcher.cudagraph_keys.values() for key in keys)

    return llm.collective_rpc(read)[0]


def test_adapters_and_base_mixed_in_one_batch_match_merged_hf():
    path, _, prompts = _setup()
    expected, refs = _references()
    # The adapters change the tokens (else this would not test them).
    assert refs["alpha"] != refs[None] and refs["beta"] != refs[None]
    assert refs["alpha"] != refs["beta"]
    with engine(path, **LORA_ARGS) as llm:
        got = _generate_mixed(llm)
        replays = graph_replays(llm)
        lora_graphs = _lora_graph_keys(llm)
        # The base model alone after the adapters (the adapter-free graphs).
        alone = greedy(llm, prompts[:2], MAX_TOKENS)
    assert got == expected
    assert alone == refs[None][:2]
    # PIECEWISE by default; the decode steps of the mixed batch replay the graphs captured
    # for the LoRA case.
    assert lora_graphs > 0
    assert sum(replays["piecewise"].values()) > 0, replays


def test_serve_tensor_parallel_2_lora_modules_and_runtime_loaded_adapter(monkeypatch):
    """`vllm serve --tensor-parallel-size 2 --enable-lora --lora-modules alpha=...`, then beta
    loaded through /v1/load_lora_adapter; the batch's requests sent at once, each naming its
    adapter (or the base model) as the model. Two workers over gloo: column-parallel layers
    shard B, row-parallel layers shard A and all-reduce the shrunk rows."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
    path, adapters, prompts = _setup()
    expected, _ = _references()
    srv = Server(path, "--tensor-parallel-size", "2", "--enable-lora", "--lora-modules",
                 f"alpha={adapters['alpha']}", "--max-loras", "2", "--max-lora-rank", "16",
                 "--max-model-len", "512", "--kv-cache-memory-bytes", str(64 << 20),
                 "--dtype", "float32")
    try:
        body = json.dumps({"lora_name": "beta", "lora_path": str(adapters["beta"])}).encode()
        request = urllib.request.Request(srv.url + "/v1/load_lora_adapter", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as r:
            assert r.status == 200
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        served = {m.id for m in client.models.list().data}

        def complete(job):
            name, prompt = job
            out = client.completions.create(
                model=name or "test", prompt=prompt, max_tokens=MAX_TOKENS, temperature=0.0,
                extra_body={"ignore_eos": True, "return_token_ids": True})
            return list(out.choices[0].token_ids)

        with ThreadPoolExecutor(len(BATCH)) as pool:
            got = list(pool.map(complete, zip(BATCH, prompts, strict=True)))
    finally:
        code = srv.stop()
    assert code == 0, srv.output()
    assert {"test", "alpha", "beta"} <= served
    assert got == expected


@pytest.mark.parametrize("model", ["qwen3_moe"])
def test_lora_on_moe_model_is_refused_before_loading(checkpoints, model):
    with pytest.raises(Exception, match="LoRA on MoE models"):
        with engine(checkpoints(model), **LORA_ARGS):
            pass
