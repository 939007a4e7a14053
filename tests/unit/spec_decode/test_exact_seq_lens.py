"""The fused attention takes host sequence lengths; where vLLM keeps the exact ones on the
device only (a drafter's forward; async scheduling with drafts, whose host lengths assume every
draft was accepted), the metadata builder reads them from the device."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from vllm.config import CUDAGraphMode
from vllm.v1.attention.backend import CommonAttentionMetadata

from vllm_ascend.attention.metadata import AscendAttentionMetadataBuilder

BS = 128


def config(async_scheduling: bool):
    return SimpleNamespace(
        speculative_config=SimpleNamespace(num_speculative_tokens=3),
        scheduler_config=SimpleNamespace(async_scheduling=async_scheduling),
        compilation_config=SimpleNamespace(cudagraph_mode=CUDAGraphMode.PIECEWISE),
    )


def builder(async_scheduling: bool = False):
    return AscendAttentionMetadataBuilder(SimpleNamespace(block_size=BS), [],
                                          config(async_scheduling), torch.device("cpu"))


def verify_step(device_seq_lens, host_seq_lens, slots):
    """Two requests verifying drafts: 4 and 2 query tokens."""
    return CommonAttentionMetadata(
        query_start_loc=torch.tensor([0, 4, 6], dtype=torch.int32),
        query_start_loc_cpu=torch.tensor([0, 4, 6], dtype=torch.int32),
        seq_lens=torch.tensor(device_seq_lens, dtype=torch.int32),
        seq_lens_cpu_upper_bound=torch.tensor(host_seq_lens, dtype=torch.int32),
        num_reqs=2,
        num_actual_tokens=6,
        max_query_len=4,
        max_seq_len=max(host_seq_lens),
        block_table_tensor=torch.tensor([[1, 0], [2, 0]], dtype=torch.int32),
        slot_mapping=torch.tensor(slots, dtype=torch.int64),
    )


def test_sync_scheduling_keeps_host_lengths():
    # Synchronous: the host lengths are exact and no device read happens (the device tensor
    # here deliberately disagrees to show which one is used).
    m = verify_step([1, 1], [20, 9], [BS + 16, BS + 17, BS + 18, BS + 19, 2 * BS + 7, 2 * BS + 8])
    assert builder().build(0, m).seq_lens == [20, 9]


def test_async_scheduling_reads_the_corrected_device_lengths():
    # Host: optimistic (all 3 drafts of the previous step accepted); device: corrected by
    # vLLM after 2 of request 0's drafts were rejected.
    m = verify_step([18, 9], [20, 9], [BS + 14, BS + 15, BS + 16, BS + 17, 2 * BS + 7,
                                       2 * BS + 8])
    md = builder(async_scheduling=True).build(0, m)
    assert md.seq_lens == [18, 9]
    assert md.cu_query_lens == [4, 6]
    assert md.slot_mapping.tolist() == m.slot_mapping.tolist()


def test_drafting_reads_device_lengths_and_parks_rejected_slots():
    # A draft model's padded first pass: each query is extended by the bonus slot (device
    # seq_lens + 1, host copy stale) and rejected drafts carry slot -1 mid-batch.
    slots = [BS + 16, BS + 17, -1, -1, 2 * BS + 7, 2 * BS + 8]
    m = verify_step([21, 10], [20, 9], slots)
    b = builder()
    md = b.build_for_drafting(m, draft_index=0)
    assert md.seq_lens == [21, 10]
    assert md.slot_mapping.tolist() == [BS + 16, BS + 17, 0, 1, 2 * BS + 7, 2 * BS + 8]
    assert not b.seq_lens_from_device  # the builder's own mode is restored
    assert m.slot_mapping.tolist() == slots  # the runner's tensor is not modified
