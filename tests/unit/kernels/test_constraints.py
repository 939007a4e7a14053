"""Strict CPU kernels: one negative test per enforced NPU input constraint (DESIGN.md §2).

Each case starts from a call that is legal on an Atlas A2/A3 NPU (the baseline test proves the
kernel accepts it), breaks exactly one constraint, and checks the error names that constraint
and the doc place that states it.
"""

from __future__ import annotations

import pytest
import torch

import vllm_ascend.kernels.npu_ops  # noqa: F401  (registers torch.ops.npu.*)
from vllm_ascend.kernels.npu_ops import attention as fia_mod

# Each test runs through the fast C++ CPU kernels and through the Python references.
pytestmark = pytest.mark.usefixtures("cpu_kernel_impl")

OPS = torch.ops.npu
MASK2048 = torch.triu(torch.ones(2048, 2048, dtype=torch.bool), diagonal=1)

# ---- npu_fused_infer_attention_score ---------------------------------------------------------


def _tnd_paged(**over):
    """Legal: TND query (2 sequences: 3 + 1 tokens), paged (blocknum, blocksize, H) cache,
    GQA 4:2, head dim 64, block size 128, right-down causal."""
    g = torch.Generator().manual_seed(0)
    n, kvn, d, bs, nb = 4, 2, 64, 128, 4
    q = torch.randn(4, n, d, generator=g).half()
    kc = torch.randn(nb, bs, kvn * d, generator=g).half()
    args = [q, kc, kc.clone()]
    table = torch.tensor([[2, 0], [1, 3]], dtype=torch.int32)
    kwargs = dict(atten_mask=MASK2048, block_table=table, actual_seq_lengths=[3, 4],
                  actual_seq_lengths_kv=[130, 7], num_heads=n,
                  num_key_value_heads=kvn, scale=0.125, input_layout="TND", sparse_mode=3,
                  block_size=bs)
    kwargs.update(over)
    return args, kwargs


def _bsh_decode(**over):
    """Legal: BSH decode (Q_S = 1), paged, block size 16."""
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 1, 2 * 16, generator=g).half()
    kc = torch.randn(3, 16, 2 * 16, generator=g).half()
    kwargs = dict(block_table=torch.tensor([[0, 1], [2, 0]], dtype=torch.int32),
                  actual_seq_lengths_kv=[20, 5], num_heads=2, input_layout="BSH",
                  block_size=16, scale=0.25)
    kwargs.update(over)
    return [q, kc, kc.clone()], kwargs


def _bnsd_prefill(**over):
    """Legal: dense BNSD prefill (Q_S = 4), head dim 16."""
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 2, 4, 16, generator=g).half()
    k = torch.randn(1, 2, 6, 16, generator=g).half()
    kwargs = dict(num_heads=2, input_layout="BNSD", scale=0.25)
    kwargs.update(over)
    return [q, k, k.clone()], kwargs


@pytest.mark.parametrize("build", [_tnd_paged, _bsh_decode, _bnsd_prefill])
def test_fia_baselines_are_accepted(build):
    args, kwargs = build()
    out, _ = OPS.npu_fused_infer_attention_score(*args, **kwargs)
    assert torch.isfinite(out.float()).all()


def _noncontig_query(args, kw):
    q = args[0]
    args[0] = torch.empty(q.shape[1], q.shape[0], q.shape[2], dtype=q.dtype).transpose(0, 1)
    args[0].copy_(q)


def _noncontig_key(args, kw):
    args[1] = torch.cat([args[1], args[1]], dim=-1)[..., : args[1].shape[-1]]


def _tnd_head_dim_96(args, kw):
    args[0] = torch.randn(4, 4, 96).half()
    args[1] = torch.randn(4, 128, 2 * 96).half()
    args[2] = args[1].clone()


def _fp32_key_only(args, kw):
    args[1] = args[1].float()


def _bf8_query(args, kw):
    args[0] = args[0].to(torch.float64)
    args[1] = args[1].to(torch.float64)
    args[2] = args[2].to(torch.float64)


def _mask_edit(args, kw):
    m = MASK2048.clone()
    m[5, 3] = True  # one extra masked entry below the diagonal
    kw["atten_mask"] = m


def _mask_fp(args, kw):
    kw["atten_mask"] = MASK2048.half()


