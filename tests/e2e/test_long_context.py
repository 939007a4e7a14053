"""Long context through the plugin: prompts past the fused attention's 2048x2048 compressed causal
mask (sparse_mode 3), up to max_model_len 8192, against Hugging Face fp32.

One engine on the llama_long checkpoint (max_position_embeddings 8192) serves a batch of an
8180-token prompt, a 2500-token prompt and a short one, prefilled in 3000-token chunks: chunks
whose queries start past position 2048 attend to a longer cached context (the right-down causal
offset), and the long request decodes until it reaches max_model_len. Every prompt position of
the long request is compared with HF's teacher-forced log-probabilities, and every generated
token with HF's argmax.
"""

from __future__ import annotations

import time

import pytest
from engine import engine, random_prompts
from hf_reference import hf_logprobs

MAX_MODEL_LEN = 8192
LENGTHS = [8180, 2500, 30]
MAX_TOKENS = [100, 8, 8]  # the first would pass max_model_len: cut at 8192 - 8180 = 12
# fp32 on both sides; over 8k positions the worst log-probability seen is ~3e-5.
LOGPROB_TOL = 1e-3
# Greedy tokens may differ from HF's argmax only where HF's top two are this close.
TIE_GAP = 1e-3


@pytest.fixture(scope="module")
def run(checkpoints):
    from vllm import SamplingParams, TokensPrompt

    path = checkpoints("llama_long")
    prompts = random_prompts(LENGTHS, 512, seed=1)
    params = [SamplingParams(temperature=0.0, max_tokens=m, ignore_eos=True, logprobs=1,
                             prompt_logprobs=1 if i == 0 else None)
              for i, m in enumerate(MAX_TOKENS)]
    with engine(path, max_model_len=MAX_MODEL_LEN, max_num_batched_tokens=3000,
                kv_cache_memory_bytes=128 << 20) as llm:
        start = time.perf_counter()
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                            use_tqdm=False)
        elapsed = time.perf_counter() - start
    print(f"long-context generate: {elapsed:.1f}s")
    # HF teacher-forced over each whole sequence (prompt + generated): one pass per request.
    refs = [hf_logprobs(path, p + list(o.outputs[0].token_ids))
            for p, o in zip(prompts, outs, strict=True)]
    return prompts, outs, refs


def test_request_reaching_max_model_len_ends_with_length(run):
    prompts, outs, _ = run
    first = outs[0].outputs[0]
    assert len(prompts[0]) + len(first.token_ids) == MAX_MODEL_LEN
    assert len(first.token_ids) == MAX_MODEL_LEN - LENGTHS[0] < MAX_TOKENS[0]
    assert first.finish_reason == "length"
    for out, n in zip(outs[1:], MAX_TOKENS[1:], strict=True):
        assert len(out.outputs[0].token_ids) == n
        assert out.outputs[0].finish_reason == "length"


def test_prompt_logprobs_past_2048_match_hf(run):
    prompts, outs, refs = run
    prompt, ref = prompts[0], refs[0]
    got = outs[0].prompt_logprobs
    assert got[0] is None and len(got) == len(prompt)
    diffs = [abs(got[i][prompt[i]].logprob - float(ref[i - 1, prompt[i]]))
             for i in range(1, len(prompt))]
    worst = max(range(len(diffs)), key=diffs.__getitem__)
    print(f"prompt logprobs over {len(diffs)} positions: max |diff| {diffs[worst]:.2e} at "
          f"position {worst + 1}; past 2048: {max(diffs[2047:]):.2e}")
    assert diffs[worst] < LOGPROB_TOL, f"position {worst + 1}"


@pytest.mark.parametrize("index", [0, 1, 2])
def test_generated_tokens_match_hf(run, index):
    prompts, outs, refs = run
    out = outs[index].outputs[0]
    tokens = list(out.token_ids)
    ref = refs[index]
    base = len(prompts[index]) - 1
    worst = 0.0
    for step, token in enumerate(tokens):
        row = ref[base + step]
        top2 = row.topk(2)
        if token != int(top2.indices[0]):
            assert float(top2.values[0] - row[token]) < TIE_GAP, f"step {step}"
        worst = max(worst, abs(out.logprobs[step][token].logprob - float(row[token])))
    print(f"request {index} ({len(prompts[index])} prompt tokens): {len(tokens)} tokens, "
          f"max |logprob diff| {worst:.2e}")
    assert worst < LOGPROB_TOL
