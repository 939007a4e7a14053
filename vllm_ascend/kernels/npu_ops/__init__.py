"""CPU (and fake) kernels of the torch_npu ops the plugin calls, registered on import."""

from vllm_ascend.kernels import fast_cpu

from . import activation, attention, kv_cache, moe, norm, quant, rotary, sampling  # noqa: F401

# After the schemas and references exist: the fast C++ kernels of the hot ops (fast_cpu.py).
fast_cpu.install()
