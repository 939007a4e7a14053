"""The self-check cases: every NPU op call the engine makes, with the shapes and arguments it uses.

One list (``CASES``) serves three runners: ``python -m vllm_ascend.doctor --selfcheck`` (the NPU
kernel against the CPU golden reference on an Ascend host; on any other host the CPU kernel
alone), ``tests/npu/`` (``pytest -m npu``, parametrized over this list) and the CPU-backend test
that runs ``--selfcheck``. A case builds its inputs on the host from a fixed seed, calls the op
exactly as the call site does (see the ``site`` of each case), and checks the result against an
independent float64 reference (or, where outputs are a permutation the doc leaves open, against
the invariants the engine relies on).

Each call is legal as the NPU docs state it: the attention query is contiguous (the call site
makes vLLM's strided ``qkv.split`` view contiguous, which the strided-query cases reproduce), head
dims are 64/128/192, block sizes 128/256, caches are dense ``Norm`` halves.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

INT_MAX = 2147483647
COMPRESSED_MASK = 2048
SPARSE_CAUSAL, SPARSE_BAND = 3, 4

Outputs = dict[str, torch.Tensor]

# Tolerances of an op computed in float32 and stored in `dtype`, against float64 (and NPU vs CPU).
TOLS = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=4e-3, rtol=4e-3),
    torch.bfloat16: dict(atol=3e-2, rtol=2e-2),
}


@dataclass(frozen=True)
class Case:
    """One op call. ``run(inputs, device)`` moves the host inputs to ``device``, calls the op and
    returns its outputs on the host; ``verify(inputs, outputs)`` raises AssertionError when the
    outputs are wrong (against the float64 reference or the documented invariants);
    ``compare(npu, cpu)`` checks an NPU result against the CPU golden reference."""

    name: str
    op: str  # "npu::<op>" or "_C_ascend::<op>"
    site: str  # the call site this case reproduces
    build: Callable[[torch.Generator], dict]
    run: Callable[[dict, str], Outputs]
    verify: Callable[[dict, Outputs], None]
    tol: dict = field(default_factory=lambda: dict(atol=1e-5, rtol=1e-5))
    compare: Callable[[Outputs, Outputs, dict], None] | None = None
    finite: bool = True  # False: -inf is a legal output value (filters); NaN never is

    @property
    def id(self) -> str:
        return self.name


def _to(inputs: dict, device: str) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def _host(outputs: dict) -> Outputs:
    return {k: v.detach().to("cpu") for k, v in outputs.items()}


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, tol: dict) -> None:
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}")
    a, e = actual.double(), expected.double()
    bad = ~torch.isclose(a, e, atol=tol["atol"], rtol=tol["rtol"], equal_nan=True)
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{bad.numel()} elements differ beyond atol={tol['atol']} "
            f"rtol={tol['rtol']}; max abs diff {float((a - e).abs().max()):.3g}; first at {idx}: "
            f"{float(a[idx]):.6g} vs {float(e[idx]):.6g}")


def assert_equal(name: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
    if actual.shape != expected.shape or not torch.equal(actual, expected.to(actual.dtype)):
        raise AssertionError(f"{name}: differs from the reference")


def _default_compare(tol: dict) -> Callable[[Outputs, Outputs, dict], None]:
    def compare(npu: Outputs, cpu: Outputs, inputs: dict) -> None:
        for key in cpu:
            if cpu[key].is_floating_point():
                assert_close(f"{key} (NPU vs CPU)", npu[key], cpu[key], tol)
            else:
                assert_equal(f"{key} (NPU vs CPU)", npu[key], cpu[key])

    return compare


def compare_outputs(case: Case, npu: Outputs, cpu: Outputs, inputs: dict) -> None:
    (case.compare or _default_compare(case.tol))(npu, cpu, inputs)


def _randn(g: torch.Generator, *shape, dtype=torch.float32, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


# ---------------------------------------------------------------------------------------------
# npu_fused_infer_attention_score + npu_scatter_pa_kv_cache (attention/impl.py)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttnShape:
    q_lens: tuple[int, ...]
    kv_lens: tuple[int, ...]
    heads: int = 8
    kv_heads: int = 2
    head_dim: int = 128
    block_size: int = 128
    window: int | None = None
    dtype: torch.dtype = torch.bfloat16
    strided_query: bool = False  # query is the q part of a fused qkv projection (qkv.split)
    # Prefix caching: every sequence's first N blocks are the same physical blocks, so the
    # block slots the sequences name exceed the cache's block count (the doc's "blocknum >= the
    # blocks all sequences need" read as a rule for unshared tables; this checks that reading).
    shared_prefix_blocks: int = 0


def _attn_build(s: AttnShape) -> Callable[[torch.Generator], dict]:
    def build(g: torch.Generator) -> dict:
        blocks_per_seq = [max(1, math.ceil(n / s.block_size)) for n in s.kv_lens]
        shared = s.shared_prefix_blocks
        assert all(n > shared for n in blocks_per_seq)
        # Spare blocks hold stale data.
        num_blocks = shared + sum(n - shared for n in blocks_per_seq) + 3
        perm = torch.randperm(num_blocks, generator=g)
        table = torch.full((len(s.q_lens), max(blocks_per_seq)), -1, dtype=torch.int32)
        used = shared
        for b, n in enumerate(blocks_per_seq):
            table[b, :shared] = perm[:shared].to(torch.int32)
            table[b, shared:n] = perm[used:used + n - shared].to(torch.int32)
            used += n - shared
        t = sum(s.q_lens)
        d, n_q, n_kv = s.head_dim, s.heads, s.kv_heads
        # Stale cache contents (finite) outside every sequence's kv length.
        k_cache = _randn(g, num_blocks, s.block_size, n_kv, d, dtype=s.dtype, scale=3.0)
        v_cache = _randn(g, num_blocks, s.block_size, n_kv, d, dtype=s.dtype, scale=3.0)
        if s.strided_query:
            qkv = _randn(g, t, (n_q + 2 * n_kv) * d, dtype=s.dtype)
            q, _, _ = qkv.split([n_q * d, n_kv * d, n_kv * d], dim=-1)
            query = q.view(t, n_q, d)
            assert not query.is_contiguous()
        else:
            query = _randn(g, t, n_q, d, dtype=s.dtype)
        return dict(query=query, k_cache=k_cache, v_cache=v_cache, block_table=table,
                    cu_q=torch.tensor(s.q_lens).cumsum(0).tolist(), kv_lens=list(s.kv_lens))

    return build


def _attn_call(s: AttnShape, inputs: dict, device: str) -> torch.Tensor:
    x = _to(inputs, device)
    nb, bs = x["k_cache"].shape[:2]
    mask = torch.triu(torch.ones(COMPRESSED_MASK, COMPRESSED_MASK, dtype=torch.bool,
                                 device=device), diagonal=1)
    sparse, pre = (SPARSE_CAUSAL, INT_MAX) if s.window is None else (SPARSE_BAND, s.window - 1)
    out, _ = torch.ops.npu.npu_fused_infer_attention_score(
        x["query"].contiguous(),  # the call site's query.contiguous() (a no-op when dense)
        x["k_cache"].view(nb, bs, -1),
        x["v_cache"].view(nb, bs, -1),
        atten_mask=mask,
        actual_seq_lengths=x["cu_q"],
        actual_seq_lengths_kv=x["kv_lens"],
        block_table=x["block_table"],
        num_heads=s.heads,
        scale=s.head_dim ** -0.5,
        pre_tokens=pre,
        next_tokens=0,
        input_layout="TND",
        num_key_value_heads=s.kv_heads,
        sparse_mode=sparse,
        block_size=bs,
    )
    return out


def attention_reference(s: AttnShape, inputs: dict) -> torch.Tensor:
    """float64, one sequence and one head at a time: query row i of a sequence with q_len queries
    and kv_len keys sits at kv position kv_len - q_len + i; it attends positions <= its own and,
    with a window w, > its own - w."""
    q = inputs["query"].double()
    bs = s.block_size
    out = torch.zeros(q.shape[0], s.heads, s.head_dim, dtype=torch.float64)
    start = 0
    for b, (ql, kl) in enumerate(zip(s.q_lens, s.kv_lens, strict=True)):
        slots = [int(inputs["block_table"][b, j // bs]) * bs + j % bs for j in range(kl)]
        k = inputs["k_cache"].reshape(-1, s.kv_heads, s.head_dim)[slots].double()
        v = inputs["v_cache"].reshape(-1, s.kv_heads, s.head_dim)[slots].double()
        pos = torch.arange(kl - ql, kl)[:, None]
        j = torch.arange(kl)[None, :]
        allowed = j <= pos
        if s.window is not None:
            allowed &= j > pos - s.window
        for h in range(s.heads):
            kvh = h // (s.heads // s.kv_heads)
            scores = (q[start:start + ql, h] @ k[:, kvh].T) * s.head_dim ** -0.5
            scores = scores.masked_fill(~allowed, float("-inf"))
            out[start:start + ql, h] = torch.softmax(scores, -1) @ v[:, kvh]
        start += ql
    return out


def _attn_case(name: str, s: AttnShape) -> Case:
    tol = TOLS[s.dtype]

    def verify(inputs: dict, outputs: Outputs) -> None:
        assert_close("attention output", outputs["out"], attention_reference(s, inputs), tol)

    return Case(
        name=name,
        op="npu::npu_fused_infer_attention_score",
        site="attention/impl.py AscendAttentionImpl.forward",
        build=_attn_build(s),
        run=lambda inputs, device: _host(dict(out=_attn_call(s, inputs, device))),
        verify=verify,
        tol=tol,
    )


def _encoder_attn_case(name: str, lens: tuple[int, ...], heads: int, head_dim: int,
                       dtype: torch.dtype) -> Case:
    """Encoder-only attention (attention/impl.py ``_encoder_only``): K/V as TND tensors, no
    cache, no mask (sparse_mode 0: every token of a request sees every other), head dims below
    64 zero-padded to 64 as the call site pads them, the model's own scale."""
    tol = TOLS[dtype]
    padded = 64 if head_dim <= 64 else 128 if head_dim <= 128 else 192
    scale = head_dim ** -0.5

    def build(g):
        t = sum(lens)
        return {k: _randn(g, t, heads, head_dim, dtype=dtype) for k in ("q", "k", "v")} | {
            "cu": torch.tensor(lens).cumsum(0).tolist()}

    def run(inputs, device):
        x = _to(inputs, device)
        q, k, v = (torch.nn.functional.pad(x[n], (0, padded - head_dim)) for n in "qkv")
        out, _ = torch.ops.npu.npu_fused_infer_attention_score(
            q.contiguous(), k.contiguous(), v.contiguous(), actual_seq_lengths=x["cu"],
            actual_seq_lengths_kv=x["cu"], num_heads=heads, scale=scale, input_layout="TND",
            num_key_value_heads=heads, sparse_mode=0)
        return _host(dict(out=out[..., :head_dim]))

    def verify(inputs, outputs):
        q, k, v = (inputs[n].double() for n in "qkv")
        ref = torch.zeros_like(q)
        start = 0
        for n in lens:
            rows = slice(start, start + n)
            scores = torch.einsum("qhd,khd->hqk", q[rows], k[rows]) * scale
            ref[rows] = torch.einsum("hqk,khd->qhd", torch.softmax(scores, -1), v[rows])
            start += n
        assert_close("encoder attention output", outputs["out"], ref, tol)

    return Case(name, "npu::npu_fused_infer_attention_score",
                "attention/impl.py AscendAttentionImpl._encoder_only (BERT, no KV cache)",
                build, run, verify, tol=tol)


