"""Self-check cases of the vision-language ops: npu_mrope (the text model's multimodal rotary),
npu_rotary_mul (the vision tower's rotary) and npu_fast_gelu (Qwen2-VL's vision MLP). The float64
references rotate each pair as a complex number by e^(i * angle)."""

from __future__ import annotations

import torch

from vllm_ascend.selfcheck.cases import TOLS, Case, _host, _randn, _to, assert_close


def _angles(max_pos: int, rot: int) -> torch.Tensor:
    inv = 1.0 / 1e6 ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot)
    return torch.arange(max_pos, dtype=torch.float64)[:, None] * inv[None, :]


def _pairs(x: torch.Tensor, mode: str) -> torch.Tensor:
    """[..., 2h] -> complex [..., h] (half: x[j] + i x[j+h]; interleave: x[2j] + i x[2j+1])."""
    if mode == "half":
        a, b = x.chunk(2, dim=-1)
    else:
        a, b = x[..., 0::2], x[..., 1::2]
    return torch.complex(a, b)


def _unpairs(z: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "half":
        return torch.cat((z.real, z.imag), dim=-1)
    return torch.stack((z.real, z.imag), dim=-1).flatten(-2)


def _mrope64(positions, x, cache, head, section, mode):
    rot, tokens = cache.shape[1], x.shape[0]
    cos, sin = cache.double().chunk(2, dim=-1)
    owner = torch.tensor([s for s, n in enumerate(section) for _ in range(n)])
    pos = positions.long()[owner, :].T  # [tokens, rot/2]: the position each frequency uses
    cols = torch.arange(rot // 2)
    rotation = torch.complex(cos[pos, cols], sin[pos, cols])[:, None, :]
    heads = x.double().view(tokens, -1, head)
    out = heads.clone()
    out[..., :rot] = _unpairs(_pairs(heads[..., :rot], mode) * rotation, mode)
    return out.view(x.shape)


def _mrope_case(name, tokens, q_heads, kv_heads, head, rot, section, mode, dtype) -> Case:
    tol = TOLS[dtype]

    def build(g):
        ang = _angles(4096, rot)
        return dict(positions=torch.randint(0, 4096, (3, tokens), generator=g),
                    q=_randn(g, tokens, q_heads * head, dtype=dtype),
                    k=_randn(g, tokens, kv_heads * head, dtype=dtype),
                    cache=torch.cat((ang.cos(), ang.sin()), dim=-1).to(dtype))

    def run(inputs, device):
        x = _to(inputs, device)
        q, k = torch.ops.npu.npu_mrope(x["positions"], x["q"], x["k"], x["cache"], head,
                                       mrope_section=section, rotary_mode=mode)
        return _host(dict(q=q, k=k))

    def verify(inputs, out):
        for key in ("q", "k"):
            ref = _mrope64(inputs["positions"], inputs[key], inputs["cache"], head, section, mode)
            assert_close(key, out[key], ref, tol)

    return Case(name, "npu::npu_mrope", "ops/rotary_embedding.py AscendMRotaryEmbedding",
                build, run, verify, tol)


def _rotary_mul_case(name, batch, seq, heads, head, mode, dtype) -> Case:
    tol = TOLS[dtype]

    def build(g):
        ang = torch.rand(seq, head // 2, generator=g, dtype=torch.float64) * 6.3
        expand = ((lambda t: torch.cat((t, t), -1)) if mode == "half"
                  else (lambda t: t.repeat_interleave(2, -1)))
        return dict(x=_randn(g, batch, seq, heads, head, dtype=dtype), ang=ang,
                    r1=expand(ang.cos()).view(1, seq, 1, head).to(dtype),
                    r2=expand(ang.sin()).view(1, seq, 1, head).to(dtype))

    def run(inputs, device):
        x = _to(inputs, device)
        return _host(dict(y=torch.ops.npu.npu_rotary_mul(x["x"], x["r1"], x["r2"], mode)))

    def verify(inputs, out):
        # cos/sin as the kernel received them (rounded to dtype), then rotation in float64.
        half = head // 2
        r1, r2 = inputs["r1"].double(), inputs["r2"].double()
        c = r1[..., :half] if mode == "half" else r1[..., 0::2]
        s = r2[..., :half] if mode == "half" else r2[..., 0::2]
        ref = _unpairs(_pairs(inputs["x"].double(), mode) * torch.complex(c, s), mode)
        assert_close("y", out["y"], ref, tol)

    return Case(name, "npu::npu_rotary_mul", "ops/vision_rotary.py AscendApplyRotaryEmb",
                build, run, verify, tol)


def _fast_gelu_case(name, shape, dtype) -> Case:
    tol = TOLS[dtype]

    def verify(inputs, out):
        x = inputs["x"].double()
        assert_close("y", out["y"], x * torch.sigmoid(1.702 * x), tol)

    return Case(name, "npu::npu_fast_gelu", "ops/activation.py AscendQuickGELU",
                build=lambda g: dict(x=_randn(g, *shape, dtype=dtype, scale=3.0)),
                run=lambda inputs, device: _host(dict(
                    y=torch.ops.npu.npu_fast_gelu(_to(inputs, device)["x"]))),
                verify=verify, tol=tol)


def build() -> list[Case]:
    bf16, fp16 = torch.bfloat16, torch.float16
    return [
        # Qwen2.5-VL-7B text: 28 q heads, 4 kv heads of 128, sections [16, 24, 24].
        _mrope_case("mrope_qwen2_5_vl_7b_bf16", 37, 28, 4, 128, 128, [16, 24, 24], "half", bf16),
        _mrope_case("mrope_partial_interleave_fp16", 9, 4, 2, 128, 64, [8, 12, 12],
                    "interleave", fp16),
        # Qwen2.5-VL vision tower: 16 heads of 80, q and k stacked (batch 2), 1S1D cos/sin.
        _rotary_mul_case("rotary_mul_vit_bsnd_bf16", 2, 196, 16, 80, "half", bf16),
        _rotary_mul_case("rotary_mul_interleave_fp16", 1, 33, 4, 64, "interleave", fp16),
        _fast_gelu_case("fast_gelu_qwen2_vl_mlp_bf16", (196, 5120), bf16),
        _fast_gelu_case("fast_gelu_fp16", (7, 333), fp16),
    ]
