"""CPU kernels of torch_npu's npu_mrope, npu_rotary_mul and npu_fast_gelu
(vllm_ascend/kernels/npu_ops/rotary.py, activation.py) against float64 references written from
the doc entries, plus the constraints they enforce."""

from __future__ import annotations

import math

import pytest
import torch

import vllm_ascend.kernels.npu_ops  # noqa: F401  (registers torch.ops.npu.*)

OPS = torch.ops.npu
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def _cache(max_pos: int, rot: int, base: float = 10000.0) -> torch.Tensor:
    inv = 1.0 / base ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot)
    ang = torch.arange(max_pos, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cat((ang.cos(), ang.sin()), dim=-1)


def _mrope_ref(positions, x, cache, head, section, mode):
    """float64, one token / head / frequency at a time from the doc's description."""
    rot = cache.shape[1]
    half = rot // 2
    owner = [s for s, n in enumerate(section) for _ in range(n)] if section else [0] * half
    pos = positions if positions.dim() == 2 else positions[None]
    out = x.double().clone().view(x.shape[0], -1, head)
    src = x.double().view(x.shape[0], -1, head)
    for t in range(x.shape[0]):
        for j in range(half):
            p = int(pos[owner[j], t])
            c, s = cache[p, j].item(), cache[p, half + j].item()
            a, b = (j, j + half) if mode == "half" else (2 * j, 2 * j + 1)
            out[t, :, a] = src[t, :, a] * c - src[t, :, b] * s
            out[t, :, b] = src[t, :, b] * c + src[t, :, a] * s
    return out.view(x.shape)


@pytest.mark.parametrize("dtype,head,rot,section,mode", [
    (torch.float32, 64, 64, [8, 12, 12], "half"),      # Qwen2-VL-like tiny text model
    (torch.bfloat16, 128, 128, [16, 24, 24], "half"),  # Qwen2.5-VL-7B's sections
    (torch.float16, 128, 64, [8, 12, 12], "interleave"),  # partial rotary, GPT-J pairs
    (torch.float32, 64, 32, None, "half"),             # rope mode: 1-D positions
])
def test_mrope_matches_reference(dtype, head, rot, section, mode):
    g = _g()
    tokens, q_heads, k_heads = 7, 3, 1
    cache64 = _cache(50, rot)
    positions = (torch.randint(0, 50, (3, tokens), generator=g) if section
                 else torch.randint(0, 50, (tokens,), generator=g))
    q = torch.randn(tokens, q_heads * head, generator=g).to(dtype)
    k = torch.randn(tokens, k_heads * head, generator=g).to(dtype)
    q_out, k_out = OPS.npu_mrope(positions, q, k, cache64.to(dtype), head,
                                 mrope_section=section, rotary_mode=mode)
    cache_as_given = cache64.to(dtype).double()
    for got, x in ((q_out, q), (k_out, k)):
        assert got.dtype == dtype and got.shape == x.shape
        ref = _mrope_ref(positions, x, cache_as_given, head, section, mode)
        torch.testing.assert_close(got.double(), ref, rtol=TOL[dtype], atol=TOL[dtype])
        # the features past rotary_dim pass through unchanged
        tail = (got.view(tokens, -1, head)[..., rot:], x.view(tokens, -1, head)[..., rot:])
        assert torch.equal(*tail)


def test_mrope_sections_take_their_own_position_rows():
    """Only the T row moves frequencies of section 0; H and W rows only theirs."""
    head, section = 64, [8, 12, 12]
    cache = _cache(20, head).float()
    q = torch.randn(2, head, generator=_g(1))
    base = torch.zeros(3, 2, dtype=torch.int64)
    ref, _ = OPS.npu_mrope(base, q, q.clone(), cache, head, mrope_section=section)
    for row, (lo, hi) in enumerate(((0, 8), (8, 20), (20, 32))):
        moved = base.clone()
        moved[row] = 5
        out, _ = OPS.npu_mrope(moved, q, q.clone(), cache, head, mrope_section=section)
        changed = (out != ref).any(dim=0)
        idx = changed.nonzero().flatten().tolist()
        want = list(range(lo, hi)) + list(range(lo + 32, hi + 32))
        assert idx == want, f"row {row}"


@pytest.mark.parametrize("change,match", [
    (dict(rot=48), "multiple of 32"),
    (dict(section=[8, 12, 8]), "summing to"),
    (dict(section=None), "need mrope_section"),
    (dict(pos_max=60), r"lie in \[0, 50\)"),
    (dict(q_3d=True), "must be 2-D"),
    (dict(cache_mode="interleave"), "only 'default'"),
    (dict(cache_dtype=torch.float32), "share a dtype"),
])
def test_mrope_refuses(change, match):
    rot = change.get("rot", 64)
    positions = torch.randint(0, change.get("pos_max", 50), (3, 4), generator=_g())
    positions[0, 0] = change.get("pos_max", 50) - 1
    q = torch.randn(4, 128).bfloat16()
    if change.get("q_3d"):
        q = q.view(4, 2, 64)
    cache = torch.rand(50, rot).to(change.get("cache_dtype", torch.bfloat16))
    with pytest.raises((ValueError, TypeError, IndexError, NotImplementedError), match=match):
        OPS.npu_mrope(positions, q, torch.randn(4, 64).bfloat16(), cache, 64,
                      mrope_section=change.get("section", [8, 12, 12]),
                      cache_mode=change.get("cache_mode", "default"))


# ---- npu_rotary_mul ----------------------------------------------------------------------------


def _rotary_mul_ref(x, r1, r2, mode):
    x, r1, r2 = x.double(), r1.double(), r2.double()
    if mode == "half":
        d = x.shape[-1] // 2
        x_new = torch.cat((-x[..., d:], x[..., :d]), dim=-1)
    else:
        x_new = torch.empty_like(x)
        x_new[..., 0::2] = -x[..., 1::2]
        x_new[..., 1::2] = x[..., 0::2]
    return r1 * x + r2 * x_new


@pytest.mark.parametrize("dtype,mode,r_shape", [
    (torch.float32, "half", (1, 9, 1, 32)),       # BSND with 1S1D: the vision tower's call
    (torch.bfloat16, "half", (2, 9, 1, 32)),      # BS1D
    (torch.float16, "interleave", (1, 9, 1, 32)),
])
def test_rotary_mul_matches_reference(dtype, mode, r_shape):
    g = _g(2)
    x = torch.randn(2, 9, 4, 32, generator=g).to(dtype)
    ang = torch.rand(r_shape, generator=g, dtype=torch.float64) * 2 * math.pi
    r1, r2 = ang.cos().to(dtype), ang.sin().to(dtype)
    out = OPS.npu_rotary_mul(x, r1, r2, mode)
    assert out.dtype == dtype and out.shape == x.shape
    torch.testing.assert_close(out.double(), _rotary_mul_ref(x, r1, r2, mode),
                               rtol=TOL[dtype], atol=TOL[dtype])


def test_rotary_mul_equals_vllm_vision_rotary():
    """With cos/sin of half the head repeated, npu_rotary_mul is the rotation vLLM's
    ApplyRotaryEmb.forward_static computes (NeoX and GPT-J styles)."""
    from vllm.model_executor.layers.rotary_embedding.common import ApplyRotaryEmb

    g = _g(3)
    x = torch.randn(2, 11, 3, 16, generator=g, dtype=torch.float64)
    ang = torch.rand(11, 8, generator=g, dtype=torch.float64)
    cos, sin = ang.cos(), ang.sin()
    for neox, mode, expand in ((True, "half", lambda t: torch.cat((t, t), -1)),
                               (False, "interleave", lambda t: t.repeat_interleave(2, -1))):
        want = ApplyRotaryEmb.forward_static(x, cos, sin, is_neox_style=neox)
        r1, r2 = (expand(t).view(1, 11, 1, 16).float() for t in (cos, sin))
        got = OPS.npu_rotary_mul(x.float(), r1, r2, mode)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("change,match", [
    (dict(x_shape=(2, 9, 32)), "must be 4-D"),
    (dict(r_shape=(1, 9, 4, 32), mode="interleave"), "interleave mode takes"),
    (dict(r_scale=3.0), r"\[-1, 1\]"),
    (dict(x_shape=(2, 9, 4, 33), r_shape=(1, 9, 1, 33)), "must be even"),
    (dict(r_shape=(1, 8, 1, 32)), "broadcast"),
    (dict(x_shape=(2, 1000, 1000, 2), r_shape=(1, 1000, 1, 2)), "must be < 1000"),
])
def test_rotary_mul_refuses(change, match):
    x = torch.zeros(change.get("x_shape", (2, 9, 4, 32)))
    r = torch.full(change.get("r_shape", (1, 9, 1, 32)), 0.5 * change.get("r_scale", 1.0))
    with pytest.raises((ValueError, TypeError), match=match):
        OPS.npu_rotary_mul(x, r, r.clone(), change.get("mode", "half"))


# ---- npu_fast_gelu -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fast_gelu_is_the_a2_formula(dtype):
    x = (torch.randn(5, 33, generator=_g(4)) * 4).to(dtype)
    xd = x.double()
    ref = xd / (1 + torch.exp(-1.702 * xd))
    # Formula 1 (older Atlas products) is the same function.
    ref1 = xd / (1 + torch.exp(-1.702 * xd.abs())) * torch.exp(0.851 * (xd - xd.abs()))
    torch.testing.assert_close(ref, ref1)
    out = OPS.npu_fast_gelu(x)
    torch.testing.assert_close(out.double(), ref, rtol=TOL[dtype], atol=TOL[dtype])


def test_fast_gelu_refuses_ints():
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        OPS.npu_fast_gelu(torch.ones(3, dtype=torch.int32))


FIDELITY_SAMPLES = [
    ("npu_mrope", "mrope_bf16", lambda: (
        (torch.randint(0, 16, (3, 5)), torch.randn(5, 128).bfloat16(),
         torch.randn(5, 64).bfloat16(), torch.rand(16, 64).bfloat16(), 64),
        dict(mrope_section=[8, 12, 12]))),
    ("npu_mrope", "rope_fp32", lambda: (
        (torch.randint(0, 16, (5,), dtype=torch.int32), torch.randn(5, 64), torch.randn(5, 64),
         torch.rand(16, 32), 64), dict(rotary_mode="interleave"))),
    ("npu_rotary_mul", "bsnd_1s1d", lambda: (
        (torch.randn(2, 9, 4, 32).half(), torch.rand(1, 9, 1, 32).half(),
         torch.rand(1, 9, 1, 32).half()), {})),
    ("npu_fast_gelu", "bf16", lambda: ((torch.randn(3, 7).bfloat16(),), {})),
]
