"""The slot-mapping override equals a per-token loop over the block table, and vLLM routes its
Triton kernel launches to it once the platform registered it."""

from __future__ import annotations

import pytest
import torch

from vllm_ascend.worker.slot_mapping import compute_slot_mapping

PAD = -1


def reference(query_start_loc, positions, block_table, block_size, max_num_tokens):
    out = [PAD] * max_num_tokens
    for req in range(len(query_start_loc) - 1):
        for t in range(int(query_start_loc[req]), int(query_start_loc[req + 1])):
            pos = int(positions[t])
            out[t] = int(block_table[req, pos // block_size]) * block_size + pos % block_size
    return out


@pytest.mark.parametrize("block_size", [16, 128])
@pytest.mark.parametrize("query_lens", [[1], [1, 1, 1], [5, 1, 300, 1], [0, 7, 0, 2]])
def test_matches_per_token_loop(block_size, query_lens):
    g = torch.Generator().manual_seed(len(query_lens) * block_size)
    num_reqs, stride = len(query_lens), 40
    qsl = torch.tensor([0] + query_lens).cumsum(0).to(torch.int32)
    num_tokens = int(qsl[-1])
    # Each request continues from some computed prefix.
    starts = torch.randint(0, 500, (num_reqs,), generator=g)
    positions = torch.cat([torch.arange(s, s + n) for s, n in zip(starts, query_lens,
                                                                   strict=True)]).long()
    block_table = torch.randperm(8 * stride, generator=g)[: 8 * stride].reshape(8, stride)
    block_table = block_table.to(torch.int32)
    max_num_tokens = num_tokens + 9
    slot_mapping = torch.full((max_num_tokens + 3,), 12345, dtype=torch.int64)
    compute_slot_mapping(num_tokens, max_num_tokens, qsl, positions, block_table, stride,
                         slot_mapping, block_size, 1, 0, 1, PAD, 1024)
    want = reference(qsl, positions, block_table, block_size, max_num_tokens)
    assert slot_mapping[:max_num_tokens].tolist() == want
    assert slot_mapping[max_num_tokens:].tolist() == [12345] * 3  # nothing past the buffer end


def test_context_parallel_is_refused():
    with pytest.raises(NotImplementedError, match="context parallelism"):
        compute_slot_mapping(1, 1, torch.tensor([0, 1]), torch.tensor([0]),
                             torch.zeros(1, 1, dtype=torch.int32), 1,
                             torch.zeros(1, dtype=torch.int64), 16, 2, 0, 1, PAD, 1024)


def test_vllm_launches_reach_the_override():
    from vllm.platforms import current_platform
    from vllm.v1.worker.block_table import _COMPUTE_SLOT_MAPPING_KERNEL

    current_platform.register_triton_kernel_overrides()
    qsl = torch.tensor([0, 3], dtype=torch.int32)
    positions = torch.tensor([16, 17, 18])
    block_table = torch.tensor([[4, 9, 2]], dtype=torch.int32)
    slot_mapping = torch.zeros(5, dtype=torch.int64)
    _COMPUTE_SLOT_MAPPING_KERNEL(1, 3, 5, qsl, positions, block_table, 3, slot_mapping,
                                 16, 1, 0, 1)
    assert slot_mapping.tolist() == [9 * 16, 9 * 16 + 1, 9 * 16 + 2, PAD, PAD]
