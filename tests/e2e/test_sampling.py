"""The sampling surface through the plugin (CPU backend), checked against Hugging Face fp32.

On this platform vLLM's own sampler runs: the plugin does not replace it (vLLM picks
TopKTopPSampler.forward_native for an out-of-tree platform, i.e. the PyTorch top-k/top-p; the
registered npu_top_k_top_p op is not called by the engine). What the plugin contributes is the
logits, the batch layout and the model runner around the sampler, so these tests check behaviour
that a plugin fault would break:

- sampled-token frequencies at a fixed prefix against the HF softmax with temperature, min-p,
  top-k and top-p applied the way vLLM documents them (chi-square goodness of fit, alpha 1e-4
  per test; a sample outside the reference support fails outright), through n > 1 and through
  many seeded requests;
- seeded requests reproducible across runs, across engines and across batch compositions;
- raw logprobs and prompt logprobs equal to HF's log-softmax (fp32, |diff| < 1e-4);
- with logprobs_mode="processed_logprobs", the returned log-probabilities equal HF's after
  temperature/min-p/top-k/top-p filtering, and after the repetition/presence/frequency
  penalty formulas;
- stop strings (with and without include_stop_str_in_output), stop_token_ids, min_tokens.

Two engines per module (default raw logprobs, then processed logprobs), one open at a time.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from engine import engine
from hf_reference import load_hf

PROMPT = "Numbers appear everywhere:"
PROMPT2 = "Once upon a time"
ALPHA = 1e-4  # chi-square false-alarm rate per test
N_SAMPLES = 3000
N_SEEDS = 1000
LOGPROB_TOL = 1e-4  # fp32 vs fp32
TIE_GAP = 1e-3
MAX_LOGPROBS = 20

# (temperature, top_k, top_p, min_p); 0 / 1.0 / 0.0 mean "off" as in SamplingParams.
FILTERS = {
    "plain": (1.0, 0, 1.0, 0.0),
    "hot": (1.5, 0, 1.0, 0.0),
    "top_k": (0.7, 10, 1.0, 0.0),
    "top_p": (1.2, 0, 0.7, 0.0),
    "min_p": (1.0, 0, 1.0, 0.1),
    "all": (1.3, 30, 0.85, 0.02),
}


# ------------------------------------------------------------------------------------------
# Reference: HF logits and vLLM's documented processing of them.


def hf_logits(path, ids: list[int]) -> torch.Tensor:
    """Float64 copy of HF's float32 logits, [len(ids), vocab]."""
    _, model = load_hf(path)
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0].double()


def filtered(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
             min_p: float) -> torch.Tensor:
    """Logits of one position after vLLM's sampling steps, -inf where filtered: divide by the
    temperature; min-p drops tokens whose probability is below min_p times the largest; top-k
    keeps the k largest (ties with the k-th kept); top-p keeps the smallest set of largest
    tokens whose probability (renormalised after top-k) reaches p, the largest always kept."""
    x = logits / temperature
    if min_p > 0:
        probs = x.softmax(-1)
        x = x.masked_fill(probs < min_p * probs.max(), float("-inf"))
    if top_k > 0:
        x = x.masked_fill(x < x.topk(top_k).values[-1], float("-inf"))
    if top_p < 1.0:
        ascending, order = x.sort()
        drop = ascending.softmax(-1).cumsum(-1) <= 1 - top_p
        drop[-1] = False
        x = x.clone()
        x[order[drop]] = float("-inf")
    return x


def reference_probs(logits: torch.Tensor, params: tuple) -> torch.Tensor:
    temperature, top_k, top_p, min_p = params
    probs = filtered(logits, *params).softmax(-1)
    # The parameters must not sit on a filter boundary, where fp32 and fp64 could disagree.
    for dp, dm in [(1e-4, 0), (-1e-4, 0), (0, 1e-4), (0, -1e-4)]:
        p2 = min(top_p + dp, 1.0) if top_p < 1.0 else 1.0
        m2 = max(min_p + dm, 0.0) if min_p > 0 else 0.0
        other = filtered(logits, temperature, top_k, p2, m2)
        assert torch.equal(other.isinf(), probs.eq(0)), "filter parameters on a boundary"
    return probs


