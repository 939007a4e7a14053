"""The Ascend C kernels, run on the host through the shim with the launchers' own tiling, against
the C++ CPU kernels of the same ops (torch.ops._C_ascend on CPU tensors).

Tolerances: integer outputs (masked ids, mask, int8 codes aside from rounding ties) exact. Float
outputs of rotary: both sides compute in fp32 and round once to the storage dtype, so they agree
to within one rounding step of that dtype (fp32: 1e-6 relative). add_rms_norm: residual_out is
exact; the scale agrees to 1e-5 relative (the device reduces in a different order); an int8 code
may differ by 1 where y * 127 / max|y| lies within that reduction error of a .5 tie.
"""

import ascendc_harness as ah
import pytest
import torch

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# One rounding step of the storage dtype, relative; fp32 allows for the sum-order difference.
ROUND_TOL = {torch.float32: dict(atol=1e-6, rtol=1e-6),
             torch.float16: dict(atol=1e-3, rtol=1e-3),
             torch.bfloat16: dict(atol=8e-3, rtol=8e-3)}
CORES = ah.CORES_910B


def bits(t):
    return t.view({torch.float32: torch.int32, torch.float16: torch.int16,
                   torch.bfloat16: torch.int16}[t.dtype])


# ---- rotary_embedding -------------------------------------------------------------------------
def make_cache(max_pos, rot_dim, base=10000.0):
    inv_freq = 1.0 / base ** (torch.arange(0, rot_dim, 2, dtype=torch.float64) / rot_dim)
    freqs = torch.arange(max_pos, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1)


ROTARY_CASES = [
    # tokens, q heads, k heads, head_size, rot_dim (the op tests' shapes, and a few more)
    (1, 4, 1, 64, 64),
    (5, 3, 2, 80, 80),
    (17, 2, 2, 96, 48),
    (33, 5, 1, 100, 64),
    (40, 8, 8, 128, 128),
    (64, 8, 2, 128, 128),
    (41, 32, 8, 128, 128),   # more heads than one tile holds
    (2048, 4, 1, 128, 64),
    (4096, 2, 1, 80, 80),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize("case", ROTARY_CASES, ids=lambda c: "T{}_q{}_k{}_hs{}_rot{}".format(*c))
def test_rotary_matches_cpu_kernel(hx, C, dtype, is_neox, case):
    tokens, nq, nk, hs, rot = case
    max_pos = 8192
    positions = torch.randint(0, max_pos, (tokens,))
    cache = make_cache(max_pos, rot).to(dtype)
    q = torch.randn(tokens, nq * hs, dtype=dtype)
    k = torch.randn(tokens, nk * hs, dtype=dtype)
    if rot < hs:  # pass-through dims must come back bit for bit, signed zeros included
        q.view(tokens, nq, hs)[:, :, rot] = -0.0
        k.view(tokens, nk, hs)[:, :, rot] = -0.0
    q_ref, k_ref = q.clone(), k.clone()
    C.rotary_embedding(positions, q_ref, k_ref, hs, cache, is_neox)

    q_dev, k_dev = q.clone(), k.clone()
    t = hx.rotary_embedding(positions, q_dev, k_dev, hs, cache, is_neox, CORES)
    assert t[10] == min(tokens, CORES)  # every core up to the token count is used
    assert hx.ub_peak <= hx.ub_budget, (hx.ub_peak, hx.ub_budget)

    torch.testing.assert_close(q_dev, q_ref, **ROUND_TOL[dtype])
    torch.testing.assert_close(k_dev, k_ref, **ROUND_TOL[dtype])
    if rot < hs:
        assert torch.equal(bits(q_dev.view(tokens, nq, hs)[..., rot:]),
                           bits(q.view(tokens, nq, hs)[..., rot:]))
        assert torch.equal(bits(k_dev.view(tokens, nk, hs)[..., rot:]),
                           bits(k.view(tokens, nk, hs)[..., rot:]))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rotary_fused_qkv_views_and_no_key(hx, C, dtype):
    """q/k as views into one qkv row (token stride > row): v and the gaps stay untouched."""
    tokens, nq, nk, hs, rot = 37, 4, 2, 96, 64
    qkv = torch.randn(tokens, (nq + 2 * nk) * hs, dtype=dtype)
    positions = torch.randint(0, 1024, (tokens,), dtype=torch.int32)
    cache = make_cache(1024, rot).to(dtype)
    ref = qkv.clone()
    q_r, k_r, _ = ref.split([nq * hs, nk * hs, nk * hs], dim=-1)
    C.rotary_embedding(positions, q_r, k_r, hs, cache, True)
    dev = qkv.clone()
    q_d, k_d, _ = dev.split([nq * hs, nk * hs, nk * hs], dim=-1)
    hx.rotary_embedding(positions, q_d, k_d, hs, cache, True, CORES)
    torch.testing.assert_close(dev, ref, **ROUND_TOL[dtype])
    assert torch.equal(dev[:, (nq + nk) * hs:], qkv[:, (nq + nk) * hs:])

    q = torch.randn(tokens, nq * hs, dtype=dtype)
    q_ref, q_dev = q.clone(), q.clone()
    C.rotary_embedding(positions, q_ref, None, hs, cache, False)
    hx.rotary_embedding(positions, q_dev, None, hs, cache, False, CORES)
    torch.testing.assert_close(q_dev, q_ref, **ROUND_TOL[dtype])


# ---- get_masked_input_and_mask ----------------------------------------------------------------
SHARDS = [
    (0, 1010, 14, 1010, 1026),
    (0, 512, 0, 1010, 1026),
    (512, 1010, 14, 1026, 1026),
    (0, 32000, 0, 0, 0),
]


@pytest.mark.parametrize("shard", SHARDS, ids=str)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32], ids=str)
@pytest.mark.parametrize("shape", [(1,), (7,), (4096,), (3, 65), (40 * 4096 + 17,)], ids=str)
def test_masked_input_matches_cpu_kernel(hx, C, shard, dtype, shape):
    hi = max(shard[1], shard[4]) + 50
    ids = torch.randint(-3, hi, shape, dtype=dtype)
    want_ids, want_mask = C.get_masked_input_and_mask(ids, *shard)
    got_ids, got_mask, t = hx.get_masked_input_and_mask(ids, *shard, CORES)
    assert hx.ub_peak <= hx.ub_budget
    assert torch.equal(got_ids, want_ids)
    assert torch.equal(got_mask, want_mask)


