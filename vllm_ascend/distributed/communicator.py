"""AscendCommunicator: vLLM's device communicator for hccl (NPU) and gloo (the CPU backend).

vLLM's ``DeviceCommunicatorBase`` already does all-reduce, even all-gather / reduce-scatter,
gather, broadcast and point-to-point send/recv through ``torch.distributed`` on the group's
device group, which is hccl on the NPU and gloo on the CPU backend; those are kept as they are
(send/recv are exercised over gloo in tests/unit/distributed/test_communicator.py). This class
adds what the base leaves unimplemented and vLLM's MoE data/expert parallel path needs:

* uneven ``all_gatherv`` / ``reduce_scatterv`` (used by ``AgRsAll2AllManager`` for MoE token
  dispatch and combine), built from the even collectives by padding every rank's shard to the
  largest one, because neither gloo nor hccl's torch bindings take per-rank sizes;
* an uneven ``all_to_all`` helper over ``all_to_all_single``;
* the all2all manager: vLLM's all-gather/reduce-scatter manager, the one backend that needs no
  CUDA-only library.

Collectives use ``all_gather_single`` / ``reduce_scatter_single``: torch 2.13's names for
``all_gather_into_tensor`` / ``reduce_scatter_tensor`` (the old names are deprecated aliases that
warn). gloo in torch 2.13 implements both, and ``all_to_all_single`` with uneven splits, so no
collective here needs a fallback.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup
from vllm.distributed.device_communicators.base_device_communicator import (
    All2AllManagerBase,
    DeviceCommunicatorBase,
)

from vllm_ascend.logger import init_logger

logger = init_logger(__name__)

# vLLM's all2all managers other than this one need CUDA-only libraries (DeepEP, FlashInfer,
# MoRI, NIXL). ParallelConfig already maps the removed "naive" and "pplx" onto it.
SUPPORTED_ALL2ALL_BACKEND = "allgather_reducescatter"


class AscendCommunicator(DeviceCommunicatorBase):
    def __init__(
        self,
        cpu_group: ProcessGroup,
        device: torch.device | None = None,
        device_group: ProcessGroup | None = None,
        unique_name: str = "",
        global_ranks: list[int] | None = None,
        global_world_size: int | None = None,
        use_all2all: bool = False,
    ):
        super().__init__(
            cpu_group,
            device,
            device_group,
            unique_name,
            global_ranks,
            global_world_size,
            use_all2all=use_all2all,
        )
        if self.use_all2all:
            self.all2all_manager = self._build_all2all_manager()

    def _build_all2all_manager(self) -> All2AllManagerBase:
        if self.all2all_backend != SUPPORTED_ALL2ALL_BACKEND:
            raise ValueError(
                f"all2all backend {self.all2all_backend!r} is not supported by vllm-ascend; "
                f"the supported backend is {SUPPORTED_ALL2ALL_BACKEND!r}: pass "
                f"`--all2all-backend {SUPPORTED_ALL2ALL_BACKEND}`"
            )
        from vllm.distributed.device_communicators.all2all import AgRsAll2AllManager

        logger.info("Group %s: using the AgRsAll2AllManager all2all manager", self.unique_name)
        return AgRsAll2AllManager(self.cpu_group)

    # ---- uneven collectives ----------------------------------------------------------------
    def all_gatherv(
        self,
        input_: torch.Tensor | list[torch.Tensor],
        dim: int = 0,
        sizes: list[int] | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Concatenate every rank's ``input_`` along ``dim``; rank r holds ``sizes[r]`` of it.

        ``sizes=None`` means every rank holds as many as this one. A list of tensors (all with
        the same per-rank sizes along ``dim``) gives a list, as ``AgRsAll2AllManager`` uses it.
        """
        if isinstance(input_, torch.Tensor):
            return self._all_gatherv_one(input_, dim, sizes)
        return [self._all_gatherv_one(t, dim, sizes) for t in input_]

    def _all_gatherv_one(
        self, input_: torch.Tensor, dim: int, sizes: list[int] | None
    ) -> torch.Tensor:
        dim = _normalise_dim(input_, dim)
        sizes = self._sizes_with_local(sizes, input_.shape[dim], "all_gatherv")
        rows = input_.movedim(dim, 0)
        longest = max(sizes)
        if longest == 0:  # every rank is empty: nothing to exchange
            return input_.clone()
        if rows.shape[0] == longest:
            shard = rows.contiguous()
        else:
            shard = rows.new_zeros((longest, *rows.shape[1:]))
            shard[: rows.shape[0]] = rows
        gathered = rows.new_empty((self.world_size * longest, *rows.shape[1:]))
        dist.all_gather_single(gathered, shard, group=self.device_group)
        if any(size != longest for size in sizes):
            # Keep each rank's real rows; drop its padding.
            gathered = torch.cat(
                [gathered[r * longest : r * longest + size] for r, size in enumerate(sizes)]
            )
        return gathered.movedim(0, dim).contiguous()

    def reduce_scatterv(
        self, input_: torch.Tensor, dim: int = -1, sizes: list[int] | None = None
    ) -> torch.Tensor:
        """Sum ``input_`` over ranks; rank r keeps its ``sizes[r]`` slice along ``dim``.

        ``input_.shape[dim]`` must be ``sum(sizes)``; ``sizes=None`` splits it evenly.
        ``reduce_scatterv_into_output`` is the base's: a copy of this result into ``output``.
        """
        dim = _normalise_dim(input_, dim)
        total = input_.shape[dim]
        if sizes is None:
            if total % self.world_size:
                raise ValueError(
                    f"reduce_scatterv without sizes needs dim {dim} ({total}) divisible by the "
                    f"group's world size {self.world_size}"
                )
            sizes = [total // self.world_size] * self.world_size
        self._check_sizes_length(sizes, "reduce_scatterv")
        if sum(sizes) != total:
            raise ValueError(
                f"reduce_scatterv: sizes {sizes} sum to {sum(sizes)} but the input has {total} "
                f"along dim {dim}"
            )
        rows = input_.movedim(dim, 0)
        longest = max(sizes)
        mine = sizes[self.rank_in_group]
        if longest == 0:
            return input_.new_empty(input_.shape[:dim] + (0,) + input_.shape[dim + 1 :])
        if all(size == longest for size in sizes):
            padded = rows.contiguous()
        else:
            # Rank r's rows go to [r * longest, r * longest + sizes[r]); the zero padding
            # sums to zero and is sliced off.
            padded = rows.new_zeros((self.world_size * longest, *rows.shape[1:]))
            for r, (chunk, size) in enumerate(zip(rows.split(sizes), sizes, strict=True)):
                padded[r * longest : r * longest + size] = chunk
        reduced = rows.new_empty((longest, *rows.shape[1:]))
        dist.reduce_scatter_single(reduced, padded, group=self.device_group)
        return reduced[:mine].movedim(0, dim).contiguous()

    def all_to_all(
        self,
        input_: torch.Tensor,
        output_split_sizes: list[int] | None = None,
        input_split_sizes: list[int] | None = None,
    ) -> torch.Tensor:
        """Exchange rows (dim 0): row block r of ``input_`` goes to rank r.

        ``input_split_sizes[r]`` rows go to rank r and ``output_split_sizes[r]`` rows come from
        it; give both or neither (neither means an even split of ``input_``).
        """
        if (output_split_sizes is None) != (input_split_sizes is None):
            raise ValueError(
                "all_to_all needs both output_split_sizes and input_split_sizes, or neither"
            )
        if input_split_sizes is None:
            if input_.shape[0] % self.world_size:
                raise ValueError(
                    f"all_to_all without split sizes needs dim 0 ({input_.shape[0]}) "
                    f"divisible by the group's world size {self.world_size}"
                )
            out_rows = input_.shape[0]
        else:
            assert output_split_sizes is not None
            self._check_sizes_length(input_split_sizes, "all_to_all input_split_sizes")
            self._check_sizes_length(output_split_sizes, "all_to_all output_split_sizes")
            if sum(input_split_sizes) != input_.shape[0]:
                raise ValueError(
                    f"all_to_all: input_split_sizes {input_split_sizes} sum to "
                    f"{sum(input_split_sizes)} but the input has {input_.shape[0]} rows"
                )
            out_rows = sum(output_split_sizes)
        output = input_.new_empty((out_rows, *input_.shape[1:]))
        dist.all_to_all_single(
            output,
            input_.contiguous(),
            output_split_sizes,
            input_split_sizes,
            group=self.device_group,
        )
        return output

    def _sizes_with_local(self, sizes: list[int] | None, local: int, op: str) -> list[int]:
        if sizes is None:
            return [local] * self.world_size
        self._check_sizes_length(sizes, op)
        if sizes[self.rank_in_group] != local:
            raise ValueError(
                f"{op}: sizes[{self.rank_in_group}] is {sizes[self.rank_in_group]} but this "
                f"rank's input has {local}"
            )
        return list(sizes)

    def _check_sizes_length(self, sizes: list[int], op: str) -> None:
        if len(sizes) != self.world_size:
            raise ValueError(
                f"{op}: {len(sizes)} sizes for a group of {self.world_size} ranks: {sizes}"
            )

    # ---- MoE dispatch/combine: the all2all manager's ---------------------------------------
    def _manager(self) -> All2AllManagerBase:
        if self.all2all_manager is None:
            raise RuntimeError(
                f"group {self.unique_name} has no all2all manager: MoE dispatch/combine runs on "
                "the expert-parallel group when data parallel or sequence-parallel MoE is on"
            )
        return self.all2all_manager

    def dispatch_router_logits(
        self,
        hidden_states: torch.Tensor,
        router_logits: torch.Tensor,
        is_sequence_parallel: bool = False,
        extra_tensors: list[torch.Tensor] | None = None,
    ):
        return self._manager().dispatch_router_logits(
            hidden_states, router_logits, is_sequence_parallel, extra_tensors
        )

    def dispatch(
        self,
        hidden_states: torch.Tensor,
        topk_weights: torch.Tensor,
        topk_ids: torch.Tensor,
        is_sequence_parallel: bool = False,
        extra_tensors: list[torch.Tensor] | None = None,
    ):
        return self._manager().dispatch(
            hidden_states, topk_weights, topk_ids, is_sequence_parallel, extra_tensors
        )

    def combine(
        self, hidden_states: torch.Tensor, is_sequence_parallel: bool = False
    ) -> torch.Tensor:
        return self._manager().combine(hidden_states, is_sequence_parallel)

    def allocate_combine_input(
        self,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        device: torch.device,
        is_sequence_parallel: bool = False,
    ) -> torch.Tensor | None:
        return self._manager().allocate_combine_input(shape, dtype, device, is_sequence_parallel)

    def combine_into_output(
        self,
        hidden_states: torch.Tensor,
        output: torch.Tensor,
        is_sequence_parallel: bool = False,
    ) -> torch.Tensor:
        return self._manager().combine_into_output(hidden_states, output, is_sequence_parallel)

    def destroy(self) -> None:
        if self.all2all_manager is not None:
            self.all2all_manager.destroy()
            self.all2all_manager = None


def _normalise_dim(tensor: torch.Tensor, dim: int) -> int:
    if not -tensor.dim() <= dim < tensor.dim():
        raise ValueError(f"dim {dim} is out of range for a tensor of shape {tuple(tensor.shape)}")
    return dim % tensor.dim()
