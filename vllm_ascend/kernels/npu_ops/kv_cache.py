"""CPU kernel of torch_npu's paged KV-cache scatter."""

from __future__ import annotations

import torch

from vllm_ascend.kernels.npu_library import npu_op


def _scatter_fake(key, value, key_cache, value_cache, slot_mapping, *, compress_lens=None,
                  compress_seq_offsets=None, seq_lens=None, cache_mode="PA_NZ"):
    return None


def _valid_slots(slot_mapping: torch.Tensor, capacity: int, n_tokens: int) -> tuple:
    if slot_mapping.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"npu_scatter_pa_kv_cache: slot_mapping must be int32/int64, "
                        f"got {slot_mapping.dtype}")
    slots = slot_mapping.reshape(-1).long()
    if slots.numel() != n_tokens:
        raise ValueError(f"npu_scatter_pa_kv_cache: slot_mapping has {slots.numel()} entries for "
                         f"{n_tokens} tokens")
    # Assumption (the doc only allows [0, num_blocks*block_size-1]): a negative slot marks a padding
    # token and is skipped, as vLLM's own cache kernels do; a slot past the cache is an error.
    if slots.numel() and int(slots.max()) >= capacity:
        raise IndexError(f"npu_scatter_pa_kv_cache: slot {int(slots.max())} out of range for a "
                         f"cache of {capacity} slots")
    keep = slots >= 0
    return slots[keep], keep


def _scatter_norm(src: torch.Tensor, cache: torch.Tensor, slots, keep, name: str) -> None:
    nb, bs, n, d = cache.shape
    if src.shape[1:] != (n, d):
        raise ValueError(f"npu_scatter_pa_kv_cache: {name} {tuple(src.shape)} does not fit the "
                         f"'Norm' cache [num_blocks, block_size, {n}, {d}]")
    cache.view(nb * bs, n, d)[slots] = src[keep]


def _scatter_nz(src: torch.Tensor, cache: torch.Tensor, slots, keep, name: str) -> None:
    nb, h_chunks, bs, last = cache.shape
    t = src.shape[0]
    h = src[0].numel() if t else src.shape[1] * src.shape[2]
    if h != h_chunks * last:
        raise ValueError(f"npu_scatter_pa_kv_cache: {name} {tuple(src.shape)} does not fit the "
                         f"'PA_NZ' cache [num_blocks, {h_chunks}, block_size, {last}] "
                         f"(num_head*head_size must equal {h_chunks}*{last})")
    rows = src.reshape(t, h_chunks, last)[keep]
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
        raise TypeError("npu_scatter_pa_kv_cache: key, value and both caches must share a dtype, "
                        f"got {sorted(str(d) for d in dtypes)}")
    mode = "Norm" if cache_mode is None else cache_mode
    if mode == "Norm":
        nb, bs = key_cache.shape[:2]
        if tuple(value_cache.shape[:2]) != (nb, bs):
            raise ValueError("npu_scatter_pa_kv_cache: key_cache and value_cache must share "
                             "[num_blocks, block_size]")
        slots, keep = _valid_slots(slot_mapping, nb * bs, key.shape[0])
        _scatter_norm(key, key_cache, slots, keep, "key")
        _scatter_norm(value, value_cache, slots, keep, "value")
    elif mode == "PA_NZ":
        nb, bs = key_cache.shape[0], key_cache.shape[2]
        if (value_cache.shape[0], value_cache.shape[2]) != (nb, bs):
            raise ValueError("npu_scatter_pa_kv_cache: key_cache and value_cache must share "
                             "num_blocks (dim 0) and block_size (dim 2)")
        slots, keep = _valid_slots(slot_mapping, nb * bs, key.shape[0])
        _scatter_nz(key, key_cache, slots, keep, "key")
        _scatter_nz(value, value_cache, slots, keep, "value")
    else:
        raise ValueError(f"npu_scatter_pa_kv_cache: cache_mode must be 'Norm', None or 'PA_NZ', "
                         f"got {cache_mode!r}")