def _mask_noncontig(args, kw):
    kw["atten_mask"] = MASK2048.t().contiguous().t()


def _bt_int64(args, kw):
    kw["block_table"] = kw["block_table"].long()


def _bt_bad_id(args, kw):
    kw["block_table"] = torch.tensor([[2, 9], [1, 3]], dtype=torch.int32)


def _bs_24_decode(args, kw):
    args[1] = args[1].reshape(2, 24, -1)
    args[2] = args[1].clone()
    kw.update(block_size=24, block_table=torch.tensor([[0, 1], [1, 0]], dtype=torch.int32))


def _bnsd_bsnd_decode(args, kw):
    args[0] = torch.randn(2, 2, 1, 16).half()  # BNSD with Q_S = 1
    args[1] = torch.randn(2, 2, 5, 16).half()
    args[2] = args[1].clone()
    kw.update(input_layout="BNSD_BSND", block_table=None, actual_seq_lengths_kv=None,
              block_size=0)


def _bs_16_tnd(args, kw):
    args[1] = args[1].reshape(4 * 8, 16, -1)
    args[2] = args[1].clone()
    kw["block_size"] = 16


FIA_CASES = [
    # (name, builder, mutation, exception, message fragment naming the constraint)
    ("query contiguous", _tnd_paged, _noncontig_query, ValueError, "query must be contiguous"),
    ("key contiguous", _bnsd_prefill, _noncontig_key, ValueError, "key must be contiguous"),
    ("TND head dims", _tnd_paged, _tnd_head_dim_96, ValueError, "CheckInputShapeWhenLayoutIsTND"),
    ("kv dtype = query dtype", _tnd_paged, _fp32_key_only, TypeError, "dtypes differ"),
    ("query dtype", _tnd_paged, _bf8_query, TypeError, "'query' dtype"),
    ("compressed mask contents", _tnd_paged, _mask_edit, ValueError, "lower-triangular"),
    ("mask dtype", _tnd_paged, _mask_fp, TypeError, "'atten_mask' dtype"),
    ("mask contiguous", _tnd_paged, _mask_noncontig, ValueError, "atten_mask must be contiguous"),
    ("block_table int32", _tnd_paged, _bt_int64, ValueError, "'block_table' dtype"),
    ("block ids", _tnd_paged, _bt_bad_id, IndexError, "block ids are not validated"),
    ("TND block size", _tnd_paged, _bs_16_tnd, ValueError, "multiple of 128"),
]


def _kw(**over):
    return lambda args, kw: kw.update(over)


FIA_CASES += [
    ("TND last cumulative == T", _tnd_paged, _kw(actual_seq_lengths=[3, 3]), ValueError,
     "must equal T"),
    ("TND cumulative non-decreasing", _tnd_paged, _kw(actual_seq_lengths=[3, 2, 4],
                                                      actual_seq_lengths_kv=[130, 7, 7]),
     ValueError, "non-decreasing"),
    ("TND paged kv length per sequence", _tnd_paged, _kw(actual_seq_lengths_kv=[130]),
     ValueError, "length equals B"),
    ("kv within block_table", _tnd_paged, _kw(actual_seq_lengths_kv=[257, 7]), ValueError,
     "maxBlockNumPerSeq"),
    ("kv lengths non-negative", _bsh_decode, _kw(actual_seq_lengths_kv=[20, -1]), ValueError,
     "non-negative"),
    ("paged needs kv lengths", _tnd_paged, _kw(actual_seq_lengths_kv=None), ValueError,
     "actual_seq_lengths_kv must be passed"),
    ("block_size matches cache", _tnd_paged, _kw(block_size=256), ValueError, "'block_size'"),
    ("decode block size 16-aligned", _bsh_decode, _bs_24_decode, ValueError, "16-aligned"),
    ("GQA divisibility", _bnsd_prefill, _kw(num_key_value_heads=3), ValueError,
     "not a multiple"),
    ("scale positive", _bnsd_prefill, _kw(num_heads=2, num_key_value_heads=0, scale=-1.0),
     ValueError, "scale must be positive"),
    ("sparse 4 band range", _tnd_paged, _kw(sparse_mode=4, pre_tokens=-5, next_tokens=0),
     ValueError, "pre\\+next >= 0"),
    ("sparse 4 void on decode", _bsh_decode, _kw(sparse_mode=4, atten_mask=MASK2048,
                                                 pre_tokens=3, next_tokens=0),
     NotImplementedError, "void when Q_S is 1"),
    ("BNSD_BSND needs Q_S > 1", _bsh_decode, _bnsd_bsnd_decode, ValueError,
     "BNSD_BSND only for Q_S > 1"),
    ("inner_precise on decode", _bsh_decode, _kw(inner_precise=2), ValueError,
     "'inner_precise'"),
]


