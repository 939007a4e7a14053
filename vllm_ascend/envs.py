"""Every VLLM_ASCEND_* environment variable, its default and meaning, read in one place.

Values are read when accessed (``envs.VLLM_ASCEND_DEVICE``), so tests and worker processes that set
a variable before use see it. Invalid values raise with the accepted ones named.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

DEVICE_CHOICES = ("auto", "npu", "cpu")


def _choice(name: str, default: str, choices: tuple[str, ...]) -> Callable[[], str]:
    def read() -> str:
        value = os.environ.get(name, default).strip().lower() or default
        if value not in choices:
            raise ValueError(f"{name}={value!r} is not valid; use one of {', '.join(choices)}")
        return value

    return read


def _float(name: str, default: float | None) -> Callable[[], float | None]:
    def read() -> float | None:
        raw = os.environ.get(name, "")
        if raw.strip() == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{name}={raw!r} is not a number") from None
        if value <= 0:
            raise ValueError(f"{name}={raw!r} must be positive")
        return value

    return read


def parse_flag(name: str, raw: str | None, default: bool) -> bool:
    """One spelling of booleans for every variable (setup.py reads its build flag with it too)."""
    raw = (raw or "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={raw!r} is not a boolean; use 1 or 0")


def _flag(name: str, default: bool) -> Callable[[], bool]:
    return lambda: parse_flag(name, os.environ.get(name), default)


_VARIABLES: dict[str, tuple[Callable[[], Any], str]] = {
    "VLLM_ASCEND_DEVICE": (
        _choice("VLLM_ASCEND_DEVICE", "auto", DEVICE_CHOICES),
        "Which backend the plugin drives. 'auto': an Ascend NPU when torch_npu imports and devices "
        "are visible, otherwise the plugin stays inactive. 'npu': require an NPU (an error names "
        "what is missing). 'cpu': the CPU backend, the same code path with CPU kernels (tests).",
    ),
    "VLLM_ASCEND_CPU_MEMORY_GB": (
        _float("VLLM_ASCEND_CPU_MEMORY_GB", None),
        "CPU backend only: the size in GiB of the device the host stands in for. Unset "
        "(default): the host's memory (MemTotal, or the container's memory limit), as vLLM's "
        "CPU build reads it; a larger value is capped there. --gpu-memory-utilization is a "
        "fraction of it (shared by the ranks on the host), and what the model takes is counted "
        "from the worker's own growth (weights, buffers, peak activations, KV cache), not the "
        "memory of the interpreter and libraries. The KV cache never gets more than the host has "
        "available when it is sized.",
    ),
    "VLLM_ASCEND_CPU_KERNELS": (
        _choice("VLLM_ASCEND_CPU_KERNELS", "auto", ("auto", "fast", "reference")),
        "Which CPU kernels serve the hot torch_npu ops (fused attention, KV scatter, RMSNorm, "
        "add+RMSNorm, SwiGLU, the MoE routing chain) on CPU tensors. 'fast': the C++ kernels of "
        "csrc/cpu (each hands a call it does not cover to the reference, logged once), and on "
        "the CPU backend large float32 LM heads through oneDNN and half-precision linear layers "
        "in float32 panels. 'reference': the readable Python "
        "references and F.linear only (for debugging; several times slower). 'auto' (default): "
        "fast on the CPU backend; the references on an Ascend host, where CPU kernels are the "
        "golden references of the self-check.",
    ),
    "VLLM_ASCEND_LOG_FALLBACKS": (
        _flag("VLLM_ASCEND_LOG_FALLBACKS", True),
        "Log (once each) every fallback from a fused kernel to a slower path. Default on.",
    ),
    "VLLM_ASCEND_BUILD_ASCENDC": (
        _flag("VLLM_ASCEND_BUILD_ASCENDC", True),
        "Build time (read by setup.py, not by the running plugin). 1 (default): build the Ascend "
        "C kernels wherever CANN is found; a failure stops the install and names the build log. "
        "0: build the CPU kernels only, even with CANN present; the module records the choice "
        "and on an NPU the _C_ascend ops then run as slower torch/torch_npu compositions "
        "(announced once at start-up) instead of the build being refused as incomplete.",
    ),
}


def __getattr__(name: str) -> Any:
    if name in _VARIABLES:
        return _VARIABLES[name][0]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return list(_VARIABLES)


def describe() -> dict[str, str]:
    """Name -> meaning, for documentation and `make demo`."""
    return {name: doc for name, (_, doc) in _VARIABLES.items()}
