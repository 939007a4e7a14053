"""CPU kernels of the torch_npu MoE ops (vllm_ascend/kernels/npu_ops/moe.py) vs float64 references.

The references are written per row / per token with plain Python loops, independently of the
vectorised kernels, and computed in float64. Shapes of the fake kernels are checked against the
CPU outputs. Tests marked ``both_impls`` run twice: through the fast C++ kernels of the ops
that have one and through the Python references (conftest.py); the quantized forms have only the
reference.
"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import vllm_ascend.kernels.npu_ops  # noqa: F401  (registers torch.ops.npu.*)

both_impls = pytest.mark.usefixtures("cpu_kernel_impl")

OPS = torch.ops.npu
DTYPES = [torch.float32, torch.bfloat16]
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=1.6e-2)}


def _close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    torch.testing.assert_close(actual.double(), expected.double(), **TOL[dtype])


def _fake_shapes(op, *args, **kwargs):
    def to_fake(v):
        if isinstance(v, torch.Tensor):
            return mode.from_tensor(v)
        if isinstance(v, list):
            return [to_fake(t) for t in v]
        return v

    with FakeTensorMode() as mode:
        out = op(*[to_fake(a) for a in args], **{k: to_fake(v) for k, v in kwargs.items()})
    flat = out if isinstance(out, (list, tuple)) else [out]
    return [(tuple(t.shape), t.dtype) for t in flat]


def _shapes(out):
    flat = out if isinstance(out, (list, tuple)) else [out]
    return [(tuple(t.shape), t.dtype) for t in flat]


# ---- npu_moe_gating_top_k_softmax --------------------------------------------------------------


def _ref_gating(x: torch.Tensor, k: int):
    rows = x.reshape(-1, x.shape[-1]).double()
    n = rows.shape[0]
    vals, ids, row_idx = [], [], []
    for i in range(n):
        p = torch.exp(rows[i] - rows[i].max())
        p = (p / p.sum()).tolist()
        order = sorted(range(len(p)), key=lambda e: (-p[e], e))[:k]
        vals.append([p[e] for e in order])
        ids.append(order)
        row_idx.append([j * n + i for j in range(k)])
    shape = (*x.shape[:-1], k)
    return (
        torch.tensor(vals, dtype=torch.float64).reshape(shape),
        torch.tensor(ids).reshape(shape),
        torch.tensor(row_idx).reshape(shape),
    )


@both_impls
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape,k", [((7, 8), 1), ((7, 8), 2), ((3, 5, 16), 4), ((513, 64), 8), ((4, 6), 6)]
)
def test_gating_top_k_softmax(dtype, shape, k):
    torch.manual_seed(0)
    x = torch.randn(shape).to(dtype)
    y, ids, row_idx = OPS.npu_moe_gating_top_k_softmax(x, None, k=k)
    ref_y, ref_ids, ref_row = _ref_gating(x, k)
    assert y.dtype == dtype and ids.dtype == torch.int32 and row_idx.dtype == torch.int32
    assert torch.equal(ids.long(), ref_ids)
    assert torch.equal(row_idx.long(), ref_row)
    _close(y, ref_y, dtype)
    assert _fake_shapes(OPS.npu_moe_gating_top_k_softmax, x, None, k=k) == _shapes(
        (y, ids, row_idx)
    )


@both_impls
def test_gating_ties_pick_lower_expert_and_finished():
    x = torch.tensor([[1.0, 3.0, 3.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    y, ids, _ = OPS.npu_moe_gating_top_k_softmax(x, None, k=3)
    assert ids.tolist() == [[1, 2, 0], [0, 1, 2]]
    torch.testing.assert_close(y[1], torch.full((3,), 0.25))
    finished = torch.tensor([False, True])
    y2, ids2, _ = OPS.npu_moe_gating_top_k_softmax(x, finished, k=3)
    assert ids2.tolist() == [[1, 2, 0], [4, 4, 4]]  # finished rows routed to expert E (none)
    assert torch.equal(y2, y)


@both_impls
def test_gating_rejects_bad_k():
    with pytest.raises(ValueError):
        OPS.npu_moe_gating_top_k_softmax(torch.randn(2, 4), None, k=5)


# ---- npu_moe_init_routing_v2 ----------------------------------------------------------------


def _ref_init_routing(x, expert_idx, expert_num, start, end, active_num, scale):
    n, k = expert_idx.shape
    flat = expert_idx.reshape(-1).tolist()
    order = [s for e in range(start, end) for s in range(n * k) if flat[s] == e]
    rows = n * k if active_num <= 0 else min(active_num, n * k)
    order = order[:rows]
    expanded = torch.zeros(rows, x.shape[1], dtype=torch.float64)
    src_to_dst = [-1] * (n * k)
    exp_scale = torch.zeros(rows, dtype=torch.float64)
    for dst, s in enumerate(order):
        expanded[dst] = x[s // k].double()
        src_to_dst[s] = dst
        if scale is not None:
            exp_scale[dst] = float(scale[s // k])
    counts = [sum(1 for s in order if flat[s] == e) for e in range(start, end)]
    return expanded, src_to_dst, order, counts, exp_scale


@both_impls
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "n,k,e,active_range,active_num",
    [
        (9, 1, 4, [], -1),
        (9, 2, 8, [], -1),
        (16, 4, 32, [], 0),  # most experts empty
        (300, 8, 64, [], -1),  # many tokens
        (12, 2, 8, [2, 6], -1),  # expert-range slice: other positions get -1
        (12, 3, 8, [], 20),  # active_num truncation
    ],
)
def test_init_routing_v2(dtype, n, k, e, active_range, active_num):
    torch.manual_seed(1)
    x = torch.randn(n, 16).to(dtype)
    # distinct experts per token (as top-k produces)
    expert_idx = torch.stack([torch.randperm(e)[:k] for _ in range(n)]).to(torch.int32)
    scale = torch.rand(n)
    start, end = active_range or [0, e]
    kwargs = dict(
        scale=scale,
        active_num=active_num,
        expert_num=e,
        expert_tokens_num_flag=True,
        active_expert_range=active_range,
    )
    ref_x, ref_src_to_dst, ref_order, ref_counts, ref_scale = _ref_init_routing(
        x, expert_idx, e, start, end, active_num, scale
    )
    for tokens_type in (1, 2):  # the only modes the NPU kernel implements (doc)
        out = OPS.npu_moe_init_routing_v2(
            x, expert_idx, expert_tokens_num_type=tokens_type, **kwargs
        )
        expanded_x, row_idx, tokens, exp_scale = out
        assert expanded_x.dtype == dtype
        assert torch.equal(expanded_x.double(), ref_x)  # a pure copy: exact
        assert row_idx.dtype == torch.int32 and row_idx.tolist() == ref_src_to_dst
        assert tokens.dtype == torch.int64
        if tokens_type == 1:
            assert tokens.tolist() == ref_counts
        else:
            pairs = [[start + i, c] for i, c in enumerate(ref_counts) if c > 0]
            assert tokens[: len(pairs)].tolist() == pairs
            if len(pairs) < e:
                assert tokens[len(pairs)].tolist() == [0, 0]
        torch.testing.assert_close(
            exp_scale[: len(ref_order)].double(), ref_scale[: len(ref_order)]
        )
        assert _fake_shapes(
            OPS.npu_moe_init_routing_v2, x, expert_idx, expert_tokens_num_type=tokens_type, **kwargs
        ) == _shapes(out)
    # scatter-type index: the inverse permutation for the emitted rows
    _, inv, _, _ = OPS.npu_moe_init_routing_v2(
        x, expert_idx, row_idx_type=1, expert_tokens_num_type=1, **kwargs
    )
    assert inv[: len(ref_order)].tolist() == ref_order
    assert (inv[len(ref_order) :] == -1).all()


@both_impls
def test_init_routing_v2_unsupported_modes():
    x, idx = torch.randn(4, 8), torch.zeros(4, 2, dtype=torch.int32)
    ok = dict(expert_tokens_num_type=1, expert_tokens_num_flag=True)
    with pytest.raises(ValueError, match="quant_mode=0"):  # static quantization: not supported
        OPS.npu_moe_init_routing_v2(x, idx, expert_num=4, quant_mode=0, **ok)
    with pytest.raises(ValueError, match="int8 x"):  # int8 x cannot be quantized again
        OPS.npu_moe_init_routing_v2(x.to(torch.int8), idx, expert_num=4, quant_mode=1, **ok)
    with pytest.raises(ValueError, match="quant_mode=1, scale must be"):
        OPS.npu_moe_init_routing_v2(x, idx, expert_num=4, quant_mode=1, scale=torch.ones(4),
                                    **ok)
    with pytest.raises(NotImplementedError, match="drop_pad_mode=1"):
        OPS.npu_moe_init_routing_v2(
            x, idx, expert_num=4, drop_pad_mode=1, expert_capacity=4, **ok
        )
    with pytest.raises(ValueError, match="expert_num"):
        OPS.npu_moe_init_routing_v2(x, idx, **ok)  # expert_num is required (> 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("smooth_rows", [0, 1, 8])
def test_init_routing_v2_dynamic_quant(dtype, smooth_rows):
    """quant_mode=1: each expanded row, times its expert's smooth vector (scale[e - start], or
    scale[0] for a one-row scale), is quantized per row: s = max|row| / 127, q = round(row / s)."""
    torch.manual_seed(6)
    n, k, e, start, end = 9, 2, 8, 2, 8
    x = torch.randn(n, 16).to(dtype)
    idx = torch.stack([torch.randperm(e)[:k] for _ in range(n)]).to(torch.int32)
    smooth = torch.rand(smooth_rows if smooth_rows != 8 else end - start, 16) + 0.5
    kwargs = dict(expert_num=e, expert_tokens_num_type=1, expert_tokens_num_flag=True,
                  active_expert_range=[start, end], quant_mode=1,
                  scale=smooth if smooth_rows else None)
    q, row_idx, counts, scales = OPS.npu_moe_init_routing_v2(x, idx, **kwargs)
    ref_x, ref_src_to_dst, order, ref_counts, _ = _ref_init_routing(
        x, idx, e, start, end, -1, None)
    assert q.dtype == torch.int8 and row_idx.tolist() == ref_src_to_dst
    assert counts.tolist() == ref_counts
    flat = idx.reshape(-1).tolist()
    for dst, src in enumerate(order):
        row = ref_x[dst]
        if smooth_rows:
            row = row * smooth[0 if smooth_rows == 1 else flat[src] - start].double()
        s = float(row.abs().max()) / 127
        assert float(scales[dst]) == pytest.approx(s, rel=1e-6)
        want = [round(v) for v in (row / s).tolist()]
        got = q[dst].tolist()
        assert all(abs(a - b) <= 1 for a, b in zip(got, want, strict=True))
        # only float32-vs-float64 near ties may differ
        assert sum(a != b for a, b in zip(got, want, strict=True)) <= 1
    assert not q[len(order):].any() and not scales[len(order):].any()
    assert _fake_shapes(OPS.npu_moe_init_routing_v2, x, idx, **kwargs) == _shapes(
        (q, row_idx, counts, scales))


# ---- npu_grouped_matmul ---------------------------------------------------------------------


def _ref_gmm(x, w, counts, bias):
    out = torch.zeros(x.shape[0], w.shape[2], dtype=torch.float64)
    row = 0
    for g, c in enumerate(counts):
        for _ in range(c):
            acc = x[row].double() @ w[g].double()
            if bias is not None:
                acc = acc + bias[g].double()
            out[row] = acc
            row += 1
    return out


@both_impls
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "counts", [[5, 2], [3, 0, 4, 1], [0, 0, 7, 0], [40, 0, 130, 2, 0, 90, 1, 0]]
)
@pytest.mark.parametrize("group_list_type", [0, 1])
@pytest.mark.parametrize("with_bias", [False, True])
def test_grouped_matmul(dtype, counts, group_list_type, with_bias):
    torch.manual_seed(2)
    m, k, n, e = sum(counts), 24, 40, len(counts)
    x = torch.randn(m, k).to(dtype)
    w = (torch.randn(e, k, n) / k**0.5).to(dtype)
    # bias dtype per the doc's table: float16 with float16 x, float32 otherwise
    bias_dtype = torch.float16 if dtype == torch.float16 else torch.float32
    bias = torch.randn(e, n).to(bias_dtype) if with_bias else None
    counts_t = torch.tensor(counts, dtype=torch.int64)
    group_list = counts_t if group_list_type == 1 else counts_t.cumsum(0)
    kwargs = dict(
        bias=[bias] if with_bias else None,
        group_list=group_list,
        split_item=2,
        group_type=0,
        group_list_type=group_list_type,
    )
    (y,) = OPS.npu_grouped_matmul([x], [w], **kwargs)
    assert y.dtype == dtype and y.shape == (m, n)
    _close(y, _ref_gmm(x, w, counts, bias), dtype)
    # a transposed view of [E, N, K] weights gives the same result
    (y_t,) = OPS.npu_grouped_matmul([x], [w.transpose(1, 2).contiguous().transpose(1, 2)], **kwargs)
    torch.testing.assert_close(y_t, y)
    assert _fake_shapes(OPS.npu_grouped_matmul, [x], [w], **kwargs) == _shapes([y])


@both_impls
def test_grouped_matmul_split_item_3_and_uncovered_rows():
    torch.manual_seed(3)
    x, w = torch.randn(10, 8), torch.randn(3, 8, 4)
    (y,) = OPS.npu_grouped_matmul(
        [x], [w], group_list=torch.tensor([2, 5, 3]), split_item=3, group_type=0,
        group_list_type=1,
    )
    _close(y, _ref_gmm(x, w, [2, 5, 3], None), torch.float32)
    # the doc: the groups must cover every row of x (sum of counts == M), neither fewer...
    with pytest.raises(ValueError, match="covers 7 rows"):
        OPS.npu_grouped_matmul(
            [x], [w], group_list=torch.tensor([2, 2, 3]), split_item=3, group_type=0,
            group_list_type=1,
        )
    # ...nor more
    with pytest.raises(ValueError, match="covers"):
        OPS.npu_grouped_matmul(
            [x],
            [w],
            group_list=torch.tensor([5, 5, 5]),
            split_item=2,
            group_type=0,
            group_list_type=1,
        )


@both_impls
@pytest.mark.parametrize(
    "kwargs,exc,name",
    [
        # quantization parameters with float x: illegal (doc: "not assigned" when unquantized)
        (dict(scale=[torch.ones(3, 4)]), ValueError, "scale"),
        (dict(per_token_scale=[torch.ones(6)]), ValueError, "per_token_scale"),
        (dict(offset=[torch.ones(3, 4)]), ValueError, "offset"),
        (dict(output_dtype=5), ValueError, "output_dtype"),
        # legal on the NPU, not implemented here
        (dict(antiquant_scale=[torch.ones(3, 4)]), NotImplementedError, "antiquant_scale"),
        (dict(antiquant_offset=[torch.ones(3, 4)]), NotImplementedError, "antiquant_offset"),
        (dict(split_item=0), NotImplementedError, "split_item=0"),
        (dict(group_type=-1), NotImplementedError, "group_type=-1"),
        (dict(act_type=1), NotImplementedError, "act_type=1"),
    ],
)
def test_grouped_matmul_rejects_quant_and_other_modes(kwargs, exc, name):
    x, w = torch.randn(6, 8), torch.randn(3, 8, 4)
    base = dict(group_list=torch.tensor([2, 2, 2]), split_item=2, group_type=0, group_list_type=1)
    with pytest.raises(exc, match=name):
        OPS.npu_grouped_matmul([x], [w], **{**base, **kwargs})


def _ref_gmm_quant(x, w, counts, scale, pts, bias):
    """float64: rows of group g -> (x_row @ W[g] + bias[g]) * scale[g] [* pts[row]]."""
    out = torch.zeros(x.shape[0], w.shape[2], dtype=torch.float64)
    row = 0
    for g, c in enumerate(counts):
        for _ in range(c):
            acc = x[row].double() @ w[g].double()  # exact: small integers
            if bias is not None:
                acc = acc + bias[g].double()
            out[row] = acc if scale is None else acc * scale[g]
            if pts is not None:
                out[row] = out[row] * float(pts[row])
            row += 1
    return out


def _int8(shape):
    return torch.randint(-128, 128, shape).to(torch.int8)


@pytest.mark.parametrize(
    "scale_dtype,pertoken,out",
    [
        (torch.bfloat16, True, torch.bfloat16),  # W8A8 dynamic (per token), bf16 model
        (torch.float32, True, torch.float16),  # W8A8 dynamic, fp16 model
        (torch.bfloat16, False, torch.bfloat16),  # per channel
        (torch.float32, False, torch.float16),
        (torch.float32, True, torch.float32),  # the CPU-backend float32 relaxation
    ],
)
@pytest.mark.parametrize("counts", [[3, 0, 4, 1], [0, 9, 0]])
@pytest.mark.parametrize("with_bias", [False, True])
def test_grouped_matmul_w8a8(scale_dtype, pertoken, out, counts, with_bias):
    torch.manual_seed(7)
    m, k, n, e = sum(counts), 32, 16, len(counts)
    x, w = _int8((m, k)), _int8((e, k, n))
    scale = (torch.rand(e, n) / 100).to(scale_dtype)
    pts = torch.rand(m) / 100 if pertoken else None
    bias = torch.randint(-1000, 1000, (e, n), dtype=torch.int32) if with_bias else None
    kwargs = dict(scale=[scale], per_token_scale=[pts] if pertoken else None,
                  bias=[bias] if with_bias else None, group_list=torch.tensor(counts),
                  split_item=2, group_type=0, group_list_type=1,
                  output_dtype={torch.bfloat16: 15, torch.float16: 5, torch.float32: 6}[out])
    (y,) = OPS.npu_grouped_matmul([x], [w], **kwargs)
    ref = _ref_gmm_quant(x, w, counts, scale.double(), pts, bias)
    assert y.dtype == out and y.shape == (m, n)
    rtol = {torch.bfloat16: 8e-3, torch.float16: 1e-3, torch.float32: 1e-6}[out]
    torch.testing.assert_close(y.double(), ref, rtol=rtol, atol=1e-6)
    # weight as the transposed view of an [E, N, K] tensor: same result
    (y_t,) = OPS.npu_grouped_matmul([x], [w.transpose(1, 2).contiguous().transpose(1, 2)],
                                    **kwargs)
    assert torch.equal(y_t, y)
    assert _fake_shapes(OPS.npu_grouped_matmul, [x], [w], **kwargs) == _shapes([y])


def test_grouped_matmul_w8a8_int8_and_int32_outputs():
    """int64 scale -> int8 output (round half to even, saturate); no scale -> the int32
    accumulator (+ int32 bias), which the W8A8-dynamic MoE dequantizes itself."""
    torch.manual_seed(8)
    counts, k, n = [4, 0, 6], 16, 8
    x, w = _int8((10, k)), _int8((3, k, n))
    bias = torch.randint(-50, 50, (3, n), dtype=torch.int32)
    scale = torch.full((3, n), 2.0**-4)  # exact in FP19; acc * 2**-4 hits ties
    param = OPS.npu_trans_quant_param(scale.reshape(-1)).reshape(3, n)
    base = dict(bias=[bias], group_list=torch.tensor(counts).cumsum(0), split_item=3,
                group_type=0)
    (y8,) = OPS.npu_grouped_matmul([x], [w], scale=[param], **base)
    ref = _ref_gmm_quant(x, w, counts, scale.double(), None, bias)
    want = torch.tensor([[min(max(round(v), -128), 127) for v in r] for r in ref.tolist()])
    assert y8.dtype == torch.int8 and torch.equal(y8.long(), want)
    assert bool(((ref - ref.floor()) == 0.5).any()) and bool((ref.abs() > 128).any())
    (y32,) = OPS.npu_grouped_matmul([x], [w], output_dtype=3, **base)
    assert y32.dtype == torch.int32
    assert torch.equal(y32.double(), _ref_gmm_quant(x, w, counts, None, None, bias))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(offset=[torch.zeros(3, 4)]), "offset must be None"),
        (dict(scale=[torch.rand(3).bfloat16()]), r"scale must be one \[E=3, N=4\]"),
        (dict(scale=[torch.rand(3, 4)], output_dtype=15), "dtype table"),  # fp32 -> bf16
        (dict(scale=[torch.rand(3, 4).bfloat16()], output_dtype=5), "dtype table"),
        (dict(scale=[torch.zeros(3, 4, dtype=torch.int64)], per_token_scale=[torch.rand(6)],
              output_dtype=5), "dtype table"),
        (dict(scale=[torch.rand(3, 4)], per_token_scale=[torch.rand(5)], output_dtype=5),
         "per_token_scale must be"),
        (dict(scale=[torch.rand(3, 4)], output_dtype=5, bias=[torch.zeros(3, 4)]),
         "bias must be torch.int32"),
        (dict(output_dtype=15), "dtype table"),  # no scale: int32 output only
    ],
)
def test_grouped_matmul_w8a8_rejects(kwargs, match):
    x, w = _int8((6, 8)), _int8((3, 8, 4))
    base = dict(group_list=torch.tensor([2, 2, 2]), split_item=2, group_type=0, group_list_type=1)
    with pytest.raises(ValueError, match=match):
        OPS.npu_grouped_matmul([x], [w], **{**base, **kwargs})
    with pytest.raises(ValueError, match="one \\[E, K, N\\] tensor"):  # A8W8: single weight
        OPS.npu_grouped_matmul([x], list(w), output_dtype=3, **base)


# ---- combine: npu_moe_token_unpermute / npu_moe_finalize_routing ---------------------------


@both_impls
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,e", [(7, 1, 4), (7, 2, 8), (257, 8, 64)])
def test_init_routing_then_unpermute_round_trip(dtype, n, k, e):
    """init_routing_v2's expanded_row_idx fed unchanged to npu_moe_token_unpermute: each token
    gets back sum_k probs[i, k] * f(row of (i, k)); f here scales each row by its expert id+1."""
    torch.manual_seed(4)
    x = torch.randn(n, 32).to(dtype)
    idx = torch.stack([torch.randperm(e)[:k] for _ in range(n)]).to(torch.int32)
    probs = torch.rand(n, k).to(dtype)
    expanded_x, row_idx, counts, _ = OPS.npu_moe_init_routing_v2(
        x, idx, expert_num=e, expert_tokens_num_type=1, expert_tokens_num_flag=True
    )
    per_row_expert = torch.repeat_interleave(torch.arange(e), counts)
    processed = (expanded_x.float() * (per_row_expert + 1).unsqueeze(1)).to(dtype)
    out = OPS.npu_moe_token_unpermute(processed, row_idx, probs)
    ref = torch.zeros(n, 32, dtype=torch.float64)
    for i in range(n):
        for j in range(k):
            ref[i] += float(probs[i, j]) * (int(idx[i, j]) + 1) * x[i].double()
    assert out.dtype == dtype
    _close(out, ref, dtype)
    assert _fake_shapes(OPS.npu_moe_token_unpermute, processed, row_idx, probs) == _shapes(out)


@both_impls
def test_unpermute_doc_example_and_no_probs():
    permuted = torch.tensor([[1.0, 1], [2, 2], [3, 3], [4, 4], [1, 1], [2, 2], [3, 3], [4, 4]])
    sorted_indices = torch.tensor([0, 4, 5, 1, 2, 6, 7, 3], dtype=torch.int32)
    out = OPS.npu_moe_token_unpermute(permuted, sorted_indices, torch.full((4, 2), 0.5))
    assert out.tolist() == [[1, 1], [2, 2], [3, 3], [4, 4]]
    out1 = OPS.npu_moe_token_unpermute(permuted, sorted_indices)  # topK = 1, no weighting
    assert torch.equal(out1, permuted[sorted_indices.long()])
    with pytest.raises(NotImplementedError, match="padded_mode"):
        OPS.npu_moe_token_unpermute(permuted, sorted_indices, None, True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,e", [(5, 1, 3), (50, 4, 16)])
def test_finalize_routing(dtype, n, k, e):
    torch.manual_seed(5)
    h = 12
    rows = torch.randn(n * k, h).to(dtype)
    skip1, skip2 = torch.randn(n, h).to(dtype), torch.randn(n, h).to(dtype)
    bias = torch.randn(e, h).to(dtype)
    scales = torch.rand(n, k).to(dtype)
    src_to_dst = torch.randperm(n * k).to(torch.int32)
    experts = torch.randint(0, e, (n, k), dtype=torch.int32)
    out = OPS.npu_moe_finalize_routing(rows, skip1, skip2, bias, scales, src_to_dst, experts, 0, k)
    ref = torch.zeros(n, h, dtype=torch.float64)
    for i in range(n):
        ref[i] = skip1[i].double() + skip2[i].double()
        for j in range(k):
            dst = int(src_to_dst[i + j * n])
            ref[i] += float(scales[i, j]) * (rows[dst].double() + bias[int(experts[i, j])].double())
    _close(out, ref, dtype)
    assert _fake_shapes(
        OPS.npu_moe_finalize_routing, rows, skip1, skip2, bias, scales, src_to_dst, experts, 0, k
    ) == _shapes(out)
    # without optional terms and scales: K from k, plain sum
    plain = OPS.npu_moe_finalize_routing(rows, None, None, None, None, src_to_dst, None, 0, k)
    ref_plain = torch.stack(
        [sum(rows[int(src_to_dst[i + j * n])].double() for j in range(k)) for i in range(n)]
    )
    _close(plain, ref_plain, dtype)


# ---- npu_moe_compute_expert_tokens ----------------------------------------------------------


def test_compute_expert_tokens():
    sorted_experts = torch.tensor([0, 0, 0, 1, 1, 2], dtype=torch.int32)
    out = OPS.npu_moe_compute_expert_tokens(sorted_experts, 3)
    assert out.dtype == torch.int32 and out.tolist() == [3, 5, 6]
    # experts with no tokens, and experts past the last id
    out = OPS.npu_moe_compute_expert_tokens(torch.tensor([1, 1, 4], dtype=torch.int32), 6)
    assert out.tolist() == [0, 2, 2, 2, 3, 3]
    assert _fake_shapes(OPS.npu_moe_compute_expert_tokens, sorted_experts, 3) == [
        ((3,), torch.int32)
    ]