@pytest.mark.parametrize("name,build,mutate,exc,match", FIA_CASES, ids=[c[0] for c in FIA_CASES])
def test_fia_constraint_violations_raise(name, build, mutate, exc, match):
    args, kwargs = build()
    mutate(args, kwargs)
    with pytest.raises(exc, match=match) as info:
        OPS.npu_fused_infer_attention_score(*args, **kwargs)
    assert "npu_fused_infer_attention_score" in str(info.value)


def test_fia_gqa_group_limit_and_prefill_alignment():
    q = torch.randn(1, 65, 2, 16).half()  # BNSD, 65 heads sharing 1 kv head: group 65 > 64
    k = torch.randn(1, 1, 2, 16).half()
    with pytest.raises(ValueError, match="exceeds 64"):
        OPS.npu_fused_infer_attention_score(q, k, k, num_heads=65, num_key_value_heads=1,
                                            input_layout="BNSD")
    q = torch.randn(1, 2, 4, 24).half()  # Q_S = 4 with head dim 24: not 16-aligned
    k = torch.randn(1, 2, 4, 24).half()
    with pytest.raises(ValueError, match="D 16-aligned"):
        OPS.npu_fused_infer_attention_score(q, k, k, num_heads=2, input_layout="BNSD")
    k = torch.randn(1, 2, 4, 16).half()
    v = torch.randn(1, 2, 4, 32).half()  # dense key/value shapes must be identical
    q = torch.randn(1, 2, 4, 16).half()
    with pytest.raises(ValueError, match="key and value shapes identical"):
        OPS.npu_fused_infer_attention_score(q, k, v, num_heads=2, input_layout="BNSD")


def test_fia_compressed_mask_check_is_cached_and_tracks_edits(monkeypatch, cpu_kernel_impl):
    """Both implementations cache the mask check by tensor and version (the reference's cache is
    spied on; the fast kernel's shows in behaviour: an edit after two good calls is caught)."""
    calls = []
    real = fia_mod._compressed_template
    monkeypatch.setattr(fia_mod, "_compressed_template", lambda: calls.append(1) or real())
    reference = cpu_kernel_impl == "reference"
    mask = MASK2048.clone()
    args, kwargs = _tnd_paged(atten_mask=mask)
    OPS.npu_fused_infer_attention_score(*args, **kwargs)
    OPS.npu_fused_infer_attention_score(*args, **kwargs)
    assert len(calls) == (1 if reference else 0)  # second call: cached by identity and version
    mask[7, 2] = True  # an in-place edit bumps the version: checked again, and rejected
    with pytest.raises(ValueError, match="lower-triangular"):
        OPS.npu_fused_infer_attention_score(*args, **kwargs)
    assert len(calls) == (2 if reference else 1)


def test_fia_fp32_relaxation_is_cpu_only():
    """float32 is accepted on CPU tensors (the HF-comparison relaxation); the same check refuses
    it on any other device."""
    fia_mod._check_dtype("query", torch.randn(2, 2))
    with pytest.raises(TypeError, match="float32 on the CPU backend only"):
        fia_mod._check_dtype("query", torch.empty(2, 2, device="meta"))


# ---- npu_scatter_pa_kv_cache -------------------------------------------------------------------


def _scatter_args():
    key = torch.randn(3, 2, 16).half()
    kc = torch.zeros(2, 16, 2, 16, dtype=torch.half)
    return [key, key.clone(), kc, kc.clone(), torch.tensor([0, 17, 5], dtype=torch.int32)]


def test_scatter_baseline_and_negative_slot():
    args = _scatter_args()
    OPS.npu_scatter_pa_kv_cache(*args, cache_mode="Norm")
    assert torch.equal(args[2][1, 1], args[0][1])
    args[4] = torch.tensor([0, -1, 5], dtype=torch.int32)
    before = args[2].clone()
    with pytest.raises(IndexError, match="slot_mapping value range"):
        OPS.npu_scatter_pa_kv_cache(*args, cache_mode="Norm")
    assert torch.equal(args[2], before)  # nothing written


