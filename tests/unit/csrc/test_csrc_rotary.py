"""_C_ascend.rotary_embedding (CPU kernel) against an independent float64 reference."""

import pytest
import torch
from csrc_test_utils import DTYPES, TOLS


def make_cache(max_pos: int, rot_dim: int, dtype: torch.dtype, base: float = 10000.0):
    inv_freq = 1.0 / base ** (torch.arange(0, rot_dim, 2, dtype=torch.float64) / rot_dim)
    freqs = torch.arange(max_pos, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(dtype)


def reference(positions, x, head_size, cache, is_neox):
    """float64 rotary of x viewed as [T, heads, head_size]; returns the float64 result."""
    t = positions.numel()
    xd = x.double().reshape(t, -1, head_size).clone()
    rot = cache.shape[1]
    half = rot // 2
    cs = cache.double()[positions.reshape(-1).long()]
    cos, sin = cs[:, None, :half], cs[:, None, half:]
    if is_neox:
        a, b = xd[..., :half].clone(), xd[..., half:rot].clone()
        xd[..., :half] = a * cos - b * sin
        xd[..., half:rot] = b * cos + a * sin
    else:
        a, b = xd[..., 0:rot:2].clone(), xd[..., 1:rot:2].clone()
        xd[..., 0:rot:2] = a * cos - b * sin
        xd[..., 1:rot:2] = b * cos + a * sin
    return xd.reshape(x.shape)


CASES = [
    # tokens, q heads, k heads, head_size, rot_dim
    (1, 4, 1, 64, 64),
    (5, 3, 2, 80, 80),
    (17, 2, 2, 96, 48),
    (33, 5, 1, 100, 64),
    (64, 8, 2, 128, 128),
    (2048, 4, 1, 128, 64),
    (4096, 2, 1, 80, 80),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "T{}_q{}_k{}_hs{}_rot{}".format(*c))
def test_matches_float64_reference(C, dtype, is_neox, case):
    tokens, nq, nk, head_size, rot_dim = case
    max_pos = 8192
    positions = torch.randint(0, max_pos, (tokens,))
    cache = make_cache(max_pos, rot_dim, dtype)
    q = torch.randn(tokens, nq * head_size, dtype=dtype)
    k = torch.randn(tokens, nk * head_size, dtype=dtype)
    q0, k0 = q.clone(), k.clone()
    q_ptr, k_ptr = q.data_ptr(), k.data_ptr()

    C.rotary_embedding(positions, q, k, head_size, cache, is_neox)

    assert q.data_ptr() == q_ptr and k.data_ptr() == k_ptr
    torch.testing.assert_close(q.double(), reference(positions, q0, head_size, cache, is_neox),
                               **TOLS[dtype])
    torch.testing.assert_close(k.double(), reference(positions, k0, head_size, cache, is_neox),
                               **TOLS[dtype])
    # Partial rotary: the dims past rot_dim are bit-for-bit untouched.
    if rot_dim < head_size:
        assert torch.equal(q.view(tokens, nq, head_size)[..., rot_dim:],
                           q0.view(tokens, nq, head_size)[..., rot_dim:])
        assert torch.equal(k.view(tokens, nk, head_size)[..., rot_dim:],
                           k0.view(tokens, nk, head_size)[..., rot_dim:])


def check_rotary_on_fused_qkv_views(rotary_fn, dtype, is_neox):
    """q (a 3-D view) and k are strided views into one qkv buffer (token stride > row), rotated
    in place by ``rotary_fn`` (the op's schema); v stays bit-identical. Shared with the torch
    composition's tests (test_csrc_composed.py)."""
    tokens, nq, nk, hs, rot = 37, 4, 2, 96, 64
    qkv = torch.randn(tokens, (nq + 2 * nk) * hs, dtype=dtype)
    qkv0 = qkv.clone()
    q, k, v = qkv.split([nq * hs, nk * hs, nk * hs], dim=-1)
    assert not q.is_contiguous() and not k.is_contiguous()
    q3 = q.view(tokens, nq, hs)  # 3-D view of a strided 2-D view
    positions = torch.randint(0, 1024, (tokens,), dtype=torch.int32)
    cache = make_cache(1024, rot, dtype)
    rotary_fn(positions, q3, k, hs, cache, is_neox)
    ref_q = reference(positions, qkv0[:, : nq * hs], hs, cache, is_neox)
    ref_k = reference(positions, qkv0[:, nq * hs:(nq + nk) * hs], hs, cache, is_neox)
    torch.testing.assert_close(qkv[:, : nq * hs].double(), ref_q, **TOLS[dtype])
    torch.testing.assert_close(qkv[:, nq * hs:(nq + nk) * hs].double(), ref_k, **TOLS[dtype])
    assert torch.equal(v, qkv0[:, (nq + nk) * hs:])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_views_into_fused_qkv_and_3d(C, dtype):
    check_rotary_on_fused_qkv_views(C.rotary_embedding, dtype, True)


def test_key_none_and_batched_positions(C):
    b, s, nq, hs = 3, 5, 2, 64
    positions = torch.randint(0, 100, (b, s))
    cache = make_cache(100, hs, torch.float32)
    q = torch.randn(b, s, nq * hs)
    q0 = q.clone()
    C.rotary_embedding(positions, q, None, hs, cache, False)
    torch.testing.assert_close(q.double(), reference(positions, q0, hs, cache, False),
                               **TOLS[torch.float32])


def test_float32_cache_with_bf16_query(C):
    tokens, nq, hs = 9, 3, 128
    positions = torch.randint(0, 512, (tokens,))
    cache = make_cache(512, hs, torch.float32)
    q = torch.randn(tokens, nq * hs, dtype=torch.bfloat16)
    q0 = q.clone()
    C.rotary_embedding(positions, q, None, hs, cache, True)
    torch.testing.assert_close(q.double(), reference(positions, q0, hs, cache, True),
                               **TOLS[torch.bfloat16])


def test_rejects_bad_arguments(C):
    cache = make_cache(16, 64, torch.float32)
    q = torch.randn(2, 128)
    with pytest.raises(RuntimeError, match="outside cos_sin_cache"):
        C.rotary_embedding(torch.tensor([0, 16]), q, None, 64, cache, True)
    with pytest.raises(RuntimeError, match="multiple of head_size"):
        C.rotary_embedding(torch.tensor([0, 1]), torch.randn(2, 100), None, 64, cache, True)
    with pytest.raises(RuntimeError, match="rot_dim"):
        C.rotary_embedding(torch.tensor([0, 1]), torch.randn(2, 64), None, 32, cache, True)


@pytest.mark.parametrize("with_key", [True, False])
def test_opcheck(C, with_key):
    positions = torch.randint(0, 64, (6,))
    cache = make_cache(64, 32, torch.float16)
    q = torch.randn(6, 3 * 48, dtype=torch.float16)
    k = torch.randn(6, 48, dtype=torch.float16) if with_key else None
    torch.library.opcheck(C.rotary_embedding.default, (positions, q, k, 48, cache, True))
