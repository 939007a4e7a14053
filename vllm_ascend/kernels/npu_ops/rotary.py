"""CPU kernels of torch_npu's rotary ops: ``npu_mrope`` (rope / multimodal rope on packed q/k rows,
the language model of Qwen2-VL and Qwen2.5-VL) and ``npu_rotary_mul`` (elementwise rotation with
given cos/sin, the vision encoders' rotary).

Rotation of a pair (x1, x2) by angle a: (x1 cos a - x2 sin a, x2 cos a + x1 sin a). In 'half'
mode (GPT-NeoX) the pairs are (x[i], x[i + d/2]); in 'interleave' mode (GPT-J) (x[2i], x[2i+1]).
Both kernels compute in float32 and round to the input dtype once (assumption; the docs are
silent on the internal precision).
"""

from __future__ import annotations

import torch

from vllm_ascend.kernels.npu_library import npu_op

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MODES = ("half", "interleave")


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mode: str) -> torch.Tensor:
    """x [..., 2h] float32, cos/sin [..., h] broadcastable -> x rotated pairwise."""
    if mode == "half":
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)


# ---------------------------------------------------------------------------------------------
# npu_mrope
# ---------------------------------------------------------------------------------------------


def _check_mrope(positions, query, key, cache, head_size, section, rotary_mode, cache_mode):
    op = "npu_mrope"
    if positions.dtype not in (torch.int32, torch.int64) or positions.dim() not in (1, 2):
        raise ValueError(f"{op}: positions must be 1-D [tokens] (rope) or 2-D [3, tokens] "
                         f"(mrope), int32/int64; got {tuple(positions.shape)} {positions.dtype} "
                         "(doc: npu_mrope 'positions')")
    if positions.dim() == 2 and positions.shape[0] != 3:
        raise ValueError(f"{op}: 2-D positions must be [3, tokens], got "
                         f"{tuple(positions.shape)} (doc: npu_mrope 'positions')")
    tokens = positions.shape[-1]
    for name, t in (("query", query), ("key", key), ("cos_sin_cache", cache)):
        if t.dim() != 2:
            raise ValueError(f"{op}: {name} must be 2-D, got {tuple(t.shape)} (doc: npu_mrope "
                             "constraints: query, key and cos_sin_cache are 2-D only)")
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{op}: {name} must be float16, bfloat16 or float32, got {t.dtype}")
    # Assumption (the doc lists the dtypes per tensor, not their mix): one dtype for all three,
    # as vLLM's rotary layers already arrange.
    if not query.dtype == key.dtype == cache.dtype:
        raise TypeError(f"{op}: query, key and cos_sin_cache must share a dtype, got "
                        f"{query.dtype}, {key.dtype}, {cache.dtype}")
    for name, t in (("query", query), ("key", key)):
        if t.shape[0] != tokens or t.shape[1] % head_size:
            raise ValueError(f"{op}: {name} must be [tokens={tokens}, heads * head_size="
                             f"heads * {head_size}], got {tuple(t.shape)} (doc: npu_mrope "
                             f"'{name}In')")
    rotary_dim = cache.shape[1]
    multiple = 16 if query.dtype == torch.float32 else 32
    if rotary_dim % multiple or rotary_dim > head_size:
        raise ValueError(f"{op}: rotary_dim {rotary_dim} must be a multiple of {multiple} for "
                         f"{query.dtype} and at most head_size {head_size} (doc: npu_mrope "
                         "constraints)")
    if rotary_mode not in _MODES:
        raise ValueError(f"{op}: rotary_mode must be 'half' or 'interleave', got {rotary_mode!r}")
    if cache_mode != "default":
        # The doc names an 'interleave' cos/sin arrangement without defining its layout; the
        # CPU backend does not guess it.
        raise NotImplementedError(f"{op}: cache_mode {cache_mode!r}: only 'default' (T/H/W "
                                  "sections concatenated) has a CPU implementation")
    mrope = section is not None and any(section)
    if positions.dim() == 2 and not mrope:
        raise ValueError(f"{op}: [3, tokens] positions need mrope_section (doc: npu_mrope "
                         "'positions': 2-D input is mrope mode)")
    if mrope and (len(section) != 3 or sum(section) != rotary_dim // 2):
        raise ValueError(f"{op}: mrope_section {list(section)} must have 3 entries summing to "
                         f"rotary_dim / 2 = {rotary_dim // 2} (doc: npu_mrope constraints)")
    if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= cache.shape[0]):
        raise IndexError(f"{op}: positions must lie in [0, {cache.shape[0]}) (the cache's "
                         "maxSeqLen; doc: npu_mrope constraints)")
    return mrope


def _mrope_fake(positions, query, key, cos_sin_cache, head_size, *, mrope_section=None,
                rotary_mode="half", cache_mode="default"):
    return query.new_empty(query.shape), key.new_empty(key.shape)


