"""The MLA branch (query_rope/key_rope) of the CPU npu_fused_infer_attention_score: float64
reference, layouts, and the doc's constraints, each violation raising."""

from __future__ import annotations

import pytest
import torch

import vllm_ascend.kernels.npu_ops  # noqa: F401  (registers every op)
from vllm_ascend.selfcheck.mla_cases import mla_decode_reference

L, R, BS = 512, 64, 128
FIA = torch.ops.npu.npu_fused_infer_attention_score


def _inputs(heads=32, kv_lens=(1, 130, 300), dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    need = [-(-n // BS) for n in kv_lens]
    num_blocks = sum(need) + 2
    table = torch.full((len(kv_lens), max(need)), -1, dtype=torch.int32)
    perm = torch.randperm(num_blocks, generator=g).to(torch.int32)
    used = 0
    for b, n in enumerate(need):
        table[b, :n] = perm[used:used + n]
        used += n
    b = len(kv_lens)
    return dict(q=(torch.randn(b, heads, L, generator=g) * 0.2).to(dtype),
                q_rope=(torch.randn(b, heads, R, generator=g) * 0.5).to(dtype),
                nope=torch.randn(num_blocks, BS, 1, L, generator=g).to(dtype),
                rope=torch.randn(num_blocks, BS, 1, R, generator=g).to(dtype),
                table=table, kv_lens=list(kv_lens), scale=0.1)


def _call(x, layout="BSND", **over):
    b, heads = x["q"].shape[:2]
    nb = x["nope"].shape[0]
    q, qr = x["q"].reshape(b, 1, heads, L), x["q_rope"].reshape(b, 1, heads, R)
    if layout == "BNSD":
        q, qr = q.transpose(1, 2), qr.transpose(1, 2)
    elif layout == "BSH":
        q, qr = q.reshape(b, 1, heads * L), qr.reshape(b, 1, heads * R)
    latent = x["nope"].view(nb, BS, L)
    kwargs = dict(query_rope=qr.contiguous(), key_rope=x["rope"].view(nb, BS, R),
                  actual_seq_lengths_kv=x["kv_lens"], block_table=x["table"], num_heads=heads,
                  scale=x["scale"], input_layout=layout, num_key_value_heads=1, sparse_mode=0,
                  block_size=BS)
    kwargs.update(over)
    query = kwargs.pop("query", q.contiguous())
    key = kwargs.pop("key", latent)
    return FIA(query, key, kwargs.pop("value", key), **kwargs)


@pytest.mark.parametrize("layout", ["BSND", "BNSD", "BSH"])
@pytest.mark.parametrize("heads", [32, 128])
def test_mla_decode_matches_float64(layout, heads):
    x = _inputs(heads=heads)
    out, lse = _call(x, layout, softmax_lse_flag=True)
    out = out.reshape(len(x["kv_lens"]), heads, L)  # S = 1: every layout flattens alike
    torch.testing.assert_close(out.double(), mla_decode_reference(x, heads), atol=1e-5,
                               rtol=1e-5)
    assert lse.shape == (len(x["kv_lens"]), heads, 1, 1)


def test_rope_part_changes_the_scores():
    x = _inputs()
    base, _ = _call(x)
    x["q_rope"] = torch.zeros_like(x["q_rope"])
    no_rope, _ = _call(x)
    assert not torch.allclose(base, no_rope)


def test_bf16_within_tolerance():
    x = _inputs(dtype=torch.bfloat16, kv_lens=(257, 3))
    out, _ = _call(x)
    torch.testing.assert_close(out[:, 0].double(), mla_decode_reference(x, 32), atol=3e-2,
                               rtol=2e-2)


def _violations():
    x = _inputs
    return {
        "heads_16": (lambda: _call(x(heads=16)), ValueError, "num_heads"),
        "tnd_layout": (lambda: _call(x(), input_layout="TND", query=torch.zeros(3, 32, L),
                                     query_rope=torch.zeros(3, 32, R),
                                     actual_seq_lengths=[1, 2, 3]), ValueError,
                       "input_layout"),
        "rope_dim_32": (lambda: _call(x(), query_rope=torch.zeros(3, 1, 32, 32)), ValueError,
                        "query_rope"),
        "query_dim_256": (lambda: _call(x(), query=torch.zeros(3, 1, 32, 256)), ValueError,
                          "D 512"),
        "key_rope_only": (lambda: _call(x(), query_rope=None), ValueError, "together"),
        "no_block_table": (lambda: _call(x(), block_table=None), ValueError,
                           "page attention"),
        "kv_heads_2": (lambda: _call(x(), num_key_value_heads=2), ValueError,
                       "key/value head"),
        "sparse_3_single_token": (lambda: _call(x(), sparse_mode=3,
                                                atten_mask=torch.triu(torch.ones(
                                                    2048, 2048, dtype=torch.bool), 1)),
                                  ValueError, "sparse_mode 0"),
        "sparse_4": (lambda: _call(x(), sparse_mode=4), NotImplementedError, "sparse_mode 4"),
        "dtype_mismatch": (lambda: _call(x(), query_rope=torch.zeros(
            3, 1, 32, R, dtype=torch.float16)), TypeError, "dtypes"),
        "noncontiguous_rope": (lambda: _call(x(), query_rope=torch.zeros(
            3, 1, 32, 2 * R)[..., :R]), ValueError, "contiguous"),
        "query_s_17": (lambda: _call(x(), query=torch.zeros(3, 17, 32, L),
                                     query_rope=torch.zeros(3, 17, 32, R)), ValueError,
                       "S in 1..16"),
    }


@pytest.mark.parametrize("case", list(_violations()))
def test_mla_constraints_raise(case):
    fn, exc, match = _violations()[case]
    with pytest.raises(exc, match=match):
        fn()


def test_block_size_64_refused():
    g = torch.Generator().manual_seed(0)
    nope, rope = torch.randn(4, 64, L, generator=g), torch.randn(4, 64, R, generator=g)
    with pytest.raises(ValueError, match="block_size"):
        FIA(torch.randn(1, 1, 32, L), nope, nope, query_rope=torch.randn(1, 1, 32, R),
            key_rope=rope, actual_seq_lengths_kv=[10],
            block_table=torch.zeros(1, 1, dtype=torch.int32), num_heads=32,
            input_layout="BSND", num_key_value_heads=1, block_size=64)


def _fidelity_sample(layout: str, lse: bool):
    def build():
        x = _inputs(dtype=torch.bfloat16, kv_lens=(5, 140))
        b, nb = 2, x["nope"].shape[0]
        q, qr = x["q"].reshape(b, 1, 32, L), x["q_rope"].reshape(b, 1, 32, R)
        if layout == "BNSD":
            q, qr = q.transpose(1, 2).contiguous(), qr.transpose(1, 2).contiguous()
        latent = x["nope"].view(nb, BS, L)
        return (q, latent, latent.clone()), dict(
            query_rope=qr, key_rope=x["rope"].view(nb, BS, R), actual_seq_lengths_kv=[5, 140],
            block_table=x["table"], num_heads=32, scale=0.1, input_layout=layout,
            num_key_value_heads=1, block_size=BS, softmax_lse_flag=lse)
    return build


# Rows for tests/unit/kernels/test_fidelity.py (Meta shapes of torch-npu against the CPU kernel).
FIDELITY_SAMPLES = [
    ("npu_fused_infer_attention_score", "mla_decode_bsnd_lse", _fidelity_sample("BSND", True)),
    ("npu_fused_infer_attention_score", "mla_decode_bnsd", _fidelity_sample("BNSD", False)),
]
