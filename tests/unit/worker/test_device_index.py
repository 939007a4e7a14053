"""Each worker drives its own local NPU when data-parallel engines share a node."""

from __future__ import annotations

import pytest
from vllm.config import ParallelConfig

from vllm_ascend.worker.device_index import dp_shifted_local_rank


def test_without_data_parallelism_the_rank_is_kept():
    pc = ParallelConfig(tensor_parallel_size=2)
    assert [dp_shifted_local_rank(pc, r) for r in range(2)] == [0, 1]


@pytest.mark.parametrize("dp_rank", [0, 1])
def test_each_dp_engine_takes_the_next_tp_group_of_devices(dp_rank):
    pc = ParallelConfig(tensor_parallel_size=2, data_parallel_size=2, data_parallel_rank=dp_rank,
                        data_parallel_rank_local=dp_rank)
    assert [dp_shifted_local_rank(pc, r) for r in range(2)] == [2 * dp_rank, 2 * dp_rank + 1]


def test_pipeline_stages_count_in_the_engine_width():
    # DP rank 3 of an engine spanning TP 2 x PP 2 = 4 devices starts at device 12; without a
    # local DP rank the global DP index is used, as vLLM's GPU worker does.
    pc = ParallelConfig(tensor_parallel_size=2, pipeline_parallel_size=2, data_parallel_size=4,
                        data_parallel_rank=3)
    assert pc.data_parallel_rank_local is None
    assert [dp_shifted_local_rank(pc, r) for r in range(4)] == [12, 13, 14, 15]
