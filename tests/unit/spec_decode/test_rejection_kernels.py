"""The rejection sampler's Triton kernels, replaced by tensor programs (vllm_ascend/spec_decode/
rejection.py), against straightforward per-request loops written from the Triton kernels'
semantics; the random path also statistically (the first emitted token follows the target
distribution whatever the draft distribution), and through vLLM's own rejection_sample."""

from __future__ import annotations

import pytest
import torch

from vllm_ascend.spec_decode.rejection import (
    expand_kernel,
    rejection_greedy_sample_kernel,
    rejection_random_sample_kernel,
    sample_recovered_tokens_kernel,
)

PH = -1  # PLACEHOLDER_TOKEN_ID


def batch(num_drafts, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    n = sum(num_drafts)
    cu = torch.tensor(num_drafts, dtype=torch.int32).cumsum(0).to(torch.int32)
    drafts = torch.randint(0, vocab, (n,), generator=g, dtype=torch.int32)
    return g, n, cu, drafts


def ref_greedy(out, num_drafts, drafts, argmax, bonus, is_greedy, uniform=None, rates=None):
    start = 0
    for r, k in enumerate(num_drafts):
        if is_greedy is None or is_greedy[r]:
            rejected = False
            for pos in range(k):
                if rejected:
                    break
                d, a = int(drafts[start + pos]), int(argmax[start + pos])
                if rates is not None:
                    accepted = float(uniform[start + pos]) < float(rates[pos]) and d >= 0
                    out[r, pos] = d if accepted else a
                    rejected = not accepted
                else:
                    out[r, pos] = a
                    rejected = d != a
            if not rejected:
                out[r, k] = int(bonus.reshape(-1)[r])
        start += k


def ref_random(out, num_drafts, drafts, draft_probs, target_probs, bonus, recovered, uniform,
               is_greedy, rates=None):
    start = 0
    for r, k in enumerate(num_drafts):
        if not is_greedy[r]:
            rejected = False
            for pos in range(k):
                if rejected:
                    break
                t = start + pos
                d = int(drafts[t])
                if d < 0:
                    accepted = False
                elif rates is not None:
                    accepted = float(uniform[t]) < float(rates[pos])
                else:
                    dp = 1.0 if draft_probs is None else float(draft_probs[t, d])
                    tp = float(target_probs[t, d])
                    accepted = dp > 0 and tp / dp >= float(uniform[t])
                if accepted:
                    out[r, pos] = d
                else:
                    rejected = True
                    out[r, pos] = int(recovered[t])
            if not rejected:
                out[r, k] = int(bonus.reshape(-1)[r])
        start += k


NUM_DRAFTS = [[3, 0, 2, 3, 1], [1], [0, 0], [4, 4, 4, 4, 4, 4]]


@pytest.mark.parametrize("num_drafts", NUM_DRAFTS)
@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize("synthetic", [False, True])
def test_greedy_matches_reference(num_drafts, mixed, synthetic):
    vocab, s = 6, max(num_drafts)
    g, n, cu, drafts = batch(num_drafts, vocab, seed=len(num_drafts) + mixed)
    # Agreeing with the draft half of the time so every prefix length shows up.
    argmax = torch.where(torch.rand(n, generator=g) < 0.6, drafts.long(),
                         torch.randint(0, vocab, (n,), generator=g))
    bonus = torch.randint(0, vocab, (len(num_drafts), 1), generator=g)
    is_greedy = torch.rand(len(num_drafts), generator=g) < 0.5 if mixed else None
    uniform = rates = None
    if synthetic:
        drafts[::4] = -1  # padded drafts are rejected in synthetic mode
        uniform = torch.rand(n, generator=g, dtype=torch.float64)
        rates = torch.tensor([0.9, 0.7, 0.5, 0.3][:s] + [0.2] * max(0, s - 4))
    got = torch.full((len(num_drafts), s + 1), PH, dtype=torch.int32)
    want = got.clone()
    rejection_greedy_sample_kernel(got, cu, drafts, argmax, bonus, is_greedy, s, uniform,
                                   rates, SYNTHETIC_MODE=synthetic)
    ref_greedy(want, num_drafts, drafts, argmax, bonus, is_greedy, uniform, rates)
    assert got.tolist() == want.tolist()


@pytest.mark.parametrize("num_drafts", NUM_DRAFTS)
@pytest.mark.parametrize("with_draft_probs", [False, True])
@pytest.mark.parametrize("synthetic", [False, True])
def test_random_matches_reference(num_drafts, with_draft_probs, synthetic):
    vocab, s, b = 5, max(num_drafts), len(num_drafts)
    g, n, cu, drafts = batch(num_drafts, vocab, seed=7 * b)
    drafts[1::5] = -1
    target = torch.rand(n, vocab, generator=g).softmax(-1)
    draft_probs = torch.rand(n, vocab, generator=g).softmax(-1) if with_draft_probs else None
    if draft_probs is not None and n:
        draft_probs[0, drafts[0].clamp(min=0)] = 0.0  # a zero draft probability is rejected
    recovered = torch.randint(0, vocab, (n,), generator=g, dtype=torch.int32)
    uniform = torch.rand(n, generator=g, dtype=torch.float64)
    bonus = torch.randint(0, vocab, (b, 1), generator=g)
    is_greedy = torch.rand(b, generator=g) < 0.3
    rates = torch.tensor([0.8, 0.6, 0.4, 0.2][:s]) if synthetic else None
    got = torch.full((b, s + 1), PH, dtype=torch.int32)
    want = got.clone()
    rejection_random_sample_kernel(got, cu, drafts, draft_probs, target, bonus, recovered,
                                   uniform, is_greedy, s, vocab, rates,
                                   NO_DRAFT_PROBS=draft_probs is None, SYNTHETIC_MODE=synthetic)
    ref_random(want, num_drafts, drafts, draft_probs, target, bonus, recovered, uniform,
               is_greedy, rates)
    assert got.tolist() == want.tolist()


def test_expand():
    cu = torch.tensor([2, 2, 5, 6], dtype=torch.int32)
    x = torch.tensor([0.5, 0.7, 0.0, 2.0])
    out = torch.full((7,), -9.0)
    expand_kernel(out, x, cu, 0, 1, 128)
    assert out.tolist() == [0.5, 0.5, 1.0, 1.0, 1.0, 2.0, -9.0]  # the tail is not a token
    capped = torch.full((6,), -9.0)
    expand_kernel(capped, x, cu, 0, 1, 2)  # at most MAX_NUM_TOKENS per request
    assert capped.tolist() == [0.5, 0.5, 1.0, 1.0, -9.0, 2.0]


@pytest.mark.parametrize("with_draft_probs", [False, True])
@pytest.mark.parametrize("fp64", [False, True])
def test_recovered_tokens_match_reference(with_draft_probs, fp64):
    num_drafts, vocab = [2, 0, 3], 37
    g, n, cu, drafts = batch(num_drafts, vocab, seed=3)
    target = torch.rand(n, vocab, generator=g).softmax(-1)
    draft = torch.rand(n, vocab, generator=g).softmax(-1) if with_draft_probs else None
    inv_q = torch.empty(len(num_drafts), vocab, dtype=torch.float64 if fp64 else torch.float32)
    inv_q.exponential_(generator=g)
    inv_q = inv_q.reciprocal()
    got = torch.full((n,), -5, dtype=torch.int32)
    sample_recovered_tokens_kernel(got, cu, drafts, draft, target, inv_q, vocab, 8192,
                                   NO_DRAFT_PROBS=draft is None, USE_FP64_GUMBEL=fp64)
    want, t = [], 0
    for r, k in enumerate(num_drafts):
        for _ in range(k):
            best, best_id = float("-inf"), 0
            for v in range(vocab):
                if draft is None:
                    p = 0.0 if v == int(drafts[t]) else float(target[t, v])
                else:
                    p = max(float(target[t, v]) - float(draft[t, v]), 0.0)
                score = p * float(inv_q[r, v])
                if score > best:
                    best, best_id = score, v
            want.append(best_id)
            t += 1
    assert got.tolist() == want


def test_random_path_keeps_the_target_distribution():
    """Speculative sampling is exact: whatever the draft distribution q, the first emitted
    token of each request follows the target p (accepted draft or recovered residual)."""
    vocab, b = 4, 40000
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    q = torch.tensor([0.4, 0.3, 0.2, 0.1])
    drafts = torch.multinomial(q, b, replacement=True, generator=g).to(torch.int32)
    cu = torch.arange(1, b + 1, dtype=torch.int32)
    target, draft_probs = p.expand(b, vocab).contiguous(), q.expand(b, vocab).contiguous()
    inv_q = torch.empty(b, vocab).exponential_(generator=g).reciprocal()
    recovered = torch.empty(b, dtype=torch.int32)
    sample_recovered_tokens_kernel(recovered, cu, drafts, draft_probs, target, inv_q, vocab,
                                   8192, NO_DRAFT_PROBS=False, USE_FP64_GUMBEL=False)
    uniform = torch.rand(b, generator=g, dtype=torch.float64)
    out = torch.full((b, 2), PH, dtype=torch.int32)
    rejection_random_sample_kernel(out, cu, drafts, draft_probs, target,
                                   torch.zeros(b, 1, dtype=torch.int64), recovered, uniform,
                                   torch.zeros(b, dtype=torch.bool), 1, vocab, None,
                                   NO_DRAFT_PROBS=False, SYNTHETIC_MODE=False)
    freq = torch.bincount(out[:, 0].long(), minlength=vocab).double() / b
    assert (freq - p.double()).abs().max() < 0.012  # ~5 standard deviations at b=40000
    # Bonus exactly where the draft was accepted.
    assert ((out[:, 1] == 0) == (out[:, 0] == drafts)).all()


def test_vllm_rejection_sample_runs_through_the_overrides():
    """vLLM's own rejection_sample (greedy and random rows mixed) launches the overrides."""
    from vllm.platforms import current_platform
    from vllm.v1.sample import rejection_sampler as rs
    from vllm.v1.sample.logits_processor import LogitsProcessors
    from vllm.v1.sample.metadata import SamplingMetadata

    current_platform.register_triton_kernel_overrides()
    vocab, num_drafts = 8, [2, 3]
    g = torch.Generator().manual_seed(1)
    drafts = torch.tensor([3, 4, 5, 6, 7], dtype=torch.int32)
    logits = torch.randn(5, vocab, generator=g)
    logits[0, 3] = logits[1, 1] = 50.0  # request 0 (greedy): first draft kept, second rejected
    meta = SamplingMetadata(
        temperature=torch.tensor([0.0, 1.0]), all_greedy=False, all_random=False,
        top_p=None, top_k=None, generators={}, max_num_logprobs=None, no_penalties=True,
        prompt_token_ids=None, frequency_penalties=torch.zeros(2),
        presence_penalties=torch.zeros(2), repetition_penalties=torch.ones(2),
        output_token_ids=[[], []], allowed_token_ids_mask=None, bad_words_token_ids={},
        logitsprocs=LogitsProcessors(),
    )
    out = rs.rejection_sample(drafts, num_drafts, 3, torch.tensor([2, 5], dtype=torch.int32),
                              None, logits, torch.tensor([[1], [2]]), meta)
    assert out[0].tolist() == [3, 1, PH, PH]
    row = [t for t in out[1].tolist() if t != PH]
    assert 1 <= len(row) <= 4 and all(0 <= t < vocab for t in row)
