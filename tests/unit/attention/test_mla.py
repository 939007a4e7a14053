"""Pieces of the MLA backend: the latent cache layout, prefill slot lists, TND head-dim padding."""

from __future__ import annotations

import pytest
import torch
from vllm.v1.kv_cache_interface import MLAAttentionSpec

import vllm_ascend.kernels.npu_ops  # noqa: F401  (registers every op)
from vllm_ascend.attention.mla_impl import tnd_head_dims
from vllm_ascend.attention.mla_metadata import _cumulative, sequence_slots
from vllm_ascend.worker.kv_cache import _allocate_latent, latent_cache_parts


@pytest.mark.parametrize("dims, padded", [((96, 32), (128, 128)), ((192, 128), (192, 128)),
                                          ((128, 128), (128, 128)), ((48, 64), (64, 64)),
                                          ((160, 32), (192, 128)), ((64, 160), (192, 192))])
def test_tnd_head_dims_pick_the_smallest_legal_pair(dims, padded):
    assert tnd_head_dims(*dims) == padded


def test_tnd_head_dims_refuse_what_does_not_fit():
    with pytest.raises(NotImplementedError, match="TND"):
        tnd_head_dims(256, 128)


def _spec(head_size=576):
    return MLAAttentionSpec(block_size=128, num_kv_heads=1, head_size=head_size,
                            dtype=torch.float32)


def test_latent_cache_parts_are_dense_and_disjoint():
    bound = _allocate_latent(_spec(), num_blocks=3, kernel_block_sizes=[128],
                             device=torch.device("cpu"))
    assert bound.shape == (3, 128, 512)
    nope, rope = latent_cache_parts(bound)
    assert nope.shape == (3, 128, 1, 512) and rope.shape == (3, 128, 1, 64)
    assert nope.is_contiguous() and rope.is_contiguous()
    # Both live in the one allocation, the rope part right after the no-rope part.
    assert rope.untyped_storage().data_ptr() == bound.untyped_storage().data_ptr()
    assert rope.storage_offset() == bound.numel()
    assert bound.untyped_storage().nbytes() == 3 * 128 * 576 * 4
    # A write through the op lands in the right part only (slot 130 = block 1, offset 2).
    c, r = torch.randn(1, 1, 512), torch.randn(1, 1, 64)
    torch.ops.npu.npu_scatter_pa_kv_cache(c, r, nope, rope, torch.tensor([130]),
                                          cache_mode="Norm")
    again_nope, again_rope = latent_cache_parts(bound)
    assert torch.equal(bound[1, 2], c[0, 0]) and torch.equal(again_rope[1, 2, 0], r[0, 0])
    assert int((again_nope != 0).sum()) == 512 and int((again_rope != 0).sum()) == 64


def test_latent_cache_refuses_other_latent_sizes():
    with pytest.raises(NotImplementedError, match="512"):
        _allocate_latent(_spec(head_size=320), 2, [128], torch.device("cpu"))


def test_latent_cache_parts_refuse_a_plain_tensor():
    with pytest.raises(ValueError, match="MLA latent cache"):
        latent_cache_parts(torch.zeros(2, 128, 512))


def test_sequence_slots_follow_the_block_table():
    table = torch.tensor([[4, 1, 0], [2, 3, 0]], dtype=torch.int32)
    slots = sequence_slots(table, [130, 3], block_size=128)
    expected = ([4 * 128 + i for i in range(128)] + [1 * 128, 1 * 128 + 1]
                + [2 * 128 + i for i in range(3)])
    assert slots.tolist() == expected
    assert slots.dtype == torch.int64


def test_cumulative_lengths():
    assert _cumulative([3, 0, 5]) == [3, 3, 8]
    assert _cumulative([]) == []
