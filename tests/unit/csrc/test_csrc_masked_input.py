"""_C_ascend.get_masked_input_and_mask against vLLM's python version and a plain reference."""

import pytest
import torch
import vllm.model_executor.layers.vocab_parallel_embedding as vpe

# vLLM's function is wrapped by torch.compile; its eager body is the semantic reference.
_vllm_fn = getattr(vpe.get_masked_input_and_mask, "_torchdynamo_orig_callable", None) or getattr(
    vpe.get_masked_input_and_mask, "__wrapped__", vpe.get_masked_input_and_mask
)


def reference(ids, org_start, org_end, pad, added_start, added_end):
    out, mask = [], []
    for v in ids.reshape(-1).tolist():
        if org_start <= v < org_end:
            out.append(v - org_start)
            mask.append(False)
        elif added_start <= v < added_end:
            out.append(v - added_start + (org_end - org_start) + pad)
            mask.append(False)
        else:
            out.append(0)
            mask.append(True)
    return (torch.tensor(out, dtype=torch.int64).reshape(ids.shape),
            torch.tensor(mask, dtype=torch.bool).reshape(ids.shape))


# (org_start, org_end, num_org_padding, added_start, added_end): vocab 1010 + 16 added, pad 64
SHARDS = [
    (0, 1010, 14, 1010, 1026),  # tp1
    (0, 512, 0, 1010, 1026),    # tp2 rank 0: base + all LoRA ids
    (512, 1010, 14, 1026, 1026),  # tp2 rank 1: no added ids
    (0, 32000, 0, 0, 0),        # no added vocab
]


@pytest.mark.parametrize("shard", SHARDS, ids=str)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32], ids=str)
@pytest.mark.parametrize("shape", [(1,), (7,), (4096,), (3, 65)], ids=str)
def test_matches_vllm(C, shard, dtype, shape):
    hi = max(shard[1], shard[4]) + 50
    ids = torch.randint(-3, hi, shape, dtype=dtype)
    masked, mask = C.get_masked_input_and_mask(ids, *shard)
    ref_out, ref_mask = _vllm_fn(ids, *shard)
    assert masked.dtype == ref_out.dtype == torch.int64
    assert mask.dtype == torch.bool and masked.shape == ids.shape
    assert torch.equal(masked, ref_out) and torch.equal(mask, ref_mask)
    if ids.numel() <= 512:
        r_out, r_mask = reference(ids, *shard)
        assert torch.equal(masked, r_out) and torch.equal(mask, r_mask)


def test_non_contiguous_and_empty(C):
    ids = torch.randint(0, 3000, (64, 2))[:, 0]
    masked, mask = C.get_masked_input_and_mask(ids, 1000, 2000, 0, 2000, 2000)
    ref = _vllm_fn(ids, 1000, 2000, 0, 2000, 2000)
    assert torch.equal(masked, ref[0]) and torch.equal(mask, ref[1])
    empty = C.get_masked_input_and_mask(torch.empty(0, dtype=torch.long), 0, 1, 0, 1, 1)
    assert empty[0].shape == (0,) and empty[1].shape == (0,)


def test_opcheck(C):
    ids = torch.randint(0, 300, (11,))
    torch.library.opcheck(C.get_masked_input_and_mask.default, (ids, 100, 200, 8, 250, 260))
