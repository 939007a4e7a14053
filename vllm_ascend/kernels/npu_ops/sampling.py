"""CPU kernel of torch_npu's top-k/top-p logits filter."""

from __future__ import annotations

import torch

from vllm_ascend.kernels.npu_library import npu_op


def _top_k_top_p_fake(logits, p=None, k=None):
    return logits.new_empty(logits.shape)


@npu_op("npu_top_k_top_p(Tensor logits, Tensor? p=None, Tensor? k=None) -> Tensor",
        fake=_top_k_top_p_fake)
def npu_top_k_top_p(logits: torch.Tensor, p: torch.Tensor | None = None,
                    k: torch.Tensor | None = None) -> torch.Tensor:
    """torch_npu.npu_top_k_top_p (doc entry ``npu_top_k_top_p``): logits, -inf where filtered.

    Follows the documented steps: stable ascending sort; top-k keeps values >= the k-th largest
    (ties with it are kept); softmax of the top-k-filtered row; cumulative probability from the
    smallest; positions with cumsum <= 1 - p are dropped, the largest is always kept; scatter back.
    Either p or k may be None (that filter is skipped), not both. Assumption (the doc is silent):
    the softmax/cumsum run in float32 whatever the logits dtype.
    """
    if p is None and k is None:
        raise ValueError("npu_top_k_top_p: p and k cannot both be None")
    if logits.dim() != 2:
        raise ValueError(f"npu_top_k_top_p: logits must be 2-D, got {tuple(logits.shape)}")
    batch, vocab = logits.shape
    sorted_vals, sorted_idx = torch.sort(logits, dim=-1, descending=False, stable=True)
    sorted_vals = sorted_vals.float()
    neg_inf = torch.tensor(float("-inf"))
    if k is not None:
        if k.dtype != torch.int32:
            raise TypeError(f"npu_top_k_top_p: k must be int32, got {k.dtype}")
        if k.shape != (batch,):
            raise ValueError(f"npu_top_k_top_p: k must have shape ({batch},), got {tuple(k.shape)}")
        kk = k.long()
        if batch and (int(kk.min()) < 1 or int(kk.max()) > vocab):
            raise ValueError(f"npu_top_k_top_p: k must lie in [1, {vocab}]")
        kth = sorted_vals.gather(1, (vocab - kk).unsqueeze(1))
        sorted_vals = torch.where(sorted_vals < kth, neg_inf, sorted_vals)
    if p is not None:
        if p.shape != (batch,):
            raise ValueError(f"npu_top_k_top_p: p must have shape ({batch},), got {tuple(p.shape)}")
        probs_sum = sorted_vals.softmax(dim=-1).cumsum(dim=-1)
        drop = probs_sum <= (1 - p.float()).unsqueeze(1)
        drop[:, -1] = False
        sorted_vals = torch.where(drop, neg_inf, sorted_vals)
    out = torch.empty_like(logits)
    out.scatter_(1, sorted_idx, sorted_vals.to(logits.dtype))
    return out
