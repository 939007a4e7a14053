"""W4A8 expert weights: int4 unpacking as msModelSlim packs them."""

from __future__ import annotations

import os

import torch

os.environ.setdefault("VLLM_ASCEND_DEVICE", "cpu")

from vllm_ascend.quantization.moe_schemes import unpack_int4_rows  # noqa: E402


def test_unpack_int4_rows_inverts_the_documented_packing():
    """Byte j of a row pair holds w[2j] in its low nibble and w[2j+1] in its high one, both
    signed int4 in [-8, 7]; the packing runs along the output dim, expert by expert."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randint(-8, 8, (3, 6, 5), generator=gen, dtype=torch.int64)  # [E, n, k]
    pairs = w.reshape(3, 3, 2, 5)
    packed = ((pairs[:, :, 1] << 4) | (pairs[:, :, 0] & 0xF)).to(torch.uint8).view(torch.int8)
    got = unpack_int4_rows(packed)
    assert got.dtype == torch.int8 and got.shape == (3, 6, 5)
    assert torch.equal(got.to(torch.int64), w)
