"""Registering Triton-kernel replacements with vLLM's dispatcher, safely and once.

``vllm.triton_utils.dispatcher.register_kernels`` rebinds every reference to a replaced
kernel by scanning the namespace of every module in ``sys.modules`` and calling
``vars(value)`` on each attribute that has a ``__dict__``. Objects whose ``__getattr__``
answers any name break that scan: llvmlite's ``binding.ffi.lib`` (imported with numba, which
vLLM's ngram proposer needs) returns a function wrapper for ``__dict__``, and the scan dies with
``AttributeError: '_lib_fn_wrapper' object has no attribute 'get'`` -- which stops every engine
started after numba was imported. Such modules hold no Triton kernel, so they are left out of
the scan: hidden from ``sys.modules`` for the duration of the registration and put back.
Remove this guard once vLLM's scan tolerates a non-dict ``vars()`` (vLLM 0.32.0 does not).

Registration is also idempotent: a second engine in the same process (tests, or a restarted
LLM) finds the kernels already replaced and registers nothing again.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Mapping
from types import ModuleType

from vllm_ascend.logger import init_logger

logger = init_logger(__name__)

_registered: dict[str, Callable] = {}


def _breaks_scan(module: ModuleType) -> bool:
    namespace = getattr(module, "__dict__", None)
    if not namespace:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for value in list(namespace.values()):
            # What the scan does with each value: vars(value).get("kernel").
            try:
                if hasattr(value, "__dict__") and not callable(getattr(vars(value), "get", None)):
                    return True
            except Exception:
                return True
    return False


def register_kernel_overrides(overrides: Mapping[str, Callable]) -> None:
    from vllm.triton_utils.dispatcher import register_kernels

    pending = {name: impl for name, impl in overrides.items() if _registered.get(name) is not impl}
    if not pending:
        return
    hidden = {name: module for name, module in list(sys.modules.items())
              if isinstance(module, ModuleType) and _breaks_scan(module)}
    if hidden:
        logger.debug("Triton override scan skips modules it cannot read: %s", sorted(hidden))
    for name in hidden:
        del sys.modules[name]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            register_kernels(pending)
    finally:
        sys.modules.update(hidden)
    _registered.update(pending)
