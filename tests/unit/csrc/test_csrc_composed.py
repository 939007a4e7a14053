"""kernels/composed.py: the torch compositions that serve the _C_ascend ops on an NPU when the
build opted out of Ascend C. Checked against the float64 references of the C++ kernel tests, and
through the real dispatcher (a test namespace on CPU here; PrivateUse1 in
test_csrc_npu_kernel_source.py)."""

import pytest
import torch
from csrc_test_utils import DTYPES, TOLS
from test_csrc_add_rms_norm_quant import check_against_float64_reference as check_add_rms_norm_quant
from test_csrc_masked_input import SHARDS
from test_csrc_masked_input import reference as masked_input_reference
from test_csrc_rotary import check_rotary_on_fused_qkv_views, make_cache
from test_csrc_rotary import reference as rotary_reference

from vllm_ascend.kernels import composed, extension

# ---- rotary_embedding ------------------------------------------------------------------------

ROTARY_CASES = [
    # tokens, q heads, k heads, head_size, rot_dim
    (1, 4, 1, 64, 64),
    (5, 3, 2, 80, 80),
    (17, 2, 2, 96, 48),  # partial rotary
    (33, 5, 1, 100, 64),  # partial rotary, head_size not a power of two
    (64, 8, 2, 128, 128),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize("case", ROTARY_CASES, ids=lambda c: "T{}_q{}_k{}_hs{}_rot{}".format(*c))
def test_rotary_matches_float64_reference(dtype, is_neox, case):
    tokens, nq, nk, head_size, rot_dim = case
    positions = torch.randint(0, 1024, (tokens,))
    cache = make_cache(1024, rot_dim, dtype)
    q = torch.randn(tokens, nq * head_size, dtype=dtype)
    k = torch.randn(tokens, nk * head_size, dtype=dtype)
    q0, k0 = q.clone(), k.clone()
    q_ptr, k_ptr = q.data_ptr(), k.data_ptr()

    assert composed.rotary_embedding(positions, q, k, head_size, cache, is_neox) is None

    assert q.data_ptr() == q_ptr and k.data_ptr() == k_ptr
    torch.testing.assert_close(
        q.double(), rotary_reference(positions, q0, head_size, cache, is_neox), **TOLS[dtype])
    torch.testing.assert_close(
        k.double(), rotary_reference(positions, k0, head_size, cache, is_neox), **TOLS[dtype])
    if rot_dim < head_size:
        assert torch.equal(q.view(tokens, nq, head_size)[..., rot_dim:],
                           q0.view(tokens, nq, head_size)[..., rot_dim:])
        assert torch.equal(k.view(tokens, nk, head_size)[..., rot_dim:],
                           k0.view(tokens, nk, head_size)[..., rot_dim:])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
def test_rotary_in_place_on_fused_qkv_views(dtype, is_neox):
    check_rotary_on_fused_qkv_views(composed.rotary_embedding, dtype, is_neox)


def test_rotary_batched_positions_no_key_and_fp32_cache():
    b, s, nq, hs = 3, 5, 2, 64
    positions = torch.randint(0, 100, (b, s))
    cache = make_cache(100, hs, torch.float32)
    q = torch.randn(b, s, nq * hs, dtype=torch.bfloat16)
    q0 = q.clone()
    composed.rotary_embedding(positions, q, None, hs, cache, False)
    torch.testing.assert_close(q.double(), rotary_reference(positions, q0, hs, cache, False),
                               **TOLS[torch.bfloat16])


def test_rotary_agrees_with_cpu_kernel(C):
    """Same fp32 arithmetic and one rounding as the C++ kernel: equal up to fp32 reassociation."""
    positions = torch.randint(0, 512, (64,))
    cache = make_cache(512, 128, torch.bfloat16)
    q = torch.randn(64, 8 * 128, dtype=torch.bfloat16)
    k = torch.randn(64, 2 * 128, dtype=torch.bfloat16)
    qc, kc = q.clone(), k.clone()
    composed.rotary_embedding(positions, q, k, 128, cache, True)
    C.rotary_embedding(positions, qc, kc, 128, cache, True)
    # At most one bf16 ulp apart where fp32 FMA contraction tips a rounding.
    torch.testing.assert_close(q, qc, atol=1e-2, rtol=8e-3)
    torch.testing.assert_close(k, kc, atol=1e-2, rtol=8e-3)


def test_rotary_rejects_what_the_kernel_rejects():
    cache = make_cache(16, 64, torch.float32)
    with pytest.raises(RuntimeError, match="multiple of head_size"):
        composed.rotary_embedding(torch.tensor([0, 1]), torch.randn(2, 100), None, 64, cache,
                                  True)
    with pytest.raises(RuntimeError, match="rot_dim"):
        composed.rotary_embedding(torch.tensor([0, 1]), torch.randn(2, 64), None, 32, cache, True)
    with pytest.raises(RuntimeError, match="int64 or int32"):
        composed.rotary_embedding(torch.tensor([0.0, 1.0]), torch.randn(2, 64), None, 64, cache,
                                  True)
    with pytest.raises(RuntimeError, match="key dtype"):
        composed.rotary_embedding(torch.tensor([0, 1]), torch.randn(2, 64),
                                  torch.randn(2, 64, dtype=torch.float16), 64, cache, True)
    with pytest.raises(RuntimeError, match="last dim must be contiguous"):
        composed.rotary_embedding(torch.tensor([0, 1]), torch.randn(64, 2).t(), None, 64, cache,
                                  True)
    with pytest.raises(RuntimeError, match="cannot be flattened"):
        composed.rotary_embedding(torch.zeros(2, 3, dtype=torch.long),
                                  torch.randn(3, 2, 64).transpose(0, 1), None, 64, cache, True)
    with pytest.raises(IndexError):  # position 16 is past the 16-row cache
        composed.rotary_embedding(torch.tensor([0, 16]), torch.randn(2, 64), None, 64, cache,
                                  True)


# ---- get_masked_input_and_mask ---------------------------------------------------------------


@pytest.mark.parametrize("shard", SHARDS, ids=str)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32], ids=str)
@pytest.mark.parametrize("shape", [(1,), (7,), (300,), (3, 65)], ids=str)
def test_masked_input_matches_reference(shard, dtype, shape):
    hi = max(shard[1], shard[4]) + 50
    ids = torch.randint(-3, hi, shape, dtype=dtype)
    masked, mask = composed.get_masked_input_and_mask(ids, *shard)
    ref_out, ref_mask = masked_input_reference(ids, *shard)
    assert masked.dtype == torch.int64 and mask.dtype == torch.bool
    assert torch.equal(masked, ref_out) and torch.equal(mask, ref_mask)


