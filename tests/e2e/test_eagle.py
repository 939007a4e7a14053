"""EAGLE and EAGLE-3 speculative decoding through the plugin: the draft head reads the target's
hidden states (EAGLE-3: three intermediate ones) and attends over its own KV cache through the
plugin's attention backend (metadata from build_for_drafting), and the target verifies the
drafts. With greedy sampling the output equals Hugging Face's greedy output, which is the
plugin's output without speculation (test_greedy_vs_hf.py; HF is the cheaper reference here:
no second engine); the acceptance rate comes from vLLM's spec-decode counters.

Heads from tests/eagle_checkpoint.py:
* eagle3_random: a random EAGLE-3 head for the stock tiny llama (three of its hidden states
  feed the head). Its drafts are noise, almost all rejected: rejection leaves the output
  intact.
* eagle_mirror: a head that agrees with its (one-layer llama) target by construction, so most
  drafts are accepted; two drafts per step run the draft loop (the second draft attends over
  the first one's cache entry). Broken draft-side attention or positions show as a low rate.
"""

from __future__ import annotations

import pytest
from eagle_checkpoint import build_eagle_head
from engine import engine, greedy
from figures import report_figure
from hf_reference import hf_greedy
from test_spec_decode import acceptance

pytestmark = pytest.mark.slow

PROMPTS = [[10, 11, 12, 13, 14, 15] * 3, [40, 41, 42, 43] * 2, list(range(20, 45))]
MAX_TOKENS = 16
NUM_SPEC = 2


@pytest.mark.parametrize("head, min_rate", [
    ("eagle_mirror", 0.6),
    ("eagle3_random", 0.0),
])
def test_eagle_greedy_equals_no_speculation(head, min_rate):
    target, head_dir = build_eagle_head(head)
    method = "eagle3" if head.startswith("eagle3") else "eagle"
    spec = {"method": method, "model": str(head_dir), "num_speculative_tokens": NUM_SPEC}
    with engine(target, speculative_config=spec) as llm:
        tokens = greedy(llm, PROMPTS, MAX_TOKENS)
        rate, drafted = acceptance(llm)
    report_figure(f"{head} ({method} x{NUM_SPEC}) greedy: acceptance {rate:.2f} of "
                  f"{drafted:.0f} draft tokens")
    assert tokens == hf_greedy(target, PROMPTS, MAX_TOKENS, ignore_eos=True)
    assert drafted > 0
    assert rate >= min_rate, (rate, drafted)
