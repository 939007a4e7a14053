"""NPUWorker: vLLM's GPU worker with device set-up, memory budgeting and the runner swapped for
the plugin's (everything else, including distributed set-up and warm-up, is vLLM's)."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext

import torch
from vllm.compilation.breakable_cudagraph import BreakableCUDAGraphWrapper
from vllm.compilation.cuda_graph import CUDAGraphWrapper
from vllm.config import CUDAGraphMode
from vllm.distributed.parallel_state import get_pp_group
from vllm.platforms import current_platform
from vllm.utils.mem_utils import format_gib
from vllm.utils.torch_utils import set_random_seed
from vllm.v1.worker.gpu_worker import Worker, init_worker_distributed_environment
from vllm.v1.worker.worker_base import CompilationTimes

from vllm_ascend import device
from vllm_ascend.logger import init_logger
from vllm_ascend.process_heap import freeze_start_heap
from vllm_ascend.worker import sleep_mode
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
        freeze_start_heap()
        # What the worker takes from here on (runner buffers, weights, activations, KV cache) is
        # its device memory; on the CPU backend the process's memory so far is not.
        dev.begin_memory_accounting()
        self._init_workspace_and_model_runner()

    def _make_model_runner(self) -> NPUModelRunner:
        return NPUModelRunner(self.vllm_config, self.device)

    def _maybe_get_memory_pool_context(self, tag: str) -> AbstractContextManager:
        # vLLM's sleep-mode memory pools are CUDA/XPU allocators. Sleep mode here works on the
        # storages of the tensors themselves (worker/sleep_mode.py), so no pool is needed.
        return nullcontext()

    # ---- sleep mode (worker/sleep_mode.py; vLLM resolves the "ascend" backend by name) -------
    def sleep(self, level: int = 1) -> None:
        """Level 1: weights backed up, KV cache discarded; level 2: both discarded (buffers
        and sleep_preserve_parameter_names backed up). vLLM's Worker.sleep is not used: it
        asserts that free memory grew, which on the CPU backend (host RSS) other processes
        can contradict, and saves level-2 buffers with ``.cpu()``, a no-op there."""
        if not self.model_config.enable_sleep_mode:
            raise RuntimeError("sleep mode is off: start the engine with enable_sleep_mode=True "
                               "(vllm serve --enable-sleep-mode)")
        dev = device.current()
        dev.synchronize()
        used_before = dev.memory_used()
        sleep_mode.track_worker(self, self.model_runner.get_model())
        self.sleep_mode_backend.suspend(level)
        dev.synchronize()
        used_after = dev.memory_used()
        logger.info("Sleep mode (level %d) freed %s GiB; %s GiB still in use", level,
                    format_gib(used_before - used_after), format_gib(used_after))

    def discard(self, tags: tuple[str, ...]) -> None:
        """Drop the contents of ``tags`` without a backup (vLLM's release_kv_cache_memory)."""
        sleep_mode.track_worker(self, self.model_runner.get_model())
        self.sleep_mode_backend.discard(tags)

    def wake_up(self, tags: list[str] | None = None) -> None:
        backend = self.sleep_mode_backend
        backend.resume(tags)
        if backend.state() == "RUNNING" and not backend.graphs_survive and self._graphs_on():
            # NPUGraph replays captured device addresses; the storages have new ones now.
            CUDAGraphWrapper.clear_all_graphs()
            BreakableCUDAGraphWrapper.clear_all_graphs()
            self._capture_graphs()
        device.current().synchronize()

    def load_model(self, *, load_dummy_weights: bool = False) -> None:
        super().load_model(load_dummy_weights=load_dummy_weights)
        self._check_model_fits()
        # vLLM has just set the serving thread count (one); set before profiling and
        # compilation, as vLLM does, so compiled graphs see the count requests will run with.
        threads = device.current().compute_threads(self._ranks_sharing_device())
        if threads is not None and threads != torch.get_num_threads():
            logger.info("vllm-ascend CPU backend: %d torch threads per worker", threads)
            torch.set_num_threads(threads)

    def _ranks_sharing_device(self) -> int:
        """On the CPU backend every rank on the host shares its one device; an NPU is a rank's
        own."""
        if device.current().device_type != "cpu":
            return 1
        return (self.parallel_config.local_world_size
                * max(self.parallel_config.data_parallel_size_local, 1))

    def _memory_budget(self) -> tuple[int, int]:
        """(budget, device total): this rank's share of gpu_memory_utilization of the device."""
        total = device.current().total_memory()
        share = int(total * self.cache_config.gpu_memory_utilization)
        return share // self._ranks_sharing_device(), total

    def _budget_fix(self) -> str:
        host = device.current().device_type == "cpu"
        return ("raise --gpu-memory-utilization"
                + (" (or VLLM_ASCEND_CPU_MEMORY_GB, the CPU backend's device size)" if host else "")
                + ", or size the KV cache yourself with --kv-cache-memory-bytes")

    def _budget_words(self, budget: int, total: int) -> str:
        where = "of host memory" if device.current().device_type == "cpu" else "of device memory"
        sharing = self._ranks_sharing_device()
        shared = f", shared by {sharing} ranks" if sharing > 1 else ""
        return (f"budget {format_gib(budget)} GiB "
                f"(--gpu-memory-utilization {self.cache_config.gpu_memory_utilization} "
                f"of {format_gib(total)} GiB {where}{shared})")

    def _check_model_fits(self) -> None:
        """Right after loading: stop when the model alone already exceeds the budget, instead of
        finding out after the profile run."""
        if self.cache_config.kv_cache_memory_bytes:
            return  # the KV cache is sized explicitly; the budget is not used
        budget, total = self._memory_budget()
        used = device.current().memory_used()
        if used > budget:
            raise ValueError(
                f"vllm-ascend: the model takes {format_gib(used)} GiB after loading (weights "
                f"{format_gib(self._weights_bytes())} GiB), more than the "
                f"{self._budget_words(budget, total)}, before any KV cache: "
                f"{self._budget_fix()}."
            )
        logger.info("Model loaded: %s GiB in use of the %s", format_gib(used),
                    self._budget_words(budget, total))

    def determine_available_memory(self) -> int:
        """KV-cache bytes: the memory budget (gpu_memory_utilization of NPU memory, or of the
        CPU backend's device size) less the peak in use during the profile run (weights,
        buffers, activations) and less the graphs' estimate; never more than the device can
        still hand out, keeping room for the activations' peak."""
        with_explicit = self.cache_config.kv_cache_memory_bytes
        dev = device.current()
        dev.reset_peak_memory()
        self.model_runner.profile_run()
        if with_explicit:
            logger.info("KV cache: %s GiB as set by kv_cache_memory_bytes",
                        format_gib(with_explicit))
            return with_explicit
        dev.synchronize()
        budget, total = self._memory_budget()
        used_now = dev.memory_used()
        peak = dev.peak_memory_used()
        graphs = self._graph_memory_estimate()
        available = budget - peak - graphs
        if available <= 0:
            raise ValueError(
                f"vllm-ascend: no memory left for the KV cache: {format_gib(peak)} GiB in use at "
                f"the profile run's peak (weights {format_gib(self._weights_bytes())} GiB), "
                f"{graphs / (1 << 20):.1f} MiB estimated for graphs, "
                f"{self._budget_words(budget, total)}: {self._budget_fix()}."
            )
        # This rank's share of what the device can still hand out now, less the activations'
        # headroom over what is held now (freed after the profile run, needed again when
        # serving) and the graphs.
        room = (dev.allocatable_memory() // self._ranks_sharing_device()
                - max(peak - used_now, 0) - graphs)
        if available > room:
            if room <= 0:
                raise ValueError(
                    f"vllm-ascend: no memory left for the KV cache: the budget would allow "
                    f"{format_gib(available)} GiB but only "
                    f"{format_gib(dev.allocatable_memory())} GiB can be allocated now "
                    "(other processes hold the rest); free memory or lower "
                    "--gpu-memory-utilization, or set --kv-cache-memory-bytes."
                )
            logger.warning("KV cache limited to %s GiB, what can be allocated now: the budget "
                           "would allow %s GiB", format_gib(room), format_gib(available))
            available = room
        logger.info("KV cache: %s GiB (budget %s GiB, %s GiB in use at the profile run's peak, "
                    "%.1f MiB estimated for graphs)", format_gib(available), format_gib(budget),
                    format_gib(peak), graphs / (1 << 20))
        # vLLM's names for the figures.
        self.available_kv_cache_memory_bytes = available
        self.peak_activation_memory = max(peak - used_now, 0)
        return available

    def _weights_bytes(self) -> int:
        return int(getattr(self.model_runner, "model_memory_usage", 0))

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
