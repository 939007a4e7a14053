"""The MLA builder's view of a drafter's forward (attention/drafting.py drafting_view): host lengths
read from the device, and the -1 slots in the middle of a draft batch moved to distinct slots
of the null block."""

from __future__ import annotations

import pytest
import torch
from vllm.v1.attention.backend import CommonAttentionMetadata

from vllm_ascend.attention.drafting import drafting_view


def _draft_metadata(seq_lens, host_seq_lens, slots) -> CommonAttentionMetadata:
    n = len(seq_lens)
    qsl = torch.arange(n + 1, dtype=torch.int32)
    return CommonAttentionMetadata(
        query_start_loc=qsl, query_start_loc_cpu=qsl.clone(),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32), num_reqs=n,
        num_actual_tokens=len(slots), max_query_len=1, max_seq_len=max(host_seq_lens),
        block_table_tensor=torch.arange(1, n + 1, dtype=torch.int32).reshape(n, 1),
        slot_mapping=torch.tensor(slots, dtype=torch.int64),
        seq_lens_cpu_upper_bound=torch.tensor(host_seq_lens, dtype=torch.int32))


def test_draft_lengths_come_from_the_device():
    # The draft loop took rejected drafts off the device lengths only (host: 12, 30, 7).
    m = _draft_metadata([10, 30, 6], [12, 30, 7], [137, 286, 389])
    view = drafting_view(m, block_size=128)
    assert view.seq_lens_cpu_upper_bound.tolist() == [10, 30, 6]
    assert view.slot_mapping.tolist() == [137, 286, 389]
    assert m.seq_lens_cpu_upper_bound.tolist() == [12, 30, 7]  # the input is left alone


def test_unwritable_slots_go_to_distinct_null_block_slots():
    m = _draft_metadata([10, 30, 6], [10, 30, 6], [137, -1, 389, -1])
    assert drafting_view(m, block_size=128).slot_mapping.tolist() == [137, 0, 389, 1]


def test_more_unwritable_slots_than_the_null_block_holds_are_refused():
    m = _draft_metadata([5], [5], [-1] * 17)
    with pytest.raises(NotImplementedError, match="null block"):
        drafting_view(m, block_size=16)
