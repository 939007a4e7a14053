"""vLLM layers the plugin has no kernel for: vLLM's own forward runs, and building one says so.

``native_fallback(vllm_cls, reason)`` derives ``AscendNative<Name>(NativeFallback, <Name>)``: the
vLLM class unchanged except that constructing it logs the fallback once (``log_fallback_once``),
so a model that uses such a layer is never silently on a slower path. vllm_ascend.ops registers the
derived class under the vLLM class name, like the kernel-backed replacements.
"""

from __future__ import annotations

import functools
from typing import Any

from vllm_ascend.ops.fallback import log_fallback_once


class NativeFallback:
    """Mixed in before a vLLM CustomOp: vLLM's forward, plus one log line when built."""

    native_of: str  # the vLLM class name
    native_reason: str

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        log_fallback_once(self.native_of, self.native_reason)


@functools.cache
def native_fallback(vllm_cls: type, reason: str) -> type:
    name = f"AscendNative{vllm_cls.__name__}"
    cls = type(
        name,
        (NativeFallback, vllm_cls),
        {"__module__": __name__, "native_of": vllm_cls.__name__, "native_reason": reason},
    )
    cls.__qualname__ = name
    globals()[name] = cls  # importable (and picklable) by name
    return cls
