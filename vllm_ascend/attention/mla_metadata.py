"""Per-step metadata of the Ascend MLA backend, built once per step and shared by every MLA layer.

vLLM's MLA layer (``MLAAttention.forward_impl``) splits a step by rows: the first
``num_decode_tokens`` rows are decodes and go to ``forward_mqa``, the rest are prefills and go
to ``forward_mha``. A decode is a request of at most ``reorder_batch_threshold`` query tokens
(the runner puts them first): one, or with speculative decoding 1 + num_speculative_tokens
(a verification row, or a drafter's first pass), which the MLA decode kernel takes as a BSND
query of S tokens (S <= 16) under the causal mask. The decodes of a step share one S (vLLM's
``require_uniform`` split); a request of another length from there on is a prefill. Each part
gets its own metadata here, with host integer lists where torch_npu takes ``SymInt[]`` lengths.

Speculative decoding: a drafter's forwards (MTP) get their metadata from
``build_for_drafting``, with the exact lengths that only the device holds (see
``attention/drafting.py``); with async scheduling the target steps read them from the device too.

A prefill attends over its whole sequence: its context (earlier chunks, or a prefix-cache hit)
and its new tokens, all read back from the latent cache, which ``do_kv_cache_update`` has
written before attention runs. ``kv_slots`` lists the cache slots of those tokens, request by
request, so one gather serves every prefill of the step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from vllm.v1.attention.backend import (
    AttentionCGSupport,
    AttentionMetadataBuilder,
    CommonAttentionMetadata,
)
from vllm.v1.attention.backends.utils import split_decodes_and_prefills

from vllm_ascend.attention.drafting import (
    build_for_drafting,
    exact_seq_lens,
    host_lengths_optimistic,
)
from vllm_ascend.attention.metadata import compressed_causal_mask, unpadded_batch
from vllm_ascend.kernels.npu_ops.fia_mla import MLA_MAX_Q_S


@dataclass
class AscendMLADecodeMetadata:
    block_table: torch.Tensor  # [num_decodes, max_blocks] int32
    seq_lens: list[int]  # per request: the paged actual_seq_lengths_kv
    query_len: int = 1  # query tokens of every decode request (BSND S)
    attn_mask: torch.Tensor | None = None  # compressed causal mask when query_len > 1


@dataclass
class AscendMLAPrefillMetadata:
    # TND lengths of the prefill rows, cumulative from 0 (actual_seq_lengths / _kv).
    cu_query_lens: list[int]
    cu_seq_lens: list[int]
    # [cu_seq_lens[-1]] int64 device tensor: the cache slot of every token the prefills attend.
    kv_slots: torch.Tensor
    attn_mask: torch.Tensor  # compressed causal mask


@dataclass
class AscendMLAMetadata:
    # What vLLM's MLAAttention.forward_impl reads.
    num_actual_tokens: int
    num_decodes: int
    num_decode_tokens: int
    num_prefills: int
    decode: AscendMLADecodeMetadata | None
    prefill: AscendMLAPrefillMetadata | None
    # [num_actual_tokens]: the latent cache slot of each new token (never negative: rejected
    # drafts' -1 slots of a draft forward are moved to the null block, see attention/drafting.py).
    slot_mapping: torch.Tensor


class AscendMLAMetadataBuilder(AttentionMetadataBuilder[AscendMLAMetadata]):
    # Graph capture of MLA is not offered yet (graph_modes.py runs MLA models eagerly).
    _cudagraph_support = AttentionCGSupport.NEVER
    reorder_batch_threshold: int = 1

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        self.block_size = kv_cache_spec.block_size
        self.attn_mask = compressed_causal_mask(device)
        # Verification rows (1 + drafts) are decodes too, up to the kernel's query S.
        self._init_reorder_batch_threshold(1, supports_spec_as_decode=True)
        if self.reorder_batch_threshold > MLA_MAX_Q_S:
            self.reorder_batch_threshold = 1
        # Async scheduling with drafts: the host seq_lens over-count rejected drafts.
        self.seq_lens_from_device = host_lengths_optimistic(vllm_config)

    def build(self, common_prefix_len: int, common_attn_metadata: CommonAttentionMetadata,
              fast_build: bool = False) -> AscendMLAMetadata:
        m = common_attn_metadata
        seq_lens_cpu = m.seq_lens_cpu_upper_bound
        if self.seq_lens_from_device:
            seq_lens_cpu = exact_seq_lens(m)
        if seq_lens_cpu is None:
            raise RuntimeError("vllm-ascend MLA needs the runner's host copy of seq_lens "
                               "(CommonAttentionMetadata.seq_lens_cpu_upper_bound)")
        ends = m.query_start_loc_cpu[1:m.num_reqs + 1].tolist()
        num_reqs, num_tokens = unpadded_batch(ends)
        num_decodes, num_prefills, num_decode_tokens, _ = split_decodes_and_prefills(
            m, decode_threshold=self.reorder_batch_threshold, require_uniform=True)
        # Padding requests (empty queries after the real ones) are dropped.
        num_decodes = min(num_decodes, num_reqs)
        num_prefills = num_reqs - num_decodes
        num_decode_tokens = min(num_decode_tokens, num_tokens)
        seq_lens = seq_lens_cpu[:num_reqs].tolist()
        block_table = m.block_table_tensor[:num_reqs]
        decode = prefill = None
        if num_decodes:
            query_len = ends[num_decodes - 1] // num_decodes
            decode = AscendMLADecodeMetadata(
                block_table=block_table[:num_decodes], seq_lens=seq_lens[:num_decodes],
                query_len=query_len, attn_mask=self.attn_mask if query_len > 1 else None)
        if num_prefills:
            starts = [0] + ends
            q_lens = [ends[i] - starts[i] for i in range(num_decodes, num_reqs)]
            kv_lens = seq_lens[num_decodes:]
            prefill = AscendMLAPrefillMetadata(
                cu_query_lens=_cumulative(q_lens),
                cu_seq_lens=_cumulative(kv_lens),
                kv_slots=sequence_slots(block_table[num_decodes:], kv_lens, self.block_size),
                attn_mask=self.attn_mask,
            )
        return AscendMLAMetadata(
            num_actual_tokens=num_tokens,
            num_decodes=num_decodes,
            num_decode_tokens=num_decode_tokens,
            num_prefills=num_prefills,
            decode=decode,
            prefill=prefill,
            slot_mapping=m.slot_mapping[:num_tokens],
        )

    def build_for_drafting(self, common_attn_metadata: CommonAttentionMetadata,
                           draft_index: int) -> AscendMLAMetadata:
        """Metadata for a drafter's forward (MTP layers attend through this backend): the
        step's lengths read from the device, rejected drafts' slots on the null block."""
        return build_for_drafting(self, common_attn_metadata)


def _cumulative(lengths: list[int]) -> list[int]:
    out, total = [], 0
    for n in lengths:
        total += n
        out.append(total)
    return out


def sequence_slots(block_table: torch.Tensor, seq_lens: list[int], block_size: int) -> torch.Tensor:
    """Cache slots of tokens 0..seq_len-1 of each request, concatenated: the positions are
    built on the host, the block ids looked up on the device (no host-device sync)."""
    rows = torch.repeat_interleave(torch.arange(len(seq_lens)), torch.tensor(seq_lens))
    positions = torch.cat([torch.arange(n) for n in seq_lens]) if seq_lens else rows
    device = block_table.device
    rows, positions = rows.to(device, non_blocking=True), positions.to(device, non_blocking=True)
    blocks = block_table[rows, positions // block_size].long()
    return blocks * block_size + positions % block_size
