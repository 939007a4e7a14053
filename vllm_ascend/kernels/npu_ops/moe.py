"""CPU and fake kernels of the torch_npu ops on the Ascend MoE routing path.

The unquantized fused-MoE method (vllm_ascend/ops/fused_moe.py) chains them as

    npu_moe_gating_top_k_softmax  router logits -> (topk weights, expert ids int32, row idx)
      or npu_moe_gating_top_k     the same with grouped top-k, sigmoid scoring, a score
                                  correction bias and routed_scaling_factor (DeepSeek-V2/V3)
    npu_moe_init_routing_v2       tokens -> rows grouped by expert, src->dst index, counts
    npu_grouped_matmul            per-expert GEMM over the grouped rows (w13, then w2)
    npu_swiglu                    (in activation.py)
    npu_moe_token_unpermute       gather each token's K rows back, weight by the topk weights, sum

plus ``npu_moe_finalize_routing`` (the combine step that pairs with the v1 ``npu_moe_init_routing``)
and ``npu_moe_compute_expert_tokens``. The W8A8 (dynamic) MoE uses the quantized forms of two of
them: npu_moe_init_routing_v2 with quant_mode=1 (int8 rows and their per-row scales) and
npu_grouped_matmul with int8 x and weights, scale and per_token_scale; their quantization
arithmetic is shared with quant.py.

Semantics follow torch-npu 2.13.0's ``_op_plugin_docs.py`` entry of the same name; output shapes and
dtypes follow ``op_plugin/meta/_meta_registrations.py``. Where the docs leave a value undefined
("输出值未定义") these kernels write zeros / -1 so results are deterministic; callers must not rely
on those values. Every kernel computes in float32 (float64 is never used: the NPU does not), the
int8 matmuls accumulate exactly in int32, and results are cast to the documented output dtype.
Arguments outside the supported subset raise NotImplementedError naming the argument, in the CPU
kernel and in the fake alike.

Index conventions (N tokens, K experts per token, "source position" s = i*K + k):
  * expert_idx from the gating op is (N, K) int32; ties in the softmax are broken towards the
    lower expert id.
  * npu_moe_init_routing_v2 sorts the N*K source positions by expert id (stable, so rows of one
    expert stay in token order). With row_idx_type=0, expanded_row_idx[s] is the row of expanded_x
    holding source position s (a src->dst "gather" index, -1 if the row was not emitted). With
    row_idx_type=1 it is the inverse (dst->src) for the first emitted rows.
  * npu_moe_token_unpermute's sorted_indices is that same src->dst index: its doc says it holds
    "the position of each datum in permuted_tokens", its example only round-trips under that
    reading, and on Ascend 950 it is forwarded to aclnnMoeFinalizeRoutingV2 as expandedRowIdx.
    npu_moe_finalize_routing instead reads expanded_src_to_dst_row[i + k*N] (column-major, the v1
    init_routing layout), so init_routing_v2's index would have to be transposed first.
"""

from __future__ import annotations

import torch

from vllm_ascend.kernels.npu_library import npu_op
from vllm_ascend.kernels.npu_ops.quant import (
    decode_quant_param,
    dequant_int32,
    dtype_of,
    dynamic_quant_rows,
    exact_int_matmul,
)

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# npu_grouped_matmul: inner-axis limit of Atlas A2/A3, and the unquantized bias dtype per x dtype.
_INNER_LIMIT = 65536
_GMM_BIAS_DTYPE = {
    torch.float16: torch.float16,
    torch.bfloat16: torch.float32,
    torch.float32: torch.float32,
    torch.int8: torch.int32,
}


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _unsupported(op: str, **given) -> None:
    """Raise NotImplementedError naming every argument that is outside the supported subset."""
    bad = [name for name, is_bad in given.items() if is_bad]
    if bad:
        raise NotImplementedError(
            f"{op}: the CPU backend does not implement {', '.join(bad)} "
            "(only the unquantized inference subset is supported)"
        )


# ---------------------------------------------------------------------------------------------
# npu_moe_gating_top_k_softmax
# ---------------------------------------------------------------------------------------------


def _gating_check(x: torch.Tensor, finished: torch.Tensor | None, k: int) -> None:
    _require(x.dim() in (2, 3), f"npu_moe_gating_top_k_softmax: x must be 2D or 3D, got {x.dim()}D")
    _require(x.dtype in _FLOAT_DTYPES, f"npu_moe_gating_top_k_softmax: unsupported dtype {x.dtype}")
    _require(
        0 < k <= x.shape[-1] and k <= 1024,
        f"npu_moe_gating_top_k_softmax: need 0 < k <= min(x.shape[-1], 1024), got k={k}",
    )
    if finished is not None:
        _require(
            finished.dtype == torch.bool and tuple(finished.shape) == tuple(x.shape[:-1]),
            "npu_moe_gating_top_k_softmax: finished must be bool with shape x.shape[:-1]",
        )


def _gating_fake(x, finished=None, k=1):
    _gating_check(x, finished, k)
    shape = (*x.shape[:-1], k)
    return (
        x.new_empty(shape),
        x.new_empty(shape, dtype=torch.int32),
        x.new_empty(shape, dtype=torch.int32),
    )


@npu_op(
    "npu_moe_gating_top_k_softmax(Tensor x, Tensor? finished=None, int k=1) "
    "-> (Tensor, Tensor, Tensor)",
    fake=_gating_fake,
)
def npu_moe_gating_top_k_softmax(x, finished=None, k=1):
    """Doc entry ``npu_moe_gating_top_k_softmax``: softmax over the last axis of x, then top-k.

    Returns (y, expert_idx, row_idx): y the k largest probabilities (dtype of x, descending),
    expert_idx their expert ids (int32), row_idx (int32) the source row of each slot.
    """
    _gating_check(x, finished, k)
    num_experts = x.shape[-1]
    probs = torch.softmax(x.float(), dim=-1)
    # Assumption (doc silent): equal probabilities are ordered by ascending expert id. A stable
    # descending sort gives exactly that; torch.topk makes no promise about ties.
    values, indices = torch.sort(probs, dim=-1, descending=True, stable=True)
    y = values[..., :k].to(x.dtype)
    expert_idx = indices[..., :k].to(torch.int32)
    if finished is not None:
        # Assumption: the doc only says finished marks "rows that take part". Following the CANN
        # kernel this op comes from, a row with finished=True still gets its top-k values but its
        # expert ids are set to num_experts (one past the last expert), i.e. routed nowhere.
        expert_idx = torch.where(finished.unsqueeze(-1), num_experts, expert_idx).to(torch.int32)
    # Assumption (doc: "the original row position of each slot"): slot (i, j) of the flattened
    # rows gets j * num_rows + i, the column-major layout the v1 npu_moe_init_routing consumes.
    num_rows = x.numel() // num_experts
    rows = torch.arange(num_rows, dtype=torch.int32).unsqueeze(1)
    cols = torch.arange(k, dtype=torch.int32).unsqueeze(0) * num_rows
    row_idx = (rows + cols).reshape(*x.shape[:-1], k)
    return y, expert_idx, row_idx


