"""Multi-LoRA on Ascend: vLLM's punica interface with fixed-shape tensor programs.

vLLM's layers with LoRA (``vllm/lora/layers``) hand every adapter computation to the platform's
punica wrapper: per token, ``y += (x @ A[slot].T) @ B[slot].T`` where ``slot`` is the token's
adapter slot, or no adapter at all (slot -1). The weights of all slots sit stacked in each layer
(``lora_a_stacked[i]``: ``[max_loras, 1, rank, in]``, ``lora_b_stacked[i]``:
``[max_loras, 1, out, rank]``).

Why not vLLM's torch punica ops (``PunicaWrapperCPU``): they select weights with
``weights[indices]``, which for slot -1 is the *last* slot, so a base-model token in a batch
whose last slot holds an adapter gets that adapter; their prefill path sizes tensors from the
batch's contents (``repeat_interleave`` over per-adapter run lengths) and computes those
lengths with two host reads (``.item()``) per step; and they branch in Python on whether the
step has any adapter. A graph freezes all of that at capture time.

Here every shape depends only on the token count (the captured size), never on which adapters
the batch holds, and nothing reads the device from the host:
- shrink: one matmul of the tokens with the A weights of every slot (``[T, slots * rank]``),
  then each token keeps its own slot's ``rank`` columns through a one-hot mask (all zeros for
  slot -1, which is what makes a base-model token exact);
- expand: the masked ``[T, slots * rank]`` against the B weights of every slot, one matmul.
The cost over a gathered per-token kernel is ``slots`` times the (small) LoRA matmuls; the
index buffers are the wrapper's static ones, refreshed in place each step, so captured graphs
read each step's mapping. On an NPU this is a few ordinary launches per LoRA slice (matmul,
compare, multiply, add); torch_npu's fused BGMV op (``npu_batch_gather_matmul``: fp16, rank a
multiple of 16 in [16, 128], Atlas A2) is not used yet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from vllm.lora.punica_wrapper.punica_base import PunicaWrapperBase

if TYPE_CHECKING:
    from vllm.lora.layers import LoRAMapping


def slot_mask(indices: torch.Tensor, num_slots: int, dtype: torch.dtype) -> torch.Tensor:
    """``[T, num_slots]``: row t is one-hot at token t's slot, all zeros where it is -1."""
    slots = torch.arange(num_slots, device=indices.device, dtype=indices.dtype)
    return (indices.unsqueeze(1) == slots).to(dtype)


def _stacked(weights: torch.Tensor) -> torch.Tensor:
    """A stacked LoRA weight as ``[slots, rows, cols]`` (the layers keep a size-1 layer axis)."""
    if weights.dim() == 4:
        weights = weights.squeeze(1)
    return weights


def lora_shrink(x: torch.Tensor, a_stacked: torch.Tensor, mask: torch.Tensor,
                scale: float) -> torch.Tensor:
    """``[T, rank]``: ``scale * x[t] @ A[slot(t)].T`` (zeros for tokens without an adapter)."""
    a = _stacked(a_stacked)
    slots, rank, width = a.shape
    every = torch.matmul(x.to(a.dtype), a.reshape(slots * rank, width).t())
    every = every.view(x.size(0), slots, rank).to(mask.dtype)
    return (every * mask.unsqueeze(2)).sum(dim=1) * scale


def lora_expand(h: torch.Tensor, b_stacked: torch.Tensor, mask: torch.Tensor,
                out_size: int | None = None) -> torch.Tensor:
    """``[T, out]``: ``h[t] @ B[slot(t)].T`` (zeros for tokens without an adapter); the first
    ``out_size`` output columns only when given."""
    b = _stacked(b_stacked)
    slots, out, rank = b.shape
    if out_size is not None:
        b = b[:, :out_size]
        out = out_size
    routed = (h[:, :rank].to(mask.dtype).unsqueeze(1) * mask.unsqueeze(2)).to(b.dtype)
    # [slots * rank, out]: slot s's B.T in rows s*rank .. (s+1)*rank (a copy of the B weights
    # of this slice, the size of one LoRA weight).
    b_rows = b.transpose(1, 2).reshape(slots * rank, out)
    return torch.matmul(routed.reshape(h.size(0), slots * rank), b_rows)


