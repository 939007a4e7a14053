"""CPU (and fake) kernels of the torch_npu ops the plugin calls, registered on import."""

from . import activation, attention, kv_cache, moe, norm, quant, rotary, sampling  # noqa: F401
