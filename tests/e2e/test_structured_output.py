"""Structured output through the plugin on a tiny random model, with xgrammar: the backend vLLM's
default ("auto") resolves to for these requests here. It masks the logits on the CPU backend
with xgrammar's CPU bitmask kernel (on an NPU, with xgrammar's torch kernel). A random model
left to itself produces none of these formats, so every valid output is the grammar's doing.

- JSON schema: the text parses and validates against the schema (jsonschema);
- regex: the text fullmatches;
- choice: the text is one of the choices;
- a constrained and an unconstrained request in one batch: the bitmask reaches only its own
  row (the unconstrained request equals its output alone).
"""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from engine import engine

SCHEMA = {
    "type": "object",
    "properties": {
        # Bounded, or a random model never closes the string. Not maxLength: xgrammar 0.2.8
        # compiles a maxLength string to [^"\\\r\n]{0,n}, which admits raw control characters
        # (invalid JSON) and no escapes; its unbounded strings exclude \0-\x1f correctly.
        "name": {"type": "string", "pattern": "^[a-z]{1,8}$"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "ok": {"type": "boolean"},
        "color": {"enum": ["red", "green", "blue"]},
    },
    "required": ["name", "age", "ok", "color"],
    "additionalProperties": False,
}
REGEX = r"(yes|no)-[0-9]{2,4}"
CHOICES = ["alpha", "beta", "gamma delta"]
PROMPTS = ["The capital of France is", "Once upon a time", "Numbers appear everywhere:"]
MAX_TOKENS = 120


@pytest.fixture(scope="module")
def llm(checkpoints):
    # xgrammar, what "auto" resolves to here (test_auto_resolves_to_xgrammar), named so that JSON
    # can go without free whitespace: a sampling random model spends its budget on blanks.
    with engine(checkpoints("llama"), structured_outputs_config={
            "backend": "xgrammar", "disable_any_whitespace": True}) as e:
        yield e


def run(llm, prompts, params):
    outs = llm.generate(prompts, params, use_tqdm=False)
    return [c for o in outs for c in o.outputs]


def constrained(n=1, temperature=0.0, **kind):
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    return SamplingParams(n=n, temperature=temperature, seed=0, max_tokens=MAX_TOKENS,
                          structured_outputs=StructuredOutputsParams(**kind))


@pytest.mark.parametrize("kind", [dict(json=SCHEMA), dict(regex=REGEX), dict(choice=CHOICES)])
def test_auto_resolves_to_xgrammar(llm, kind):
    """vLLM's default backend, "auto", validated against this model and tokenizer."""
    from vllm.config import StructuredOutputsConfig

    default = StructuredOutputsConfig()
    assert default.backend == "auto"
    params = constrained(**kind)
    params._validate_structured_outputs(llm.llm_engine.vllm_config.model_config, default,
                                        llm.get_tokenizer())
    assert params.structured_outputs._backend == "xgrammar"


@pytest.mark.parametrize("temperature, n", [(0.0, 1), (1.0, 4)])
def test_json_schema(llm, temperature, n):
    outs = run(llm, PROMPTS, constrained(n=n, temperature=temperature, json=SCHEMA))
    for out in outs:
        assert out.finish_reason == "stop", out.text
        jsonschema.validate(json.loads(out.text), SCHEMA)  # strict: no control characters
    print(f"json T={temperature}: {outs[0].text}")


@pytest.mark.parametrize("temperature, n", [(0.0, 1), (1.0, 4)])
def test_regex(llm, temperature, n):
    outs = run(llm, PROMPTS, constrained(n=n, temperature=temperature, regex=REGEX))
    for out in outs:
        assert re.fullmatch(REGEX, out.text), out.text
    print(f"regex T={temperature}: {[o.text for o in outs]}")


@pytest.mark.parametrize("temperature, n", [(0.0, 1), (1.0, 8)])
def test_choice(llm, temperature, n):
    outs = run(llm, PROMPTS, constrained(n=n, temperature=temperature, choice=CHOICES))
    texts = [o.text for o in outs]
    assert all(t in CHOICES for t in texts), texts
    if n > 1:
        assert len(set(texts)) > 1, "sampling under a choice grammar never varied"


def test_mask_applies_to_its_own_row_only(llm):
    from vllm import SamplingParams

    free = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    (alone,) = run(llm, PROMPTS[1:2], free)
    outs = run(llm, PROMPTS, [constrained(json=SCHEMA), free, constrained(regex=REGEX)])
    assert outs[1].token_ids == alone.token_ids
    jsonschema.validate(json.loads(outs[0].text), SCHEMA)
    assert re.fullmatch(REGEX, outs[2].text)
    # The unconstrained output is not accidentally in either format.
    assert not re.fullmatch(REGEX, alone.text)