def _scatter_case(name: str, tokens: int, kv_heads: int, head_dim: int, block_size: int,
                  dtype: torch.dtype) -> Case:
    def build(g: torch.Generator) -> dict:
        num_blocks = tokens // block_size + 3
        slots = torch.randperm(num_blocks * block_size, generator=g)[:tokens]
        # key/value arrive as slices of the qkv projection; the call site makes them contiguous.
        kv = _randn(g, tokens + 2, 2, kv_heads, head_dim, dtype=dtype)
        return dict(key=kv[:tokens, 0], value=kv[:tokens, 1], slots=slots.to(torch.int64),
                    k_cache=_randn(g, num_blocks, block_size, kv_heads, head_dim, dtype=dtype),
                    v_cache=_randn(g, num_blocks, block_size, kv_heads, head_dim, dtype=dtype))

    def run(inputs: dict, device: str) -> Outputs:
        x = _to(inputs, device)
        k_cache, v_cache = x["k_cache"].clone(), x["v_cache"].clone()
        torch.ops.npu.npu_scatter_pa_kv_cache(
            x["key"].contiguous(), x["value"].contiguous(), k_cache, v_cache, x["slots"],
            cache_mode="Norm")
        return _host(dict(k_cache=k_cache, v_cache=v_cache))

    def verify(inputs: dict, outputs: Outputs) -> None:
        for which, src in (("k_cache", "key"), ("v_cache", "value")):
            expected = inputs[which].clone().reshape(-1, kv_heads, head_dim)
            for i, slot in enumerate(inputs["slots"].tolist()):
                expected[slot] = inputs[src][i]
            assert_equal(which, outputs[which], expected.reshape(inputs[which].shape))

    return Case(name, "npu::npu_scatter_pa_kv_cache",
                "attention/impl.py AscendAttentionImpl.forward", build, run, verify)


# ---------------------------------------------------------------------------------------------
# RMSNorm, SwiGLU (ops/layernorm.py, ops/activation.py)
# ---------------------------------------------------------------------------------------------


