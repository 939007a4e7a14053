"""npu_moe_gating_top_k's CPU kernel (vllm_ascend/kernels/npu_ops/moe.py) against a float64
reference written per row from the op's documented semantics (torch-npu 2.13.0 doc entry, with
CANN aclnnMoeGatingTopK's formulas), its corner cases, and one negative test per constraint.

The reference picks experts by float64 values; the kernel computes in float32. A row whose
float64 decision margins (group boundary, top-k boundary, order of the k) are below 1e-5 (but
not exact ties) could legitimately differ, so ids are compared on the rows with a clear margin
(nearly all of them).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import vllm_ascend.kernels.npu_ops  # noqa: F401  (registers torch.ops.npu.*)

OP = torch.ops.npu.npu_moe_gating_top_k
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=1.6e-2),
       torch.float16: dict(atol=2e-3, rtol=2e-3)}
MARGIN = 1e-5


def reference(x, k, bias=None, k_group=1, group_count=1, group_select_mode=0, norm_type=0,
              routed_scaling_factor=1.0, eps=1e-20):
    """Per row, float64: (y, expert ids, norm, smallest decision margin)."""
    experts = x.shape[1]
    per = experts // group_count
    ys, ids, norms, margins = [], [], [], []
    for row in x.double().tolist():
        if norm_type == 0:
            top = max(row)
            ex = [math.exp(v - top) for v in row]
            norm = [v / sum(ex) for v in ex]
        else:
            norm = [1 / (1 + math.exp(-v)) for v in row]
        value = [n + (0.0 if bias is None else float(b))
                 for n, b in zip(norm, bias.double().tolist() if bias is not None
                                 else [0.0] * experts, strict=True)]
        gaps = []
        eligible = list(range(experts))
        if group_count > 1:
            score = []
            for g in range(group_count):
                members = sorted(value[g * per:(g + 1) * per], reverse=True)
                score.append(members[0] + members[1] if group_select_mode else members[0])
            ranked = sorted(range(group_count), key=lambda g: (-score[g], g))
            if k_group < group_count:
                gaps.append(score[ranked[k_group - 1]] - score[ranked[k_group]])
            eligible = [e for g in ranked[:k_group] for e in range(g * per, (g + 1) * per)]
        order = sorted(eligible, key=lambda e: (-value[e], e))
        gaps += [value[order[i]] - value[order[i + 1]] for i in range(min(k, len(order) - 1))]
        w = [norm[e] for e in order[:k]]
        if norm_type == 1:
            total = sum(w)
            w = [v / (total + eps) for v in w]
        ys.append([v * routed_scaling_factor for v in w])
        ids.append(order[:k])
        norms.append(norm)
        margins.append(min(gaps) if gaps else math.inf)
    return (torch.tensor(ys, dtype=torch.float64), torch.tensor(ids),
            torch.tensor(norms, dtype=torch.float64), torch.tensor(margins, dtype=torch.float64))


def check(x, k, dtype, **kw):
    y, ids, out = OP(x, k, **kw)
    ref_y, ref_ids, ref_norm, margin = reference(x, k, **{n: v for n, v in kw.items()
                                                          if n != "out_flag"})
    assert y.dtype == x.dtype and ids.dtype == torch.int32 and out.dtype == torch.float32
    assert y.shape == ids.shape == (x.shape[0], k) and out.shape == x.shape
    # an exact float64 tie comes from equal inputs: equal in float32 too, broken the same way
    clear = (margin > MARGIN) | (margin == 0)
    assert clear.float().mean() >= 0.9, "too many near-ties for a meaningful comparison"
    assert torch.equal(ids[clear].long(), ref_ids[clear])
    torch.testing.assert_close(y[clear].double(), ref_y[clear], **TOL[dtype])
    if kw.get("out_flag"):
        torch.testing.assert_close(out.double(), ref_norm, atol=1e-6, rtol=1e-5)
    else:
        assert not out.any()  # undefined per the doc; zeros here
    return y, ids


def _inputs(tokens, experts, dtype, seed=0, bias_scale=None):
    g = torch.Generator().manual_seed(seed)
    x = (2 * torch.randn(tokens, experts, generator=g)).to(dtype)
    bias = None
    if bias_scale is not None:
        bias = (bias_scale * torch.randn(experts, generator=g)).to(dtype)
    return x, bias


# name, experts, k, k_group, group_count, mode, norm_type, bias scale, routed_scaling_factor
CONFIGS = [
    ("deepseek_v3", 256, 8, 4, 8, 1, 1, 0.1, 2.5),
    ("deepseek_v2", 160, 6, 3, 8, 0, 0, None, 16.0),
    ("deepseek_v2_lite_greedy", 64, 6, 1, 1, 0, 0, None, 1.0),
    ("sigmoid_bias_one_group", 16, 4, 1, 1, 1, 1, 0.5, 1.0),
    ("softmax_top2_sums", 96, 5, 2, 4, 1, 0, None, 1.0),
    ("sigmoid_group_max", 48, 3, 2, 16, 0, 1, None, 1.0),  # 3 experts per group: the minimum
    ("k_is_the_eligible_count", 24, 12, 2, 4, 1, 1, 0.2, 1.0),  # k = E/groups * k_group
    ("all_groups_eligible", 32, 4, 4, 4, 0, 0, None, 1.0),
    ("2048_experts", 2048, 8, 1, 1, 0, 1, None, 1.0),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name,experts,k,k_group,groups,mode,norm_type,bias_scale,scale", CONFIGS,
                         ids=[c[0] for c in CONFIGS])
def test_matches_float64_reference(dtype, name, experts, k, k_group, groups, mode, norm_type,
                                   bias_scale, scale):
    x, bias = _inputs(9, experts, dtype, bias_scale=bias_scale)
    kw = dict(bias=bias, k_group=k_group, group_count=groups, group_select_mode=mode,
              norm_type=norm_type, routed_scaling_factor=scale)
    check(x, k, dtype, **kw)
    check(x, k, dtype, out_flag=True, **kw)
    # the registered fake agrees with the kernel
    with FakeTensorMode() as fm:
        fake = OP(fm.from_tensor(x), k, **{n: fm.from_tensor(v) if isinstance(v, torch.Tensor)
                                           else v for n, v in kw.items()})
    assert [(f.shape, f.dtype) for f in fake] == [(r.shape, r.dtype) for r in OP(x, k, **kw)]


def test_float16_and_non_contiguous_x():
    x, _ = _inputs(64, 7, torch.float16)
    xt = x.t()  # (7 tokens, 64 experts), a transposed view
    assert not xt.is_contiguous()
    bias = (0.1 * torch.randn(64)).half()
    check(xt, 4, torch.float16, bias=bias, k_group=2, group_count=4, group_select_mode=0,
          norm_type=1)


def test_bias_selects_and_scores_weigh():
    """The bias moves an expert into the top k; its weight is its unbiased score."""
    x = torch.zeros(1, 8)
    x[0, :3] = torch.tensor([3.0, 2.0, 1.0])
    bias = torch.zeros(8)
    bias[7] = 10.0  # expert 7 (score sigmoid(0) = 0.5) wins on its bias
    y, ids, _ = OP(x, 2, bias=bias, norm_type=1)
    assert ids.tolist() == [[7, 0]]
    s = [0.5, 1 / (1 + math.exp(-3))]
    torch.testing.assert_close(y.double(), torch.tensor([[v / sum(s) for v in s]],
                                                        dtype=torch.float64))


def test_ties_go_to_lower_ids_and_groups():
    x = torch.zeros(2, 16)
    y, ids, _ = OP(x, 3, k_group=2, group_count=4, norm_type=0)
    assert ids.tolist() == [[0, 1, 2]] * 2
    torch.testing.assert_close(y, torch.full((2, 3), 1 / 16))
    x[1, 12] = 1.0  # group 3 now leads; group 0 wins the tie for the second place
    _, ids, _ = OP(x, 3, k_group=2, group_count=4, norm_type=0)
    assert ids[1].tolist() == [12, 0, 1]


def test_softmax_weights_are_not_renormalised_sigmoid_weights_are():
    x, _ = _inputs(5, 32, torch.float32)
    y0, _, _ = OP(x, 4, norm_type=0)
    assert bool((y0.sum(-1) < 1).all())  # top-4 of a softmax over 32
    y1, _, _ = OP(x, 4, norm_type=1, routed_scaling_factor=3.0)
    torch.testing.assert_close(y1.sum(-1), torch.full((5,), 3.0))


def test_eps_keeps_underflowed_sigmoid_weights_finite():
    """sigmoid(-200) underflows to 0 in float32: y = 0 / (0 + eps) = 0, not NaN."""
    y, _, _ = OP(torch.full((2, 16), -200.0), 4, norm_type=1)
    assert bool(torch.isfinite(y).all())


# ---- constraints (doc entry npu_moe_gating_top_k) ----------------------------------------------


def _legal():
    return [torch.randn(3, 64), 4], dict(bias=torch.randn(64), k_group=2, group_count=4,
                                         group_select_mode=1, norm_type=1)


def test_legal_baseline():
    args, kw = _legal()
    OP(*args, **kw)


@pytest.mark.parametrize("change,match", [
    (lambda a, kw: a.__setitem__(0, torch.randn(3, 4, 16)), "2D"),
    (lambda a, kw: a.__setitem__(0, torch.randn(3, 64).double()), "dtype"),
    (lambda a, kw: (a.__setitem__(0, torch.randn(3, 2112)),
                    kw.update(bias=None, group_count=1, k_group=1)), "2048"),
    (lambda a, kw: kw.update(bias=torch.randn(63)), "bias must be 1D"),
    (lambda a, kw: kw.update(bias=torch.randn(64).half()), "bias dtype"),
    (lambda a, kw: kw.update(group_count=5), "divide"),
    (lambda a, kw: kw.update(group_count=0), "divide"),
    (lambda a, kw: kw.update(group_count=32), "greater than 2"),
    # 40 groups of 33 experts: 64 (33 aligned to 32) * 40 = 2560 > 2048
    (lambda a, kw: (a.__setitem__(0, torch.randn(3, 1320)),
                    kw.update(bias=None, group_count=40)), "aligned to 32"),
    (lambda a, kw: kw.update(k_group=0), "k_group"),
    (lambda a, kw: kw.update(k_group=5), "k_group"),
    (lambda a, kw: a.__setitem__(1, 0), "1 <= k"),
    (lambda a, kw: a.__setitem__(1, 33), "1 <= k"),  # 64 / 4 * 2 = 32 eligible
    (lambda a, kw: kw.update(group_select_mode=2), "group_select_mode"),
    (lambda a, kw: kw.update(renorm=1), "renorm"),
    (lambda a, kw: kw.update(norm_type=2), "norm_type"),
    (lambda a, kw: kw.update(input_ids=torch.zeros(3, dtype=torch.int32)), "both provided"),
])
def test_constraint_violations_raise(change, match):
    args, kw = _legal()
    change(args, kw)
    with pytest.raises(ValueError, match=match):
        OP(*args, **kw)
    with FakeTensorMode() as fm, pytest.raises(ValueError, match=match):
        OP(*[fm.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args],
           **{n: fm.from_tensor(v) if isinstance(v, torch.Tensor) else v for n, v in kw.items()})


def test_hash_mode_is_not_implemented():
    args, kw = _legal()
    kw.update(input_ids=torch.zeros(3, dtype=torch.int32),
              tid2eid=torch.zeros(8, 4, dtype=torch.int32))
    with pytest.raises(NotImplementedError, match="hash mode"):
        OP(*args, **kw)


# Rows for tests/unit/kernels/test_fidelity.py (schema and Meta shapes against the wheel).
FIDELITY_SAMPLES = [
    ("npu_moe_gating_top_k", "v3_sigmoid_bias_groups", lambda: (
        (torch.randn(5, 256).bfloat16(), 8),
        dict(bias=torch.randn(256).bfloat16(), k_group=4, group_count=8, group_select_mode=1,
             norm_type=1, routed_scaling_factor=2.5))),
    ("npu_moe_gating_top_k", "softmax_out_flag", lambda: (
        (torch.randn(3, 64), 6), dict(out_flag=True))),
]
