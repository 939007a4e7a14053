"""The three ``_C_ascend`` ops composed from torch ops, for builds without the Ascend C kernels.

A module built with ``VLLM_ASCEND_BUILD_ASCENDC=0`` (see setup.py) has CPU kernels only. On an NPU
the functions below then serve the ops: ``register()`` puts them into the dispatcher under the
NPU's key (PrivateUse1) through ``torch.library``, so ``torch.ops._C_ascend.*`` call sites stay
as they are. Each function follows the C++ CPU kernel's semantics (csrc/cpu, fp32 arithmetic,
results rounded to the storage dtype once) and uses only plain torch ops plus torch_npu ops the
plugin already calls (``torch.ops.npu.npu_add_rms_norm``, which has a CPU kernel here), so the
same code runs on CPU tensors for the tests. They cost several kernel launches and intermediate
tensors where the Ascend C kernel needs one pass.

Position ranges are not checked on the host (that would synchronise with the device every
step): an out-of-range position fails in ``index_select``, as in the indexing of any torch op.
"""

from __future__ import annotations

import torch

# The CPU kernel of torch.ops.npu.npu_add_rms_norm (torch_npu provides the NPU one).
from vllm_ascend.kernels import npu_ops  # noqa: F401

NAMESPACE = "_C_ascend"
# The NPU's dispatch key: torch_npu's tensors carry PrivateUse1.
NPU_DISPATCH_KEY = "PrivateUse1"

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INDEX_DTYPES = (torch.int64, torch.int32)


# ---- rotary_embedding ------------------------------------------------------------------------


def _heads(x: torch.Tensor, positions: torch.Tensor, head_size: int, name: str) -> torch.Tensor:
    """``x`` viewed as [tokens..., heads, head_size], sharing its storage (any token stride)."""
    pd = positions.dim()
    if x.dim() not in (pd + 1, pd + 2):
        raise RuntimeError(
            f"rotary_embedding: {name} must have {pd + 1} dims ([tokens..., heads*head_size]) or "
            f"{pd + 2} dims ([tokens..., heads, head_size]) to match positions of shape "
            f"{tuple(positions.shape)}, got {tuple(x.shape)}"
        )
    if tuple(x.shape[:pd]) != tuple(positions.shape):
        raise RuntimeError(
            f"rotary_embedding: {name} token dims {tuple(x.shape)} do not match positions "
            f"{tuple(positions.shape)}"
        )
    # As the kernels demand: [B, S] token dims must flatten into one strided dim.
    if pd == 2 and x.size(0) > 1 and x.size(1) > 1 and x.stride(0) != x.stride(1) * x.size(1):
        raise RuntimeError(
            f"rotary_embedding: {name} token dims of strides {x.stride()} cannot be flattened"
        )
    last = x.size(-1)
    if x.stride(-1) != 1 and last > 1:
        raise RuntimeError(
            f"rotary_embedding: {name} last dim must be contiguous, strides {x.stride()}"
        )
    if x.dim() == pd + 1:
        if last % head_size != 0:
            raise RuntimeError(
                f"rotary_embedding: {name} last dim {last} is not a multiple of head_size "
                f"{head_size}"
            )
        return x.unflatten(-1, (last // head_size, head_size))
    if last != head_size:
        raise RuntimeError(f"rotary_embedding: {name} last dim {last} != head_size {head_size}")
    return x


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor | None,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
) -> None:
    """Rotates the first ``rot_dim`` dims of every head of query (and key) in place.

    ``rot_dim = cos_sin_cache.size(1)``; a cache row is cos in its first half, sin in the second.
    NeoX style pairs (x[i], x[i + rot_dim/2]), GPT-J style pairs (x[2i], x[2i + 1]); dims past
    rot_dim are left untouched. Computed in fp32, written back once through ``copy_`` into the
    caller's storage (views into a fused qkv keep their strides).
    """
    if positions.dim() not in (1, 2):
        raise RuntimeError(
            "rotary_embedding: positions must be [num_tokens] or [batch, seq], got "
            f"{tuple(positions.shape)}"
        )
    if positions.dtype not in _INDEX_DTYPES:
        raise RuntimeError(
            f"rotary_embedding: positions must be int64 or int32, got {positions.dtype}"
        )
    if head_size <= 0:
        raise RuntimeError(f"rotary_embedding: head_size must be positive, got {head_size}")
    if query.dtype not in _FLOAT_DTYPES:
        raise RuntimeError(
            f"rotary_embedding: query must be float32, float16 or bfloat16, got {query.dtype}"
        )
    if cos_sin_cache.dim() != 2:
        raise RuntimeError(
            "rotary_embedding: cos_sin_cache must be [max_position, rot_dim], got "
            f"{tuple(cos_sin_cache.shape)}"
        )
    if cos_sin_cache.dtype not in (query.dtype, torch.float32):
        raise RuntimeError(
            f"rotary_embedding: cos_sin_cache dtype {cos_sin_cache.dtype} must equal the query "
            f"dtype {query.dtype} or be float32"
        )
    rot_dim = cos_sin_cache.size(1)
    if rot_dim <= 0 or rot_dim % 2 or rot_dim > head_size:
        raise RuntimeError(
            f"rotary_embedding: rot_dim (cos_sin_cache.size(1) = {rot_dim}) must be even, "
            f"positive and <= head_size {head_size}"
        )
    if not (query.device == positions.device == cos_sin_cache.device):
        raise RuntimeError(
            "rotary_embedding: positions, query and cos_sin_cache must be on one device"
        )
    operands = [_heads(query, positions, head_size, "query")]
    if key is not None:
        if key.dtype != query.dtype:
            raise RuntimeError(
                f"rotary_embedding: key dtype {key.dtype} != query dtype {query.dtype}"
            )
        if key.device != query.device:
            raise RuntimeError("rotary_embedding: key and query devices differ")
        operands.append(_heads(key, positions, head_size, "key"))
    if positions.numel() == 0:
        return

    half = rot_dim // 2
    rows = cos_sin_cache.index_select(0, positions.reshape(-1)).float()
    rows = rows.reshape(*positions.shape, 1, rot_dim)  # broadcast over heads
    cos, sin = rows[..., :half], rows[..., half:]
    for heads in operands:
        rot = heads[..., :rot_dim]
        if is_neox:
            a, b = rot[..., :half].float(), rot[..., half:].float()
            out = torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)
        else:
            a, b = rot[..., 0::2].float(), rot[..., 1::2].float()
            out = torch.stack((a * cos - b * sin, b * cos + a * sin), dim=-1).flatten(-2)
        rot.copy_(out)


