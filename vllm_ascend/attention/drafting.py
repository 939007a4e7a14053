"""Exact sequence lengths where the runner's host copy over-counts: a speculative drafter's
forward, and target steps under async scheduling with drafts. The fused attention takes host
lengths, so these read the device copy, which vLLM keeps exact."""

from __future__ import annotations

import torch
from vllm.v1.attention.backend import CommonAttentionMetadata


def host_lengths_optimistic(vllm_config) -> bool:
    """Whether the runner's host seq_lens may over-count: async scheduling with speculative
    decoding (vLLM corrects the lengths on the device once the previous step's accepted counts
    are known, see GPUModelRunner._prepare_inputs)."""
    if vllm_config is None:
        return False
    return (vllm_config.speculative_config is not None
            and bool(vllm_config.scheduler_config.async_scheduling))


def exact_seq_lens(m: CommonAttentionMetadata) -> torch.Tensor:
    """The device seq_lens (exact after vLLM's async correction) as a host tensor: one
    device-to-host copy of ``num_reqs`` integers, which waits for the previous step's sampling
    on the NPU (the cost of exact host lengths under async scheduling with drafts). Rows past
    ``num_reqs`` (graph padding) keep the host values."""
    host = m.seq_lens_cpu_upper_bound
    exact = m.seq_lens[:m.num_reqs].to("cpu", torch.int32)
    if host is None:
        return exact
    host = host.clone()
    host[:m.num_reqs] = exact
    return host


def drafting_view(m: CommonAttentionMetadata, block_size: int) -> CommonAttentionMetadata:
    """``m`` with exact host lengths and only writable slots, for a drafter's forward.

    vLLM's proposer keeps a draft forward's exact lengths on the device only: the draft loop
    takes the rejected drafts off (device ``seq_lens -= rejected``) and adds one per step on
    both copies, so the host copy keeps over-counting the rejected drafts. The attention
    takes host lengths, so they are read from the device: one small device-to-host copy per
    draft forward (free on the CPU backend, a stream sync on the NPU).

    Slots of -1 can sit in the middle of a draft batch (rejected drafts of a drafter that
    inserts slots, or a draft position past max_model_len); the scatter takes no negative or
    repeated slot, so the i-th of them writes slot i of the reserved null block 0 (their
    outputs are never read).
    """
    slots = m.slot_mapping[:m.num_actual_tokens]
    missing = slots < 0
    host = torch.cat([m.seq_lens[:m.num_reqs].to(torch.int64),
                      missing.sum().reshape(1).to(torch.int64)]).tolist()
    seq_lens, num_missing = host[:-1], host[-1]
    if num_missing > block_size:
        raise NotImplementedError(
            f"vllm-ascend: a draft step has {num_missing} unwritable slots, more than the null "
            f"block's {block_size}; lower max_num_seqs or num_speculative_tokens")
    if num_missing:
        rank = missing.to(slots.dtype).cumsum(0) - 1
        slots = torch.where(missing, rank, slots)
    return m.replace(seq_lens_cpu_upper_bound=torch.tensor(seq_lens, dtype=torch.int32),
                     slot_mapping=slots)


def build_for_drafting(builder, common_attn_metadata: CommonAttentionMetadata):
    """``builder.build`` for a drafter's forward: on ``drafting_view``'s lengths and slots, and
    without the async-scheduling device read (the view's lengths are already the device's)."""
    exact = drafting_view(common_attn_metadata, builder.block_size)
    reads_device, builder.seq_lens_from_device = builder.seq_lens_from_device, False
    try:
        return builder.build(0, exact, fast_build=True)
    finally:
        builder.seq_lens_from_device = reads_device