def _rms64(x: torch.Tensor, w: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.double()
    dims = tuple(range(x.dim() - w.dim(), x.dim()))
    rstd = 1.0 / torch.sqrt(x.pow(2).mean(dim=dims, keepdim=True) + eps)
    return x * rstd * w.double(), rstd


def _rms_norm_case(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> Case:
    eps = 1e-6
    tol = TOLS[dtype]

    def build(g):
        return dict(x=_randn(g, *shape, dtype=dtype),
                    w=(1 + 0.1 * torch.randn(shape[-1], generator=g)).to(dtype))

    def run(inputs, device):
        x = _to(inputs, device)
        y, rstd = torch.ops.npu.npu_rms_norm(x["x"], x["w"], eps)
        return _host(dict(y=y, rstd=rstd))

    def verify(inputs, out):
        y, rstd = _rms64(inputs["x"], inputs["w"], eps)
        assert_close("y", out["y"], y, tol)
        assert_close("rstd", out["rstd"], rstd, TOLS[torch.float32] | dict(rtol=1e-4))

    return Case(name, "npu::npu_rms_norm", "ops/layernorm.py AscendRMSNorm.forward_oot", build,
                run, verify, tol)


def _add_rms_norm_case(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> Case:
    eps = 1e-6
    tol = TOLS[dtype]

    def build(g):
        return dict(x=_randn(g, *shape, dtype=dtype), r=_randn(g, *shape, dtype=dtype),
                    w=(1 + 0.1 * torch.randn(shape[-1], generator=g)).to(dtype))

    def run(inputs, device):
        x = _to(inputs, device)
        y, rstd, summed = torch.ops.npu.npu_add_rms_norm(x["x"], x["r"], x["w"], eps)
        return _host(dict(y=y, rstd=rstd, summed=summed))

    def verify(inputs, out):
        s = inputs["x"].double() + inputs["r"].double()
        y, rstd = _rms64(s, inputs["w"], eps)
        assert_close("y", out["y"], y, tol)
        assert_close("summed", out["summed"], s, tol)
        assert_close("rstd", out["rstd"], rstd, TOLS[torch.float32] | dict(rtol=1e-4))

    return Case(name, "npu::npu_add_rms_norm", "ops/layernorm.py AscendRMSNorm.forward_oot",
                build, run, verify, tol)


def _swiglu64(x: torch.Tensor) -> torch.Tensor:
    a, b = x.double().chunk(2, dim=-1)
    return a / (1 + torch.exp(-a)) * b


def _swiglu_case(name: str, tokens: int, inter: int, dtype: torch.dtype) -> Case:
    tol = TOLS[dtype]
    return Case(
        name, "npu::npu_swiglu", "ops/activation.py, ops/fused_moe.py",
        build=lambda g: dict(x=_randn(g, tokens, 2 * inter, dtype=dtype, scale=2.0)),
        run=lambda inputs, device: _host(dict(
            y=torch.ops.npu.npu_swiglu(_to(inputs, device)["x"], -1))),
        verify=lambda inputs, out: assert_close("y", out["y"], _swiglu64(inputs["x"]), tol),
        tol=tol)


# ---------------------------------------------------------------------------------------------
# MoE chain (ops/fused_moe.py)
# ---------------------------------------------------------------------------------------------


def _gating_case(name: str, tokens: int, experts: int, k: int, dtype: torch.dtype) -> Case:
    tol = TOLS[dtype]

    def run(inputs, device):
        y, idx, row = torch.ops.npu.npu_moe_gating_top_k_softmax(
            _to(inputs, device)["logits"], None, k=k)
        return _host(dict(weights=y, expert_ids=idx))

    def verify(inputs, out):
        probs = torch.softmax(inputs["logits"].double(), -1)
        ref_w, ref_i = probs.topk(k, dim=-1)
        assert_equal("expert_ids", out["expert_ids"], ref_i.to(torch.int32))
        assert_close("weights", out["weights"], ref_w, tol)

    def build(g):
        # Distinct logits (no ties), so the top-k ids are unambiguous.
        logits = torch.stack([torch.randperm(experts, generator=g) for _ in range(tokens)])
        return dict(logits=(logits.float() * 0.37 + _randn(g, tokens, experts, scale=0.05))
                    .to(dtype))

    return Case(name, "npu::npu_moe_gating_top_k_softmax",
                "ops/fused_moe.py apply_monolithic", build, run, verify, tol)


def _routing(x: torch.Tensor, ids: torch.Tensor, experts: int):
    n, k = ids.shape
    return torch.ops.npu.npu_moe_init_routing_v2(
        x, ids, active_num=n * k, expert_num=experts, expert_tokens_num_type=1,
        expert_tokens_num_flag=True, quant_mode=-1, active_expert_range=[0, experts])


def _routing_ids(g: torch.Generator, tokens: int, experts: int, k: int) -> torch.Tensor:
    return torch.stack([torch.randperm(experts, generator=g)[:k]
                        for _ in range(tokens)]).to(torch.int32)


def _check_routing(inputs: dict, out: Outputs) -> None:
    """The invariants the engine relies on (the order of rows within an expert is not fixed by
    the doc): counts per expert, rows grouped by expert, and row ``expanded_row_idx[s]`` holding
    the token of source position s = i*K + k."""
    x, ids = inputs["x"], inputs["ids"]
    experts, k = inputs["experts"], ids.shape[1]
    counts = torch.bincount(ids.reshape(-1).long(), minlength=experts)
    assert_equal("tokens_per_expert", out["counts"], counts.to(torch.int64))
    dst = out["row_idx"].long()
    if sorted(dst.tolist()) != list(range(ids.numel())):
        raise AssertionError("expanded_row_idx is not a permutation of the expanded rows")
    assert_equal("expanded_x[expanded_row_idx]", out["expanded_x"][dst],
                 x[torch.arange(ids.numel()) // k])
    ends = counts.cumsum(0)
    expert_of_row = torch.searchsorted(ends, torch.arange(ids.numel()), right=True)
    assert_equal("rows grouped by expert", expert_of_row[dst], ids.reshape(-1).long())


def _init_routing_case(name: str, tokens: int, hidden: int, experts: int, k: int,
                       dtype: torch.dtype) -> Case:
    def run(inputs, device):
        x = _to(inputs, device)
        ex, row_idx, counts, _ = _routing(x["x"], x["ids"], experts)
        return _host(dict(expanded_x=ex, row_idx=row_idx, counts=counts))

    def compare(npu, cpu, inputs):
        _check_routing(inputs, npu)

    return Case(name, "npu::npu_moe_init_routing_v2", "ops/fused_moe.py _experts",
                build=lambda g: dict(x=_randn(g, tokens, hidden, dtype=dtype),
                                     ids=_routing_ids(g, tokens, experts, k), experts=experts),
                run=run, verify=_check_routing, compare=compare)


def _grouped_matmul_case(name: str, counts: list[int], k_dim: int, n_dim: int,
                         dtype: torch.dtype) -> Case:
    tol = TOLS[dtype]
    experts, rows = len(counts), sum(counts)

    def run(inputs, device):
        x = _to(inputs, device)
        y = torch.ops.npu.npu_grouped_matmul(
            [x["x"]], [x["w"]], bias=None, group_list=x["counts"], split_item=2, group_type=0,
            group_list_type=1)[0]
        return _host(dict(y=y))

    def verify(inputs, out):
        ref = torch.zeros(rows, n_dim, dtype=torch.float64)
        begin = 0
        for e, c in enumerate(counts):
            ref[begin:begin + c] = inputs["x"][begin:begin + c].double() @ inputs["w"][e].double()
            begin += c
        assert_close("y", out["y"], ref, tol | dict(atol=tol["atol"] * math.sqrt(k_dim)))

    return Case(name, "npu::npu_grouped_matmul", "ops/fused_moe.py _expert_matmul",
                build=lambda g: dict(x=_randn(g, rows, k_dim, dtype=dtype),
                                     w=_randn(g, experts, k_dim, n_dim, dtype=dtype,
                                              scale=k_dim ** -0.5),
                                     counts=torch.tensor(counts, dtype=torch.int64)),
                run=run, verify=verify, tol=tol | dict(atol=tol["atol"] * math.sqrt(k_dim)))


def _unpermute_case(name: str, tokens: int, hidden: int, k: int, dtype: torch.dtype) -> Case:
    tol = TOLS[dtype]

    def build(g):
        probs = torch.softmax(torch.randn(tokens, k, generator=g), -1).to(dtype)
        return dict(rows=_randn(g, tokens * k, hidden, dtype=dtype),
                    idx=torch.randperm(tokens * k, generator=g).to(torch.int32), probs=probs)

    def run(inputs, device):
        x = _to(inputs, device)
        return _host(dict(y=torch.ops.npu.npu_moe_token_unpermute(x["rows"], x["idx"],
                                                                  x["probs"])))

    def verify(inputs, out):
        rows = inputs["rows"].double()[inputs["idx"].long()].reshape(tokens, k, hidden)
        ref = (rows * inputs["probs"].double()[..., None]).sum(1)
        assert_close("y", out["y"], ref, tol)

    return Case(name, "npu::npu_moe_token_unpermute", "ops/fused_moe.py _experts", build, run,
                verify, tol)


def _moe_chain_case(name: str, tokens: int, hidden: int, inter: int, experts: int, k: int,
                    dtype: torch.dtype) -> Case:
    """The whole unquantized fused-MoE pipeline exactly as ops/fused_moe.py chains it, against a
    dense float64 mixture of experts."""
    tol = TOLS[dtype]
    tol = tol | dict(atol=tol["atol"] * 2)

    def build(g):
        return dict(x=_randn(g, tokens, hidden, dtype=dtype),
                    logits=_randn(g, tokens, experts, dtype=dtype, scale=2.0),
                    w13=_randn(g, experts, hidden, 2 * inter, dtype=dtype, scale=hidden ** -0.5),
                    w2=_randn(g, experts, inter, hidden, dtype=dtype, scale=inter ** -0.5))

    def run(inputs, device):
        x = _to(inputs, device)
        weights, ids, _ = torch.ops.npu.npu_moe_gating_top_k_softmax(x["logits"], None, k=k)
        weights = weights.float()
        weights = weights / weights.sum(dim=-1, keepdim=True)  # renormalize
        ex, row_idx, counts, _ = _routing(x["x"], ids, experts)
        gmm = dict(bias=None, group_list=counts, split_item=2, group_type=0, group_list_type=1)
        gate_up = torch.ops.npu.npu_grouped_matmul([ex], [x["w13"]], **gmm)[0]
        hidden_ = torch.ops.npu.npu_swiglu(gate_up, -1)
        down = torch.ops.npu.npu_grouped_matmul([hidden_], [x["w2"]], **gmm)[0]
        y = torch.ops.npu.npu_moe_token_unpermute(down, row_idx, weights.to(x["x"].dtype))
        return _host(dict(y=y))

    def verify(inputs, out):
        x = inputs["x"].double()
        probs = torch.softmax(inputs["logits"].double(), -1)
        w, ids = probs.topk(k, dim=-1)
        w = w / w.sum(-1, keepdim=True)
        ref = torch.zeros_like(x)
        for i in range(tokens):
            for j in range(k):
                e = int(ids[i, j])
                h = _swiglu64(x[i] @ inputs["w13"][e].double()) @ inputs["w2"][e].double()
                ref[i] += w[i, j] * h
        assert_close("y", out["y"], ref, tol)

    return Case(name, "npu::npu_moe_gating_top_k_softmax+npu_moe_init_routing_v2+"
                "npu_grouped_matmul+npu_swiglu+npu_moe_token_unpermute",
                "ops/fused_moe.py apply_monolithic", build, run, verify, tol)


# ---------------------------------------------------------------------------------------------
# top-k/top-p filter (sampling)
# ---------------------------------------------------------------------------------------------


def _top_k_top_p_case(name: str, batch: int, vocab: int, dtype: torch.dtype) -> Case:
    def build(g):
        logits = _randn(g, batch, vocab, dtype=dtype, scale=3.0)
        k = torch.randint(1, min(vocab, 1024), (batch,), generator=g).to(torch.int32)
        k[0] = min(vocab, 1024)  # the doc's largest k: top-k keeps everything
        p = 0.5 + 0.45 * torch.rand(batch, generator=g)
        p[-1] = 1.0  # top-p keeps everything
        return dict(logits=logits, k=k, p=p.to(dtype))  # the doc: p has the logits' dtype

    def run(inputs, device):
        x = _to(inputs, device)
        return _host(dict(y=torch.ops.npu.npu_top_k_top_p(x["logits"], x["p"], x["k"])))

    def verify(inputs, out):
        """Top-k keeps every value >= the k-th largest (ties included); top-p then keeps a token
        while the probability mass above it (in the reverse of the stable ascending order) is
        below p, which always keeps the largest."""
        logits = inputs["logits"]
        expected = torch.full_like(logits, float("-inf"))
        for b in range(logits.shape[0]):
            row = logits[b].double()
            desc = torch.sort(row, stable=True).indices.flip(0)
            kth = row[desc[int(inputs["k"][b]) - 1]]
            kept = desc[row[desc] >= kth]
            probs = torch.softmax(row[kept], -1)
            above = probs.cumsum(0) - probs
            kept = kept[above < float(inputs["p"][b])]
            expected[b, kept] = logits[b, kept]
        assert_equal("filtered logits", out["y"], expected)

    return Case(name, "npu::npu_top_k_top_p", "sampling (top-k/top-p filter)", build, run,
                verify, finite=False)


# ---------------------------------------------------------------------------------------------
# _C_ascend ops (ops/rotary_embedding.py, ops/vocab_parallel_embedding.py, quantization)
# ---------------------------------------------------------------------------------------------


def _rope_cache(max_pos: int, rot: int) -> torch.Tensor:
    inv = 1.0 / 10000.0 ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot)
    f = torch.arange(max_pos, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cat([f.cos(), f.sin()], -1)


def _rope64(pos: torch.Tensor, x: torch.Tensor, head: int, cache: torch.Tensor,
            neox: bool) -> torch.Tensor:
    t = pos.numel()
    xd = x.double().reshape(t, -1, head).clone()
    half = cache.shape[1] // 2
    cs = cache.double()[pos.long()]
    cos, sin = cs[:, None, :half], cs[:, None, half:]
    if neox:
        a, b = xd[..., :half].clone(), xd[..., half:2 * half].clone()
        xd[..., :half], xd[..., half:2 * half] = a * cos - b * sin, b * cos + a * sin
    else:
        a, b = xd[..., 0:2 * half:2].clone(), xd[..., 1:2 * half:2].clone()
        xd[..., 0:2 * half:2], xd[..., 1:2 * half:2] = a * cos - b * sin, b * cos + a * sin
    return xd.reshape(x.shape)


def _rotary_case(name: str, tokens: int, heads: int, kv_heads: int, head: int, neox: bool,
                 dtype: torch.dtype) -> Case:
    tol = TOLS[dtype]
    max_pos = 4096

    def build(g):
        return dict(pos=torch.randint(0, max_pos, (tokens,), generator=g),
                    qkv=_randn(g, tokens, (heads + 2 * kv_heads) * head, dtype=dtype),
                    cache=_rope_cache(max_pos, head).to(dtype))

    def run(inputs, device):
        from vllm_ascend.kernels import extension

        x = _to(inputs, device)
        qkv = x["qkv"].clone()
        # In place on the q and k views of the fused projection (strided rows), as vLLM passes
        # them after qkv.split.
        q, k, _ = qkv.split([heads * head, kv_heads * head, kv_heads * head], dim=-1)
        extension.ops().rotary_embedding(x["pos"], q, k, head, x["cache"], neox)
        return _host(dict(qkv=qkv))

    def verify(inputs, out):
        q, k, v = inputs["qkv"].split([heads * head, kv_heads * head, kv_heads * head], dim=-1)
        ref = torch.cat([_rope64(inputs["pos"], q, head, inputs["cache"], neox),
                         _rope64(inputs["pos"], k, head, inputs["cache"], neox), v.double()], -1)
        assert_close("qkv after in-place rotary", out["qkv"], ref, tol)

    return Case(name, "_C_ascend::rotary_embedding",
                "ops/rotary_embedding.py AscendRotaryEmbedding.forward_oot", build, run, verify,
                tol)


def _masked_input_case(name: str, shard: tuple[int, int, int, int, int]) -> Case:
    org_start, org_end, pad, added_start, added_end = shard

    def run(inputs, device):
        from vllm_ascend.kernels import extension

        ids, mask = extension.ops().get_masked_input_and_mask(
            _to(inputs, device)["ids"], *shard)
        return _host(dict(ids=ids, mask=mask))

    def verify(inputs, out):
        ids = inputs["ids"]
        in_org = (ids >= org_start) & (ids < org_end)
        in_added = (ids >= added_start) & (ids < added_end)
        ref = torch.where(in_org, ids - org_start, torch.zeros_like(ids))
        ref = torch.where(in_added, ids - added_start + (org_end - org_start) + pad, ref)
        assert_equal("masked ids", out["ids"], ref.to(torch.int64))
        assert_equal("mask", out["mask"], ~(in_org | in_added))

    return Case(name, "_C_ascend::get_masked_input_and_mask",
                "ops/vocab_parallel_embedding.py AscendVocabParallelEmbedding.forward",
                build=lambda g: dict(ids=torch.randint(0, 1030, (257,), generator=g)),
                run=run, verify=verify)


def _add_rms_norm_quant_case(name: str, tokens: int, hidden: int, dtype: torch.dtype) -> Case:
    eps = 1e-6

    def build(g):
        return dict(x=_randn(g, tokens, hidden, dtype=dtype), r=_randn(g, tokens, hidden,
                                                                       dtype=dtype),
                    w=(1 + 0.1 * torch.randn(hidden, generator=g)).to(dtype))

    def run(inputs, device):
        from vllm_ascend.kernels import extension

        x = _to(inputs, device)
        y, scale, res = extension.ops().add_rms_norm_dynamic_quant(x["x"], x["r"], x["w"], eps)
        return _host(dict(y=y, scale=scale, residual=res))

    def verify(inputs, out):
        r = inputs["x"].double() + inputs["r"].double()
        y, _ = _rms64(r, inputs["w"], eps)
        scale = y.abs().amax(-1) / 127.0
        assert_close("residual", out["residual"], r, TOLS[dtype])
        assert_close("scale", out["scale"], scale, dict(atol=1e-6, rtol=1e-4))
        deq = out["y"].double() * out["scale"].double()[:, None]
        # Each int8 value is within one quantisation step of the exact normed value.
        if not bool(((deq - y).abs() <= scale[:, None] * 1.0 + 1e-6).all()):
            raise AssertionError("quantised output is more than one step from the reference")

    def compare(npu, cpu, inputs):
        assert_close("residual (NPU vs CPU)", npu["residual"], cpu["residual"], TOLS[dtype])
        assert_close("scale (NPU vs CPU)", npu["scale"], cpu["scale"], dict(atol=1e-6,
                                                                              rtol=1e-3))
        if int((npu["y"].int() - cpu["y"].int()).abs().max()) > 1:
            raise AssertionError("int8 output (NPU vs CPU) differs by more than one step")

    return Case(name, "_C_ascend::add_rms_norm_dynamic_quant",
                "quantization (w8a8 dynamic: fused residual add + RMSNorm + per-token int8)",
                build, run, verify, compare=compare)


# ---------------------------------------------------------------------------------------------
# Quantized linear layers and MoE experts (quantization/)
# ---------------------------------------------------------------------------------------------

# A value this close to a .5 rounding boundary (in quantisation steps) may round either way: the
# kernels divide in float32 (and the NPU may multiply by a reciprocal), the reference in float64,
# and the NPU's tie rule is not the doc's to fix. float32 is off by < 2e-5 steps at |v| <= 128.
_BOUNDARY = 1e-4


def _near_boundary(v: torch.Tensor) -> torch.Tensor:
    return ((v - v.floor()) - 0.5).abs() <= _BOUNDARY


def _check_codes(name: str, codes: torch.Tensor, v: torch.Tensor) -> None:
    """int8 codes against clamp(round_half_even(v), -128, 127) of the exact float64 values v;
    where v sits on a rounding boundary either neighbour is accepted."""
    if codes.dtype != torch.int8 or codes.shape != v.shape:
        raise AssertionError(f"{name}: {codes.dtype} {tuple(codes.shape)}, expected int8 "
                             f"{tuple(v.shape)}")
    c = codes.double()
    lo, hi = v.floor().clamp(-128, 127), (v.floor() + 1).clamp(-128, 127)
    ok = (c == torch.round(v).clamp(-128, 127)) | (_near_boundary(v) & ((c == lo) | (c == hi)))
    if not bool(ok.all()):
        idx = tuple(int(i) for i in (~ok).nonzero()[0])
        raise AssertionError(f"{name}: {int((~ok).sum())}/{ok.numel()} codes differ from "
                             f"clamp(round_half_even(v)) away from a rounding boundary; first at "
                             f"{idx}: {int(codes[idx])} for v = {float(v[idx]):.6f}")


def _check_dtype(name: str, t: torch.Tensor, dtype: torch.dtype) -> None:
    if t.dtype != dtype:
        raise AssertionError(f"{name}: dtype {t.dtype}, the call site asks for {dtype}")


def _per_token_values(x: torch.Tensor) -> torch.Tensor:
    """x in units of its row's quantisation step: x / (rowmax|x| / 127), float64."""
    x = x.double()
    return x / (x.abs().amax(-1, keepdim=True) / 127.0)


def _quant_verify(x_key: str, values: Callable[[dict], torch.Tensor],
                  y_ref: Callable[[dict, Outputs], torch.Tensor], dtype: torch.dtype,
                  tol: dict) -> Callable[[dict, Outputs], None]:
    """verify of an op chain that quantizes ``inputs[x_key]`` (codes ``x_q``; with a per-token
    ``scale`` output, rowmax|x| / 127) and then multiplies (``y`` in ``dtype``, against the
    float64 product of the output codes)."""

    def verify(inputs: dict, out: Outputs) -> None:
        _check_dtype("y", out["y"], dtype)
        if "scale" in out:
            assert_close("scale", out["scale"],
                         inputs[x_key].double().abs().amax(-1) / 127.0,
                         dict(atol=0.0, rtol=1e-6))
        _check_codes("x_q", out["x_q"], values(inputs))
        assert_close("y", out["y"], y_ref(inputs, out), tol)

    return verify


def _quant_compare(values: Callable[[dict], torch.Tensor],
                   y_ref: Callable[[dict, Outputs], torch.Tensor], tol: dict):
    """NPU vs CPU of an op chain that quantizes (codes ``x_q``, optional per-row ``scale``) and
    then multiplies (``y``): codes equal, or one step apart where the value sits on a rounding
    boundary; ``y`` close on the rows whose codes agree, and on the other rows close to the
    float64 product of the NPU's own codes."""

    def compare(npu: Outputs, cpu: Outputs, inputs: dict) -> None:
        if "scale" in cpu:
            assert_close("scale (NPU vs CPU)", npu["scale"], cpu["scale"],
                         dict(atol=0.0, rtol=1e-5))
        diff = (npu["x_q"].int() - cpu["x_q"].int()).abs()
        if int(diff.max()) > 1 or bool((diff.bool() & ~_near_boundary(values(inputs))).any()):
            raise AssertionError("x_q (NPU vs CPU): codes differ by more than one step, or away "
                                 "from a rounding boundary")
        same = ~diff.bool().any(-1)
        assert_close("y (NPU vs CPU)", npu["y"][same], cpu["y"][same], tol)
        if not bool(same.all()):  # rows where a boundary value rounded the other way
            assert_close("y (NPU, rows with boundary codes)", npu["y"][~same],
                         y_ref(inputs, npu)[~same], tol)

    return compare


def _int8_weight(g: torch.Generator, *shape: int) -> tuple[torch.Tensor, torch.Tensor]:
    """msModelSlim's per-channel symmetric int8 weight of a float [..., n, k] one: the int8
    [..., k, n] the call sites hold after load (weight.t().contiguous() /
    transpose_for_grouped_matmul), and the float32 scale [..., n] (absmax / 127)."""
    w = torch.randn(*shape, generator=g) * shape[-1] ** -0.5
    s = w.abs().amax(-1) / 127.0
    q = torch.round(w / s.unsqueeze(-1)).clamp(-127, 127).to(torch.int8)
    return q.transpose(-1, -2).contiguous(), s


def _token_rows(g: torch.Generator, m: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    """Activation rows whose magnitudes span two decades (per-token scales that differ)."""
    mag = 10.0 ** (2 * torch.rand(m, 1, generator=g) - 1)
    return (torch.randn(m, k, generator=g) * mag).to(dtype)


def _with_outliers(g: torch.Generator, m: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    """Activations for a static (calibrated) scale, with a few outliers far beyond its range on
    both sides, which saturate at -128 / 127."""
    x = torch.randn(m, k, generator=g)
    x[0, :3], x[-1, -3:] = 40.0, -40.0
    return x.to(dtype)


def _deq64(deq_scale: torch.Tensor) -> torch.Tensor:
    """The float64 value of a W8A8 deq_scale: float32, or (fp16 models) int64 holding the float32
    bits as a sign-extended int32, as msModelSlim writes it."""
    if deq_scale.dtype == torch.int64:
        return deq_scale.to(torch.int32).view(torch.float32).double()
    return deq_scale.double()


def _w8a8_static_case(name: str, m: int, k: int, n: int, dtype: torch.dtype) -> Case:
    """W8A8 (msModelSlim static): per-tensor asymmetric activations with a power-of-two scale and
    an integral offset (so x / s + o is exact and ties are exact), per-channel int8 weights,
    int32 quant_bias carrying the float bias and the offset's correction; deq_scale float32 for
    bfloat16 models, the float32 bits as int64 for float16 ones."""
    tol = TOLS[dtype]
    s_x, o_x = 2.0 ** -5, 8  # the int8 range covers [-4.25, 3.97]

    def build(g):
        w, s_w = _int8_weight(g, n, k)
        deq = (s_w * s_x).float()
        bias = torch.randn(n, generator=g) * 0.1
        quant_bias = torch.round(bias.double() / deq.double()) - o_x * w.double().sum(0)
        deq_scale = deq.view(torch.int32).to(torch.int64) if dtype == torch.float16 else deq
        return dict(x=_with_outliers(g, m, k, dtype),
                    input_scale=torch.tensor([s_x], dtype=torch.float32),
                    input_offset=torch.tensor([o_x], dtype=torch.int8), weight=w,
                    deq_scale=deq_scale, quant_bias=quant_bias.to(torch.int32))

    def run(inputs, device):
        x = _to(inputs, device)
        x_q = torch.ops.npu.npu_quantize(x["x"], x["input_scale"], x["input_offset"],
                                         torch.qint8, -1, True)
        y = torch.ops.npu.npu_quant_matmul(x_q, x["weight"], x["deq_scale"],
                                           bias=x["quant_bias"], output_dtype=dtype)
        return _host(dict(y=y, x_q=x_q))

    def values(inputs):
        return (inputs["x"].double() / inputs["input_scale"].double()
                + inputs["input_offset"].double())

    def y_ref(inputs, out):
        acc = out["x_q"].double() @ inputs["weight"].double() + inputs["quant_bias"].double()
        return acc * _deq64(inputs["deq_scale"])

    verify = _quant_verify("x", values, y_ref, dtype, tol)

    deq = ("int64 deq_scale (float32 bits widened, as msModelSlim writes it; the CPU kernel "
           "reads its low 32 bits as FP19, so no npu_trans_quant_param)"
           if dtype == torch.float16 else "float32 deq_scale")
    return Case(name, "npu::npu_quantize+npu_quant_matmul",
                f"quantization/linear_schemes.py W8A8Static.apply ({deq})", build, run, verify,
                tol, compare=_quant_compare(values, y_ref, tol))


def _w8a8_dynamic_case(name: str, m: int, k: int, n: int, dtype: torch.dtype) -> Case:
    tol = TOLS[dtype]

    def build(g):
        w, s_w = _int8_weight(g, n, k)
        return dict(x=_token_rows(g, m, k, dtype), weight=w, weight_scale=s_w)

    def run(inputs, device):
        x = _to(inputs, device)
        x_q, scale = torch.ops.npu.npu_dynamic_quant(x["x"])
        y = torch.ops.npu.npu_quant_matmul(x_q, x["weight"], x["weight_scale"],
                                           pertoken_scale=scale, output_dtype=dtype)
        return _host(dict(y=y, x_q=x_q, scale=scale))

    def values(inputs):
        return _per_token_values(inputs["x"])

    def y_ref(inputs, out):
        acc = out["x_q"].double() @ inputs["weight"].double()
        return acc * out["scale"].double()[:, None] * inputs["weight_scale"].double()

    verify = _quant_verify("x", values, y_ref, dtype, tol)

    return Case(name, "npu::npu_dynamic_quant+npu_quant_matmul",
                "quantization/linear_schemes.py W8A8Dynamic.apply (unfused); "
                "quantization/compressed_tensors.py AscendInt8ScaledMMLinearKernel (dynamic)",
                build, run, verify, tol, compare=_quant_compare(values, y_ref, tol))


def _w8a8_prequantized_case(name: str, m: int, k: int, n: int, dtype: torch.dtype) -> Case:
    """The int8 rows and float32 per-token scales handed over by the fused add + RMSNorm +
    quant (quantization/norm_fusion.py), straight into npu_quant_matmul."""
    tol = TOLS[dtype]

    def build(g):
        x = _token_rows(g, m, k, torch.float32)
        scale = x.abs().amax(-1) / 127.0
        w, s_w = _int8_weight(g, n, k)
        return dict(x_q=torch.round(x / scale[:, None]).to(torch.int8), scale=scale, weight=w,
                    weight_scale=s_w)

    def run(inputs, device):
        x = _to(inputs, device)
        return _host(dict(y=torch.ops.npu.npu_quant_matmul(
            x["x_q"], x["weight"], x["weight_scale"], pertoken_scale=x["scale"],
            output_dtype=dtype)))

    def verify(inputs, out):
        _check_dtype("y", out["y"], dtype)
        ref = (inputs["x_q"].double() @ inputs["weight"].double()) * (
            inputs["scale"].double()[:, None] * inputs["weight_scale"].double())
        assert_close("y", out["y"], ref, tol)

    return Case(name, "npu::npu_quant_matmul",
                "quantization/linear_schemes.py W8A8Dynamic.apply (pre-quantized by "
                "norm_fusion.add_rms_norm_quant)", build, run, verify, tol)


def _ct_int8_static_case(name: str, m: int, k: int, n: int, dtype: torch.dtype) -> Case:
    """compressed-tensors static int8: symmetric per-tensor activation scale (absmax / 127 of
    the calibration, not a power of two), dequantization scale s_x * s_w per channel. With
    float16 output the float32 scale goes through npu_trans_quant_param inside the op (FP19)."""
    tol = TOLS[dtype]

    def build(g):
        w, s_w = _int8_weight(g, n, k)
        s_x = torch.tensor([4.0 / 127.0], dtype=torch.float32)
        return dict(x=_with_outliers(g, m, k, dtype), input_scale=s_x, weight=w,
                    scale=(s_w.float() * s_x).contiguous())

    def run(inputs, device):
        x = _to(inputs, device)
        x_q = torch.ops.npu.npu_quantize(x["x"], x["input_scale"], None, torch.qint8, -1, True)
        y = torch.ops.npu.npu_quant_matmul(x_q, x["weight"], x["scale"], output_dtype=dtype)
        return _host(dict(y=y, x_q=x_q))

    def values(inputs):
        return inputs["x"].double() / inputs["input_scale"].double()

    def y_ref(inputs, out):
        return (out["x_q"].double() @ inputs["weight"].double()) * inputs["scale"].double()

    verify = _quant_verify("x", values, y_ref, dtype, tol)

    return Case(name, "npu::npu_quantize+npu_quant_matmul",
                "quantization/compressed_tensors.py AscendInt8ScaledMMLinearKernel (static)",
                build, run, verify, tol, compare=_quant_compare(values, y_ref, tol))


def _w8a16_case(name: str, m: int, k: int, n: int, dtype: torch.dtype, bias: bool) -> Case:
    """msModelSlim W8A16: asymmetric per-channel int8 weights; after load the scale and the
    negated offset are [n] in the activations' dtype. The kernel rounds the dequantized weight to
    x's dtype (assumption in quant.py), well inside the tolerance at these magnitudes."""
    tol = TOLS[dtype]

    def build(g):
        w = torch.randn(n, k, generator=g) * k ** -0.5 + 0.02 * torch.randn(n, 1, generator=g)
        lo, hi = w.amin(-1), w.amax(-1)
        scale = (hi - lo) / 255.0
        offset = -128.0 - torch.round(lo / scale)  # w ~ (q - offset) * scale
        q = (torch.round(w / scale[:, None]) + offset[:, None]).clamp(-128, 127)
        return dict(x=_randn(g, m, k, dtype=dtype), weight=q.to(torch.int8).t().contiguous(),
                    scale=scale.to(dtype), offset=(-offset).to(dtype),
                    bias=_randn(g, n, dtype=dtype, scale=0.1) if bias else None)

    def run(inputs, device):
        x = _to(inputs, device)
        return _host(dict(y=torch.ops.npu.npu_weight_quant_batchmatmul(
            x["x"], x["weight"], x["scale"], x["offset"], bias=x["bias"])))

    def verify(inputs, out):
        _check_dtype("y", out["y"], dtype)
        w = (inputs["weight"].double() + inputs["offset"].double()) * inputs["scale"].double()
        ref = inputs["x"].double() @ w
        if inputs["bias"] is not None:
            ref = ref + inputs["bias"].double()
        assert_close("y", out["y"], ref, tol)

    return Case(name, "npu::npu_weight_quant_batchmatmul",
                "quantization/linear_schemes.py W8A16.apply"
                + (" (with the layer's bias)" if bias else ""), build, run, verify, tol)


def _moe_w8a8_gmm_case(name: str, counts: list[int], k: int, n: int,
                       dtype: torch.dtype) -> Case:
    """W8A8-dynamic experts: rows grouped by expert -> per-token int8 -> grouped int8 matmul
    with per-expert per-channel scales (bfloat16 for a bfloat16 output, float32 for float16)."""
    tol = TOLS[dtype]
    experts, rows = len(counts), sum(counts)
    scale_dtype = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32

    def build(g):
        w, s_w = _int8_weight(g, experts, n, k)
        return dict(rows=_token_rows(g, rows, k, dtype), weight=w, scale=s_w.to(scale_dtype),
                    counts=torch.tensor(counts, dtype=torch.int64))

    def run(inputs, device):
        x = _to(inputs, device)
        rows_q, row_scale = torch.ops.npu.npu_dynamic_quant(x["rows"])
        y = torch.ops.npu.npu_grouped_matmul(
            [rows_q], [x["weight"]], scale=[x["scale"]], per_token_scale=[row_scale],
            group_list=x["counts"], split_item=2, group_type=0, group_list_type=1,
            output_dtype=dtype)[0]
        return _host(dict(y=y, x_q=rows_q, scale=row_scale))

    def values(inputs):
        return _per_token_values(inputs["rows"])

    def y_ref(inputs, out):
        ref = torch.zeros(rows, n, dtype=torch.float64)
        begin = 0
        for e, c in enumerate(counts):
            acc = out["x_q"][begin:begin + c].double() @ inputs["weight"][e].double()
            ref[begin:begin + c] = (acc * inputs["scale"][e].double()
                                    * out["scale"][begin:begin + c].double()[:, None])
            begin += c
        return ref

    verify = _quant_verify("rows", values, y_ref, dtype, tol)

    return Case(name, "npu::npu_dynamic_quant+npu_grouped_matmul",
                "quantization/moe_schemes.py _int8_grouped_matmul", build, run, verify, tol,
                compare=_quant_compare(values, y_ref, tol))


# ---------------------------------------------------------------------------------------------
# the list
# ---------------------------------------------------------------------------------------------


def _attention_cases() -> list[Case]:
    bf16, fp16 = torch.bfloat16, torch.float16
    mixed = dict(q_lens=(1, 37, 5, 1), kv_lens=(300, 37, 140, 1))
    cases = []
    for d in (64, 128, 192):
        for bs in (128, 256):
            cases.append(_attn_case(f"fia_tnd_mixed_d{d}_bs{bs}",
                                    AttnShape(**mixed, head_dim=d, block_size=bs)))
    cases += [
        _attn_case("fia_tnd_prefill_fp16", AttnShape((64, 130), (64, 130), dtype=fp16)),
        _attn_case("fia_tnd_decode_gqa8", AttnShape((1, 1, 1), (513, 9, 129), heads=16,
                                                    kv_heads=2, dtype=bf16)),
        _attn_case("fia_tnd_chunked_prefill", AttnShape((48,), (300,), head_dim=64)),
        _attn_case("fia_tnd_strided_query", AttnShape(**mixed, strided_query=True)),
        _attn_case("fia_tnd_shared_prefix_blocks", AttnShape((1, 1, 5, 1), (300, 280, 290, 260),
                                                             shared_prefix_blocks=2)),
        _attn_case("fia_tnd_strided_query_d64", AttnShape((1, 9), (40, 9), heads=4, kv_heads=4,
                                                          head_dim=64, strided_query=True)),
        _attn_case("fia_tnd_window_prefill", AttnShape((90,), (90,), window=32)),
        _attn_case("fia_tnd_window_decode", AttnShape((1, 1), (300, 20), window=32,
                                                      block_size=256)),
        _attn_case("fia_tnd_window_mixed", AttnShape((1, 50, 3), (200, 70, 3), window=32,
                                                     head_dim=64)),
        # all-MiniLM-L6-v2: 12 heads of 32, padded to 64; and a BERT-base-like head of 64.
        _encoder_attn_case("fia_tnd_encoder_d32_padded", (7, 30, 1, 64), 12, 32, fp16),
        _encoder_attn_case("fia_tnd_encoder_d64_bf16", (12, 5), 12, 64, bf16),
    ]
    return cases


def build_cases() -> list[Case]:
    bf16, fp16 = torch.bfloat16, torch.float16
    cases = _attention_cases()
    for d in (64, 128, 192):
        for bs in (128, 256):
            cases.append(_scatter_case(f"scatter_pa_kv_cache_norm_d{d}_bs{bs}", 45, 2, d, bs,
                                       bf16))
    cases.append(_scatter_case("scatter_pa_kv_cache_norm_fp16", 300, 4, 128, 128, fp16))
    cases += [
        _rms_norm_case("rms_norm_bf16", (37, 4096), bf16),
        _rms_norm_case("rms_norm_fp16", (5, 2048), fp16),
        _rms_norm_case("rms_norm_qk_head", (23, 8, 128), bf16),  # Qwen3 q/k norm per head
        _add_rms_norm_case("add_rms_norm_bf16", (37, 4096), bf16),
        _add_rms_norm_case("add_rms_norm_fp16", (3, 1024), fp16),
        # GemmaRMSNorm (ops/layernorm.py) normalises half-precision inputs in float32.
        _rms_norm_case("rms_norm_fp32_gemma", (9, 2048), torch.float32),
        _add_rms_norm_case("add_rms_norm_fp32_gemma", (9, 2048), torch.float32),
        _swiglu_case("swiglu_bf16", 19, 1408, bf16),
        _swiglu_case("swiglu_fp16", 7, 512, fp16),
        _gating_case("moe_gating_top_k_softmax", 33, 64, 8, bf16),
        _gating_case("moe_gating_top_k_softmax_fp16", 9, 8, 2, fp16),
        _init_routing_case("moe_init_routing_v2", 33, 256, 16, 4, bf16),
        _grouped_matmul_case("grouped_matmul_w13", [5, 0, 17, 3, 8, 1, 0, 2], 256, 384, bf16),
        _grouped_matmul_case("grouped_matmul_w2_fp16", [4, 9, 0, 3], 192, 256, fp16),
        _unpermute_case("moe_token_unpermute", 21, 256, 4, bf16),
        _moe_chain_case("moe_chain_qwen3_like", 24, 128, 64, 16, 4, bf16),
        _moe_chain_case("moe_chain_mixtral_like", 11, 256, 128, 8, 2, fp16),
        _top_k_top_p_case("top_k_top_p_fp32", 6, 1000, torch.float32),
        _top_k_top_p_case("top_k_top_p_bf16", 4, 512, bf16),
        _rotary_case("rotary_neox_d128", 33, 8, 2, 128, True, bf16),
        _rotary_case("rotary_gptj_d64", 17, 4, 1, 64, False, fp16),
        _masked_input_case("masked_input_tp2_rank0", (0, 512, 0, 1010, 1026)),
        _masked_input_case("masked_input_tp2_rank1", (512, 1010, 14, 1026, 1026)),
        _add_rms_norm_quant_case("add_rms_norm_dynamic_quant", 29, 2048, bf16),
        # Qwen2-7B-like linears (hidden 3584, intermediate 18944), tensor-parallel shards.
        _w8a8_static_case("w8a8_static_qkv_tp4_bf16", 13, 3584, 1152, bf16),
        _w8a8_static_case("w8a8_static_down_tp8_fp16_int64_deq", 6, 2368, 3584, fp16),
        _w8a8_dynamic_case("w8a8_dynamic_gate_up_tp16_bf16", 21, 3584, 2368, bf16),
        _w8a8_dynamic_case("w8a8_dynamic_o_proj_tp8_fp16", 5, 448, 3584, fp16),
        _w8a8_prequantized_case("w8a8_dynamic_prequantized_qkv_tp4_bf16", 29, 3584, 1152, bf16),
        _ct_int8_static_case("ct_int8_static_qkv_tp4_bf16", 11, 3584, 1152, bf16),
        _ct_int8_static_case("ct_int8_static_o_proj_tp8_fp16", 4, 448, 3584, fp16),
        _w8a16_case("w8a16_gate_up_tp16_bf16", 7, 3584, 2368, bf16, bias=False),
        _w8a16_case("w8a16_qkv_tp8_fp16_bias", 3, 3584, 576, fp16, bias=True),
        # Qwen3-30B-A3B-like experts (hidden 2048, moe intermediate 768), TP4 shards.
        _moe_w8a8_gmm_case("moe_w8a8_gmm_w13_bf16", [5, 0, 17, 3, 8, 1, 0, 2], 2048, 384, bf16),
        _moe_w8a8_gmm_case("moe_w8a8_gmm_w2_fp16", [4, 9, 0, 3], 192, 2048, fp16),
    ]
    # Cases kept in their own modules (they import this one's helpers).
    from vllm_ascend.selfcheck import mla_cases, moe_routing_cases, vision_cases

    cases += moe_routing_cases.build() + mla_cases.build() + vision_cases.build()
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "duplicate case names"
    return cases


CASES: list[Case] = build_cases()


def covered_ops() -> set[str]:
    """Every op name (``npu::x`` / ``_C_ascend::x``) some case calls, chains expanded."""
    out: set[str] = set()
    for case in CASES:
        ns, _, names = case.op.partition("::")
        out.update(f"{ns}::{name}" for name in names.split("+"))
    return out
