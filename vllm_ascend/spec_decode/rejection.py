"""vLLM's rejection-sampler Triton kernels (vllm/v1/sample/rejection_sampler.py) as plain
tensor programs, registered through ``Platform.register_triton_kernel_overrides``.

Each function takes the kernel's own arguments, under the kernel's parameter names (the
override forwards launch arguments by name), and writes the same outputs. The Triton kernels
walk each request's drafts in a loop and stop at the first rejection; here every draft is
decided at once and "stop at the first rejection" becomes "write the tokens that have no
rejection before them in their request" (a segmented prefix count). Every shape comes from
the arguments, so nothing waits for the device.
"""

from __future__ import annotations

import torch

from vllm_ascend.spec_decode._segments import (
    masked_store,
    prefix_before,
    request_of_token,
    segment_starts,
)


def _write_until_first_rejection(output: torch.Tensor, cu: torch.Tensor, tokens: torch.Tensor,
                                 rejected: torch.Tensor, bonus: torch.Tensor,
                                 active: torch.Tensor | None) -> None:
    """The common tail of both samplers: per request (row of ``output``), store ``tokens`` up
    to and including the first rejected draft; with no rejection, the bonus token after the
    last draft. Rows where ``active`` is False are left untouched."""
    batch, width = output.shape
    num_tokens = tokens.shape[0]
    if batch == 0:
        return
    req = request_of_token(cu, num_tokens)
    starts = segment_starts(cu)
    ends = cu.to(torch.int64)
    rejected_before, rejected_total = prefix_before(rejected, starts, req, ends)
    in_batch = req < batch
    req_c = req.clamp(max=batch - 1)
    pos = torch.arange(num_tokens, device=tokens.device) - starts[req_c]
    keep = in_batch & (rejected_before == 0)
    if active is not None:
        keep &= active[req_c]
    flat = output.view(-1)
    masked_store(flat, req_c * width + pos, tokens, keep)

    num_drafts = ends - starts
    rows = torch.arange(batch, device=tokens.device)
    bonus_keep = rejected_total == 0
    if active is not None:
        bonus_keep &= active
    masked_store(flat, rows * width + num_drafts, bonus.reshape(-1)[:batch], bonus_keep)


def rejection_greedy_sample_kernel(
    output_token_ids_ptr: torch.Tensor,  # [batch, max_spec_len + 1] int32, written
    cu_num_draft_tokens_ptr: torch.Tensor,  # [batch] inclusive cumulative drafts
    draft_token_ids_ptr: torch.Tensor,  # [num_tokens]
    target_argmax_ptr: torch.Tensor,  # [num_tokens]
    bonus_token_ids_ptr: torch.Tensor,  # [batch] or [batch, 1]
    is_greedy_ptr: torch.Tensor | None,  # [batch] bool; None: every request is greedy
    max_spec_len: int,
    uniform_probs_ptr: torch.Tensor | None,  # [num_tokens] (synthetic mode only)
    synthetic_conditional_rates_ptr: torch.Tensor | None,  # [num_speculative_tokens]
    SYNTHETIC_MODE: bool,
) -> None:
    drafts = draft_token_ids_ptr
    argmax = target_argmax_ptr.to(torch.int64)
    if SYNTHETIC_MODE:
        # A draft is accepted with the configured conditional rate of its position; padded
        # drafts (-1) are always rejected. The kept token is the draft, or the argmax.
        req = request_of_token(cu_num_draft_tokens_ptr, drafts.shape[0])
        starts = segment_starts(cu_num_draft_tokens_ptr)
        req_c = req.clamp(max=max(output_token_ids_ptr.shape[0] - 1, 0))
        pos = torch.arange(drafts.shape[0], device=drafts.device) - starts[req_c]
        rate = synthetic_conditional_rates_ptr[pos.clamp(
            max=synthetic_conditional_rates_ptr.shape[0] - 1)]
        accepted = (uniform_probs_ptr < rate) & (drafts >= 0)
        tokens = torch.where(accepted, drafts.to(torch.int64), argmax)
        rejected = ~accepted
    else:
        tokens = argmax
        rejected = drafts.to(torch.int64) != argmax
    _write_until_first_rejection(output_token_ids_ptr, cu_num_draft_tokens_ptr, tokens,
                                 rejected, bonus_token_ids_ptr, is_greedy_ptr)


