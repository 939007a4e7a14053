"""DeepSeek-V3 Multi-Token Prediction (speculative_config method "deepseek_mtp") through the
plugin: the MTP layer is a drafter that attends through the MLA backend over its own latent
cache (metadata from AscendMLAMetadataBuilder.build_for_drafting), and the target verifies
1 + drafts per request through the MLA decode kernel. With greedy sampling the output equals
a run without speculation token for token; the acceptance rate comes from vLLM's counters.

Two checkpoints (tests/checkpoints.py):
* deepseek_v3_mtp: deepseek_v3 with a random MTP layer. Its drafts are noise, so almost all
  are rejected: this shows that rejection leaves the output intact.
* deepseek_v3_mtp_mirror: a one-layer DeepSeek-V3 whose MTP layer repeats that layer, so its
  drafts mostly agree with the target. Two drafts per step run the draft loop (the second
  draft attends over the first one's latent cache with the lengths read back from the
  device); a wrong draft-side attention would show as a low acceptance rate.
"""

from __future__ import annotations

import pytest
from engine import engine, generate_once, greedy
from figures import report_figure
from test_spec_decode import acceptance

pytestmark = pytest.mark.slow

PROMPTS = [[10, 11, 12, 13, 14, 15] * 3, [40, 41, 42, 43] * 2, list(range(20, 45))]
MAX_TOKENS = 16


def mtp_run(path, num_speculative_tokens: int) -> tuple[list[list[int]], float, float]:
    spec = {"method": "deepseek_mtp", "num_speculative_tokens": num_speculative_tokens}
    with engine(path, speculative_config=spec) as llm:
        tokens = greedy(llm, PROMPTS, MAX_TOKENS)
        rate, drafted = acceptance(llm)
    return tokens, rate, drafted


@pytest.mark.parametrize("name, num_spec, min_rate", [
    ("deepseek_v3_mtp", 1, 0.0),
    ("deepseek_v3_mtp_mirror", 2, 0.5),
])
def test_mtp_greedy_equals_no_speculation(checkpoints, name, num_spec, min_rate):
    path = checkpoints(name)
    reference = generate_once(path, PROMPTS, MAX_TOKENS)
    tokens, rate, drafted = mtp_run(path, num_spec)
    report_figure(f"{name} MTP x{num_spec} greedy: acceptance {rate:.2f} of "
                  f"{drafted:.0f} draft tokens")
    assert tokens == reference
    assert drafted > 0
    assert rate >= min_rate, (rate, drafted)