@pytest.mark.parametrize("mutation,exc,match", [
    (lambda a: a.__setitem__(4, torch.tensor([0, 32, 5])), IndexError, "value range"),
    (lambda a: a.__setitem__(4, torch.tensor([0, 5, 5])), ValueError, "must not repeat"),
    (lambda a: a.__setitem__(4, torch.tensor([0, 1, 2], dtype=torch.int16)), TypeError,
     "'slot_mapping' dtype"),
    (lambda a: a.__setitem__(4, torch.tensor([[0, 1, 2]])), ValueError, "slot_mapping \\[batch"),
    (lambda a: a.__setitem__(0, torch.randn(3, 16, 2).half().transpose(1, 2)), ValueError,
     "non-contiguous"),
    (lambda a: a.__setitem__(0, a[0].float()), TypeError, "equal dtypes"),
    (lambda a: [a.__setitem__(i, a[i].double()) for i in range(4)], TypeError, "'key' dtype"),
])
def test_scatter_constraint_violations_raise(mutation, exc, match):
    args = _scatter_args()
    mutation(args)
    with pytest.raises(exc, match=match):
        OPS.npu_scatter_pa_kv_cache(*args, cache_mode="Norm")


# ---- norms, activation, sampling ---------------------------------------------------------------


def test_norm_constraints():
    x, g = torch.randn(4, 8).half(), torch.randn(8).half()
    OPS.npu_rms_norm(x, g)
    with pytest.raises(TypeError, match="gamma dtype"):
        OPS.npu_rms_norm(x, g.float())
    with pytest.raises(ValueError, match="2..8 dims"):
        OPS.npu_rms_norm(x[0], g)
    OPS.npu_add_rms_norm(x, x.clone(), g)
    with pytest.raises(ValueError, match="must match x1"):
        OPS.npu_add_rms_norm(x, x.bfloat16(), g)
    with pytest.raises(ValueError, match="empty"):
        OPS.npu_add_rms_norm(x[:0], x[:0], g)


def test_swiglu_constraints():
    with pytest.raises(ValueError, match="1..8 dims"):
        OPS.npu_swiglu(torch.randn([1] * 8 + [4]))
    with pytest.raises(TypeError, match="'x' dtype"):
        OPS.npu_swiglu(torch.randn(2, 4).double())


@pytest.mark.parametrize("p,k,exc,match", [
    (None, torch.tensor([1025, 1], dtype=torch.int32), ValueError, "'k' value range"),
    (None, torch.tensor([3, 2], dtype=torch.int64), TypeError, "'k' dtype"),
    (torch.tensor([0.5, 1.5]), None, ValueError, "'p' value range"),
    (torch.tensor([0.5, 0.5]).half(), None, TypeError, "'p' dtype"),
])
def test_top_k_top_p_constraints(p, k, exc, match):
    logits = torch.randn(2, 2000)
    with pytest.raises(exc, match=match):
        OPS.npu_top_k_top_p(logits, p, k)


def test_top_k_top_p_logits_dtype():
    with pytest.raises(TypeError, match="'logits' dtype"):
        OPS.npu_top_k_top_p(torch.randn(2, 8).double(), None,
                            torch.tensor([1, 2], dtype=torch.int32))


# ---- MoE -----------------------------------------------------------------------------------


def test_init_routing_v2_constraints():
    x, idx = torch.randn(4, 8), torch.zeros(4, 2, dtype=torch.int32)
    ok = dict(expert_num=4, expert_tokens_num_type=1, expert_tokens_num_flag=True)
    OPS.npu_moe_init_routing_v2(x, idx, **ok)
    with pytest.raises(ValueError, match="'expert_tokens_num_type'"):
        OPS.npu_moe_init_routing_v2(x, idx, **{**ok, "expert_tokens_num_type": 0})
    with pytest.raises(ValueError, match="'expert_tokens_num_flag'"):
        OPS.npu_moe_init_routing_v2(x, idx, **{**ok, "expert_tokens_num_flag": False})
    with pytest.raises(ValueError, match="\\(0, 5120\\]"):
        OPS.npu_moe_init_routing_v2(x, idx, **{**ok, "expert_tokens_num_type": 2,
                                               "expert_num": 5121})
    with pytest.raises(ValueError, match="'scale'"):
        OPS.npu_moe_init_routing_v2(x, idx, scale=torch.ones(4).half(), **ok)


