"""The layers that call the _C_ascend ops against vLLM's own reference forwards."""


import pytest
import torch
import vllm.model_executor.layers.vocab_parallel_embedding as vpe
from csrc_test_utils import TOLS
from vllm.config import DeviceConfig, VllmConfig, set_current_vllm_config
from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding

from vllm_ascend.ops.rotary_embedding import AscendRotaryEmbedding
from vllm_ascend.ops.vocab_parallel_embedding import AscendVocabParallelEmbedding


@pytest.fixture(autouse=True)
def vllm_config():
    # An explicit device, so this works with or without the plugin's platform active.
    with set_current_vllm_config(VllmConfig(device_config=DeviceConfig(device="cpu"))):
        yield


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize("head_size,rotary_dim", [(128, 128), (80, 40), (64, 32)])
@pytest.mark.parametrize("with_key", [True, False])
def test_rotary_layer_matches_forward_native(C, dtype, is_neox, head_size, rotary_dim, with_key):
    kwargs = dict(head_size=head_size, rotary_dim=rotary_dim, max_position_embeddings=2048,
                  base=10000.0, is_neox_style=is_neox, dtype=dtype)
    ours = AscendRotaryEmbedding(**kwargs)
    ref = RotaryEmbedding(**kwargs)
    tokens, nq, nk = 19, 4, 2
    positions = torch.randint(0, 2048, (tokens,))
    q = torch.randn(tokens, nq * head_size, dtype=dtype)
    k = torch.randn(tokens, nk * head_size, dtype=dtype) if with_key else None
    # vLLM's reference in float32 (its forward_native rounds in the input dtype for bf16).
    ref32 = RotaryEmbedding(**{**kwargs, "dtype": torch.float32})
    want_q, want_k = ref32.forward_native(positions, q.float(), None if k is None else k.float())
    native_q, _ = ref.forward_native(positions, q.clone(), None if k is None else k.clone())

    q_in = q.clone()
    k_in = None if k is None else k.clone()
    got_q, got_k = ours.forward_oot(positions, q_in, k_in)
    assert got_q is q_in and got_k is k_in  # in place
    torch.testing.assert_close(got_q.float(), want_q, **TOLS[dtype])
    torch.testing.assert_close(got_q, native_q, **TOLS[dtype])
    if k is not None:
        torch.testing.assert_close(got_k.float(), want_k, **TOLS[dtype])
    else:
        assert got_k is None


class _FakeGroup:
    """A tensor-parallel group of `world` ranks seen from `rank`; all_reduce is the identity
    (each shard is checked on its own; the sum over shards is checked separately)."""

    def __init__(self, rank, world):
        self.rank_in_group = rank
        self.world_size = world

    def all_reduce(self, x):
        return x


def _vllm_forward_eager(layer, ids, monkeypatch):
    # vLLM's masking is torch.compile'd; run its eager body so the test does not compile.
    fn = vpe.get_masked_input_and_mask
    eager = getattr(fn, "_torchdynamo_orig_callable", None) or getattr(fn, "__wrapped__", fn)
    monkeypatch.setattr(vpe, "get_masked_input_and_mask", eager)
    return vpe.VocabParallelEmbedding.forward(layer, ids)


@pytest.mark.parametrize("world", [1, 2, 4])
@pytest.mark.parametrize("org_vocab,added", [(1010, 16), (4000, 0)])
def test_vocab_embedding_matches_vllm(C, monkeypatch, world, org_vocab, added):
    dim = 24
    ids = torch.randint(0, org_vocab + added, (3, 41))
    full = None
    for rank in range(world):
        layer = AscendVocabParallelEmbedding(
            org_vocab + added, dim, params_dtype=torch.float32, org_num_embeddings=org_vocab,
            padding_size=64, parallel_group=_FakeGroup(rank, world))
        layer.use_fused_embedding = False
        torch.nn.init.normal_(layer.weight)
        got = layer(ids)
        want = _vllm_forward_eager(layer, ids, monkeypatch)
        assert got.shape == (3, 41, dim)
        torch.testing.assert_close(got, want, atol=0, rtol=0)
        full = got if full is None else full + got
    # Summed over the shards, every id is looked up exactly once: no row is all zero.
    assert (full.abs().sum(-1) > 0).all()
