"""Per-step attention metadata, built once per step and shared by every attention layer."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from vllm.v1.attention.backend import (
    AttentionCGSupport,
    AttentionMetadataBuilder,
    CommonAttentionMetadata,
)

from vllm_ascend.attention.drafting import (
    build_for_drafting,
    exact_seq_lens,
    host_lengths_optimistic,
)

# torch_npu's fused attention takes causal masks in "compressed" form: one lower-triangular
# 2048 x 2048 pattern (True = masked) that the kernel slides along the diagonal (sparse_mode 3/4).
COMPRESSED_MASK_SIZE = 2048


@functools.cache
def compressed_causal_mask(device: torch.device) -> torch.Tensor:
    # A normal tensor even when first built under inference mode: it is cached for the process
    # and shared by every step (and the CPU kernel caches its content check by version counter).
    with torch.inference_mode(False):
        return torch.triu(
            torch.ones(COMPRESSED_MASK_SIZE, COMPRESSED_MASK_SIZE, dtype=torch.bool,
                       device=device),
            diagonal=1,
        )


@dataclass
class AscendAttentionMetadata:
    num_actual_tokens: int
    # Device tensors (ready for graph capture: their storage comes from the runner's buffers).
    slot_mapping: torch.Tensor  # [num_actual_tokens] int64: KV-cache slot of each new token
    block_table: torch.Tensor  # [num_reqs, max_blocks_per_req] int32
    attn_mask: torch.Tensor  # compressed causal mask, [2048, 2048] bool
    # Host integers, as torch_npu's SymInt[] arguments want them; taken from the runner's CPU
    # copies, so building them never waits for the device.
    cu_query_lens: list[int]  # TND actual_seq_lengths: cumulative query ends per request
    seq_lens: list[int]  # paged actual_seq_lengths_kv: total KV length per request
    max_query_len: int
    # A step shaped for a captured graph (FULL_DECODE_ONLY): padding requests are kept with
    # graph-shaped lengths and padding tokens carry slot -1, which the impl routes to the
    # reserved null block on the device.
    graph_shaped: bool = False


class AscendAttentionMetadataBuilder(AttentionMetadataBuilder[AscendAttentionMetadata]):
    # Full graphs of uniform batches (every request the same query length): FULL_DECODE_ONLY.
    _cudagraph_support = AttentionCGSupport.UNIFORM_BATCH

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        self.attn_mask = compressed_causal_mask(device)
        # Query tokens per request of a captured (uniform decode) batch; 0 when graphs are off.
        self.graph_query_len = graph_query_len(vllm_config)
        # With async scheduling and speculative decoding the runner's host seq_lens assume
        # every draft of the previous step was accepted; only the device copy is exact.
        self.seq_lens_from_device = host_lengths_optimistic(vllm_config)
        self.block_size = getattr(kv_cache_spec, "block_size", 0)

    def build(
        self,
        common_prefix_len: int,
        common_attn_metadata: CommonAttentionMetadata,
        fast_build: bool = False,
    ) -> AscendAttentionMetadata:
        m = common_attn_metadata
        seq_lens_cpu = m.seq_lens_cpu_upper_bound
        if self.seq_lens_from_device:
            seq_lens_cpu = exact_seq_lens(m)
        if seq_lens_cpu is None:
            raise RuntimeError(
                "vllm-ascend attention needs the runner's host copy of seq_lens "
                "(CommonAttentionMetadata.seq_lens_cpu_upper_bound)"
            )
        cu_query_lens = m.query_start_loc_cpu[1 : m.num_reqs + 1].tolist()
        q = self.graph_query_len
        if q and m.num_reqs * q == m.num_actual_tokens:
            # Graph-shaped (captured, or replayed padded to a captured size): keep every row.
            num_reqs, num_tokens = m.num_reqs, m.num_actual_tokens
            cu_query_lens, seq_lens = graph_shaped_batch(
                cu_query_lens, seq_lens_cpu[:num_reqs].tolist(), q)
            graph_shaped = True
        else:
            num_reqs, num_tokens = unpadded_batch(cu_query_lens)
            cu_query_lens = cu_query_lens[:num_reqs]
            seq_lens = seq_lens_cpu[:num_reqs].tolist()
            graph_shaped = False
        return AscendAttentionMetadata(
            num_actual_tokens=num_tokens,
            slot_mapping=m.slot_mapping[:num_tokens],
            block_table=m.block_table_tensor[:num_reqs],
            attn_mask=self.attn_mask,
            cu_query_lens=cu_query_lens,
            seq_lens=seq_lens,
            max_query_len=m.max_query_len,
            graph_shaped=graph_shaped,
        )


    def build_for_drafting(
        self,
        common_attn_metadata: CommonAttentionMetadata,
        draft_index: int,
    ) -> AscendAttentionMetadata:
        """Metadata for a speculative drafter's forward (EAGLE, MTP, draft model): the step's
        lengths read from the device, rejected drafts' slots on the null block (see
        attention/drafting.py)."""
        return build_for_drafting(self, common_attn_metadata)


def graph_query_len(vllm_config) -> int:
    """Query tokens per request in a captured batch (1 + draft tokens), or 0 without graphs."""
    if vllm_config is None:
        return 0
    if not vllm_config.compilation_config.cudagraph_mode.has_full_cudagraphs():
        return 0
    spec = vllm_config.speculative_config
    return 1 + (spec.num_speculative_tokens if spec is not None else 0)


def graph_shaped_batch(cu_query_lens: list[int], seq_lens: list[int],
                       q: int) -> tuple[list[int], list[int]]:
    """Lengths for a batch padded to a captured graph of ``len(cu_query_lens) * q`` tokens.

    The captured graph attends over all its rows, so padding requests (empty queries, seq_len
    0, block-table rows on the null block 0) cannot be dropped as in an eager step. Each gets
    ``q`` query tokens (the padding tokens after the real ones) and a KV length of ``q`` on
    the null block, so the TND invariant ``cu_query_lens[-1] == tokens`` holds and every
    request attends to at least one key. Their outputs are never read.
    """
    num_real, _ = unpadded_batch(cu_query_lens)
    cu, lens = list(cu_query_lens), list(seq_lens)
    for i in range(num_real, len(cu)):
        cu[i] = cu[i - 1] + q
        lens[i] = q
    return cu, lens


def unpadded_batch(cu_query_lens: list[int]) -> tuple[int, int]:
    """(requests, tokens) of the real batch inside a padded one.

    vLLM pads a step for data parallelism (every rank runs the same token count) and for graph
    capture: padding requests have empty queries (their cumulative length repeats the last real
    one), padding tokens sit after the last real token, and their slots are -1. The fused
    attention's TND layout needs the query's token count to equal the last cumulative length,
    and a negative slot must never reach the KV scatter, so attention runs on the real prefix
    only; the padding rows of its output are never read.
    """
    if not cu_query_lens:
        return 0, 0
    num_tokens = cu_query_lens[-1]
    num_reqs = len(cu_query_lens)
    while num_reqs > 1 and cu_query_lens[num_reqs - 2] == num_tokens:
        num_reqs -= 1
    return num_reqs, num_tokens
