"""Expert-parallel MoE token dispatch and combine through all-to-all.

Each rank of the expert-parallel group holds a contiguous range of the global experts (vLLM's
linear placement: ``base = E // P`` each, the first ``E % P`` ranks one more). A rank with its
own tokens (data parallel, or its slice of the tokens under tensor parallel) sends each routed
row only to the rank that owns the row's expert, and gets the expert output back:

1. ``npu_moe_init_routing_v2`` over all experts: the (token, k) rows sorted by global expert,
   so the rows for rank r are one contiguous block, and the row count per expert;
2. ``all_to_all`` of the per-expert counts (rank r receives, from every rank, the counts of
   its own experts), then one host read of both split-size lists: ``all_to_all_single`` takes
   them as Python lists (this is the path's one host synchronisation per layer; it is why
   expert parallelism runs eager, graph_modes.py);
3. ``all_to_all`` of the rows; the received rows are grouped by source rank, and within one
   source by local expert: ``npu_moe_init_routing_v2`` again (top-1 on the local expert id,
   rebuilt from the counts) orders them by expert for the grouped matmuls;
4. the expert MLP, ``npu_moe_token_unpermute`` (no weights) back to received order, the
   reverse ``all_to_all``, and ``npu_moe_token_unpermute`` with the routing weights, which
   sums each token's top-k rows.

Every rank joins every collective, also with no tokens of its own (data-parallel dummy
batches), so the group stays in step; kernels are not called on empty inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# (rows grouped by local expert, row count per local expert) -> the expert MLP's output rows.
ExpertMLP = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def linear_expert_ranges(num_experts: int, ep_size: int) -> list[tuple[int, int]]:
    """[start, end) of each rank's experts under vLLM's linear placement
    (expert_map_manager.determine_expert_map)."""
    base, remainder = divmod(num_experts, ep_size)
    ranges, start = [], 0
    for rank in range(ep_size):
        count = base + (1 if rank < remainder else 0)
        ranges.append((start, start + count))
        start += count
    return ranges


class AllToAllDispatch:
    """The all-to-all path for one MoE layer on one rank of the expert-parallel group."""

    def __init__(self, group, num_experts: int, local_range: tuple[int, int]):
        self.group = group  # vLLM GroupCoordinator (the EP group)
        self.comm = group.device_communicator
        size, rank = group.world_size, group.rank_in_group
        ranges = linear_expert_ranges(num_experts, size)
        if ranges[rank] != tuple(local_range):
            raise RuntimeError(
                f"expert-parallel rank {rank} holds experts {local_range}, but linear placement "
                f"over {size} ranks gives it {ranges[rank]}"
            )
        self.num_experts = num_experts
        self.experts_per_rank = [end - start for start, end in ranges]
        self.num_local = self.experts_per_rank[rank]
        device = group.device
        # owner[e]: the rank holding global expert e.
        self.owner = torch.repeat_interleave(
            torch.arange(size), torch.tensor(self.experts_per_rank)
        ).to(device)
        # Local expert id of each received count (source-major, then local expert).
        self.local_ids = torch.arange(self.num_local, dtype=torch.int32).repeat(size).to(device)

    def __call__(
        self,
        x: torch.Tensor,
        topk_ids: torch.Tensor,
        probs: torch.Tensor | None,
        expert_mlp: ExpertMLP,
    ) -> torch.Tensor:
        """x (T, H), topk_ids (T, K) int32, probs (T, K) or None -> (T, H): every routed
        expert's output for these tokens, weighted by probs and summed over k."""
        num_tokens, top_k = topk_ids.shape
        size = self.group.world_size
        if num_tokens:
            sorted_rows, row_idx, per_expert, _ = torch.ops.npu.npu_moe_init_routing_v2(
                x,
                topk_ids,
                active_num=num_tokens * top_k,
                expert_num=self.num_experts,
                expert_tokens_num_type=1,
                expert_tokens_num_flag=True,
                quant_mode=-1,
            )
        else:
            sorted_rows = x.new_empty((0, x.shape[1]))
            row_idx = None
            per_expert = torch.zeros(self.num_experts, dtype=torch.int64, device=x.device)

        received_counts = self.comm.all_to_all(
            per_expert, [self.num_local] * size, self.experts_per_rank
        )
        send_per_rank = torch.zeros(size, dtype=torch.int64, device=x.device).index_add_(
            0, self.owner, per_expert
        )
        recv_per_rank = received_counts.view(size, self.num_local).sum(dim=1)
        splits = torch.cat([send_per_rank, recv_per_rank]).tolist()  # the host read
        send_splits, recv_splits = splits[:size], splits[size:]

        received = self.comm.all_to_all(sorted_rows, recv_splits, send_splits)
        results = self._local_experts(received, received_counts, expert_mlp)
        returned = self.comm.all_to_all(results, send_splits, recv_splits)
        if row_idx is None:
            return x.new_empty(x.shape)
        return torch.ops.npu.npu_moe_token_unpermute(returned, row_idx, probs)

    def _local_experts(
        self, received: torch.Tensor, counts: torch.Tensor, expert_mlp: ExpertMLP
    ) -> torch.Tensor:
        """Rows from every source, each source's block ordered by local expert -> their expert
        outputs, in the same order."""
        rows = received.shape[0]
        if rows == 0:
            return received
        local_ids = torch.repeat_interleave(self.local_ids, counts, output_size=rows)
        by_expert, order, per_local_expert, _ = torch.ops.npu.npu_moe_init_routing_v2(
            received,
            local_ids.unsqueeze(1),
            active_num=rows,
            expert_num=self.num_local,
            expert_tokens_num_type=1,
            expert_tokens_num_flag=True,
            quant_mode=-1,
        )
        outputs = expert_mlp(by_expert, per_local_expert)
        return torch.ops.npu.npu_moe_token_unpermute(outputs, order, None)


def token_slice(num_tokens: int, tp_rank: int, tp_size: int) -> slice:
    """This tensor-parallel rank's share of tokens that every rank of its group holds."""
    chunk = -(-num_tokens // tp_size)
    start = min(tp_rank * chunk, num_tokens)
    return slice(start, min(start + chunk, num_tokens))