class AscendPunicaWrapper(PunicaWrapperBase):
    """vLLM's punica wrapper interface on fixed-shape torch ops (see the module docstring)."""

    def __init__(self, max_num_batched_tokens: int, max_batches: int,
                 device: torch.device | str, **kwargs: Any) -> None:
        super().__init__(max_num_batched_tokens, max_batches, device)

    # ---- metadata: once per step, before the forward ------------------------------------
    def update_metadata(self, mapping: LoRAMapping, lora_index_to_id: list[int | None],
                        max_loras: int, vocab_size: int, **kwargs: Any) -> None:
        self._update_base_metadata(mapping, lora_index_to_id, max_loras, vocab_size)
        # A graph runs on more tokens than the batch has (its padded size): the padding reads
        # the buffers past the batch, which must say "no adapter", not a stale slot.
        num_tokens = self.indices_len[0]
        self._token_lora_indices[num_tokens:].fill_(-1)
        self._embeddings_indices[self.indices_len[3]:].fill_(0)
        # No per-adapter run lengths (compute_meta): nothing here needs them, and they cost
        # two host reads of the device per step.
        self.is_prefill = mapping.is_prefill
        self.no_lora = False

    def _token_mask(self, num_tokens: int, num_slots: int, dtype: torch.dtype) -> torch.Tensor:
        return slot_mask(self._token_lora_indices[:num_tokens], num_slots, dtype)

    # ---- the punica interface ------------------------------------------------------------
    def add_shrink(self, y, x: torch.Tensor, lora_a_stacked, scale: float, **kwargs: Any):
        """``y[i] += scale * x @ A_i[slot].T`` for each slice i (y: a tuple, or one tensor
        ``[slices, T, rank]``)."""
        x = x.view(-1, x.shape[-1])
        mask = self._token_mask(x.size(0), _stacked(lora_a_stacked[0]).size(0), torch.float32)
        for i, a in enumerate(lora_a_stacked):
            out = y[i]
            out[:, :_stacked(a).size(1)] += lora_shrink(x, a, mask, scale).to(out.dtype)

    def add_expand(self, y: torch.Tensor, x, lora_b_stacked, output_slices: tuple[int, ...],
                   offset_start: int = 0, add_inputs: bool = True, **kwargs: Any) -> None:
        """``y[:, offset:offset + size_i] (+)= x[i] @ B_i[slot].T`` for each slice i, the
        offsets consecutive from ``offset_start``."""
        y2 = y.view(-1, y.shape[-1])
        mask = self._token_mask(y2.size(0), _stacked(lora_b_stacked[0]).size(0), torch.float32)
        offset = offset_start
        for i, b in enumerate(lora_b_stacked):
            size = output_slices[i]
            out = lora_expand(x[i], b, mask, size).to(y2.dtype)
            if add_inputs:
                y2[:, offset:offset + size] += out
            else:
                y2[:, offset:offset + size] = out
            offset += size

    def add_lora_embedding(self, y: torch.Tensor, x: torch.Tensor,
                           lora_b_stacked: torch.Tensor, add_inputs: bool = True,
                           **kwargs: Any) -> None:
        """``y += x @ B[slot].T``: x holds each token's rows of its adapter's embedding A."""
        b = _stacked(lora_b_stacked)
        self.add_expand(y, (x,), (b,), (b.size(1),), add_inputs=add_inputs)

    def add_lora_linear(self, y: torch.Tensor, x: torch.Tensor, lora_a_stacked,
                        lora_b_stacked, scale: float, output_slices: tuple[int, ...], *,
                        buffer=None, **kwargs: Any) -> None:
        """``y[:, slice_i] += scale * (x @ A_i[slot].T) @ B_i[slot].T`` for each slice i."""
        assert len(lora_a_stacked) == len(lora_b_stacked) == len(output_slices)
        x = x.view(-1, x.shape[-1])
        y2 = y.view(-1, y.shape[-1])
        num_slots = _stacked(lora_a_stacked[0]).size(0)
        mask = self._token_mask(x.size(0), num_slots, torch.float32)
        offset = 0
        for a, b, size in zip(lora_a_stacked, lora_b_stacked, output_slices, strict=True):
            h = lora_shrink(x, a, mask, scale)
            y2[:, offset:offset + size] += lora_expand(h, b, mask, size).to(y2.dtype)
            offset += size

    def add_lora_logits(self, y: torch.Tensor, x: torch.Tensor, lora_a_stacked: torch.Tensor,
                        lora_b_stacked: torch.Tensor, scale, *, buffer=None,
                        **kwargs: Any) -> None:
        """``y += scale * (x @ A[slot].T) @ B[slot].T`` per sampled row (the sampler's
        mapping; logits are computed outside the graphs). An adapter's vocabulary may be
        padded differently from the model's: the common columns are updated."""
        y2 = y.view(-1, y.shape[-1])
        x = x.view(-1, x.shape[-1])
        indices = self.sampler_indices
        mask = slot_mask(indices, _stacked(lora_a_stacked).size(0), torch.float32)
        common = min(_stacked(lora_b_stacked).size(1), y2.size(1))
        h = lora_shrink(x, lora_a_stacked, mask, scale)
        y2[:, :common] += lora_expand(h, lora_b_stacked, mask, common).to(y2.dtype)

    def apply_lora_full_linear(self, y: torch.Tensor, x: torch.Tensor,
                               weight_stacked: torch.Tensor, bias_stacked: torch.Tensor,
                               module_enabled: torch.Tensor) -> None:
        """Rows of requests whose adapter replaces this layer whole get that adapter's
        ``x @ W.T + bias``; the others keep ``y``."""
        mask = slot_mask(self.sampler_indices, _stacked(weight_stacked).size(0), torch.float32)
        adapter_y = lora_shrink(x, weight_stacked, mask, 1.0)
        y.copy_(self._select_full_linear_output(y, adapter_y, bias_stacked, module_enabled))
