"""NPUWorker: vLLM's GPU worker with device set-up, memory budgeting and the runner swapped for
the plugin's (everything else, including distributed set-up and warm-up, is vLLM's)."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext

import torch
from vllm.config import CUDAGraphMode
from vllm.distributed.parallel_state import get_pp_group
from vllm.platforms import current_platform
from vllm.utils.mem_utils import format_gib
from vllm.utils.torch_utils import set_random_seed
from vllm.v1.worker.gpu_worker import Worker, init_worker_distributed_environment
from vllm.v1.worker.worker_base import CompilationTimes

from vllm_ascend import device
from vllm_ascend.logger import init_logger
from vllm_ascend.worker.device_index import dp_shifted_local_rank
from vllm_ascend.worker.model_runner import NPUModelRunner

logger = init_logger(__name__)


class NPUWorker(Worker):
    def init_device(self) -> None:
        # vLLM's GPU worker raises here for any device but cuda.
        dev = device.current()
        self.local_rank = dp_shifted_local_rank(self.parallel_config, self.local_rank)
        if dev.device_type == "npu":
            visible = dev.device_count()
            if self.local_rank >= visible:
                raise RuntimeError(
                    f"vllm-ascend: worker local rank {self.local_rank} (data-parallel rank "
                    f"included) needs NPU {self.local_rank}, but only {visible} are visible; "
                    "check ASCEND_RT_VISIBLE_DEVICES and the parallel sizes"
                )
            self.device = torch.device(f"npu:{self.local_rank}")
            dev.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        current_platform.check_if_supports_dtype(self.model_config.dtype)
        init_worker_distributed_environment(
            self.vllm_config,
            self.rank,
            self.distributed_init_method,
            self.local_rank,
            current_platform.dist_backend,
        )
        set_random_seed(self.model_config.seed)
        self._init_workspace_and_model_runner()

    def _make_model_runner(self) -> NPUModelRunner:
        return NPUModelRunner(self.vllm_config, self.device)

    def _maybe_get_memory_pool_context(self, tag: str) -> AbstractContextManager:
        # vLLM's sleep-mode memory pool refuses unknown platforms; sleep mode is not offered.
        return nullcontext()

    def sleep(self, level: int = 1) -> None:
        raise NotImplementedError("sleep mode is not supported by vllm-ascend yet")

    def wake_up(self, tags: list[str] | None = None) -> None:
        raise NotImplementedError("sleep mode is not supported by vllm-ascend yet")

    def determine_available_memory(self) -> int:
        """KV-cache bytes: the device budget (gpu_memory_utilization of NPU memory, or of the
        CPU backend's host budget) less what the profile run shows in use at its peak."""
        with_explicit = self.cache_config.kv_cache_memory_bytes
        self.model_runner.profile_run()
        if with_explicit:
            logger.info("KV cache: %s GiB as set by kv_cache_memory_bytes",
                        format_gib(with_explicit))
            return with_explicit
        dev = device.current()
        dev.synchronize()
        total = dev.total_memory()
        budget = int(total * self.cache_config.gpu_memory_utilization)
        used = dev.memory_used()
        graphs = self._graph_memory_estimate()
        available = budget - used - graphs
        if available <= 0:
            raise ValueError(
                f"no memory left for the KV cache: {format_gib(used)} GiB in use after the "
                f"profile run, budget {format_gib(budget)} GiB "
                f"({self.cache_config.gpu_memory_utilization} of {format_gib(total)} GiB). "
                "Raise --gpu-memory-utilization"
                + (" or VLLM_ASCEND_CPU_MEMORY_GB" if dev.device_type == "cpu" else "")
                + ", or set --kv-cache-memory-bytes."
            )
        logger.info("KV cache: %s GiB (budget %s GiB, %s GiB in use after profiling, "
                    "%.1f MiB estimated for graphs)", format_gib(available), format_gib(budget),
                    format_gib(used), graphs / (1 << 20))
        return available

    def _graphs_on(self) -> bool:
        return self.compilation_config.cudagraph_mode != CUDAGraphMode.NONE

    def _graph_memory_estimate(self) -> int:
        """Bytes the graphs will take (vLLM captures a few sizes and extrapolates);
        measured after ``used``, so the probe's own footprint is not counted twice."""
        if not self._graphs_on():
            return 0
        measured = int(self.model_runner.profile_cudagraph_memory())
        # vLLM floors each graph after the first at 1 MiB; the first capture's sample is taken
        # as measured, which on the CPU backend (process RSS) can even be negative when the
        # allocator hands memory back during the probe. Floor the total at 1 MiB per graph.
        floor = len(self.compilation_config.cudagraph_capture_sizes) << 20
        estimate = max(measured, floor)
        if estimate != measured:
            logger.info("graph memory estimate %.1f MiB raised to the floor of 1 MiB per graph",
                        measured / (1 << 20))
        self.graph_memory_estimate = estimate
        return estimate

    def compile_or_warm_up_model(self) -> CompilationTimes:
        """Warm-up in eager mode, then graph capture (unless eager). One dummy batch
        of the largest decode size runs the model and the sampler, so their kernels and buffers
        are ready before the first request. (vLLM's kernel_warmup is skipped: it imports every
        model family's CUDA warm-ups.)"""
        if get_pp_group().is_last_rank and not self.model_runner.is_pooling_model:
            num_reqs = min(self.scheduler_config.max_num_seqs,
                           self.scheduler_config.max_num_batched_tokens)
            _, last_hidden = self.model_runner._dummy_run(
                num_tokens=num_reqs, skip_eplb=True, cudagraph_runtime_mode=CUDAGraphMode.NONE
            )
            self.model_runner._dummy_sampler_run(hidden_states=last_hidden)
        capture_seconds = self._capture_graphs()
        set_random_seed(self.model_config.seed, self.parallel_config.data_parallel_index)
        return CompilationTimes(language_model=capture_seconds, encoder=0.0)

    def _capture_graphs(self) -> float:
        """Capture the graphs of every capture size (vLLM's capture_model through the device
        layer's wrappers), after the eager warm-up; log the time and the memory it took."""
        if not self._graphs_on():
            return 0.0
        dev = device.current()
        start = time.perf_counter()
        used_before = dev.memory_used()
        measured = self.model_runner.capture_model()
        seconds = time.perf_counter() - start
        grown = dev.memory_used() - used_before
        mib = 1 << 20
        logger.info("Graph capture (%s, sizes %s): %.2f s; memory in use grew by %.1f MiB, "
                    "free device memory fell by %.1f MiB (estimated beforehand: %.1f MiB)",
                    self.compilation_config.cudagraph_mode.name,
                    self.compilation_config.cudagraph_capture_sizes, seconds,
                    grown / mib, measured / mib,
                    getattr(self, "graph_memory_estimate", 0) / mib)
        return seconds
