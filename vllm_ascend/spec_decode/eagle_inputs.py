"""vLLM's EAGLE / draft-model input-preparation Triton kernels (vllm/v1/spec_decode/utils.py)
as plain tensor programs: the drafter's first-pass inputs (copy and expand), the next token
and accepted count of each request, the index to sample from, and the per-step position /
slot / length update of the autoregressive draft loop. MTP drafters (deepseek_mtp and
friends) run through the same proposer and so the same four kernels.

Each function takes the Triton kernel's arguments under its parameter names and writes the
same outputs; grid sizes that the Triton launch carries outside the arguments are read from
the output shapes, which the callers size to the grid. No host synchronisation.
"""

from __future__ import annotations

import torch

from vllm_ascend.spec_decode._segments import masked_store, segment_starts


def eagle_step_slot_mapping_metadata_kernel(
    positions_ptr: torch.Tensor,  # [batch] current positions
    block_table_ptr: torch.Tensor,  # [batch, n_blocks_per_req]
    block_table_stride: int,
    seq_lens_ptr: torch.Tensor,  # [batch], updated in place
    out_clamped_positions_ptr: torch.Tensor,  # [batch], written (may alias positions_ptr)
    out_slot_mapping_ptr: torch.Tensor,  # [input_batch_size], written
    block_size: int,
    max_model_len: int,
    n_blocks_per_req: int,
    PAD_ID: int,
    batch_size: int,
) -> None:
    """One autoregressive draft step: position + 1 (0 past max_model_len), its KV slot (PAD_ID
    past max_model_len), seq_len + 1 (1 past max_model_len, capped at it); rows from
    ``batch_size`` to the end of ``out_slot_mapping_ptr`` (graph padding) get PAD_ID."""
    b = batch_size
    out_slot_mapping_ptr[b:] = PAD_ID
    if b == 0:
        return
    new_pos = positions_ptr[:b].to(torch.int64) + 1
    exceeds = new_pos >= max_model_len
    clamped = torch.where(exceeds, torch.zeros_like(new_pos), new_pos)
    block_number = (clamped // block_size).clamp(max=n_blocks_per_req - 1)
    table = block_table_ptr.as_strided((b, n_blocks_per_req), (block_table_stride, 1))
    rows = torch.arange(b, device=new_pos.device)
    block_id = table[rows, block_number].to(torch.int64)
    slot = block_id * block_size + clamped % block_size
    slot = torch.where(exceeds, torch.full_like(slot, PAD_ID), slot)
    seq = seq_lens_ptr[:b]
    new_seq = torch.where(exceeds, torch.ones_like(seq), seq + 1).clamp(max=max_model_len)
    out_clamped_positions_ptr[:b] = clamped
    out_slot_mapping_ptr[:b] = slot
    seq_lens_ptr[:b] = new_seq


def eagle_prepare_inputs_padded_kernel(
    cu_num_draft_tokens_ptr: torch.Tensor,  # [num_reqs] inclusive cumulative drafts
    valid_sampled_tokens_count_ptr: torch.Tensor,  # [num_reqs]: 1 + accepted drafts
    query_start_loc_gpu_ptr: torch.Tensor,  # [num_reqs + 1]
    token_indices_to_sample_ptr: torch.Tensor,  # [num_reqs], written
    num_rejected_tokens_gpu_ptr: torch.Tensor,  # [num_reqs], written
    num_reqs: int,
) -> None:
    """Rejected drafts per request (0 without drafts) and the index of its last accepted
    token in the padded batch (the last query token minus the rejected ones)."""
    n = num_reqs
    if n == 0:
        return
    cu = cu_num_draft_tokens_ptr[:n]
    num_drafts = cu.to(torch.int64) - segment_starts(cu)
    valid = valid_sampled_tokens_count_ptr[:n].to(torch.int64)
    rejected = torch.where(num_drafts > 0, num_drafts + 1 - valid, torch.zeros_like(valid))
    last = query_start_loc_gpu_ptr[1:n + 1].to(torch.int64) - 1
    token_indices_to_sample_ptr[:n] = last - rejected
    num_rejected_tokens_gpu_ptr[:n] = rejected


def eagle_prepare_next_token_padded_kernel(
    sampled_token_ids_ptr: torch.Tensor,  # [num_reqs, num_sampled_tokens_per_req]
    discard_request_mask_ptr: torch.Tensor,  # [num_reqs] bool
    backup_next_token_ids_ptr: torch.Tensor,  # [num_reqs]
    next_token_ids_ptr: torch.Tensor,  # [num_reqs], written
    valid_sampled_tokens_count_ptr: torch.Tensor,  # [num_reqs], written
    vocab_size: int,
    num_sampled_tokens_per_req: int,
    num_reqs: int,
    stride_sampled_token_ids: int,
    BLOCK_SIZE_TOKENS: int,
) -> None:
    """Per request: the number of valid sampled tokens (not -1, inside the vocabulary; 0 for a
    discarded request) and the next token, the last valid one or the backup token."""
    n, w = num_reqs, num_sampled_tokens_per_req
    if n == 0:
        return
    tokens = sampled_token_ids_ptr.as_strided(
        (n, w), (stride_sampled_token_ids, 1), sampled_token_ids_ptr.storage_offset())
    valid = (tokens != -1) & (tokens < vocab_size)
    count = valid.sum(dim=1)
    idx = torch.arange(w, device=tokens.device)
    last = torch.where(valid, idx, torch.full_like(idx, -1)).amax(dim=1)
    last_token = tokens.gather(1, last.clamp(min=0).unsqueeze(1)).squeeze(1)
    discarded = discard_request_mask_ptr[:n]
    backup = backup_next_token_ids_ptr[:n]
    use_backup = discarded | (count == 0)
    next_token_ids_ptr[:n] = torch.where(use_backup, backup.to(torch.int64),
                                         last_token.to(torch.int64))
    valid_sampled_tokens_count_ptr[:n] = torch.where(discarded, torch.zeros_like(count), count)


def copy_and_expand_eagle_inputs_kernel(
    target_token_ids_ptr: torch.Tensor,  # [total_input_tokens]
    target_positions_ptr: torch.Tensor,  # [total_input_tokens]
    next_token_ids_ptr: torch.Tensor,  # [num_reqs]
    out_input_ids_ptr: torch.Tensor,  # drafting buffers, written
    out_positions_ptr: torch.Tensor,
    out_is_rejected_token_mask_ptr: torch.Tensor,
    out_is_masked_token_mask_ptr: torch.Tensor,
    out_new_token_indices_ptr: torch.Tensor,  # [num_reqs * num_padding_slots_per_request]
    out_hidden_state_mapping_ptr: torch.Tensor,  # [total_input_tokens]
    query_start_loc_ptr: torch.Tensor,  # [num_reqs + 1]
    query_end_loc_ptr: torch.Tensor,  # [num_reqs]: last accepted token of each request
    padding_token_id: int,
    parallel_drafting_token_id: int,
    total_input_tokens: int,
    num_padding_slots_per_request: int,
    shift_input_ids: bool,
    BLOCK_SIZE_TOKENS: int,
) -> None:
    """The drafter's first-pass inputs. Request r's output segment holds, in order: its valid
    input tokens (shifted by one when ``shift_input_ids``), the bonus (next) token,
    ``num_padding_slots_per_request - 1`` parallel-drafting tokens, then one padding slot per
    rejected draft. Segments are laid back to back, so output token o belongs to the request
    whose segment contains it; positions run on from the request's first input position
    (0 for rejected slots)."""
    num_reqs = query_end_loc_ptr.shape[0]
    if num_reqs == 0:
        return
    device = target_token_ids_ptr.device
    pad = num_padding_slots_per_request
    shift = 1 if shift_input_ids else 0
    qsl = query_start_loc_ptr[:num_reqs + 1].to(torch.int64)
    start, nxt = qsl[:-1], qsl[1:]
    end = query_end_loc_ptr.to(torch.int64)
    num_valid = end - start + 1 - shift
    num_rejected = nxt - end - 1
    total = num_valid + pad + num_rejected
    rows = torch.arange(num_reqs, device=device)
    out_start = start + rows * (pad - shift)
    out_end = out_start + total

    num_out = total_input_tokens + num_reqs * (pad - shift)
    o = torch.arange(num_out, device=device)
    req = torch.searchsorted(out_end, o, right=True)
    in_out = req < num_reqs
    r = req.clamp(max=num_reqs - 1)
    j = o - out_start[r]
    nv = num_valid[r]
    is_valid = j < nv
    is_bonus = j == nv
    is_parallel = (j > nv) & (j < nv + pad)
    is_rejected = j >= nv + pad

    in_idx = (start[r] + shift + j).clamp(min=0, max=total_input_tokens - 1)
    tokens = torch.where(is_valid, target_token_ids_ptr[in_idx].to(torch.int64),
                         torch.zeros_like(o))
    tokens = torch.where(is_bonus, next_token_ids_ptr[r].to(torch.int64), tokens)
    tokens = torch.where(is_parallel, torch.full_like(o, parallel_drafting_token_id), tokens)
    tokens = torch.where(is_rejected, torch.full_like(o, padding_token_id), tokens)
    first_pos = target_positions_ptr[start.clamp(max=total_input_tokens - 1)].to(torch.int64)
    positions = torch.where(is_rejected, torch.zeros_like(o), first_pos[r] + j)

    def store(buf: torch.Tensor, values: torch.Tensor) -> None:
        view = buf[:num_out]
        view.copy_(torch.where(in_out, values.to(buf.dtype), view))

    store(out_input_ids_ptr, tokens)
    store(out_positions_ptr, positions)
    store(out_is_rejected_token_mask_ptr, is_rejected)
    store(out_is_masked_token_mask_ptr, is_parallel)
    new_slot = j - nv  # 0: bonus, 1..: parallel-drafting slots
    masked_store(out_new_token_indices_ptr, r * pad + new_slot, o,
                 in_out & (j >= nv) & (j < nv + pad))

    if shift_input_ids:
        # Hidden states are not shifted: input token t of request r feeds output slot
        # out_start[r] + (t - start[r]).
        t = torch.arange(total_input_tokens, device=device)
        t_req = torch.searchsorted(nxt, t, right=True)
        t_in = t_req < num_reqs
        tr = t_req.clamp(max=num_reqs - 1)
        view = out_hidden_state_mapping_ptr[:total_input_tokens]
        view.copy_(torch.where(t_in, (out_start[tr] + t - start[tr]).to(view.dtype), view))