def penalized(logits: torch.Tensor, prompt: list[int], output: list[int], repetition: float,
              presence: float, frequency: float) -> torch.Tensor:
    """vLLM's penalty formulas: the repetition penalty divides positive and multiplies negative
    logits of every token seen in the prompt or the output; presence subtracts a constant from
    tokens seen in the output, frequency subtracts per occurrence in the output."""
    x = logits.clone()
    seen = torch.zeros_like(x, dtype=torch.bool)
    seen[list(prompt) + list(output)] = True
    x = torch.where(seen, torch.where(x > 0, x / repetition, x * repetition), x)
    counts = torch.bincount(torch.tensor(output, dtype=torch.long), minlength=x.numel()).double()
    return x - frequency * counts - presence * (counts > 0).double()


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int, float]:
    """Pearson's statistic over bins with expected count >= 5 (the rest pooled into one bin);
    returns (statistic, degrees of freedom, p-value)."""
    n = float(counts.sum())
    expected = probs * n
    big = expected >= 5
    obs = [float(c) for c in counts[big]]
    exp = [float(e) for e in expected[big]]
    rest_o, rest_e = float(counts[~big].sum()), float(expected[~big].sum())
    if rest_e >= 5:
        obs.append(rest_o)
        exp.append(rest_e)
    else:  # too small for a bin of its own: pool it into the smallest bin
        i = min(range(len(exp)), key=exp.__getitem__)
        obs[i] += rest_o
        exp[i] += rest_e
    stat = sum((o - e) ** 2 / e for o, e in zip(obs, exp, strict=True))
    dof = len(obs) - 1
    p_value = float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                            torch.tensor(stat / 2, dtype=torch.float64)))
    return stat, dof, p_value


def check_frequencies(tokens: list[int], probs: torch.Tensor, label: str) -> None:
    counts = torch.bincount(torch.tensor(tokens), minlength=probs.numel()).double()
    outside = sorted(set(torch.nonzero((counts > 0) & (probs == 0)).flatten().tolist()))
    assert not outside, f"{label}: sampled tokens outside the reference support: {outside}"
    stat, dof, p_value = chi_square(counts, probs)
    print(f"{label}: chi2 {stat:.1f}, dof {dof}, p {p_value:.3g} "
          f"({len(tokens)} samples, support {int((probs > 0).sum())})")
    assert p_value > ALPHA, f"{label}: chi2 {stat:.1f} on {dof} dof, p {p_value:.2e}"


# ------------------------------------------------------------------------------------------
# Engines: the default raw-logprobs engine, then one with processed logprobs.


class Engines:
    """One engine open at a time; switching modes shuts the previous one down."""

    def __init__(self, path):
        self.path = path
        self.mode = None
        self.llm = None
        self._stack = None

    def get(self, mode: str):
        if mode != self.mode:
            self.close()
            self._stack = contextlib.ExitStack()
            self.llm = self._stack.enter_context(
                engine(self.path, logprobs_mode=mode, max_logprobs=MAX_LOGPROBS))
            self.mode = mode
        return self.llm

    def close(self):
        if self._stack is not None:
            self.llm = None  # no reference may outlive the engine's teardown
            self.mode = None
            stack, self._stack = self._stack, None
            stack.close()


@pytest.fixture(scope="module")
def path(checkpoints):
    return checkpoints("llama")


@pytest.fixture(scope="module")
def engines(path):
    e = Engines(path)
    yield e
    e.close()


@pytest.fixture
def raw(engines):
    return engines.get("raw_logprobs")


@pytest.fixture
def processed(engines):
    return engines.get("processed_logprobs")


@pytest.fixture(scope="module")
def tok(path):
    return load_hf(path)[0]


def ids_of(tok, text: str) -> list[int]:
    return tok(text)["input_ids"]


def generate(llm, prompts, params):
    from vllm import TokensPrompt

    if not isinstance(params, list):
        params = [params] * len(prompts)
    return llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                        use_tqdm=False)


def sp(**kwargs):
    from vllm import SamplingParams

    return SamplingParams(**kwargs)