def _gmm(x, w, gl, glt=1, **kw):
    return OPS.npu_grouped_matmul([x], [w], group_list=gl, split_item=2, group_type=0,
                                  group_list_type=glt, **kw)


def test_grouped_matmul_constraints():
    x, w = torch.randn(6, 8).half(), torch.randn(2, 8, 4).half()
    gl = torch.tensor([2, 4])
    _gmm(x, w, gl)
    with pytest.raises(ValueError, match="'group_list' dtype"):
        _gmm(x, w, gl.int())
    with pytest.raises(ValueError, match="cannot have length 1"):
        _gmm(x, w[:1], torch.tensor([6]))
    with pytest.raises(ValueError, match="x cannot be transposed"):
        _gmm(x.t().contiguous().t(), w, gl)
    with pytest.raises(ValueError, match="dtype table"):
        _gmm(x, w, gl, bias=[torch.zeros(2, 4)])  # float16 x needs a float16 bias
    with pytest.raises(ValueError, match="exceed 1024"):
        _gmm(torch.randn(0, 8).half(), torch.randn(1025, 8, 4).half(),
             torch.zeros(1025, dtype=torch.int64))
    with pytest.raises(ValueError, match="InnerLimit"):
        _gmm(torch.randn(2, 65536).half(), torch.randn(2, 65536, 1).half(), torch.tensor([1, 1]))


def test_token_unpermute_constraints():
    tokens = torch.randn(4, 8)
    probs = torch.ones(2, 2)
    OPS.npu_moe_token_unpermute(tokens, torch.tensor([0, 2, 1, 3], dtype=torch.int32), probs)
    with pytest.raises(ValueError, match="no repeated index"):
        OPS.npu_moe_token_unpermute(tokens, torch.tensor([0, 2, 2, 3], dtype=torch.int32), probs)
    with pytest.raises(ValueError, match="'permuted_tokens' shape"):
        OPS.npu_moe_token_unpermute(torch.randn(5, 8), torch.tensor([0, 2, 1, 3],
                                                                     dtype=torch.int32), probs)
    with pytest.raises(ValueError, match="exceeds 512"):
        OPS.npu_moe_token_unpermute(torch.randn(513, 8), torch.arange(513, dtype=torch.int32),
                                    torch.ones(1, 513))


def test_fia_prefix_shared_blocks_may_exceed_the_cache_count():
    # Prefix caching: three sequences share block 0 and each has its own second block, so they
    # name 6 block slots in a 4-block cache, every id valid (the reading noted in the kernel).
    args, kwargs = _tnd_paged(
        block_table=torch.tensor([[0, 1], [0, 2], [0, 3]], dtype=torch.int32),
        actual_seq_lengths=[1, 2, 3], actual_seq_lengths_kv=[130, 131, 132])
    args[0] = args[0][:3].contiguous()
    out, _ = OPS.npu_fused_infer_attention_score(*args, **kwargs)
    assert torch.isfinite(out.float()).all()


def test_fia_accepts_and_checks_an_inference_mode_mask():
    # Inference tensors have no version counter: the content check runs on every call.
    with torch.inference_mode():
        mask = torch.triu(torch.ones(2048, 2048, dtype=torch.bool), diagonal=1)
        args, kwargs = _tnd_paged(atten_mask=mask)
        out, _ = OPS.npu_fused_infer_attention_score(*args, **kwargs)
        assert torch.isfinite(out.float()).all()
        mask[0, 1] = False  # no version bump in inference mode; still caught
        with pytest.raises(ValueError, match="2048x2048 template"):
            OPS.npu_fused_infer_attention_score(*args, **kwargs)


def test_engine_mask_is_a_normal_tensor_even_built_in_inference_mode():
    from vllm_ascend.attention.metadata import compressed_causal_mask

    compressed_causal_mask.cache_clear()
    with torch.inference_mode():
        mask = compressed_causal_mask(torch.device("cpu"))
    assert not mask.is_inference() and mask._version == 0
