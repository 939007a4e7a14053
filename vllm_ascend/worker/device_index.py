"""Which local NPU a worker drives.

vLLM's GPU worker shifts its local rank by the data-parallel rank inside its CUDA-only
``init_device`` (so DP engines on one node do not all land on device 0). The NPU worker replaces
that method, so the same rule lives here, as one function of the parallel config.
"""

from __future__ import annotations

from vllm.config import ParallelConfig


def dp_shifted_local_rank(parallel_config: ParallelConfig, local_rank: int) -> int:
    """The worker's local rank on its node once data-parallel engines share the node.

    Each DP engine on a node owns ``tensor x pipeline x prefill-context`` consecutive devices.
    Ray and external launchers assign devices themselves, and a DP group spanning several nodes
    numbers its ranks per node already, so those keep the rank they were given.
    """
    pc = parallel_config
    if (
        pc.distributed_executor_backend in ("ray", "external_launcher")
        or pc.data_parallel_backend == "ray"
        or pc.nnodes_within_dp != 1
    ):
        return local_rank
    dp_local = pc.data_parallel_rank_local
    if dp_local is None:
        dp_local = pc.data_parallel_index
    per_engine = (
        pc.tensor_parallel_size * pc.pipeline_parallel_size * pc.prefill_context_parallel_size
    )
    return local_rank + dp_local * per_engine