def test_masked_input_non_contiguous_empty_and_bad_dtype():
    ids = torch.randint(0, 3000, (64, 2))[:, 0]
    masked, mask = composed.get_masked_input_and_mask(ids, 1000, 2000, 0, 2000, 2000)
    ref_out, ref_mask = masked_input_reference(ids, 1000, 2000, 0, 2000, 2000)
    assert torch.equal(masked, ref_out) and torch.equal(mask, ref_mask)
    empty = composed.get_masked_input_and_mask(torch.empty(0, dtype=torch.long), 0, 1, 0, 1, 1)
    assert empty[0].shape == (0,) and empty[1].shape == (0,)
    with pytest.raises(RuntimeError, match="int64 or int32"):
        composed.get_masked_input_and_mask(torch.zeros(3), 0, 1, 0, 1, 1)


# ---- add_rms_norm_dynamic_quant --------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 64), (8, 4096), (64, 1000), (3, 5, 257)], ids=str)
def test_add_rms_norm_quant_matches_float64_reference(dtype, shape):
    check_add_rms_norm_quant(composed.add_rms_norm_dynamic_quant, dtype, shape)


def test_add_rms_norm_quant_zero_row_and_bad_shapes():
    x = torch.zeros(2, 48)
    x[1] = torch.randn(48)
    y, scale, _ = composed.add_rms_norm_dynamic_quant(x, torch.zeros_like(x), torch.ones(48),
                                                      1e-6)
    assert scale[0] == 0 and (y[0] == 0).all() and scale[1] > 0
    assert y[1].abs().max() == 127
    with pytest.raises(RuntimeError, match="residual"):
        composed.add_rms_norm_dynamic_quant(torch.randn(2, 8), torch.randn(2, 9), torch.ones(8),
                                            1e-6)
    with pytest.raises(RuntimeError, match="weight"):
        composed.add_rms_norm_dynamic_quant(torch.randn(2, 8), torch.randn(2, 8), torch.ones(9),
                                            1e-6)


# ---- registration through the dispatcher -----------------------------------------------------

TEST_NAMESPACE = "_C_ascend_composed_test"


@pytest.fixture(scope="module")
def test_ops():
    """The _C_ascend schemas under a test-only namespace, served by the compositions for CPU
    tensors through composed.register (the helper the plugin uses for PrivateUse1)."""
    lib = torch.library.Library(TEST_NAMESPACE, "DEF")
    for schema in extension.EXPECTED_SCHEMAS.values():
        lib.define(schema.split("::", 1)[1])
    assert composed.register("CPU", namespace=TEST_NAMESPACE) is True
    assert composed.register("CPU", namespace=TEST_NAMESPACE) is False  # idempotent
    yield getattr(torch.ops, TEST_NAMESPACE)
    del lib


def test_register_puts_each_op_under_the_chosen_key(test_ops):
    assert composed.registered("CPU", namespace=TEST_NAMESPACE)
    for name in extension.EXPECTED_SCHEMAS:
        qualname = f"{TEST_NAMESPACE}::{name}"
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CPU")
        assert not torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "PrivateUse1")


def test_dispatcher_routes_to_the_compositions(test_ops):
    tokens, nq, nk, hs = 11, 3, 1, 64
    qkv = torch.randn(tokens, (nq + 2 * nk) * hs, dtype=torch.float16)
    qkv0 = qkv.clone()
    q, k, _ = qkv.split([nq * hs, nk * hs, nk * hs], dim=-1)
    positions = torch.randint(0, 256, (tokens,))
    cache = make_cache(256, 32, torch.float16)
    assert test_ops.rotary_embedding(positions, q, k, hs, cache, False) is None
    torch.testing.assert_close(
        q.double(), rotary_reference(positions, qkv0[:, : nq * hs], hs, cache, False),
        **TOLS[torch.float16])

    ids = torch.randint(0, 1100, (50,), dtype=torch.int32)
    masked, mask = test_ops.get_masked_input_and_mask(ids, 0, 512, 0, 1010, 1026)
    ref = masked_input_reference(ids, 0, 512, 0, 1010, 1026)
    assert torch.equal(masked, ref[0]) and torch.equal(mask, ref[1])

    x = torch.randn(4, 96, dtype=torch.bfloat16)
    res = torch.randn_like(x)
    w = torch.ones(96, dtype=torch.bfloat16)
    got = test_ops.add_rms_norm_dynamic_quant(x, res, w, 1e-5)
    want = composed.add_rms_norm_dynamic_quant(x, res, w, 1e-5)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