# ---------------------------------------------------------------------------------------------
# npu_moe_gating_top_k (grouped, biased routing: DeepSeek-V2/V3)
# ---------------------------------------------------------------------------------------------

_GATING_TOP_K_MAX_EXPERTS = 2048


def _gating_top_k_check(x, k, bias, input_ids, tid2eid, k_group, group_count,
                        group_select_mode, renorm, norm_type) -> None:
    """The constraints of the doc entry ``npu_moe_gating_top_k`` (torch-npu 2.13.0)."""
    op = "npu_moe_gating_top_k"
    _require((input_ids is None) == (tid2eid is None),
             f"{op}: input_ids and tid2eid must be both provided or both omitted")
    _unsupported(op, **{"input_ids/tid2eid (hash mode)": input_ids is not None})
    _require(x.dim() == 2, f"{op}: x must be 2D (tokens, experts), got {x.dim()}D (doc: {op} 'x')")
    _require(x.dtype in _FLOAT_DTYPES,
             f"{op}: x dtype {x.dtype} not float16/bfloat16/float32 (doc: {op} 'x')")
    experts = x.shape[1]
    _require(0 < experts <= _GATING_TOP_K_MAX_EXPERTS,
             f"{op}: the expert count (x.shape[-1]={experts}) must not exceed "
             f"{_GATING_TOP_K_MAX_EXPERTS} (doc: {op} 'x')")
    if bias is not None:
        _require(bias.dim() == 1 and bias.shape[0] == experts,
                 f"{op}: bias must be 1D of x.shape[-1]={experts} entries, got "
                 f"{tuple(bias.shape)} (doc: {op} 'bias')")
        _require(bias.dtype == x.dtype,
                 f"{op}: bias dtype {bias.dtype} must equal x dtype {x.dtype} (doc: {op} 'bias')")
    _require(group_count > 0 and experts % group_count == 0,
             f"{op}: group_count={group_count} must be > 0 and divide the expert count "
             f"{experts} (doc: {op} 'group_count')")
    per_group = experts // group_count
    _require(per_group > 2,
             f"{op}: experts per group ({experts}/{group_count}={per_group}) must be greater "
             f"than 2 (doc: {op} 'group_count')")
    aligned = -(-per_group // 32) * 32
    _require(aligned * group_count <= _GATING_TOP_K_MAX_EXPERTS,
             f"{op}: experts per group aligned to 32 ({aligned}) times group_count "
             f"({group_count}) exceeds {_GATING_TOP_K_MAX_EXPERTS} (doc: {op} 'group_count')")
    _require(1 <= k_group <= group_count,
             f"{op}: need 1 <= k_group <= group_count, got k_group={k_group}, "
             f"group_count={group_count} (doc: {op} 'k_group')")
    _require(1 <= k <= per_group * k_group,
             f"{op}: need 1 <= k <= x.shape[-1] / group_count * k_group = "
             f"{per_group * k_group}, got k={k} (doc: {op} 'k')")
    _require(group_select_mode in (0, 1),
             f"{op}: group_select_mode must be 0 (group max) or 1 (sum of the group's top 2), "
             f"got {group_select_mode} (doc: {op} 'group_select_mode')")
    _require(renorm == 0, f"{op}: renorm={renorm}: only 0 is supported (doc: {op} 'renorm')")
    _require(norm_type in (0, 1),
             f"{op}: norm_type must be 0 (softmax) or 1 (sigmoid), got {norm_type} "
             f"(doc: {op} 'norm_type')")


def _gating_top_k_fake(x, k, *, bias=None, input_ids=None, tid2eid=None, k_group=1,
                       group_count=1, group_select_mode=0, renorm=0, norm_type=0, out_flag=False,
                       routed_scaling_factor=1.0, eps=1e-20):
    _gating_top_k_check(x, k, bias, input_ids, tid2eid, k_group, group_count,
                        group_select_mode, renorm, norm_type)
    return (
        x.new_empty((x.shape[0], k)),
        x.new_empty((x.shape[0], k), dtype=torch.int32),
        x.new_empty(tuple(x.shape), dtype=torch.float32),
    )


@npu_op(
    "npu_moe_gating_top_k(Tensor x, int k, *, Tensor? bias=None, Tensor? input_ids=None, "
    "Tensor? tid2eid=None, int k_group=1, int group_count=1, int group_select_mode=0, "
    "int renorm=0, int norm_type=0, bool out_flag=False, float routed_scaling_factor=1.0, "
    "float eps=1e-20) -> (Tensor, Tensor, Tensor)",
    fake=_gating_top_k_fake,
)
def npu_moe_gating_top_k(x, k, *, bias=None, input_ids=None, tid2eid=None, k_group=1,
                         group_count=1, group_select_mode=0, renorm=0, norm_type=0,
                         out_flag=False, routed_scaling_factor=1.0, eps=1e-20):
    """Doc entry ``npu_moe_gating_top_k`` (renorm=0, no hash mode), per row of x (tokens, E):

        norm   = softmax(x) (norm_type 0) or sigmoid(x) (norm_type 1), in float32
        value  = norm + bias (bias optional)
        group_count > 1: split value into group_count groups of E/group_count experts; a
                 group's score is its max (group_select_mode 0) or the sum of its two largest
                 values (1); the k_group best groups stay, the others' values become -inf
        expert_idx = the k largest values, in descending order
        y      = norm[expert_idx], divided by (sum(y) + eps) for sigmoid, times
                 routed_scaling_factor; cast to x's dtype
        out    = norm (float32) with out_flag, else zeros (undefined per the doc)

    The torch-npu doc names the steps but gives no formulas; they follow CANN's
    aclnnMoeGatingTopK (the kernel this op calls): selection uses the biased value, the weights
    the unbiased norm, and renorm=0 ("norm, then top-k") leaves softmax weights unnormalised
    while sigmoid weights are always divided by their sum + eps.
    Assumption (doc silent): ties between equal values or equal group scores go to the lower
    expert / group id (a stable descending sort), as in npu_moe_gating_top_k_softmax.
    """
    _gating_top_k_check(x, k, bias, input_ids, tid2eid, k_group, group_count,
                        group_select_mode, renorm, norm_type)
    xf = x.float()
    norm = torch.softmax(xf, dim=-1) if norm_type == 0 else torch.sigmoid(xf)
    value = norm if bias is None else norm + bias.float()
    rows, experts = value.shape
    if group_count > 1:
        grouped = value.reshape(rows, group_count, experts // group_count)
        if group_select_mode == 1:
            score = grouped.topk(2, dim=-1).values.sum(dim=-1)
        else:
            score = grouped.amax(dim=-1)
        best = torch.sort(score, dim=-1, descending=True, stable=True).indices[:, :k_group]
        keep = torch.zeros_like(score, dtype=torch.bool).scatter_(1, best, True)
        value = grouped.masked_fill(~keep.unsqueeze(-1), float("-inf")).reshape(rows, experts)
    expert_idx = torch.sort(value, dim=-1, descending=True, stable=True).indices[:, :k]
    y = norm.gather(1, expert_idx)
    if norm_type == 1:
        y = y / (y.sum(dim=-1, keepdim=True) + eps)
    y = y * routed_scaling_factor
    out = norm if out_flag else torch.zeros_like(norm)
    return y.to(x.dtype), expert_idx.to(torch.int32), out


# ---------------------------------------------------------------------------------------------
# npu_moe_init_routing_v2
# ---------------------------------------------------------------------------------------------


def _init_routing_v2_check(
    x,
    expert_idx,
    scale,
    offset,
    active_num,
    expert_num,
    drop_pad_mode,
    expert_tokens_num_type,
    quant_mode,
    active_expert_range,
    row_idx_type,
    x_dtype,
    expert_tokens_num_flag,
) -> tuple[int, int]:
    """Validate; returns the active expert range [start, end)."""
    op = "npu_moe_init_routing_v2"
    _unsupported(
        op,
        **{
            f"drop_pad_mode={drop_pad_mode}": drop_pad_mode != 0,
            "offset": offset is not None,
            "x_dtype": x_dtype is not None,
        },
    )
    _require(x.dim() == 2, f"{op}: x must be 2D (NUM_ROWS, H), got {x.dim()}D")
    _require(expert_idx.dim() == 2, f"{op}: expert_idx must be 2D (NUM_ROWS, K)")
    _require(x.shape[0] == expert_idx.shape[0], f"{op}: x and expert_idx disagree on NUM_ROWS")
    _require(
        expert_idx.dtype == torch.int32, f"{op}: expert_idx must be int32, got {expert_idx.dtype}"
    )
    _require(x.dtype in (*_FLOAT_DTYPES, torch.int8), f"{op}: unsupported x dtype {x.dtype}")
    # The NPU kernel implements only the count (1) and key-value (2) modes, with the flag set
    # (doc: 'expert_tokens_num_type' / 'expert_tokens_num_flag': "currently only ...").
    _require(
        expert_tokens_num_type in (1, 2),
        f"{op}: expert_tokens_num_type={expert_tokens_num_type}: only 1 (count) and 2 "
        f"(key_value) are supported (doc: {op} 'expert_tokens_num_type')",
    )
    _require(
        expert_tokens_num_flag,
        f"{op}: expert_tokens_num_flag must be True (doc: {op} 'expert_tokens_num_flag')",
    )
    max_experts = 5120 if expert_tokens_num_type == 2 else 10240
    _require(
        0 < expert_num <= max_experts,
        f"{op}: expert_num must be in (0, {max_experts}] for expert_tokens_num_type="
        f"{expert_tokens_num_type}, got {expert_num} (doc: {op} 'expert_num')",
    )
    _require(active_num >= -1, f"{op}: active_num must be >= -1, got {active_num}")
    _require(row_idx_type in (0, 1), f"{op}: row_idx_type must be 0 or 1")
    # "currently only -1 and 1"; static quantization (0) is explicitly not supported (doc).
    _require(
        quant_mode in (-1, 1),
        f"{op}: quant_mode={quant_mode}: only -1 (none) and 1 (dynamic) are supported "
        f"(doc: {op} 'quant_mode')",
    )
    if len(active_expert_range) == 0:
        start, end = 0, expert_num
    else:
        _require(len(active_expert_range) == 2, f"{op}: active_expert_range must be [start, end]")
        start, end = int(active_expert_range[0]), int(active_expert_range[1])
        _require(
            0 <= start < end <= expert_num,
            f"{op}: active_expert_range must satisfy 0 <= start < end <= expert_num, "
            f"got {start, end}",
        )
    if quant_mode == 1:
        _require(
            x.dtype != torch.int8,
            f"{op}: int8 x cannot be quantized again: quant_mode must be -1 (doc: {op} "
            "'quant_mode')",
        )
        if scale is not None:
            _require(
                scale.dtype == torch.float32 and scale.dim() == 2
                and scale.shape[0] in (end - start, 1) and scale.shape[1] == x.shape[1],
                f"{op}: with quant_mode=1, scale must be float32 2D (expert_end-expert_start="
                f"{end - start} or 1, H={x.shape[1]}), got {scale.dtype} {tuple(scale.shape)} "
                f"(doc: {op} 'scale')",
            )
    elif scale is not None:
        _require(
            scale.dim() == 1 and scale.shape[0] == x.shape[0] and scale.dtype == torch.float32,
            f"{op}: with quant_mode=-1, scale must be float32 1D (NUM_ROWS,) (doc: {op} 'scale')",
        )
    return start, end


def _init_routing_v2_fake(
    x,
    expert_idx,
    *,
    scale=None,
    offset=None,
    active_num=-1,
    expert_capacity=-1,
    expert_num=-1,
    drop_pad_mode=0,
    expert_tokens_num_type=0,
    expert_tokens_num_flag=False,
    quant_mode=-1,
    active_expert_range=(),
    row_idx_type=0,
    x_dtype=None,
):
    start, end = _init_routing_v2_check(
        x,
        expert_idx,
        scale,
        offset,
        active_num,
        expert_num,
        drop_pad_mode,
        expert_tokens_num_type,
        quant_mode,
        active_expert_range,
        row_idx_type,
        x_dtype,
        expert_tokens_num_flag,
    )
    total = x.shape[0] * expert_idx.shape[1]
    rows = total if active_num <= 0 else min(active_num, total)
    if not expert_tokens_num_flag:
        count_shape: tuple[int, ...] = ()
    elif expert_tokens_num_type == 2:
        count_shape = (expert_num, 2)
    else:
        count_shape = (end - start,)
    return (
        x.new_empty((rows, x.shape[1]), dtype=torch.int8 if quant_mode == 1 else x.dtype),
        x.new_empty((total,), dtype=torch.int32),
        x.new_empty(count_shape, dtype=torch.int64),
        x.new_empty((rows,), dtype=torch.float32),
    )


@npu_op(
    "npu_moe_init_routing_v2(Tensor x, Tensor expert_idx, *, Tensor? scale=None, "
    "Tensor? offset=None, "
    "int active_num=-1, int expert_capacity=-1, int expert_num=-1, int drop_pad_mode=0, "
    "int expert_tokens_num_type=0, bool expert_tokens_num_flag=False, int quant_mode=-1, "
    "int[2] active_expert_range=[], int row_idx_type=0, int? x_dtype=None) "
    "-> (Tensor, Tensor, Tensor, Tensor)",
    fake=_init_routing_v2_fake,
)
def npu_moe_init_routing_v2(
    x,
    expert_idx,
    *,
    scale=None,
    offset=None,
    active_num=-1,
    expert_capacity=-1,
    expert_num=-1,
    drop_pad_mode=0,
    expert_tokens_num_type=0,
    expert_tokens_num_flag=False,
    quant_mode=-1,
    active_expert_range=(),
    row_idx_type=0,
    x_dtype=None,
):
    """Doc entry ``npu_moe_init_routing_v2``, dropless (drop_pad_mode=0), unquantized
    (quant_mode=-1) or with dynamic quantization (quant_mode=1).

    Returns (expanded_x, expanded_row_idx, expert_token_cumsum_or_count, expanded_scale):
      expanded_x      (R, H), R = NUM_ROWS*K or min(active_num, NUM_ROWS*K) if active_num > 0:
                      the token rows sorted by expert id; the first `available` rows (source
                      positions whose expert is in active_expert_range) are valid, the rest zero.
      expanded_row_idx (NUM_ROWS*K,) int32: see the module docstring (row_idx_type 0: src->dst with
                      -1 for positions not emitted; 1: dst->src, -1 after the valid rows).
      expert_token_cumsum_or_count int64, only meaningful with expert_tokens_num_flag=True:
                      type 0 cumsum / type 1 count over experts [start, end), shape (end-start,);
                      type 2 key-value pairs (expert_id, count) of the non-empty experts in the
                      range, then one (0, 0) terminator, shape (expert_num, 2).
                      Without the flag a 0-dim tensor (the meta shape), value undefined.
      expanded_scale  (R,) float32: scale[token] per emitted row when scale is given, else zero.
    quant_mode=1: each emitted row, times its expert's smooth vector scale[expert - expert_start]
    (or scale[0] when scale has one row; no smoothing without scale), is quantized per row as
    npu_dynamic_quant does (int8, rowmax/127, nearest-even); expanded_x is int8 and
    expanded_scale holds the row scales (assumption: the doc calls it "the intermediate scale of
    the quantization" without a formula). Invalid rows stay zero.
    Note the doc says the NPU currently implements only types 1 and 2 with the flag set.
    expert_capacity is unused in dropless mode (doc).
    """
    start, end = _init_routing_v2_check(
        x,
        expert_idx,
        scale,
        offset,
        active_num,
        expert_num,
        drop_pad_mode,
        expert_tokens_num_type,
        quant_mode,
        active_expert_range,
        row_idx_type,
        x_dtype,
        expert_tokens_num_flag,
    )
    num_rows, k = expert_idx.shape
    total = num_rows * k
    rows = total if active_num <= 0 else min(active_num, total)
    flat = expert_idx.reshape(-1).to(torch.int64)
    if total:
        _require(
            int(flat.min()) >= 0 and int(flat.max()) < expert_num,
            "npu_moe_init_routing_v2: expert ids must lie in [0, expert_num)",
        )
    # Stable sort: rows of one expert stay in source order (assumption; the doc does not fix the
    # order within an expert, and nothing downstream depends on it beyond determinism).
    sorted_experts, dst_to_src = torch.sort(flat, stable=True)
    in_range = (sorted_experts >= start) & (sorted_experts < end)
    # Assumption (doc silent): with active_num > 0 the rows beyond active_num are dropped, and
    # their source positions get -1 in expanded_row_idx / are not counted.
    emitted_src = dst_to_src[in_range][:rows]
    emitted_experts = sorted_experts[in_range][:rows]
    n_emit = emitted_src.numel()

    expanded_scale = torch.zeros((rows,), dtype=torch.float32)
    if quant_mode == 1:
        expanded_x = x.new_zeros((rows, x.shape[1]), dtype=torch.int8)
        emitted = x.float()[emitted_src // k]
        if scale is not None:
            emitted = emitted * (scale[0] if scale.shape[0] == 1 else
                                 scale[emitted_experts - start])
        q, row_scale = dynamic_quant_rows(emitted, 127.0)
        expanded_x[:n_emit] = q.to(torch.int8)
        expanded_scale[:n_emit] = row_scale
    else:
        expanded_x = x.new_zeros((rows, x.shape[1]))
        expanded_x[:n_emit] = x[emitted_src // k]
        if scale is not None:
            expanded_scale[:n_emit] = scale.float()[emitted_src // k]

    expanded_row_idx = torch.full((total,), -1, dtype=torch.int32)
    if row_idx_type == 0:
        expanded_row_idx[emitted_src] = torch.arange(n_emit, dtype=torch.int32)
    else:
        expanded_row_idx[:n_emit] = emitted_src.to(torch.int32)

    counts = torch.bincount(emitted_experts - start, minlength=end - start).to(torch.int64)
    if not expert_tokens_num_flag:
        tokens = torch.zeros((), dtype=torch.int64)
    elif expert_tokens_num_type == 0:
        tokens = torch.cumsum(counts, 0)
    elif expert_tokens_num_type == 1:
        tokens = counts
    else:
        tokens = torch.zeros((expert_num, 2), dtype=torch.int64)
        nonzero = torch.nonzero(counts).reshape(-1)
        tokens[: nonzero.numel(), 0] = nonzero + start
        tokens[: nonzero.numel(), 1] = counts[nonzero]
        # the (0, 0) terminator, when fewer than expert_num pairs, is already in place

    return expanded_x, expanded_row_idx, tokens, expanded_scale


# ---------------------------------------------------------------------------------------------
# npu_grouped_matmul
# ---------------------------------------------------------------------------------------------


def _gmm_check(
    x,
    weight,
    bias,
    scale,
    offset,
    antiquant_scale,
    antiquant_offset,
    per_token_scale,
    group_list,
    activation_input,
    activation_quant_scale,
    activation_quant_offset,
    split_item,
    group_type,
    group_list_type,
    act_type,
    output_dtype,
    x_dtype,
    weight_dtype,
    scale_dtype,
    per_token_scale_dtype,
) -> tuple[int, int, int]:
    """Validate the supported subset; returns (M, N, number of groups, output dtype)."""
    op = "npu_grouped_matmul"
    _unsupported(
        op,
        antiquant_scale=antiquant_scale is not None,
        antiquant_offset=antiquant_offset is not None,
        activation_input=activation_input is not None,
        activation_quant_scale=activation_quant_scale is not None,
        activation_quant_offset=activation_quant_offset is not None,
        x_dtype=x_dtype is not None,
        weight_dtype=weight_dtype is not None,
        scale_dtype=scale_dtype is not None,
        per_token_scale_dtype=per_token_scale_dtype is not None,
        **{
            f"act_type={act_type}": act_type not in (None, 0),
            f"split_item={split_item} (only 2/3: one output tensor)": split_item not in (2, 3),
            f"group_type={group_type} (only 0: grouping along M)": group_type != 0,
            f"{len(x)} x tensors (only one)": len(x) != 1,
            "group_list=None (required with group_type=0)": group_list is None,
        },
    )
    x0 = x[0]
    _require(x0.dim() == 2, f"{op}: x must be 2D, got {x0.dim()}D")
    _require(
        x0.dtype in (*_FLOAT_DTYPES, torch.int8),
        f"{op}: x must be float16/bfloat16/float32 or int8, got {x0.dtype} (doc: {op} 'x')",
    )
    _require(x0.is_contiguous(), f"{op}: x must be contiguous (doc: {op} group_type 0: x "
             "cannot be transposed)")
    _require(group_list.dim() == 1, f"{op}: group_list must be 1D")
    _require(group_list.dtype == torch.int64, f"{op}: group_list must be int64, got "
             f"{group_list.dtype} (doc: {op} 'group_list' dtype)")
    _require(group_list_type in (0, 1), f"{op}: group_list_type must be 0 (cumsum) or 1 (counts)")
    groups = group_list.shape[0]
    _require(group_list_type == 0 or groups != 1, f"{op}: with group_list_type=1 group_list "
             f"cannot have length 1 (doc: {op} 'group_list' value rules)")
    single_w = len(weight) == 1 and weight[0].dim() == 3
    max_groups = 1024 if single_w else 128
    _require(groups <= max_groups, f"{op}: {groups} groups exceed {max_groups} (doc: {op} "
             "group_type 0 limits)")
    for w in weight:
        # Contiguous, or the transpose of its last two dims (the doc allows weight transposed).
        _require(w.is_contiguous() or w.transpose(-1, -2).is_contiguous(),
                 f"{op}: weight must be contiguous or a transposed view, got strides "
                 f"{tuple(w.stride())} (doc: {op} group_type 0: weight transpose supported)")
        inner = w.shape[-1] if w.is_contiguous() else w.shape[-2]
        _require(inner < _INNER_LIMIT, f"{op}: weight inner dim {inner} must be < "
                 f"{_INNER_LIMIT} (doc: {op} constraints: InnerLimit)")
    _require(x0.shape[-1] < _INNER_LIMIT, f"{op}: x inner dim {x0.shape[-1]} must be < "
             f"{_INNER_LIMIT} (doc: {op} constraints: InnerLimit)")
    if len(weight) == 1 and weight[0].dim() == 3:
        _require(
            weight[0].shape[0] == groups,
            f"{op}: weight has {weight[0].shape[0]} groups but group_list has {groups}",
        )
        k_dims = {weight[0].shape[1]}
        n_dims = {weight[0].shape[2]}
    else:
        _require(
            all(w.dim() == 2 for w in weight) and len(weight) == groups,
            f"{op}: weight must be one [E, K, N] tensor or E tensors [K, N] (one per group)",
        )
        k_dims = {w.shape[0] for w in weight}
        n_dims = {w.shape[1] for w in weight}
    _require(len(n_dims) == 1, f"{op}: every group must have the same N")
    _require(k_dims == {x0.shape[1]}, f"{op}: K of x ({x0.shape[1]}) and weight ({k_dims}) differ")
    _require(
        all(w.dtype == x0.dtype for w in weight),
        f"{op}: weight dtypes {[w.dtype for w in weight]} must equal x's {x0.dtype} (doc: {op} "
        "dtype tables)",
    )
    n = n_dims.pop()
    if x0.dtype == torch.int8:
        out = _gmm_quant_check(weight, scale, offset, per_token_scale, output_dtype, x0.shape[0],
                               groups, n)
    else:
        out = _gmm_float_check(x0, scale, offset, per_token_scale, output_dtype)
    if bias is not None:
        want = _GMM_BIAS_DTYPE[x0.dtype]
        _require(all(b.dtype == want for b in bias), f"{op}: bias must be {want} with "
                 f"{x0.dtype} x, got {[b.dtype for b in bias]} (doc: {op} dtype tables)")
        if len(bias) == 1 and bias[0].dim() == 2:
            # Assumption (doc: "one bias per weight tensor"): with a single [E, K, N] weight the
            # bias is one [E, N] tensor.
            _require(tuple(bias[0].shape) == (groups, n), f"{op}: bias must be [E, N]")
        else:
            _require(
                len(bias) == groups and all(tuple(b.shape) == (n,) for b in bias),
                f"{op}: bias must be one [E, N] tensor or E tensors [N]",
            )
    return x0.shape[0], n, groups, out


def _gmm_float_check(x0, scale, offset, per_token_scale, output_dtype) -> torch.dtype:
    """Formula 1 (unquantized): no quantization parameters; the output has x's dtype."""
    op = "npu_grouped_matmul"
    given = [name for name, t in (("scale", scale), ("offset", offset),
                                  ("per_token_scale", per_token_scale)) if t is not None]
    _require(not given, f"{op}: {', '.join(given)} given with {x0.dtype} x: quantization "
             f"parameters need int8 x (doc: {op} dtype tables, unquantized: not assigned)")
    out = dtype_of(output_dtype, op, "output_dtype") or x0.dtype
    _require(out == x0.dtype, f"{op}: output_dtype {out} must be None or x's dtype {x0.dtype} "
             f"(doc: {op} dtype tables, unquantized)")
    return out


# (scale dtype or None, per_token_scale given) -> output dtypes, from the doc's torch.Tensor
# group_list table for Atlas A2 (per-channel: int64 -> int8, bfloat16 -> bfloat16, float32 ->
# float16; per-token: bfloat16 -> bfloat16, float32 -> float16). No scale -> int32 (the raw int32
# accumulator) is CANN aclnnGroupedMatmulV4's A8W8 row that the W8A8-dynamic MoE uses; float32
# outputs are the CPU-backend relaxation.
_GMM_QUANT_OUT = {
    (torch.int64, False): (torch.int8,),
    (torch.bfloat16, False): (torch.bfloat16,),
    (torch.float32, False): (torch.float16, torch.float32),
    (None, False): (torch.int32,),
    (torch.bfloat16, True): (torch.bfloat16,),
    (torch.float32, True): (torch.float16, torch.float32),
}


def _gmm_quant_check(weight, scale, offset, per_token_scale, output_dtype, m, groups,
                     n) -> torch.dtype:
    """Formulas 2/3 (per-channel / per-token quantization) with int8 x and weight."""
    op = "npu_grouped_matmul"
    _require(offset is None, f"{op}: offset must be None (doc: {op} 'offset': currently only "
             "None)")
    # A8W8 takes single tensors only, weight [E, K, N] (CANN aclnnGroupedMatmulV4 A8W8 rules).
    _require(len(weight) == 1 and weight[0].dim() == 3, f"{op}: with int8 x the weight must be "
             f"one [E, K, N] tensor (doc: {op} group_type 0, single-tensor scenario)")
    if scale is not None:
        _require(
            len(scale) == 1 and tuple(scale[0].shape) == (groups, n),
            f"{op}: scale must be one [E={groups}, N={n}] tensor (per channel, per expert), got "
            f"{[tuple(t.shape) for t in scale]} (doc: {op} 'scale')",
        )
    if per_token_scale is not None:
        _require(
            len(per_token_scale) == 1 and tuple(per_token_scale[0].shape) == (m,)
            and per_token_scale[0].dtype == torch.float32,
            f"{op}: per_token_scale must be one float32 [M={m}] tensor, got "
            f"{[(t.dtype, tuple(t.shape)) for t in per_token_scale]} (doc: {op} "
            "'per_token_scale')",
        )
    s_dtype = None if scale is None else scale[0].dtype
    outs = _GMM_QUANT_OUT.get((s_dtype, per_token_scale is not None))
    out = dtype_of(output_dtype, op, "output_dtype") or torch.int8
    _require(
        outs is not None and out in outs,
        f"{op}: int8 x with scale {s_dtype}, per_token_scale "
        f"{'float32' if per_token_scale is not None else None} and output {out} is not in the "
        f"dtype table (that scale and per_token_scale allow: "
        f"{[str(d) for d in outs] if outs else 'nothing'}) (doc: {op} dtype tables, "
        "per-channel / per-token quantization)",
    )
    return out


def _gmm_fake(
    x,
    weight,
    *,
    bias=None,
    scale=None,
    offset=None,
    antiquant_scale=None,
    antiquant_offset=None,
    per_token_scale=None,
    group_list=None,
    activation_input=None,
    activation_quant_scale=None,
    activation_quant_offset=None,
    split_item=0,
    group_type=None,
    group_list_type=0,
    act_type=0,
    tuning_config=None,
    output_dtype=None,
    x_dtype=None,
    weight_dtype=None,
    scale_dtype=None,
    per_token_scale_dtype=None,
):
    m, n, _, out_dtype = _gmm_check(
        x,
        weight,
        bias,
        scale,
        offset,
        antiquant_scale,
        antiquant_offset,
        per_token_scale,
        group_list,
        activation_input,
        activation_quant_scale,
        activation_quant_offset,
        split_item,
        group_type,
        group_list_type,
        act_type,
        output_dtype,
        x_dtype,
        weight_dtype,
        scale_dtype,
        per_token_scale_dtype,
    )
    return [x[0].new_empty((m, n), dtype=out_dtype)]


@npu_op(
    "npu_grouped_matmul(Tensor[] x, Tensor[] weight, *, Tensor[]? bias=None, Tensor[]? scale=None, "
    "Tensor[]? offset=None, Tensor[]? antiquant_scale=None, Tensor[]? antiquant_offset=None, "
    "Tensor[]? per_token_scale=None, Tensor? group_list=None, Tensor[]? activation_input=None, "
    "Tensor[]? activation_quant_scale=None, Tensor[]? activation_quant_offset=None, "
    "int? split_item=0, int? group_type=None, int? group_list_type=0, int? act_type=0, "
    "int[]? tuning_config=None, int? output_dtype=None, int? x_dtype=None, int? weight_dtype=None, "
    "int? scale_dtype=None, int? per_token_scale_dtype=None) -> Tensor[]",
    fake=_gmm_fake,
)
def npu_grouped_matmul(
    x,
    weight,
    *,
    bias=None,
    scale=None,
    offset=None,
    antiquant_scale=None,
    antiquant_offset=None,
    per_token_scale=None,
    group_list=None,
    activation_input=None,
    activation_quant_scale=None,
    activation_quant_offset=None,
    split_item=0,
    group_type=None,
    group_list_type=0,
    act_type=0,
    tuning_config=None,
    output_dtype=None,
    x_dtype=None,
    weight_dtype=None,
    scale_dtype=None,
    per_token_scale_dtype=None,
):
    """Doc entry ``npu_grouped_matmul``, group_type=0, split_item 2/3: formula 1 (unquantized)
    and formulas 2/3 (int8 per-channel / per-token quantization, the W8A8 MoE forms).

    x = [X (M, K)], weight = [W (E, K, N)] (or E tensors (K, N); either may be a transposed
    view), group_list (E,) int64: with group_list_type=0 the cumulative row ends, with 1 the row
    count of each group. The groups must cover all M rows (doc). tuning_config is a performance
    hint and ignored.
    Unquantized: rows of group e times W[e] (+ bias[e]) with float32 accumulation; [Y (M, N)] in
    x's dtype.
    int8 x and W: exact int32 accumulation, then (the doc's formulas 2/3 read as CANN
    aclnnGroupedMatmulV4 writes them; the doc's "+ pertokenscale" is its typo for a product)
        Y = (X W[e] + bias[e]) * scale[e] [* per_token_scale]
    with scale one [E, N] tensor (float32/bfloat16, or int64 whose low 32 bits are the float32
    scale, read as FP19 like npu_trans_quant_param's encoding), per_token_scale one float32 [M],
    bias int32 [E, N]; output int8 (int64 scale, round to nearest-even, saturate), bfloat16,
    float16, or with no scale int32 (the raw accumulator + bias).
    """
    m, n, groups, out_dtype = _gmm_check(
        x,
        weight,
        bias,
        scale,
        offset,
        antiquant_scale,
        antiquant_offset,
        per_token_scale,
        group_list,
        activation_input,
        activation_quant_scale,
        activation_quant_offset,
        split_item,
        group_type,
        group_list_type,
        act_type,
        output_dtype,
        x_dtype,
        weight_dtype,
        scale_dtype,
        per_token_scale_dtype,
    )
    sizes = group_list.to(torch.int64)
    if group_list_type == 0:
        ends = sizes
        _require(
            bool((ends[1:] >= ends[:-1]).all()) and (groups == 0 or int(ends[0]) >= 0),
            "npu_grouped_matmul: with group_list_type=0, group_list must be non-negative and "
            "non-decreasing",
        )
    else:
        _require(bool((sizes >= 0).all()), "npu_grouped_matmul: group counts must be >= 0")
        ends = torch.cumsum(sizes, 0)
    ends_list = ends.tolist()
    _require(
        (ends_list[-1] if ends_list else 0) == m,
        f"npu_grouped_matmul: group_list covers {ends_list[-1] if ends_list else 0} rows, "
        f"x has {m}: the groups must cover every row (doc: npu_grouped_matmul group_type 0: "
        "the last cumsum value / the sum of the counts equals x's first dim)",
    )
    x0 = x[0]
    single = len(weight) == 1 and weight[0].dim() == 3
    out = torch.zeros((m, n), dtype=out_dtype)
    begin = 0
    for g, end in enumerate(ends_list):
        if end > begin:
            w = weight[0][g] if single else weight[g]
            b = None
            if bias is not None:
                b = bias[0][g] if len(bias) == 1 and bias[0].dim() == 2 else bias[g]
            if x0.dtype == torch.int8:
                s = None if scale is None else scale[0][g]
                s = decode_quant_param(s)[0] if s is not None and s.dtype == torch.int64 else s
                pts = None if per_token_scale is None else per_token_scale[0][begin:end]
                acc = exact_int_matmul(x0[begin:end], w)
                out[begin:end] = dequant_int32(acc, None if s is None else s.float(), None, pts,
                                               b, out_dtype)
            else:
                acc = x0[begin:end].float() @ w.float()
                out[begin:end] = (acc if b is None else acc + b.float()).to(out_dtype)
        begin = end
    return [out]


# ---------------------------------------------------------------------------------------------
# npu_moe_token_unpermute (the combine paired with npu_moe_init_routing_v2)
# ---------------------------------------------------------------------------------------------


def _unpermute_check(permuted_tokens, sorted_indices, probs, padded_mode, restore_shape) -> int:
    op = "npu_moe_token_unpermute"
    _unsupported(op, padded_mode=bool(padded_mode), restore_shape=restore_shape is not None)
    _require(permuted_tokens.dim() == 2, f"{op}: permuted_tokens must be 2D")
    _require(
        permuted_tokens.dtype in _FLOAT_DTYPES, f"{op}: unsupported dtype {permuted_tokens.dtype}"
    )
    _require(sorted_indices.dim() == 1, f"{op}: sorted_indices must be 1D")
    _require(
        sorted_indices.dtype in (torch.int32, torch.int64),
        f"{op}: sorted_indices must be int32 (doc; int64 also accepted), "
        f"got {sorted_indices.dtype}",
    )
    _require(
        permuted_tokens.shape[0] == sorted_indices.shape[0],
        f"{op}: permuted_tokens has {permuted_tokens.shape[0]} rows, sorted_indices "
        f"{sorted_indices.shape[0]} entries: both are tokens_num*topK (doc: {op} "
        "'permuted_tokens' shape)",
    )
    topk = 1
    if probs is not None:
        _require(probs.dim() == 2, f"{op}: probs must be 2D (tokens_num, topK)")
        _require(probs.dtype in _FLOAT_DTYPES, f"{op}: unsupported probs dtype {probs.dtype}")
        topk = probs.shape[1]
        _require(topk <= 512, f"{op}: topK {topk} exceeds 512 (doc: {op} constraints, A2/A3)")
        _require(
            probs.shape[0] * topk == sorted_indices.shape[0],
            f"{op}: probs {tuple(probs.shape)} does not match "
            f"sorted_indices ({sorted_indices.shape[0]},)",
        )
    _require(
        sorted_indices.shape[0] % topk == 0, f"{op}: sorted_indices length not a multiple of topK"
    )
    return topk


def _unpermute_fake(
    permuted_tokens, sorted_indices, probs=None, padded_mode=False, restore_shape=None
):
    topk = _unpermute_check(permuted_tokens, sorted_indices, probs, padded_mode, restore_shape)
    return permuted_tokens.new_empty((sorted_indices.shape[0] // topk, permuted_tokens.shape[1]))


@npu_op(
    "npu_moe_token_unpermute(Tensor permuted_tokens, Tensor sorted_indices, Tensor? probs=None, "
    "bool padded_mode=False, int[]? restore_shape=None) -> Tensor",
    fake=_unpermute_fake,
)
def npu_moe_token_unpermute(
    permuted_tokens, sorted_indices, probs=None, padded_mode=False, restore_shape=None
):
    """Doc entry ``npu_moe_token_unpermute`` (the second, fuller entry in _op_plugin_docs.py).

    out[i] = sum_k probs[i, k] * permuted_tokens[sorted_indices[i*topK + k]], topK = probs.shape[1]
    (1 and no weighting without probs); accumulated in float32, returned in permuted_tokens' dtype.
    sorted_indices is init_routing_v2's expanded_row_idx (row_idx_type=0) unchanged.
    """
    topk = _unpermute_check(permuted_tokens, sorted_indices, probs, padded_mode, restore_shape)
    idx = sorted_indices.to(torch.int64)
    if idx.numel():
        _require(
            int(idx.min()) >= 0 and int(idx.max()) < permuted_tokens.shape[0],
            "npu_moe_token_unpermute: sorted_indices out of range [0, tokens_num*topK - 1] "
            "(doc: npu_moe_token_unpermute 'sorted_indices' value range)",
        )
        _require(
            torch.unique(idx).numel() == idx.numel(),
            "npu_moe_token_unpermute: sorted_indices holds duplicate indices "
            "(doc: npu_moe_token_unpermute 'sorted_indices': no repeated index)",
        )
    rows = permuted_tokens.float()[idx].reshape(-1, topk, permuted_tokens.shape[1])
    if probs is not None:
        rows = rows * probs.float().unsqueeze(-1)
    return rows.sum(dim=1).to(permuted_tokens.dtype)


# ---------------------------------------------------------------------------------------------
# npu_moe_finalize_routing (the combine paired with the v1 npu_moe_init_routing)
# ---------------------------------------------------------------------------------------------


def _finalize_check(
    expanded_permuted_rows, skip1, skip2, bias, scales, src_to_dst, expert_for_row, drop_pad_mode, k
):
    op = "npu_moe_finalize_routing"
    _unsupported(op, **{f"drop_pad_mode={drop_pad_mode}": drop_pad_mode not in (None, 0)})
    _require(
        expanded_permuted_rows.dim() == 2,
        f"{op}: expanded_permuted_rows must be 2D (NUM_ROWS*K, H)",
    )
    _require(src_to_dst.dim() == 1, f"{op}: expanded_src_to_dst_row must be 1D")
    if scales is not None:
        _require(scales.dim() == 2, f"{op}: scales must be 2D (NUM_ROWS, K)")
        num_rows, topk = scales.shape
    else:
        topk = 1 if k is None else k
        _require(topk > 0, f"{op}: k must be > 0 when scales is None")
        num_rows = src_to_dst.shape[0] // topk
    _require(
        num_rows * topk == src_to_dst.shape[0],
        f"{op}: expanded_src_to_dst_row must have NUM_ROWS*K entries",
    )
    _require(not (skip2 is not None and skip1 is None), f"{op}: skip2 given without skip1")
    if bias is not None:
        _require(expert_for_row is not None, f"{op}: bias needs export_for_source_row")
    return num_rows, topk


def _finalize_fake(
    expanded_permuted_rows,
    skip1,
    skip2,
    bias,
    scales,
    expanded_src_to_dst_row,
    export_for_source_row,
    drop_pad_mode=0,
    k=1,
):
    num_rows, _ = _finalize_check(
        expanded_permuted_rows,
        skip1,
        skip2,
        bias,
        scales,
        expanded_src_to_dst_row,
        export_for_source_row,
        drop_pad_mode,
        k,
    )
    return expanded_permuted_rows.new_empty((num_rows, expanded_permuted_rows.shape[1]))


@npu_op(
    "npu_moe_finalize_routing(Tensor expanded_permuted_rows, Tensor? skip1, Tensor? skip2, "
    "Tensor? bias, "
    "Tensor? scales, Tensor expanded_src_to_dst_row, Tensor? export_for_source_row, "
    "int? drop_pad_mode=0, int? k=1) -> Tensor",
    fake=_finalize_fake,
)
def npu_moe_finalize_routing(
    expanded_permuted_rows,
    skip1,
    skip2,
    bias,
    scales,
    expanded_src_to_dst_row,
    export_for_source_row,
    drop_pad_mode=0,
    k=1,
):
    """Doc entry ``npu_moe_finalize_routing`` (drop_pad_mode=0, the only documented value).

    out[i] = skip1[i] + skip2[i]
             + sum_k scales[i, k] * (rows[src_to_dst[i + k*NUM_ROWS]] + bias[expert_for_row[i, k]])
    Note the column-major source index i + k*NUM_ROWS (the v1 init_routing layout). Missing
    optional terms are zero; scales missing means weight 1 with K taken from ``k``.
    Accumulated in float32, returned in expanded_permuted_rows' dtype.
    """
    num_rows, topk = _finalize_check(
        expanded_permuted_rows,
        skip1,
        skip2,
        bias,
        scales,
        expanded_src_to_dst_row,
        export_for_source_row,
        drop_pad_mode,
        k,
    )
    hidden = expanded_permuted_rows.shape[1]
    # [i + k*N] -> view (K, N) -> (N, K): column j of row i is source slot (i, j)
    idx = expanded_src_to_dst_row.to(torch.int64).reshape(topk, num_rows).t()
    rows = expanded_permuted_rows.float()[idx.reshape(-1)].reshape(num_rows, topk, hidden)
    if bias is not None:
        rows = rows + bias.float()[export_for_source_row.to(torch.int64)]
    weights = scales.float() if scales is not None else torch.ones(num_rows, topk)
    out = (rows * weights.unsqueeze(-1)).sum(dim=1)
    if skip1 is not None:
        out = out + skip1.float()
    if skip2 is not None:
        out = out + skip2.float()
    return out.to(expanded_permuted_rows.dtype)


# ---------------------------------------------------------------------------------------------
# npu_moe_compute_expert_tokens
# ---------------------------------------------------------------------------------------------


def _expert_tokens_fake(sorted_expert_for_source_row, num_expert):
    _require(
        0 < num_expert <= 2048, "npu_moe_compute_expert_tokens: num_expert must be in (0, 2048]"
    )
    return sorted_expert_for_source_row.new_empty((num_expert,))


@npu_op(
    "npu_moe_compute_expert_tokens(Tensor sorted_expert_for_source_row, int num_expert) -> Tensor",
    fake=_expert_tokens_fake,
)
def npu_moe_compute_expert_tokens(sorted_expert_for_source_row, num_expert):
    """Doc entry ``npu_moe_compute_expert_tokens``: binary search, per expert i, of the end of its
    run in the non-decreasing expert list.

    Assumption: "the position of the last row each expert handles" is returned as an exclusive
    end (number of entries <= i), so the result is the cumulative token count per expert, i.e. a
    group_list for npu_grouped_matmul with group_list_type=0. Dtype follows the input (int32).
    """
    _require(
        0 < num_expert <= 2048, "npu_moe_compute_expert_tokens: num_expert must be in (0, 2048]"
    )
    _require(
        sorted_expert_for_source_row.dim() == 1, "npu_moe_compute_expert_tokens: input must be 1D"
    )
    experts = sorted_expert_for_source_row.to(torch.int64)
    _require(
        bool((experts[1:] >= experts[:-1]).all()),
        "npu_moe_compute_expert_tokens: input must be sorted non-decreasingly",
    )
    ends = torch.searchsorted(experts, torch.arange(num_expert, dtype=torch.int64), right=True)
    return ends.to(sorted_expert_for_source_row.dtype)