def params_kwargs(params: tuple) -> dict:
    temperature, top_k, top_p, min_p = params
    return dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)


# Seeded outputs recorded by the raw engine, compared again in the processed one.
SEEDED: dict[str, list[int]] = {}
SEEDED_PARAMS = dict(temperature=0.9, top_k=50, top_p=0.95, seed=7, max_tokens=24,
                     ignore_eos=True)


# ------------------------------------------------------------------------------------------
# Raw-logprobs engine.


@pytest.mark.parametrize("name", list(FILTERS))
def test_sample_frequencies_match_hf_softmax(raw, path, tok, name):
    ids = ids_of(tok, PROMPT)
    probs = reference_probs(hf_logits(path, ids)[-1], FILTERS[name])
    (out,) = generate(raw, [ids], sp(n=N_SAMPLES, max_tokens=1,
                                     **params_kwargs(FILTERS[name])))
    tokens = [c.token_ids[0] for c in out.outputs]
    assert len(tokens) == N_SAMPLES
    check_frequencies(tokens, probs, name)


def test_seeded_requests_frequencies_match_hf_softmax(raw, path, tok):
    """Many requests each with its own seed: the per-request generator path of the sampler."""
    ids = ids_of(tok, PROMPT2)
    params = (1.0, 0, 0.9, 0.0)
    probs = reference_probs(hf_logits(path, ids)[-1], params)
    outs = generate(raw, [ids] * N_SEEDS,
                    [sp(seed=1000 + i, max_tokens=1, **params_kwargs(params))
                     for i in range(N_SEEDS)])
    check_frequencies([o.outputs[0].token_ids[0] for o in outs], probs, "seeded top_p")


def test_seeded_output_reproducible_alone_and_batched(raw, tok):
    ids = ids_of(tok, PROMPT)
    alone = list(generate(raw, [ids], sp(**SEEDED_PARAMS))[0].outputs[0].token_ids)
    again = list(generate(raw, [ids], sp(**SEEDED_PARAMS))[0].outputs[0].token_ids)
    others = [ids_of(tok, PROMPT2), ids_of(tok, "The weather report"), ids,
              ids_of(tok, "Hello! How are you today? I am fine.")]
    batch_params = [sp(temperature=0.0, max_tokens=30, ignore_eos=True),
                    sp(temperature=1.0, n=3, max_tokens=20, ignore_eos=True),
                    sp(**SEEDED_PARAMS),
                    sp(temperature=0.8, min_p=0.05, seed=8, max_tokens=40, ignore_eos=True)]
    batched = generate(raw, others, batch_params)
    in_batch = list(batched[2].outputs[0].token_ids)
    other_seed = list(generate(raw, [ids], sp(**{**SEEDED_PARAMS, "seed": 8}))[0]
                      .outputs[0].token_ids)
    assert len(alone) == SEEDED_PARAMS["max_tokens"]
    assert again == alone
    assert in_batch == alone
    assert other_seed != alone
    SEEDED["raw"] = alone


def test_n_greater_than_one(raw, tok):
    ids = ids_of(tok, PROMPT)
    params = sp(n=4, temperature=1.0, seed=3, max_tokens=8, ignore_eos=True)
    (first,) = generate(raw, [ids], params)
    (second,) = generate(raw, [ids], params)
    assert sorted(c.index for c in first.outputs) == [0, 1, 2, 3]
    seqs = [list(c.token_ids) for c in sorted(first.outputs, key=lambda c: c.index)]
    assert all(len(s) == 8 for s in seqs)
    assert len({tuple(s) for s in seqs}) > 1, "n samples all identical"
    assert seqs == [list(c.token_ids) for c in sorted(second.outputs, key=lambda c: c.index)]


