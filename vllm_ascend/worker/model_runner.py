"""NPUModelRunner: vLLM's V1 GPUModelRunner with the few things that differ on Ascend.

What differs, and nothing else:
- construction happens with the device layer's streams/events standing in for torch.cuda's
  (see vllm_ascend/patches.py);
- device synchronisation goes through the device layer;
- the KV cache is allocated as dense K and V halves per layer (worker/kv_cache.py);
- with cudagraph_mode=FULL_DECODE_ONLY, vLLM's full-graph wrapper is swapped for one that
  captures with the device layer's graphs (worker/graph_wrapper.py).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from vllm.compilation.cuda_graph import CUDAGraphWrapper
from vllm.v1.kv_cache_interface import KVCacheConfig
from vllm.v1.worker.gpu_model_runner import GPUModelRunner
from vllm.v1.worker.utils import bind_kv_cache

from vllm_ascend import device
from vllm_ascend.worker.graph_wrapper import AscendGraphWrapper
from vllm_ascend.worker.kv_cache import allocate_kv_caches


class NPUModelRunner(GPUModelRunner):
    def _sync_device(self) -> None:
        device.current().synchronize()

    def load_model(self, *args, **kwargs) -> None:
        super().load_model(*args, **kwargs)
        self._use_device_graphs()

    def _use_device_graphs(self) -> None:
        # vLLM wrapped the model in its CUDA-graph wrapper when full graphs are on; capture and
        # replay go through the device layer instead.
        if isinstance(self.model, CUDAGraphWrapper) and not isinstance(
                self.model, AscendGraphWrapper):
            self.model = AscendGraphWrapper(self.model.runnable, self.vllm_config,
                                            runtime_mode=self.model.runtime_mode)

    def initialize_kv_cache_tensors(
        self,
        kv_cache_config: KVCacheConfig,
        kernel_block_sizes: list[int],
        kv_cache_allocation_context: AbstractContextManager | None = None,
    ) -> dict[str, torch.Tensor]:
        if self.shared_kv_cache_layers:
            raise NotImplementedError("cross-layer KV sharing is not supported by vllm-ascend")
        with kv_cache_allocation_context or nullcontext():
            kv_caches = allocate_kv_caches(kv_cache_config, kernel_block_sizes, self.device)
        bind_kv_cache(
            kv_caches,
            self.compilation_config.static_forward_context,
            self.kv_caches,
            kv_cache_groups=kv_cache_config.kv_cache_groups,
        )
        return kv_caches