# ---- get_masked_input_and_mask ---------------------------------------------------------------


def get_masked_input_and_mask(
    input: torch.Tensor,
    org_vocab_start_index: int,
    org_vocab_end_index: int,
    num_org_vocab_padding: int,
    added_vocab_start_index: int,
    added_vocab_end_index: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids shifted into this shard's local index space as int64, mask True where not owned).

    vLLM's arithmetic: an id in the original range is shifted by org_vocab_start_index, one in
    the added range by the added offset (both if the ranges overlap); other ids become 0.
    """
    if input.dtype not in _INDEX_DTYPES:
        raise RuntimeError(
            f"get_masked_input_and_mask: input ids must be int64 or int32, got {input.dtype}"
        )
    ids = input.long()
    in_org = (ids >= org_vocab_start_index) & (ids < org_vocab_end_index)
    in_added = (ids >= added_vocab_start_index) & (ids < added_vocab_end_index)
    added_offset = (
        added_vocab_start_index - (org_vocab_end_index - org_vocab_start_index)
        - num_org_vocab_padding
    )
    offset = in_org * org_vocab_start_index + in_added * added_offset
    valid = in_org | in_added
    masked = torch.where(valid, ids - offset, torch.zeros_like(ids))
    return masked, ~valid


# ---- add_rms_norm_dynamic_quant --------------------------------------------------------------


def add_rms_norm_dynamic_quant(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, epsilon: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y int8, scale float32 [...], residual_out) with residual_out = x + residual and
    y * scale ~= rms_norm(residual_out) * weight, symmetric per token (scale = absmax / 127,
    round half to even). The add and the norm run in fp32 through torch_npu's
    ``npu_add_rms_norm``; the normed values stay fp32 until they are quantised. An all-zero (or
    NaN) row gets scale 0 and y 0.
    """
    if x.dtype not in _FLOAT_DTYPES:
        raise RuntimeError(
            f"add_rms_norm_dynamic_quant: x must be float32, float16 or bfloat16, got {x.dtype}"
        )
    if x.dim() < 1:
        raise RuntimeError("add_rms_norm_dynamic_quant: x must have a hidden dim")
    if residual.shape != x.shape or residual.dtype != x.dtype:
        raise RuntimeError(
            f"add_rms_norm_dynamic_quant: residual {tuple(residual.shape)} {residual.dtype} "
            f"must match x {tuple(x.shape)} {x.dtype}"
        )
    hidden = x.size(-1)
    if weight.dim() != 1 or weight.size(0) != hidden:
        raise RuntimeError(
            f"add_rms_norm_dynamic_quant: weight must be [{hidden}], got {tuple(weight.shape)}"
        )
    if x.numel() == 0:
        return (
            torch.empty(x.shape, dtype=torch.int8, device=x.device),
            torch.zeros(x.shape[:-1], dtype=torch.float32, device=x.device),
            torch.empty_like(x),
        )
    normed, _rstd, summed = torch.ops.npu.npu_add_rms_norm(
        x.float(), residual.float(), weight.float(), epsilon
    )
    absmax = normed.abs().amax(dim=-1, keepdim=True)
    nonzero = absmax > 0  # False for a zero or NaN row
    zero = torch.zeros_like(absmax)
    scale = torch.where(nonzero, absmax / 127.0, zero)
    inv_scale = torch.where(nonzero, 127.0 / absmax, zero)
    q = torch.round(normed * inv_scale).clamp_(-128, 127)
    q = torch.where(nonzero, q, torch.zeros_like(q)).to(torch.int8)
    return q, scale.squeeze(-1), summed.to(x.dtype)


# ---- registration ------------------------------------------------------------------------------

OPS = {
    "rotary_embedding": rotary_embedding,
    "get_masked_input_and_mask": get_masked_input_and_mask,
    "add_rms_norm_dynamic_quant": add_rms_norm_dynamic_quant,
}

# Keeps each Library alive: dropping it would remove its kernels from the dispatcher.
_libraries: dict[tuple[str, str], torch.library.Library] = {}


def register(dispatch_key: str = NPU_DISPATCH_KEY, namespace: str = NAMESPACE) -> bool:
    """Registers the compositions as the ``namespace`` ops' kernels for ``dispatch_key``.

    The ops must already be defined (the extension defines them). Idempotent per (namespace,
    key); returns True when this call registered them. Tests pass another namespace or key.
    """
    if (namespace, dispatch_key) in _libraries:
        return False
    lib = torch.library.Library(namespace, "IMPL")
    for name, fn in OPS.items():
        lib.impl(name, fn, dispatch_key)
    _libraries[(namespace, dispatch_key)] = lib
    return True


def registered(dispatch_key: str = NPU_DISPATCH_KEY, namespace: str = NAMESPACE) -> bool:
    return (namespace, dispatch_key) in _libraries
