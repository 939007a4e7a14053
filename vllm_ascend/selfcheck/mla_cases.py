"""Self-check cases of the MLA backend's NPU calls (attention/mla_impl.py), against float64.

* the latent cache write: npu_scatter_pa_kv_cache, "Norm" mode, the no-rope part [T, 1, 512] as
  key and the rope part [T, 1, 64] as value (different head sizes);
* decode: npu_fused_infer_attention_score's MLA branch (query_rope/key_rope), BSND query of one
  token, paged latent cache of 128-token blocks, 32/64/128 heads (fewer padded with zero heads as
  the call site pads them), a prefix shared between sequences;
* prefill: the fused attention's TND layout over up-projected keys/values, head dims zero-padded
  to a TND pair, causal from the bottom-right corner (new tokens after a cached context).
"""

from __future__ import annotations

import torch

from vllm_ascend.selfcheck.cases import TOLS, Case, _host, _randn, _to, assert_close, assert_equal

L, R = 512, 64  # latent and rope dims of the NPU's MLA attention
MASK = 2048


def mla_decode_reference(inputs: dict, heads: int) -> torch.Tensor:
    """float64 [B, heads, 512]: per sequence, scores scale * (q . c + q_rope . r) over its first
    kv_len cache slots, softmax, times the latent rows c."""
    q, qr = inputs["q"].double(), inputs["q_rope"].double()
    nope = inputs["nope"].double().reshape(-1, L)
    rope = inputs["rope"].double().reshape(-1, R)
    bs = inputs["nope"].shape[1]
    out = torch.zeros(q.shape[0], heads, L, dtype=torch.float64)
    for b, kl in enumerate(inputs["kv_lens"]):
        slots = [int(inputs["table"][b, j // bs]) * bs + j % bs for j in range(kl)]
        scores = (q[b, :heads] @ nope[slots].T + qr[b, :heads] @ rope[slots].T) * inputs["scale"]
        out[b] = torch.softmax(scores, -1) @ nope[slots]
    return out


def _decode_case(name: str, kv_lens: tuple[int, ...], heads: int, dtype: torch.dtype,
                 shared_blocks: int = 0) -> Case:
    tol = TOLS[dtype]
    kernel_heads = next(n for n in (32, 64, 128) if n >= heads)
    bs = 128

    def build(g: torch.Generator) -> dict:
        need = [-(-n // bs) for n in kv_lens]
        num_blocks = shared_blocks + sum(n - shared_blocks for n in need) + 2
        perm = torch.randperm(num_blocks, generator=g).to(torch.int32)
        table = torch.full((len(kv_lens), max(need)), -1, dtype=torch.int32)
        used = shared_blocks
        for b, n in enumerate(need):
            table[b, :shared_blocks] = perm[:shared_blocks]
            table[b, shared_blocks:n] = perm[used:used + n - shared_blocks]
            used += n - shared_blocks
        batch = len(kv_lens)
        return dict(q=_randn(g, batch, heads, L, dtype=dtype, scale=0.2),
                    q_rope=_randn(g, batch, heads, R, dtype=dtype, scale=0.5),
                    nope=_randn(g, num_blocks, bs, 1, L, dtype=dtype),
                    rope=_randn(g, num_blocks, bs, 1, R, dtype=dtype),
                    table=table, kv_lens=list(kv_lens), scale=(128 + R) ** -0.5)

    def run(inputs: dict, device: str):
        x = _to(inputs, device)
        batch, pad = len(kv_lens), kernel_heads - heads
        query = torch.nn.functional.pad(x["q"].reshape(batch, 1, heads, L), (0, 0, 0, pad))
        query_rope = torch.nn.functional.pad(x["q_rope"].reshape(batch, 1, heads, R),
                                             (0, 0, 0, pad))
        nb = x["nope"].shape[0]
        latent = x["nope"].view(nb, bs, L)
        out, _ = torch.ops.npu.npu_fused_infer_attention_score(
            query.contiguous(), latent, latent, query_rope=query_rope.contiguous(),
            key_rope=x["rope"].view(nb, bs, R), actual_seq_lengths_kv=x["kv_lens"],
            block_table=x["table"], num_heads=kernel_heads, scale=x["scale"],
            input_layout="BSND", num_key_value_heads=1, sparse_mode=0, block_size=bs)
        return _host(dict(out=out[:, 0, :heads]))

    def verify(inputs: dict, outputs) -> None:
        assert_close("MLA decode output", outputs["out"], mla_decode_reference(inputs, heads), tol)

    return Case(name, "npu::npu_fused_infer_attention_score",
                "attention/mla_impl.py AscendMLAImpl.forward_mqa", build, run, verify, tol=tol)


def _prefill_case(name: str, q_lens: tuple[int, ...], kv_lens: tuple[int, ...], heads: int,
                  qk: int, v: int, dtype: torch.dtype) -> Case:
    """TND over gathered, up-projected keys/values: query row i of a sequence with q_len new
    tokens and kv_len in all sits at position kv_len - q_len + i and sees positions <= it."""
    tol = TOLS[dtype]
    dq, dv = {(96, 32): (128, 128), (192, 128): (192, 128), (128, 128): (128, 128)}[(qk, v)]
    scale = qk ** -0.5

    def build(g: torch.Generator) -> dict:
        return dict(q=_randn(g, sum(q_lens), heads, qk, dtype=dtype),
                    k=_randn(g, sum(kv_lens), heads, qk, dtype=dtype),
                    v=_randn(g, sum(kv_lens), heads, v, dtype=dtype))

    def run(inputs: dict, device: str):
        x = _to(inputs, device)
        pad = torch.nn.functional.pad
        mask = torch.triu(torch.ones(MASK, MASK, dtype=torch.bool, device=device), diagonal=1)
        out, _ = torch.ops.npu.npu_fused_infer_attention_score(
            pad(x["q"], (0, dq - qk)).contiguous(), pad(x["k"], (0, dq - qk)).contiguous(),
            pad(x["v"], (0, dv - v)).contiguous(), atten_mask=mask,
            actual_seq_lengths=torch.tensor(q_lens).cumsum(0).tolist(),
            actual_seq_lengths_kv=torch.tensor(kv_lens).cumsum(0).tolist(), num_heads=heads,
            scale=scale, pre_tokens=2147483647, next_tokens=0, input_layout="TND",
            num_key_value_heads=heads, sparse_mode=3)
        return _host(dict(out=out[..., :v]))

    def verify(inputs: dict, outputs) -> None:
        q, k, val = (inputs[n].double() for n in ("q", "k", "v"))
        ref = torch.zeros(q.shape[0], heads, v, dtype=torch.float64)
        qs = ks = 0
        for ql, kl in zip(q_lens, kv_lens, strict=True):
            scores = torch.einsum("qhd,khd->hqk", q[qs:qs + ql], k[ks:ks + kl]) * scale
            allowed = torch.arange(kl)[None, :] <= torch.arange(kl - ql, kl)[:, None]
            scores = scores.masked_fill(~allowed, float("-inf"))
            ref[qs:qs + ql] = torch.einsum("hqk,khd->qhd", torch.softmax(scores, -1),
                                           val[ks:ks + kl])
            qs, ks = qs + ql, ks + kl
        assert_close("MLA prefill output", outputs["out"], ref, tol)

    return Case(name, "npu::npu_fused_infer_attention_score",
                "attention/mla_impl.py AscendMLAImpl.forward_mha", build, run, verify, tol=tol)


def _latent_write_case(name: str, tokens: int, dtype: torch.dtype) -> Case:
    bs = 128

    def build(g: torch.Generator) -> dict:
        num_blocks = tokens // bs + 3
        slots = torch.randperm(num_blocks * bs, generator=g)[:tokens].to(torch.int64)
        return dict(c=_randn(g, tokens, 1, L, dtype=dtype), r=_randn(g, tokens, 1, R, dtype=dtype),
                    slots=slots, nope=_randn(g, num_blocks, bs, 1, L, dtype=dtype),
                    rope=_randn(g, num_blocks, bs, 1, R, dtype=dtype))

    def run(inputs: dict, device: str):
        x = _to(inputs, device)
        nope, rope = x["nope"].clone(), x["rope"].clone()
        torch.ops.npu.npu_scatter_pa_kv_cache(x["c"], x["r"], nope, rope, x["slots"],
                                              cache_mode="Norm")
        return _host(dict(nope=nope, rope=rope))

    def verify(inputs: dict, outputs) -> None:
        for which, src, dim in (("nope", "c", L), ("rope", "r", R)):
            expected = inputs[which].clone().reshape(-1, 1, dim)
            expected[inputs["slots"]] = inputs[src]
            assert_equal(which, outputs[which], expected.reshape(inputs[which].shape))

    return Case(name, "npu::npu_scatter_pa_kv_cache",
                "attention/mla_impl.py AscendMLAImpl.do_kv_cache_update", build, run, verify)


def build() -> list[Case]:
    bf16, fp16 = torch.bfloat16, torch.float16
    return [
        _latent_write_case("mla_latent_write_bf16", 45, bf16),
        _latent_write_case("mla_latent_write_fp16", 300, fp16),
        _decode_case("mla_decode_h32_bf16", (1, 130, 300), 32, bf16),
        _decode_case("mla_decode_h128_fp16", (5, 257), 128, fp16),
        _decode_case("mla_decode_h16_padded_bf16", (40, 129), 16, bf16),
        _decode_case("mla_decode_shared_prefix_bf16", (300, 290, 260), 64, bf16,
                     shared_blocks=2),
        _prefill_case("mla_prefill_tnd_padded_bf16", (37, 5), (37, 140), 16, 96, 32, bf16),
        _prefill_case("mla_prefill_tnd_deepseek_dims_bf16", (64, 1, 20), (64, 300, 150), 8, 192,
                      128, bf16),
    ]