# ---- add_rms_norm_dynamic_quant ---------------------------------------------------------------
def check_norm(got, want):
    y, scale, r_out = got
    y_ref, scale_ref, r_ref = want
    assert torch.equal(bits(r_out), bits(r_ref))
    torch.testing.assert_close(scale, scale_ref, atol=0, rtol=1e-5)
    diff = (y.int() - y_ref.int()).abs()
    assert diff.max() <= 1
    assert (diff > 0).double().mean() < 1e-3


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 64), (8, 4096), (64, 1000), (2048, 128), (3, 5, 257),
                                   (41, 7168), (3, 8192)], ids=str)
def test_add_rms_norm_quant_matches_cpu_kernel(hx, C, dtype, shape):
    hidden = shape[-1]
    x = torch.randn(shape, dtype=dtype)
    residual = torch.randn(shape, dtype=dtype)
    weight = (1 + 0.1 * torch.randn(hidden)).to(dtype)
    if dtype == torch.float32 and hidden >= 7168:
        # An fp32 row of that size does not fit the UB budget: the launcher refuses it.
        with pytest.raises(ValueError, match="does not fit"):
            hx.add_rms_norm_dynamic_quant(x, residual, weight, 1e-6, CORES)
        return
    want = C.add_rms_norm_dynamic_quant(x, residual, weight, 1e-6)
    *got, t = hx.add_rms_norm_dynamic_quant(x, residual, weight, 1e-6, CORES)
    assert hx.ub_peak <= hx.ub_budget
    check_norm(got, want)


def test_add_rms_norm_quant_fp32_weight_bf16_input(hx, C):
    """A fp32 weight is used as fp32 (as by the CPU kernel), not rounded to the input dtype."""
    x = torch.randn(16, 1000, dtype=torch.bfloat16)
    residual = torch.randn_like(x)
    weight = 1 + 0.1 * torch.randn(1000)
    want = C.add_rms_norm_dynamic_quant(x, residual, weight, 1e-5)
    *got, _ = hx.add_rms_norm_dynamic_quant(x, residual, weight, 1e-5, CORES)
    check_norm(got, want)


def test_add_rms_norm_quant_zero_row_and_signed_zero(hx, C):
    x = torch.zeros(3, 48)
    x[1] = torch.randn(48)
    residual = torch.zeros_like(x)
    x[2] = -0.0
    residual[2] = -0.0
    want = C.add_rms_norm_dynamic_quant(x, residual, torch.ones(48), 1e-6)
    *got, _ = hx.add_rms_norm_dynamic_quant(x, residual, torch.ones(48), 1e-6, CORES)
    y, scale, _ = got
    assert scale[0] == 0 and (y[0] == 0).all() and y[1].abs().max() == 127
    check_norm(got, want)
