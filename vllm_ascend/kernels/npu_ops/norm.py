"""CPU kernels of torch_npu's RMSNorm ops.

Both follow the formula y = x / sqrt(mean(x^2) + eps) * gamma, where the mean runs over the trailing
``gamma.dim()`` dimensions of x (the meta function of torch-npu derives the shape of ``rstd`` the
same way: the leading ``x.dim() - gamma.dim()`` sizes, then ones).
"""

from __future__ import annotations

import torch

from vllm_ascend.kernels.npu_library import npu_op

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _rstd_shape(x: torch.Tensor, gamma: torch.Tensor) -> list[int]:
    lead = x.dim() - gamma.dim()
    return [x.size(i) if i < lead else 1 for i in range(x.dim())]


def _check(x: torch.Tensor, gamma: torch.Tensor, op: str, doc: str, min_dims: int) -> None:
    """``doc`` names the doc entry stating the rules; ``min_dims`` is its lowest rank for x."""
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: x must be float16, bfloat16 or float32, got {x.dtype} "
                        f"(doc: {doc} dtypes)")
    if not min_dims <= x.dim() <= 8:
        raise ValueError(f"{op}: x must have {min_dims}..8 dims, got shape {tuple(x.shape)} "
                         f"(doc: {doc} shape)")
    if gamma.dtype != x.dtype:
        raise TypeError(f"{op}: gamma dtype {gamma.dtype} must equal x's dtype {x.dtype} "
                        f"(doc: {doc} 'gamma')")
    # The doc's gamma rank "2-8" contradicts its own 1-D example; gamma = trailing dims of x.
    if gamma.dim() < 1 or gamma.dim() > x.dim():
        raise ValueError(f"{op}: gamma must have 1..{x.dim()} dims, got shape {tuple(gamma.shape)}"
                         f" (doc: {doc} 'gamma')")
    if tuple(x.shape[x.dim() - gamma.dim():]) != tuple(gamma.shape):
        raise ValueError(
            f"{op}: gamma shape {tuple(gamma.shape)} must equal the trailing dims of x "
            f"{tuple(x.shape)} (doc: {doc} 'gamma')"
        )


def _rms_norm_f32(x32: torch.Tensor, gamma: torch.Tensor, eps: float):
    dims = tuple(range(x32.dim() - gamma.dim(), x32.dim()))
    rstd = torch.rsqrt(x32.square().mean(dim=dims, keepdim=True) + eps)
    y = x32 * rstd * gamma.float()
    return y, rstd


def _rms_norm_fake(self, gamma, epsilon=1e-06):
    return self.new_empty(self.shape), self.new_empty(_rstd_shape(self, gamma), dtype=torch.float32)


@npu_op(
    "npu_rms_norm(Tensor self, Tensor gamma, float epsilon=1e-06) -> (Tensor, Tensor)",
    fake=_rms_norm_fake,
)
def npu_rms_norm(self: torch.Tensor, gamma: torch.Tensor, epsilon: float = 1e-06):
    """torch_npu.npu_rms_norm (doc entry ``npu_rms_norm``): returns ``(y, rstd)``.

    y has x's shape and dtype; rstd = 1/sqrt(mean(x^2) + eps) is float32 with the shape of the
    torch-npu meta function (e.g. [tokens, 1] for 2-D x and 1-D gamma). Assumption (the doc is
    silent): everything is computed in float32 and y is rounded to x's dtype once, at the end.
    """
    _check(self, gamma, "npu_rms_norm", "npu_rms_norm", 2)
    y, rstd = _rms_norm_f32(self.float(), gamma, epsilon)
    return y.to(self.dtype), rstd.reshape(_rstd_shape(self, gamma))


def _add_rms_norm_fake(x1, x2, gamma, epsilon=1e-06):
    return (
        x1.new_empty(x1.shape),
        x1.new_empty(_rstd_shape(x1, gamma), dtype=torch.float32),
        x1.new_empty(x1.shape),
    )


@npu_op(
    "npu_add_rms_norm(Tensor x1, Tensor x2, Tensor gamma, float epsilon=1e-06) "
    "-> (Tensor, Tensor, Tensor)",
    fake=_add_rms_norm_fake,
)
def npu_add_rms_norm(x1: torch.Tensor, x2: torch.Tensor, gamma: torch.Tensor,
                     epsilon: float = 1e-06):
    """torch_npu.npu_add_rms_norm: returns ``(y, rstd, x)`` with x = x1 + x2 and y = RmsNorm(x).

    torch-npu 2.13.0 has no doc entry for this op; the outputs follow its meta function (y and x
    with x1's shape and dtype, rstd float32 as in npu_rms_norm) and the documented relatives
    ``npu_add_rms_norm_cast``/``npu_add_rms_norm_quant`` (x_out is the sum). Assumption: the sum is
    formed in float32, normalised unrounded, and rounded to x1's dtype only for the outputs.
    """
    # No doc entry of its own: the rules of its documented sibling npu_add_rms_norm_cast (x1, x2
    # and gamma share a dtype, x2 has x1's shape, 1-8 dims, no empty tensor). That sibling lists
    # float16/bfloat16 only; CANN's aclnnAddRmsNorm also takes float32, which we keep (and which
    # is the CPU backend's HF-comparison dtype in any case).
    doc = "npu_add_rms_norm_cast (sibling)"
    _check(x1, gamma, "npu_add_rms_norm", doc, 1)
    if x1.shape != x2.shape or x1.dtype != x2.dtype:
        raise ValueError(f"npu_add_rms_norm: x2 {tuple(x2.shape)} {x2.dtype} must match x1 "
                         f"{tuple(x1.shape)} {x1.dtype} (doc: {doc} 'x2')")
    if x1.numel() == 0:
        raise ValueError(f"npu_add_rms_norm: empty x1 {tuple(x1.shape)} (doc: {doc}: empty "
                         "tensors are not supported)")
    x = x1.float() + x2.float()
    y, rstd = _rms_norm_f32(x, gamma, epsilon)
    return y.to(x1.dtype), rstd.reshape(_rstd_shape(x1, gamma)), x.to(x1.dtype)