def rejection_random_sample_kernel(
    output_token_ids_ptr: torch.Tensor,  # [batch, max_spec_len + 1] int32, written
    cu_num_draft_tokens_ptr: torch.Tensor,  # [batch]
    draft_token_ids_ptr: torch.Tensor,  # [num_tokens]
    draft_probs_ptr: torch.Tensor | None,  # [num_tokens, vocab] or None (ngram: prob 1)
    target_probs_ptr: torch.Tensor,  # [num_tokens, vocab] float32
    bonus_token_ids_ptr: torch.Tensor,  # [batch] or [batch, 1]
    recovered_token_ids_ptr: torch.Tensor,  # [num_tokens]
    uniform_probs_ptr: torch.Tensor,  # [num_tokens] float64
    is_greedy_ptr: torch.Tensor,  # [batch] bool: these rows are left to the greedy kernel
    max_spec_len: int,
    vocab_size: int,
    synthetic_conditional_rates_ptr: torch.Tensor | None,
    NO_DRAFT_PROBS: bool,
    SYNTHETIC_MODE: bool,
) -> None:
    drafts = draft_token_ids_ptr.to(torch.int64)
    num_tokens = drafts.shape[0]
    uniform = uniform_probs_ptr[:num_tokens]
    padded = drafts < 0  # -1 pads a request's drafts: always rejected
    safe = drafts.clamp(min=0, max=vocab_size - 1).unsqueeze(1)
    if SYNTHETIC_MODE:
        req = request_of_token(cu_num_draft_tokens_ptr, num_tokens)
        starts = segment_starts(cu_num_draft_tokens_ptr)
        req_c = req.clamp(max=max(output_token_ids_ptr.shape[0] - 1, 0))
        pos = torch.arange(num_tokens, device=drafts.device) - starts[req_c]
        rate = synthetic_conditional_rates_ptr[pos.clamp(
            max=synthetic_conditional_rates_ptr.shape[0] - 1)]
        accepted = uniform < rate
    else:
        target_prob = target_probs_ptr[:num_tokens].gather(1, safe).squeeze(1)
        if NO_DRAFT_PROBS:
            accepted = target_prob >= uniform  # draft probability 1
        else:
            draft_prob = draft_probs_ptr[:num_tokens].gather(1, safe).squeeze(1)
            # A zero draft probability is rejected rather than divided by (no NaNs).
            accepted = (draft_prob > 0) & (target_prob / draft_prob >= uniform)
    accepted &= ~padded
    tokens = torch.where(accepted, drafts, recovered_token_ids_ptr[:num_tokens].to(torch.int64))
    _write_until_first_rejection(output_token_ids_ptr, cu_num_draft_tokens_ptr, tokens,
                                 ~accepted, bonus_token_ids_ptr, ~is_greedy_ptr)


def expand_kernel(
    output_ptr: torch.Tensor,  # [num_tokens], written
    input_ptr: torch.Tensor,  # [batch]
    cu_num_tokens_ptr: torch.Tensor,  # [batch] inclusive cumulative tokens
    replace_from,
    replace_to,
    MAX_NUM_TOKENS: int,
) -> None:
    """Repeat each request's value over its tokens, ``replace_from`` becoming ``replace_to``
    (the Triton kernel writes at most MAX_NUM_TOKENS tokens per request)."""
    batch = input_ptr.shape[0]
    num_tokens = output_ptr.shape[0]
    if batch == 0 or num_tokens == 0:
        return
    req = request_of_token(cu_num_tokens_ptr[:batch], num_tokens)
    starts = segment_starts(cu_num_tokens_ptr[:batch])
    req_c = req.clamp(max=batch - 1)
    pos = torch.arange(num_tokens, device=output_ptr.device) - starts[req_c]
    src = input_ptr[req_c]
    src = torch.where(src == replace_from, torch.as_tensor(replace_to, dtype=src.dtype,
                                                           device=src.device), src)
    keep = (req < batch) & (pos < MAX_NUM_TOKENS)
    output_ptr.copy_(torch.where(keep, src.to(output_ptr.dtype), output_ptr))


def sample_recovered_tokens_kernel(
    output_token_ids_ptr: torch.Tensor,  # [num_tokens], written
    cu_num_draft_tokens_ptr: torch.Tensor,  # [batch]
    draft_token_ids_ptr: torch.Tensor,  # [num_tokens]
    draft_probs_ptr: torch.Tensor | None,  # [num_tokens, vocab] or None
    target_probs_ptr: torch.Tensor,  # [num_tokens, vocab]
    inv_q_ptr: torch.Tensor,  # [batch, vocab]: 1 / Exponential(1) noise per request
    vocab_size: int,
    BLOCK_SIZE: int,
    NO_DRAFT_PROBS: bool,
    USE_FP64_GUMBEL: bool,
) -> None:
    """Recovered token of each draft position: argmax over the vocabulary of
    ``p(v) * inv_q[request, v]`` (an exponential-race sample of ``p``), where ``p`` is the
    target distribution without the draft token (no draft probabilities) or the residual
    ``max(target - draft, 0)``. Ties go to the lowest id, as the Triton kernel's tiled scan."""
    num_tokens = output_token_ids_ptr.shape[0]
    batch = cu_num_draft_tokens_ptr.shape[0]
    if num_tokens == 0 or batch == 0:
        return
    target = target_probs_ptr[:num_tokens, :vocab_size]
    if NO_DRAFT_PROBS:
        drafts = draft_token_ids_ptr[:num_tokens].to(torch.int64)
        ids = torch.arange(vocab_size, device=target.device)
        prob = target.masked_fill(ids.unsqueeze(0) == drafts.unsqueeze(1), 0.0)
    else:
        prob = (target - draft_probs_ptr[:num_tokens, :vocab_size]).clamp_min(0.0)
    req = request_of_token(cu_num_draft_tokens_ptr, num_tokens)
    in_batch = req < batch
    score = prob * inv_q_ptr[req.clamp(max=batch - 1), :vocab_size]
    recovered = score.argmax(dim=1).clamp(max=vocab_size - 1)
    output_token_ids_ptr.copy_(
        torch.where(in_batch, recovered.to(output_token_ids_ptr.dtype), output_token_ids_ptr))