def _check_logprob_entries(entries, row: torch.Tensor, chosen: int, label: str) -> float:
    """One position's returned logprobs against HF's log-softmax row: values, the chosen token
    present, the top-MAX_LOGPROBS set and ranks (up to near-ties)."""
    assert chosen in entries, label
    worst = 0.0
    for token, lp in entries.items():
        worst = max(worst, abs(lp.logprob - float(row[token])))
        higher = int((row > row[token] + TIE_GAP).sum())
        close = int((row - row[token]).abs().le(TIE_GAP).sum())
        assert higher + 1 <= lp.rank <= higher + close, f"{label}: rank of {token}"
    top = set(row.topk(MAX_LOGPROBS).indices.tolist())
    returned = {t for t, lp in entries.items() if lp.rank <= MAX_LOGPROBS}
    # Tokens may swap across the top-20 boundary only on a near-tie.
    kth = float(row.topk(MAX_LOGPROBS).values[-1])
    for t in top ^ returned:
        assert abs(float(row[t]) - kth) < TIE_GAP, f"{label}: top set differs at {t}"
    return worst


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_logprobs_and_prompt_logprobs_match_hf(raw, path, tok, temperature):
    ids = ids_of(tok, "The library on the hill keeps thousands of books, maps and")
    (out,) = generate(raw, [ids], sp(temperature=temperature, seed=11, max_tokens=12,
                                     ignore_eos=True, logprobs=MAX_LOGPROBS,
                                     prompt_logprobs=MAX_LOGPROBS))
    gen = list(out.outputs[0].token_ids)
    ref = hf_logits(path, ids + gen).log_softmax(-1)
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(ids)
    worst_prompt = max(_check_logprob_entries(out.prompt_logprobs[i], ref[i - 1], ids[i],
                                              f"prompt position {i}")
                       for i in range(1, len(ids)))
    worst_gen = max(_check_logprob_entries(out.outputs[0].logprobs[s], ref[len(ids) - 1 + s],
                                           t, f"step {s}")
                    for s, t in enumerate(gen))
    cumulative = sum(float(ref[len(ids) - 1 + s, t]) for s, t in enumerate(gen))
    print(f"T={temperature}: max |logprob diff| prompt {worst_prompt:.2e}, "
          f"generated {worst_gen:.2e}")
    assert worst_prompt < LOGPROB_TOL and worst_gen < LOGPROB_TOL
    assert abs(out.outputs[0].cumulative_logprob - cumulative) < LOGPROB_TOL * len(gen)


def _full_greedy(llm, ids, max_tokens=40):
    (out,) = generate(llm, [ids], sp(temperature=0.0, max_tokens=max_tokens, ignore_eos=True))
    return out.outputs[0]


@pytest.mark.parametrize("include", [False, True])
def test_stop_string(raw, tok, include):
    ids = ids_of(tok, PROMPT2)
    full = _full_greedy(raw, ids)
    text = full.text
    # A 3-character stop string straddling the start of the 10th token's text.
    cut = len(tok.decode(full.token_ids[:10], skip_special_tokens=True))
    stop = text[cut - 1:cut + 2]
    assert len(stop) == 3 and stop.strip(), f"unusable stop string {stop!r} in {text!r}"
    first = text.index(stop)
    (out,) = generate(raw, [ids], sp(temperature=0.0, max_tokens=40, ignore_eos=True,
                                     stop=[stop], include_stop_str_in_output=include))
    got = out.outputs[0]
    assert got.finish_reason == "stop" and got.stop_reason == stop
    assert got.text == text[:first + (len(stop) if include else 0)]
    assert list(got.token_ids) == list(full.token_ids[:len(got.token_ids)])


def test_stop_token_ids(raw, tok):
    ids = ids_of(tok, PROMPT)
    full = list(_full_greedy(raw, ids).token_ids)
    i = next(i for i in range(3, len(full)) if full[i] not in full[:i])
    (out,) = generate(raw, [ids], sp(temperature=0.0, max_tokens=40, ignore_eos=True,
                                     stop_token_ids=[full[i]]))
    got = out.outputs[0]
    assert got.finish_reason == "stop" and got.stop_reason == full[i]
    assert list(got.token_ids) == full[:i + 1]


