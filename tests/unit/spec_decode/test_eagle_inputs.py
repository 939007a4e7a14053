"""EAGLE / MTP / draft-model input preparation (vllm_ascend/spec_decode/eagle_inputs.py)
against per-request loops written from vLLM's Triton kernels (vllm/v1/spec_decode/utils.py)."""

from __future__ import annotations

import pytest
import torch

from vllm_ascend.spec_decode.eagle_inputs import (
    copy_and_expand_eagle_inputs_kernel,
    eagle_prepare_inputs_padded_kernel,
    eagle_prepare_next_token_padded_kernel,
    eagle_step_slot_mapping_metadata_kernel,
)

PAD = -1


def test_step_slot_mapping_and_lengths():
    bs, max_len, n_blocks = 16, 40, 3
    positions = torch.tensor([5, 15, 38, 39, 0])
    # Rows of a wider buffer (stride 4), as the runner's block table is.
    table = torch.arange(20, dtype=torch.int32).reshape(5, 4) + 100
    seq_lens = torch.tensor([6, 16, 39, 40, 1], dtype=torch.int32)
    clamped = torch.full((5,), -7, dtype=torch.int64)
    slots = torch.full((8,), -7, dtype=torch.int64)  # 3 graph-padding rows
    before = seq_lens.tolist()
    eagle_step_slot_mapping_metadata_kernel(positions, table[:, :n_blocks], 4, seq_lens, clamped,
                                            slots, bs, max_len, n_blocks, PAD, 5)
    want_slots, want_pos, want_len = [], [], []
    for r in range(5):
        p = int(positions[r]) + 1
        over = p >= max_len
        c = 0 if over else p
        block = int(table[r, min(c // bs, n_blocks - 1)])
        want_pos.append(c)
        want_slots.append(PAD if over else block * bs + c % bs)
        want_len.append(min(1 if over else before[r] + 1, max_len))
    assert clamped.tolist() == want_pos
    assert slots.tolist() == want_slots + [PAD] * 3
    assert seq_lens.tolist() == want_len


def test_step_positions_may_alias_the_output():
    positions = torch.tensor([3, 7])
    seq_lens = torch.tensor([4, 8], dtype=torch.int32)
    slots = torch.empty(2, dtype=torch.int64)
    table = torch.tensor([[2], [5]], dtype=torch.int32)
    eagle_step_slot_mapping_metadata_kernel(positions, table, 1, seq_lens, positions, slots,
                                            128, 512, 1, PAD, 2)
    assert positions.tolist() == [4, 8] and slots.tolist() == [2 * 128 + 4, 5 * 128 + 8]


def test_prepare_inputs_padded():
    cu = torch.tensor([3, 3, 5], dtype=torch.int32)  # drafts 3, 0, 2
    valid = torch.tensor([2, 1, 3], dtype=torch.int32)  # 1 + accepted
    qsl = torch.tensor([0, 4, 5, 8], dtype=torch.int32)
    idx = torch.full((3,), -9, dtype=torch.int32)
    rej = torch.full((3,), -9, dtype=torch.int32)
    eagle_prepare_inputs_padded_kernel(cu, valid, qsl, idx, rej, 3)
    assert rej.tolist() == [2, 0, 0]
    assert idx.tolist() == [3 - 2, 4, 7]


def test_prepare_next_token_padded():
    vocab = 50
    sampled = torch.tensor([[7, 8, -1, -1, 0],
                            [-1, -1, -1, -1, 0],
                            [9, 10, 11, 12, 0],
                            [3, -1, 60, -1, 0],  # 60: outside the vocabulary
                            [4, 5, 6, 7, 0]], dtype=torch.int32)[:, :4]  # stride 5
    discard = torch.tensor([False, False, False, False, True])
    backup = torch.tensor([100, 101, 102, 103, 104], dtype=torch.int32)
    nxt = torch.full((5,), -9, dtype=torch.int32)
    count = torch.full((5,), -9, dtype=torch.int32)
    eagle_prepare_next_token_padded_kernel(sampled, discard, backup, nxt, count, vocab, 4, 5,
                                           sampled.stride(0), 4)
    assert count.tolist() == [2, 0, 4, 1, 0]
    assert nxt.tolist() == [8, 101, 12, 3, 104]


def ref_copy_and_expand(tok, pos, nxt, qsl, qend, pad_id, par_id, total_in, pad, shift, out):
    ids, positions, rej, masked, new_idx, hmap = out
    for r in range(len(qend)):
        s, e, n = int(qsl[r]), int(qend[r]), int(qsl[r + 1])
        if shift:
            nv, off, ostart = e - s, 1, s + r * (pad - 1)
        else:
            nv, off, ostart = e - s + 1, 0, s + r * pad
        total = nv + pad + (n - e - 1)
        for j in range(total):
            o = ostart + j
            if j < nv:
                t = int(tok[min(s + off + j, total_in - 1)])
            elif j == nv:
                t = int(nxt[r])
            elif j < nv + pad:
                t = par_id
            else:
                t = pad_id
            ids[o] = t
            positions[o] = 0 if j >= nv + pad else int(pos[s]) + j
            rej[o] = j >= nv + pad
            masked[o] = nv < j < nv + pad
            if nv <= j < nv + pad:
                new_idx[r * pad + j - nv] = o
        if shift:
            for j in range(n - s):
                hmap[s + j] = ostart + j


@pytest.mark.parametrize("shift, pad", [(False, 1), (False, 3), (True, 1), (True, 3)])
def test_copy_and_expand_matches_reference(shift, pad):
    # Three requests: a prefill chunk, a decode with 2 of 3 drafts rejected, a full accept.
    qsl = torch.tensor([0, 5, 9, 13], dtype=torch.int32)
    qend = torch.tensor([4, 6, 12], dtype=torch.int32)
    tok = torch.arange(13, dtype=torch.int32) + 200
    pos = torch.tensor([0, 1, 2, 3, 4, 30, 31, 32, 33, 60, 61, 62, 63])
    nxt = torch.tensor([7, 8, 9], dtype=torch.int32)
    size = 32

    def buffers():
        return (torch.full((size,), -3, dtype=torch.int32), torch.full((size,), -3),
                torch.zeros(size, dtype=torch.bool), torch.zeros(size, dtype=torch.bool),
                torch.full((3 * pad,), -3, dtype=torch.int32),
                torch.full((13,), -3, dtype=torch.int32))

    got, want = buffers(), buffers()
    copy_and_expand_eagle_inputs_kernel(tok, pos, nxt, *got, qsl, qend, 0, 77, 13, pad, shift,
                                        BLOCK_SIZE_TOKENS=16)
    ref_copy_and_expand(tok, pos, nxt, qsl, qend, 0, 77, 13, pad, shift, want)
    for g, w in zip(got, want, strict=True):
        assert g.tolist() == w.tolist()


def test_overrides_are_registered_once_and_survive_unreadable_modules():
    """A module holding an object that answers every attribute (llvmlite's ffi.lib, imported
    with numba) breaks vLLM's reference scan; the registration leaves it out."""
    import sys
    import types

    from vllm.platforms import current_platform
    from vllm.triton_utils.dispatcher import KernelOverride
    from vllm.v1.spec_decode import utils

    class AnswersEverything:
        __slots__ = ()

        def __getattr__(self, name):
            return lambda *a: None

    module = types.ModuleType("fake_llvmlite_ffi")
    module.lib = AnswersEverything()
    sys.modules[module.__name__] = module
    try:
        from vllm_ascend.spec_decode import registration

        registration._registered.clear()  # force a fresh scan with the module present
        current_platform.register_triton_kernel_overrides()
        current_platform.register_triton_kernel_overrides()  # idempotent
    finally:
        del sys.modules[module.__name__]
    kernel = utils._copy_and_expand_eagle_inputs.kernel
    assert isinstance(kernel, KernelOverride) and kernel.func is copy_and_expand_eagle_inputs_kernel
    assert not isinstance(kernel.func, KernelOverride)
