"""DeepSeek-V2/V3 (Multi-head Latent Attention) through the plugin's MLA backend against Hugging
Face in float32, teacher-forced on HF's own greedy continuation: the engine's prompt logprobs of
those tokens agree with HF's on the top-1 token at >= 99% of positions (the largest logprob
difference is printed). One engine per checkpoint serves every test: mixed prompt lengths (one
token to several 128-token blocks), chunked prefill beside decodes (64-token steps: later chunks
attend over earlier ones read back from the latent cache), and prefix-cache hits (a request
sharing a cached prefix gets the same logprobs as without the hit)."""

from __future__ import annotations

import json

import pytest
import torch
from engine import counter, engine, random_prompts
from figures import report_figure
from hf_reference import hf_greedy, hf_logprobs

MODELS = ["deepseek_v2", "deepseek_v3"]
LENGTHS = [1, 9, 140, 300]
CONTINUATION = 12
TOP1_AGREEMENT = 0.99
# float32 on both sides; what is left is summation order (and a rare MoE routing near-tie).
MAX_LOGPROB_DIFF = 1e-2


@pytest.fixture(scope="module", params=MODELS)
def deepseek(request, checkpoints):
    path = checkpoints(request.param)
    # 64-token steps: the long prompts are prefilled in chunks beside other requests' decodes.
    with engine(path, enable_prefix_caching=True, enable_chunked_prefill=True,
                max_num_batched_tokens=64, max_model_len=512) as llm:
        yield request.param, path, llm


def _prompt_logprobs(llm, sequences):
    from vllm import SamplingParams, TokensPrompt

    outs = llm.generate([TokensPrompt(prompt_token_ids=s) for s in sequences],
                        SamplingParams(max_tokens=1, prompt_logprobs=1), use_tqdm=False)
    return [o.prompt_logprobs for o in outs]


def test_teacher_forced_logprobs_match_hf(deepseek):
    name, path, llm = deepseek
    vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    prompts = random_prompts(LENGTHS, vocab, seed=11)
    continuations = hf_greedy(path, prompts, CONTINUATION, ignore_eos=True)
    sequences = [p + c for p, c in zip(prompts, continuations, strict=True)]
    diffs, agree, total = [], 0, 0
    for seq, got in zip(sequences, _prompt_logprobs(llm, sequences), strict=True):
        ref = hf_logprobs(path, seq)
        # Every position after the first token: the whole prompt and the continuation.
        for pos in range(1, len(seq)):
            token, entries = seq[pos], got[pos]
            diffs.append(abs(entries[token].logprob - float(ref[pos - 1, token])))
            top = next(t for t, lp in entries.items() if lp.rank == 1)
            agree += int(top == int(ref[pos - 1].argmax()))
            total += 1
    worst = max(diffs)
    report_figure(f"{name} fp32 vs HF fp32, teacher-forced on {total} positions: top-1 "
                  f"agreement {agree / total:.2%}, max |dlogprob| {worst:.2e}, mean "
                  f"{torch.tensor(diffs).mean():.2e}")
    assert agree / total >= TOP1_AGREEMENT
    assert worst < MAX_LOGPROB_DIFF


def _greedy_logprobs(llm, prompt, max_tokens=8):
    """Greedy tokens and their logprobs (prompt_logprobs would bypass the prefix cache)."""
    from vllm import SamplingParams, TokensPrompt

    (out,) = llm.generate([TokensPrompt(prompt_token_ids=prompt)],
                          SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=0,
                                         ignore_eos=True), use_tqdm=False)
    done = out.outputs[0]
    return list(done.token_ids), [lp[t].logprob for t, lp in zip(done.token_ids, done.logprobs,
                                                                 strict=True)]


def test_prefix_cache_hit_gives_the_same_logprobs(deepseek):
    name, path, llm = deepseek
    vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    shared = random_prompts([260], vocab, seed=12)[0]
    first, second = (shared + tail for tail in random_prompts([7, 30], vocab, seed=13))
    llm.reset_prefix_cache()
    cold_tokens, cold = _greedy_logprobs(llm, second)
    llm.reset_prefix_cache()
    _greedy_logprobs(llm, first, 1)  # caches the shared prefix's two full blocks
    hits_before = counter(llm, "vllm:prefix_cache_hits")
    warm_tokens, warm = _greedy_logprobs(llm, second)
    hits = counter(llm, "vllm:prefix_cache_hits") - hits_before
    assert hits >= 256, f"expected a prefix-cache hit of two blocks, got {hits} tokens"
    assert warm_tokens == cold_tokens == hf_greedy(path, [second], 8, ignore_eos=True)[0]
    assert warm == pytest.approx(cold, abs=1e-4)
    # The decode steps' logprobs (the MLA decode kernel) against HF's, teacher-forced.
    ref = hf_logprobs(path, second + warm_tokens)
    expected = [float(ref[len(second) + i - 1, t]) for i, t in enumerate(warm_tokens)]
    assert warm == pytest.approx(expected, abs=MAX_LOGPROB_DIFF)
