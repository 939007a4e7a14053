"""Index helpers shared by the speculative-decoding kernels: the flattened draft tokens of a
batch are segments, one per request, described by an inclusive cumulative count. Everything
is computed on the tensors' device from shapes known on the host: no synchronisation."""

from __future__ import annotations

import torch


def request_of_token(cu_inclusive: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Request index of each of ``num_tokens`` flattened tokens (int64). A token past the last
    segment gets ``len(cu_inclusive)`` (callers mask it)."""
    t = torch.arange(num_tokens, device=cu_inclusive.device, dtype=torch.int64)
    return torch.searchsorted(cu_inclusive.to(torch.int64), t, right=True)


def segment_starts(cu_inclusive: torch.Tensor) -> torch.Tensor:
    """Exclusive starts of the segments (int64): ``[0, cu[0], ..., cu[-2]]``."""
    cu = cu_inclusive.to(torch.int64)
    return torch.cat([cu.new_zeros(1), cu[:-1]])


def prefix_before(flags: torch.Tensor, starts: torch.Tensor, req: torch.Tensor,
                  ends: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For boolean ``flags`` over flattened tokens: (number of flagged tokens before each token
    within its own segment, number of flagged tokens per segment)."""
    csum = torch.cat([flags.new_zeros(1, dtype=torch.int64), flags.to(torch.int64).cumsum(0)])
    base = csum[starts]
    before = csum[:-1] - base[req.clamp(max=starts.shape[0] - 1)]
    return before, csum[ends] - base


def masked_store(dst: torch.Tensor, index: torch.Tensor, values: torch.Tensor,
                 mask: torch.Tensor) -> None:
    """``dst[index[i]] = values[i]`` where ``mask[i]``, for a 1-D ``dst``; indices of masked
    entries are unique, the others may be anything (they go to a scratch slot). No host sync."""
    n = dst.shape[0]
    scratch = torch.empty(n + 1, dtype=dst.dtype, device=dst.device)
    scratch[:n] = dst
    target = torch.where(mask, index.to(torch.int64), torch.full_like(index, n, dtype=torch.int64))
    scratch.scatter_(0, target, values.to(dst.dtype))
    dst.copy_(scratch[:n])
