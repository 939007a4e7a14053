"""CPU kernel of torch_npu's paged KV-cache scatter."""

from __future__ import annotations

import torch

from vllm_ascend.kernels.npu_library import npu_op


def _scatter_fake(key, value, key_cache, value_cache, slot_mapping, *, compress_lens=None,
                  compress_seq_offsets=None, seq_lens=None, cache_mode="PA_NZ"):
    return None


_OP = "npu_scatter_pa_kv_cache"
# The dtypes the doc lists for key (value and both caches must match it); the float8 types are
# left out where this torch build lacks them.
_DTYPES = tuple(
    getattr(torch, name) for name in (
        "float16", "float32", "bfloat16", "int8", "uint8", "int16", "uint16", "int32", "uint32",
        "float8_e5m2", "float8_e4m3fn")
    if hasattr(torch, name)
)


def _fail(msg: str, where: str, exc: type[Exception] = ValueError) -> None:
    """Raise naming the violated constraint and its place in the doc entry."""
    raise exc(f"{_OP}: {msg} (doc: {_OP} {where})")


def _valid_slots(slot_mapping: torch.Tensor, capacity: int, n_tokens: int) -> torch.Tensor:
    if slot_mapping.dtype not in (torch.int32, torch.int64):
        _fail(f"slot_mapping must be int32/int64, got {slot_mapping.dtype}",
              "'slot_mapping' dtype", TypeError)
    if slot_mapping.dim() != 1 or slot_mapping.numel() != n_tokens:
        _fail(f"slot_mapping must be 1-D [{n_tokens}] (one slot per token), got "
              f"{tuple(slot_mapping.shape)}", "scenarios 1/2: slot_mapping [batch(*seq_len)]")
    slots = slot_mapping.long()
    if slots.numel():
        lo, hi = int(slots.min()), int(slots.max())
        # No padding convention: a negative slot is out of range like one past the cache.
        if lo < 0 or hi >= capacity:
            _fail(f"slots must lie in [0, {capacity - 1}] (num_blocks*block_size-1), got values "
                  f"in [{lo}, {hi}]", "constraints: slot_mapping value range", IndexError)
        if torch.unique(slots).numel() != slots.numel():
            _fail("slot_mapping holds duplicate slots", "constraints: slot_mapping values must "
                  "not repeat (no correctness guarantee otherwise)")
    return slots


def _scatter_norm(src: torch.Tensor, cache: torch.Tensor, slots, name: str) -> None:
    nb, bs, n, d = cache.shape
    if src.shape[1:] != (n, d):
        raise ValueError(f"npu_scatter_pa_kv_cache: {name} {tuple(src.shape)} does not fit the "
                         f"'Norm' cache [num_blocks, block_size, {n}, {d}]")
    cache.view(nb * bs, n, d)[slots] = src


