"""Speculative decoding through the plugin (vLLM V1's spec-decode path with the Triton kernels
replaced by vllm_ascend/spec_decode/): with greedy sampling, ngram and draft-model speculation
emit exactly the tokens of a run without speculation, with drafts really accepted (acceptance
rate from vLLM's spec-decode counters); seeded random sampling runs through the random
rejection path, reproducibly and with valid tokens.

The draft model is the target checkpoint itself, so greedy drafts always match (acceptance
1.0); it samples its drafts from its own distribution (draft_sample_method "probabilistic"),
so at temperature 1 the draft and target distributions are equal and the random path, which
then compares the two probabilities, accepts every draft too."""

from __future__ import annotations

import pytest
from engine import counter, engine, greedy
from figures import report_figure

pytestmark = pytest.mark.slow

# The tiny llama falls into short cycles on these, which the ngram proposer picks up.
PROMPTS = [[10, 11, 12, 13, 14, 15] * 6, [40, 41, 42, 43] * 8, list(range(20, 60))]
MAX_TOKENS = 32
NUM_SPEC = 3
NGRAM = {"method": "ngram", "num_speculative_tokens": NUM_SPEC, "prompt_lookup_max": 4,
         "prompt_lookup_min": 2}


def acceptance(llm) -> tuple[float, float]:
    """(accepted / proposed draft tokens, proposed draft tokens) so far in this engine."""
    drafted = counter(llm, "vllm:spec_decode_num_draft_tokens")
    accepted = counter(llm, "vllm:spec_decode_num_accepted_tokens")
    return (accepted / drafted if drafted else 0.0), drafted


def sample(llm, seed: int):
    from vllm import SamplingParams, TokensPrompt

    params = SamplingParams(temperature=1.0, max_tokens=MAX_TOKENS, ignore_eos=True, seed=seed)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in PROMPTS], params,
                        use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


@pytest.fixture(scope="module")
def llama(checkpoints):
    return checkpoints("llama")


@pytest.fixture(scope="module")
def reference(llama):
    with engine(llama) as llm:
        return greedy(llm, PROMPTS, MAX_TOKENS)


def check_random(llm, vocab: int, reproducible: bool) -> list[list[int]]:
    first = sample(llm, seed=7)
    assert [len(t) for t in first] == [MAX_TOKENS] * len(PROMPTS)
    assert all(0 <= t < vocab for row in first for t in row)
    if reproducible:  # per-request seeds drive the rejection sampler's uniforms and noise
        assert sample(llm, seed=7) == first
    return first


def test_ngram_greedy_equals_no_speculation(llama, reference):
    with engine(llama, speculative_config=NGRAM) as llm:
        assert greedy(llm, PROMPTS, MAX_TOKENS) == reference
        rate, drafted = acceptance(llm)
        assert drafted > 0 and rate > 0.3, (rate, drafted)
        report_figure(f"ngram greedy: acceptance {rate:.2f} of {drafted:.0f} draft tokens")
        check_random(llm, llm.llm_engine.model_config.get_vocab_size(), reproducible=True)


def test_draft_model_greedy_equals_no_speculation(llama, reference):
    spec = {"method": "draft_model", "model": str(llama), "num_speculative_tokens": NUM_SPEC,
            "draft_sample_method": "probabilistic"}
    with engine(llama, speculative_config=spec) as llm:
        assert greedy(llm, PROMPTS, MAX_TOKENS) == reference
        rate, drafted = acceptance(llm)
        assert drafted > 0 and rate == 1.0, (rate, drafted)
        # vLLM draws probabilistic drafts from the global generator, not the request's seed.
        check_random(llm, llm.llm_engine.model_config.get_vocab_size(), reproducible=False)
        total_rate, total = acceptance(llm)
        random_rate = (total_rate * total - drafted) / (total - drafted)
        assert random_rate > 0.95, random_rate
        report_figure(f"draft model: greedy acceptance {rate:.2f} of {drafted:.0f}, random "
                      f"acceptance {random_rate:.2f} of {total - drafted:.0f} draft tokens")