@pytest.mark.parametrize("min_tokens", [0, 5])
def test_min_tokens_holds_back_eos_and_stop_tokens(raw, tok, min_tokens):
    """A +100 logit bias makes EOS (or a stop token) the greedy choice at every step;
    min_tokens keeps it out until that many tokens are out."""
    ids = ids_of(tok, PROMPT)
    eos = tok.eos_token_id
    stop_tok = 300
    outs = generate(raw, [ids, ids], [
        sp(temperature=0.0, max_tokens=20, min_tokens=min_tokens, logit_bias={eos: 100.0}),
        sp(temperature=0.0, max_tokens=20, min_tokens=min_tokens, ignore_eos=True,
           stop_token_ids=[stop_tok], logit_bias={stop_tok: 100.0}),
    ])
    for out, token in zip(outs, [eos, stop_tok], strict=True):
        got = list(out.outputs[0].token_ids)
        assert len(got) == min_tokens + 1, got
        assert got[-1] == token and token not in got[:-1]
        assert out.outputs[0].finish_reason == "stop"


# ------------------------------------------------------------------------------------------
# Processed-logprobs engine: the returned log-probabilities are those the sampler drew from.


def test_seeded_output_reproducible_across_engines(processed, tok):
    if "raw" not in SEEDED:
        pytest.skip("needs test_seeded_output_reproducible_alone_and_batched")
    (out,) = generate(processed, [ids_of(tok, PROMPT)], sp(**SEEDED_PARAMS))
    assert list(out.outputs[0].token_ids) == SEEDED["raw"]


def test_processed_logprobs_follow_filters(processed, path, tok):
    ids = ids_of(tok, PROMPT)
    names = [n for n in FILTERS if n != "plain"]
    outs = generate(processed, [ids] * len(names),
                    [sp(max_tokens=1, seed=5, logprobs=MAX_LOGPROBS, **params_kwargs(FILTERS[n]))
                     for n in names])
    logits = hf_logits(path, ids)[-1]
    for name, out in zip(names, outs, strict=True):
        ref = filtered(logits, *FILTERS[name]).log_softmax(-1)
        entries = out.outputs[0].logprobs[0]
        assert len(entries) >= MAX_LOGPROBS
        worst = 0.0
        for token, lp in entries.items():
            if ref[token].isinf():
                assert lp.logprob == float("-inf"), f"{name}: token {token} not filtered"
            else:
                worst = max(worst, abs(lp.logprob - float(ref[token])))
        kept = int(torch.isfinite(ref).sum())
        finite = sum(1 for lp in entries.values() if lp.logprob > float("-inf"))
        assert finite == min(kept, len(entries)), name
        print(f"processed {name}: support {kept}, max |logprob diff| {worst:.2e}")
        assert worst < LOGPROB_TOL, name


PENALTIES = {
    "repetition": (1.6, 0.0, 0.0),
    "presence_frequency": (1.0, 1.0, 0.5),
    "all": (1.3, 0.6, 0.4),
}


def test_penalties_shift_logprobs_by_the_formula(processed, path, tok):
    ids = ids_of(tok, "The ocean covers most of the surface of the Earth.")
    names = list(PENALTIES)
    outs = generate(processed, [ids] * len(names), [
        sp(temperature=0.0, max_tokens=16, ignore_eos=True, logprobs=MAX_LOGPROBS,
           repetition_penalty=r, presence_penalty=pr, frequency_penalty=f)
        for r, pr, f in PENALTIES.values()])
    plain = list(_full_greedy(processed, ids, 16).token_ids)
    for name, out in zip(names, outs, strict=True):
        gen = list(out.outputs[0].token_ids)
        logits = hf_logits(path, ids + gen)
        worst = 0.0
        for s, token in enumerate(gen):
            ref = penalized(logits[len(ids) - 1 + s], ids, gen[:s], *PENALTIES[name])
            ref = ref.log_softmax(-1)
            top2 = ref.topk(2)
            if token != int(top2.indices[0]):
                assert float(top2.values[0] - ref[token]) < TIE_GAP, f"{name} step {s}"
            for t, lp in out.outputs[0].logprobs[s].items():
                worst = max(worst, abs(lp.logprob - float(ref[t])))
        changed = sum(a != b for a, b in zip(gen, plain, strict=True))
        print(f"penalty {name}: max |logprob diff| {worst:.2e}; "
              f"{changed}/16 tokens differ from no penalty")
        assert worst < LOGPROB_TOL, name
        assert gen != plain, f"{name}: the penalty changed nothing"