def _scatter_nz(src: torch.Tensor, cache: torch.Tensor, slots, name: str) -> None:
    nb, h_chunks, bs, last = cache.shape
    t = src.shape[0]
    h = src[0].numel() if t else src.shape[1] * src.shape[2]
    if h != h_chunks * last:
        raise ValueError(f"npu_scatter_pa_kv_cache: {name} {tuple(src.shape)} does not fit the "
                         f"'PA_NZ' cache [num_blocks, {h_chunks}, block_size, {last}] "
                         f"(num_head*head_size must equal {h_chunks}*{last})")
    rows = src.reshape(t, h_chunks, last)
    # Logical NZ layout: element h of a token's flattened [num_head*head_size] row lives at
    # cache[block, h // last_dim, offset_in_block, h % last_dim].
    cache[slots // bs, :, slots % bs, :] = rows


@npu_op(
    "npu_scatter_pa_kv_cache(Tensor key, Tensor value, Tensor(a!) key_cache, "
    "Tensor(b!) value_cache, Tensor slot_mapping, *, Tensor? compress_lens=None, "
    "Tensor? compress_seq_offsets=None, Tensor? seq_lens=None, str? cache_mode='PA_NZ') -> ()",
    fake=_scatter_fake,
)
def npu_scatter_pa_kv_cache(key, value, key_cache, value_cache, slot_mapping, *,
                            compress_lens=None, compress_seq_offsets=None, seq_lens=None,
                            cache_mode="PA_NZ"):
    """torch_npu.npu_scatter_pa_kv_cache (doc entry ``npu_scatter_pa_kv_cache``), in place.

    Token i's key/value row is written to slot ``slot_mapping[i]`` = block * block_size + offset.
    * cache_mode 'Norm' (or None), doc scenario 2: key [T, N, Dk], value [T, N, Dv],
      key_cache [num_blocks, block_size, N, Dk], value_cache [num_blocks, block_size, N, Dv].
    * cache_mode 'PA_NZ' (default), doc scenario 1: key [T, N, Dk], key_cache
      [num_blocks, N*Dk // last_dim, block_size, last_dim] (same for value with its own last_dim);
      the CPU tensor holds the logical NZ arrangement described in ``_scatter_nz``.
    The compressing scenario 3 (4-D key, compress_lens/compress_seq_offsets/seq_lens) is not
    implemented and raises NotImplementedError.
    Strict: the doc's constraints are enforced (contiguous inputs, one dtype from its list, slots
    in [0, num_blocks*block_size-1] and unique, cache shapes per mode); a negative slot is an
    error, not a skipped padding token.
    """
    for arg, val in (("compress_lens", compress_lens),
                     ("compress_seq_offsets", compress_seq_offsets), ("seq_lens", seq_lens)):
        if val is not None:
            raise NotImplementedError(
                f"npu_scatter_pa_kv_cache: {arg} (compress scenario 3) is not implemented on CPU")
    if key.dim() != 3 or value.dim() != 3:
        raise NotImplementedError(
            "npu_scatter_pa_kv_cache: only 3-D key/value [tokens, num_head, head_size] are "
            f"implemented (got {key.dim()}-D/{value.dim()}-D; 4-D is the compress scenario 3)")
    if key.shape[:2] != value.shape[:2]:
        raise ValueError(f"npu_scatter_pa_kv_cache: key {tuple(key.shape)} and value "
                         f"{tuple(value.shape)} must share their first two dims")
    if key_cache.dim() != 4 or value_cache.dim() != 4:
        raise ValueError("npu_scatter_pa_kv_cache: key_cache and value_cache must be 4-D")
    dtypes = {key.dtype, value.dtype, key_cache.dtype, value_cache.dtype}
    if len(dtypes) != 1:
        _fail(f"key, value and both caches must share a dtype, got "
              f"{sorted(str(d) for d in dtypes)}", "constraints: equal dtypes", TypeError)
    if key.dtype not in _DTYPES:
        _fail(f"dtype {key.dtype} is not supported", "'key' dtype", TypeError)
    for name, t in (("key", key), ("value", value), ("key_cache", key_cache),
                    ("value_cache", value_cache), ("slot_mapping", slot_mapping)):
        if not t.is_contiguous():
            _fail(f"{name} must be contiguous (stride {tuple(t.stride())})",
                  "constraints: non-contiguous inputs are not supported")
    mode = "Norm" if cache_mode is None else cache_mode
    if mode == "Norm":
        nb, bs = key_cache.shape[:2]
        if tuple(value_cache.shape[:2]) != (nb, bs):
            raise ValueError("npu_scatter_pa_kv_cache: key_cache and value_cache must share "
                             "[num_blocks, block_size]")
        slots = _valid_slots(slot_mapping, nb * bs, key.shape[0])
        _scatter_norm(key, key_cache, slots, "key")
        _scatter_norm(value, value_cache, slots, "value")
    elif mode == "PA_NZ":
        nb, bs = key_cache.shape[0], key_cache.shape[2]
        if (value_cache.shape[0], value_cache.shape[2]) != (nb, bs):
            raise ValueError("npu_scatter_pa_kv_cache: key_cache and value_cache must share "
                             "num_blocks (dim 0) and block_size (dim 2)")
        slots = _valid_slots(slot_mapping, nb * bs, key.shape[0])
        _scatter_nz(key, key_cache, slots, "key")
        _scatter_nz(value, value_cache, slots, "value")
    else:
        raise ValueError(f"npu_scatter_pa_kv_cache: cache_mode must be 'Norm', None or 'PA_NZ', "
                         f"got {cache_mode!r}")
