"""NPUModelRunner: vLLM's V1 GPUModelRunner with the few things that differ on Ascend.

What differs, and nothing else:
- construction happens with the device layer's streams/events standing in for torch.cuda's
  (see vllm_ascend/patches.py);
- device synchronisation goes through the device layer;
- the KV cache is allocated as dense K and V halves per layer (worker/kv_cache.py);
- vLLM's graph wrappers (the target model's and a speculative drafter's) are swapped for ones
  that capture with the device layer's graphs: whole decode graphs (worker/graph_wrapper.py)
  and piecewise graphs with eager attention between the pieces (worker/breakable_graph.py);
- after loading, norms that feed a W8A8-dynamic layer are fused with its input quantization
  (quantization/norm_fusion.py), and on the CPU backend a large float32 LM head runs through
  oneDNN and half-precision linear layers in float32 panels (device/cpu_linear.py);
- on the CPU backend the per-step host-to-device input copies are dropped: the device buffers
  are the host buffers (worker/host_buffers.py).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from vllm.compilation.breakable_cudagraph import BreakableCUDAGraphWrapper
from vllm.compilation.cuda_graph import CUDAGraphWrapper
from vllm.v1.kv_cache_interface import KVCacheConfig
from vllm.v1.worker.gpu_model_runner import GPUModelRunner
from vllm.v1.worker.utils import bind_kv_cache

from vllm_ascend import device
from vllm_ascend.device import cpu_linear
from vllm_ascend.quantization import norm_fusion
from vllm_ascend.worker.breakable_graph import AscendBreakableGraphWrapper, check_attention_breaks
from vllm_ascend.worker.graph_wrapper import AscendGraphWrapper
from vllm_ascend.worker.host_buffers import alias_device_buffers
from vllm_ascend.worker.kv_cache import allocate_kv_caches


class NPUModelRunner(GPUModelRunner):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._alias_host_buffers()

    def _alias_host_buffers(self) -> None:
        if self.device.type == "cpu":
            alias_device_buffers(self)

    def _sync_device(self) -> None:
        device.current().synchronize()

    def load_model(self, *args, **kwargs) -> None:
        super().load_model(*args, **kwargs)
        norm_fusion.enable(self.get_model())
        cpu_linear.enable(self.get_model(), self._drafter_model())
        self._use_device_graphs()

    def _drafter_model(self) -> torch.nn.Module | None:
        """A speculative drafter's (EAGLE, MTP, draft model) own model, once loaded."""
        return getattr(getattr(self, "drafter", None), "model", None)

    def _use_device_graphs(self) -> None:
        self.model = device_graph_wrappers(self.model, self.vllm_config)
        # The drafter wraps its own model the same way.
        if self._drafter_model() is not None:
            self.drafter.model = device_graph_wrappers(self.drafter.model, self.vllm_config)

    def initialize_kv_cache_tensors(
        self,
        kv_cache_config: KVCacheConfig,
        kernel_block_sizes: list[int],
        kv_cache_allocation_context: AbstractContextManager | None = None,
    ) -> dict[str, torch.Tensor]:
        if self.shared_kv_cache_layers:
            raise NotImplementedError("cross-layer KV sharing is not supported by vllm-ascend")
        # vLLM may have rebuilt the input batch for the cache's block sizes just before.
        self._alias_host_buffers()
        with kv_cache_allocation_context or nullcontext():
            kv_caches = allocate_kv_caches(kv_cache_config, kernel_block_sizes, self.device)
        bind_kv_cache(
            kv_caches,
            self.compilation_config.static_forward_context,
            self.kv_caches,
            kv_cache_groups=kv_cache_config.kv_cache_groups,
        )
        return kv_caches


def device_graph_wrappers(model, vllm_config):
    """vLLM's graph wrappers (a whole-graph wrapper around a breakable one, either alone)
    rebuilt as the device-layer ones, nesting kept."""
    if isinstance(model, CUDAGraphWrapper) and not isinstance(model, AscendGraphWrapper):
        return AscendGraphWrapper(device_graph_wrappers(model.runnable, vllm_config),
                                  vllm_config, runtime_mode=model.runtime_mode)
    if isinstance(model, BreakableCUDAGraphWrapper) and not isinstance(
            model, AscendBreakableGraphWrapper):
        check_attention_breaks()
        return AscendBreakableGraphWrapper(model.runnable, vllm_config,
                                           runtime_mode=model.runtime_mode)
    return model