@npu_op(
    "npu_mrope(Tensor positions, Tensor query, Tensor key, Tensor cos_sin_cache, int head_size, "
    "*, int[]? mrope_section=None, str? rotary_mode='half', str? cache_mode='default') "
    "-> (Tensor, Tensor)",
    fake=_mrope_fake,
)
def npu_mrope(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
              cos_sin_cache: torch.Tensor, head_size: int, *,
              mrope_section: list[int] | None = None, rotary_mode: str | None = "half",
              cache_mode: str | None = "default"):
    """torch_npu.npu_mrope (doc entry ``npu_mrope``): rotates the first rotary_dim features of
    every head of query and key; returns new tensors.

    Cache row p is [cos(p * f_j) for j < rotary_dim/2 | sin(p * f_j) ...] (vLLM's layout). In rope
    mode token t takes row positions[t]. In mrope mode frequency j of token t takes its angle from
    positions[s, t], s the section (T, H, W) holding j: sections are consecutive runs of
    mrope_section[0], [1], [2] frequencies ('default' cache mode).
    """
    rotary_mode = rotary_mode or "half"
    mrope = _check_mrope(positions, query, key, cos_sin_cache, head_size, mrope_section,
                         rotary_mode, cache_mode or "default")
    rotary_dim = cos_sin_cache.shape[1]
    rows = cos_sin_cache.float()[positions.long()]  # [tokens, rot] or [3, tokens, rot]
    cos, sin = rows.chunk(2, dim=-1)
    if mrope:
        cos, sin = (torch.cat([part[s] for s, part in enumerate(t.split(list(mrope_section), -1))],
                              dim=-1) for t in (cos, sin))
    cos, sin = cos[:, None, :], sin[:, None, :]  # broadcast over heads

    def apply(x: torch.Tensor) -> torch.Tensor:
        heads = x.view(x.shape[0], -1, head_size).float()
        rotated = _rotate(heads[..., :rotary_dim], cos, sin, rotary_mode)
        out = torch.cat((rotated, heads[..., rotary_dim:]), dim=-1)
        return out.to(x.dtype).reshape(x.shape)

    return apply(query), apply(key)


# ---------------------------------------------------------------------------------------------
# npu_rotary_mul
# ---------------------------------------------------------------------------------------------


def _check_rotary_mul(x: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor, mode: str) -> None:
    op = "npu_rotary_mul"
    if mode not in _MODES:
        raise ValueError(f"{op}: rotary_mode must be 'half' or 'interleave', got {mode!r}")
    for name, t in (("input", x), ("r1", r1), ("r2", r2)):
        if t.dim() != 4:
            raise ValueError(f"{op}: {name} must be 4-D (BNSD, BSND or SBND), got "
                             f"{tuple(t.shape)} (doc: npu_rotary_mul)")
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{op}: {name} must be float16, bfloat16 or float32, got {t.dtype}")
    if not x.dtype == r1.dtype == r2.dtype:
        raise TypeError(f"{op}: input, r1 and r2 must share a dtype, got {x.dtype}, {r1.dtype}, "
                        f"{r2.dtype}")
    d = x.shape[-1]
    if d % 2 or d >= 896:
        raise ValueError(f"{op}: head dim D={d} must be even and < 896 (doc: npu_rotary_mul "
                         "constraints)")
    if r1.shape != r2.shape or r1.shape[-1] != d:
        raise ValueError(f"{op}: r1 {tuple(r1.shape)} and r2 {tuple(r2.shape)} must match and "
                         f"end in D={d}")
    # The layout is not an argument; among B, N, S whichever of x's leading dims r1 does not
    # broadcast must match exactly. The doc's per-layout lists (11SD, B1SD, BNSD, 1S1D, ...) all
    # keep the sequence dim; interleave mode broadcasts everything but S and D.
    kept = [i for i in range(3) if r1.shape[i] != 1]
    if any(r1.shape[i] != x.shape[i] for i in kept):
        raise ValueError(f"{op}: r1 {tuple(r1.shape)} must broadcast to input {tuple(x.shape)} "
                         "with each leading dim 1 or equal (doc: npu_rotary_mul 'r1')")
    if mode == "interleave" and len(kept) > 1:
        raise ValueError(f"{op}: interleave mode takes r1/r2 as 11SD, 1S1D or S11D, got "
                         f"{tuple(r1.shape)} (doc: npu_rotary_mul interleave constraints)")
    # The layout is unknown here, so B and N are taken as the two smallest leading dims (S is
    # the unbounded one): the most lenient reading of "B, N < 1000" / "B * N < 1000".
    b, n = sorted(x.shape[:3])[:2]
    if (mode == "half" and max(b, n) >= 1000) or (mode == "interleave" and b * n >= 1000):
        bound = "B and N" if mode == "half" else "B * N"
        raise ValueError(f"{op}: {bound} must be < 1000 in {mode} mode, got {tuple(x.shape)} "
                         "(doc: npu_rotary_mul constraints)")
    for name, t in (("r1", r1), ("r2", r2)):
        if t.numel() and float(t.abs().max()) > 1.0:
            raise ValueError(f"{op}: {name} values must lie in [-1, 1] (cos/sin; doc: "
                             "npu_rotary_mul 'r1' data range)")


@npu_op(
    "npu_rotary_mul(Tensor self, Tensor r1, Tensor r2, str rotary_mode='half', "
    "Tensor? rotate=None) -> Tensor",
    fake=lambda self, r1, r2, rotary_mode="half", rotate=None: self.new_empty(self.shape),
)
def npu_rotary_mul(self: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor,
                   rotary_mode: str = "half", rotate: torch.Tensor | None = None) -> torch.Tensor:
    """torch_npu.npu_rotary_mul (doc entry ``npu_rotary_mul``): r1 * x + r2 * x_new, with
    x_new = cat(-x2, x1) ('half'), the pairs (-x[2i+1], x[2i]) ('interleave'), or x @ rotate.
    r1/r2 hold cos/sin already expanded to the full head dim."""
    _check_rotary_mul(self, r1, r2, rotary_mode)
    x = self.float()
    if rotate is not None:
        if rotate.shape != (x.shape[-1], x.shape[-1]):
            raise ValueError(f"npu_rotary_mul: rotate must be [D, D], got {tuple(rotate.shape)}")
        x_new = x @ rotate.float()
    elif rotary_mode == "half":
        x1, x2 = x.chunk(2, dim=-1)
        x_new = torch.cat((-x2, x1), dim=-1)
    else:
        x_new = torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)
    return (r1.float() * x + r2.float() * x_new).to(self.dtype)
