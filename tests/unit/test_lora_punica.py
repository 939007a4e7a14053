"""The Ascend punica wrapper (vllm_ascend/lora/punica_wrapper.py) against a per-token loop:
every slot filled (a token without an adapter must not pick up the last slot's), ranks below
the maximum, padded rows past the batch, the sliced outputs of a packed (q/k/v) layer, and
row-parallel style shrink/expand into a given offset."""

from __future__ import annotations

import pytest
import torch
from vllm.lora.layers import LoRAMapping

from vllm_ascend.lora.punica_wrapper import AscendPunicaWrapper, slot_mask

SLOTS, RANK, HIDDEN = 3, 8, 32
SLICES = (24, 8, 8)  # a packed projection's output slices


def _weights(seed: int):
    g = torch.Generator().manual_seed(seed)
    a = tuple(torch.randn(SLOTS, 1, RANK, HIDDEN, generator=g) for _ in SLICES)
    b = tuple(torch.randn(SLOTS, 1, out, RANK, generator=g) for out in SLICES)
    # Slot 1 holds a rank-4 adapter: the rest of its rows/columns are zero, as vLLM pads it.
    for t in a:
        t[1, :, 4:] = 0
    for t in b:
        t[1, :, :, 4:] = 0
    return a, b


def _wrapper(token_slots: list[int], prompt_slots: list[int]) -> AscendPunicaWrapper:
    wrapper = AscendPunicaWrapper(64, 8, "cpu")
    # Adapter ids 11, 12, 13 live in slots 0, 1, 2; id 0 is "no adapter".
    ids = [11, 12, 13]
    to_id = [0 if s < 0 else ids[s] for s in token_slots]
    mapping = LoRAMapping(tuple(to_id), tuple(0 if s < 0 else ids[s] for s in prompt_slots),
                          is_prefill=True)
    wrapper.update_metadata(mapping, ids, SLOTS, vocab_size=100)
    return wrapper


def _reference_linear(y, x, a, b, scale, token_slots):
    out = y.clone()
    for t, s in enumerate(token_slots):
        if s < 0:
            continue
        offset = 0
        for a_i, b_i, size in zip(a, b, SLICES, strict=True):
            out[t, offset:offset + size] += scale * (x[t] @ a_i[s, 0].T) @ b_i[s, 0].T
            offset += size
    return out


def test_slot_mask_is_one_hot_and_empty_for_no_adapter():
    mask = slot_mask(torch.tensor([2, -1, 0]), 3, torch.float32)
    assert mask.tolist() == [[0, 0, 1], [0, 0, 0], [1, 0, 0]]


@pytest.mark.parametrize("padded", [0, 5])
def test_add_lora_linear_matches_per_token_loop(padded):
    token_slots = [0, 0, -1, 2, 1, 1, -1, 2]
    wrapper = _wrapper(token_slots, [0, -1, 2, 1])
    a, b = _weights(0)
    g = torch.Generator().manual_seed(1)
    # A graph replays on more rows than the batch: the padding rows must get no adapter.
    x = torch.randn(len(token_slots) + padded, HIDDEN, generator=g)
    y = torch.randn(len(token_slots) + padded, sum(SLICES), generator=g)
    expected = _reference_linear(y, x, a, b, 0.5, token_slots + [-1] * padded)
    wrapper.add_lora_linear(y, x, a, b, 0.5, SLICES)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_stale_slots_past_the_batch_are_cleared():
    wrapper = _wrapper([2] * 10, [2])
    mapping = LoRAMapping((11, 0), (11, 0), is_prefill=False)
    wrapper.update_metadata(mapping, [11, 12, 13], SLOTS, vocab_size=100)
    assert wrapper._token_lora_indices[:10].tolist() == [0, -1] + [-1] * 8


def test_shrink_then_expand_at_an_offset():
    """Row-parallel LoRA: shrink into a float32 buffer [slices, T, rank], then expand into the
    rank's part of the output."""
    token_slots = [1, -1, 0, 2]
    wrapper = _wrapper(token_slots, token_slots)
    a, b = _weights(2)
    a, b = a[:1], (b[0][:, :, :8],)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, HIDDEN, generator=g)
    y = torch.randn(4, 20, generator=g)
    buffer = torch.zeros(1, 4, RANK)
    wrapper.add_shrink(buffer, x, a, 2.0)
    expected_h = torch.stack([torch.zeros(RANK) if s < 0 else 2.0 * x[t] @ a[0][s, 0].T
                              for t, s in enumerate(token_slots)])
    torch.testing.assert_close(buffer[0], expected_h, rtol=1e-5, atol=1e-5)
    expected = y.clone()
    for t, s in enumerate(token_slots):
        if s >= 0:
            expected[t, 12:20] += expected_h[t] @ b[0][s, 0].T
    wrapper.add_expand(y, buffer, b, (8,), offset_start=12)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_logits_use_the_sampler_mapping_and_common_vocab():
    wrapper = _wrapper([0, 0, 0, -1, -1, 2], [0, -1, 2])  # three requests, one sampled row each
    g = torch.Generator().manual_seed(4)
    a = torch.randn(SLOTS, 1, RANK, HIDDEN, generator=g)
    b = torch.randn(SLOTS, 1, 12, RANK, generator=g)  # the adapter's vocab is padded to 12
    x = torch.randn(3, HIDDEN, generator=g)
    y = torch.randn(3, 10, generator=g)
    expected = y.clone()
    for row, s in enumerate([0, -1, 2]):
        if s >= 0:
            expected[row] += ((x[row] @ a[s, 0].T) @ b[s, 0].T)[:10]
    wrapper.add_lora_logits(y, x, a, b, 1.0)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lora, specialize, sets", [(None, True, 1), (2, True, 2),
                                                     (2, False, 1), (4, True, 2)])
def test_graph_budget_counts_one_graph_set_per_lora_case(lora, specialize, sets):
    """vLLM captures each size once without adapters and once per captured count of active
    adapters (max_loras + 1 unless specialize_active_lora); the NPU graph budget counts them."""
    from types import SimpleNamespace

    from vllm.config import CompilationConfig, LoRAConfig

    from vllm_ascend.graph_modes import _lora_graph_sets

    config = SimpleNamespace(
        lora_config=None if lora is None else LoRAConfig(max_loras=lora),
        compilation_config=CompilationConfig(cudagraph_specialize_lora=specialize))
    assert _lora_graph_sets(config) == sets
