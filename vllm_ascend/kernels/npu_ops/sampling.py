"""CPU kernel of torch_npu's top-k/top-p logits filter."""

from __future__ import annotations

import torch

from vllm_ascend.kernels.npu_library import npu_op

_OP = "npu_top_k_top_p"
_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
MAX_K = 1024


def _fail(msg: str, where: str, exc: type[Exception] = ValueError) -> None:
    """Raise naming the violated constraint and the doc parameter that states it."""
    raise exc(f"{_OP}: {msg} (doc: {_OP} {where})")


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
    Either p or k may be None (that filter is skipped), not both. Strict: the doc's input rules
    (dtypes, shapes, k in [1, min(1024, vocab)], p in [0, 1] with the logits dtype) raise.
    Assumption (the doc is silent): the softmax/cumsum run in float32 whatever the logits dtype.
    """
    if p is None and k is None:
        _fail("p and k cannot both be None", "'p'/'k'")
    if logits.dim() != 2:
        _fail(f"logits must be 2-D, got {tuple(logits.shape)}", "'logits'")
    if logits.dtype not in _DTYPES:
        _fail(f"logits must be bfloat16, float16 or float32, got {logits.dtype}",
              "'logits' dtype", TypeError)
    batch, vocab = logits.shape
    sorted_vals, sorted_idx = torch.sort(logits, dim=-1, descending=False, stable=True)
    sorted_vals = sorted_vals.float()
    neg_inf = torch.tensor(float("-inf"))
    if k is not None:
        if k.dtype != torch.int32:
            _fail(f"k must be int32, got {k.dtype}", "'k' dtype", TypeError)
        if k.shape != (batch,):
            _fail(f"k must have shape ({batch},), got {tuple(k.shape)}", "'k' shape")
        kk = k.long()
        if batch and (int(kk.min()) < 1 or int(kk.max()) > min(MAX_K, vocab)):
            _fail(f"k must lie in [1, {MAX_K}] and not exceed logits.size(1)={vocab}, got values "
                  f"in [{int(kk.min())}, {int(kk.max())}]", "'k' value range")
        kth = sorted_vals.gather(1, (vocab - kk).unsqueeze(1))
        sorted_vals = torch.where(sorted_vals < kth, neg_inf, sorted_vals)
    if p is not None:
        if p.shape != (batch,):
            _fail(f"p must have shape ({batch},), got {tuple(p.shape)}", "'p' shape")
        if p.dtype != logits.dtype:
            _fail(f"p dtype {p.dtype} must equal the logits dtype {logits.dtype}", "'p' dtype",
                  TypeError)
        if batch and (float(p.min()) < 0 or float(p.max()) > 1):
            _fail(f"p must lie in [0, 1], got values in [{float(p.min())}, {float(p.max())}]",
                  "'p' value range")
        probs_sum = sorted_vals.softmax(dim=-1).cumsum(dim=-1)
        drop = probs_sum <= (1 - p.float()).unsqueeze(1)
        drop[:, -1] = False
        sorted_vals = torch.where(drop, neg_inf, sorted_vals)
    out = torch.empty_like(logits)
    out.scatter_(1, sorted_idx, sorted_vals.to(logits.dtype))
    return out
