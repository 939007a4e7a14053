"""The native extension ``vllm_ascend._C_ascend``: loading, validation and the op handles.

The extension is built from ``csrc/`` by ``setup.py`` (CMake). It registers the ``_C_ascend``
operator library with torch's dispatcher: CPU kernels and Meta (shape) functions always, and the
Ascend C kernels under PrivateUse1 when CANN was present at build time. Call the ops through
``ops()`` (the ``torch.ops._C_ascend`` namespace) after ``load()``.

A missing or stale extension is an error, never a silent fallback to slower code: the message
names the build log and the rebuild command.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import sysconfig
import threading
from pathlib import Path
from types import ModuleType

import torch

MODULE = "vllm_ascend._C_ascend"
NAMESPACE = "_C_ascend"

# Exactly what csrc/torch_binding.cpp registers. A built extension whose schema set differs was
# built from other sources (stale build) and is refused.
EXPECTED_SCHEMAS: dict[str, str] = {
    "rotary_embedding": (
        "_C_ascend::rotary_embedding(Tensor positions, Tensor(a!) query, Tensor(b!)? key, "
        "int head_size, Tensor cos_sin_cache, bool is_neox) -> ()"
    ),
    "get_masked_input_and_mask": (
        "_C_ascend::get_masked_input_and_mask(Tensor input, int org_vocab_start_index, "
        "int org_vocab_end_index, int num_org_vocab_padding, int added_vocab_start_index, "
        "int added_vocab_end_index) -> (Tensor, Tensor)"
    ),
    "add_rms_norm_dynamic_quant": (
        "_C_ascend::add_rms_norm_dynamic_quant(Tensor x, Tensor residual, Tensor weight, "
        "float epsilon) -> (Tensor, Tensor, Tensor)"
    ),
}

REBUILD_COMMAND = "pip install --no-build-isolation -e .  (or: make install)"


class ExtensionError(RuntimeError):
    """The native extension is missing, stale, or lacks the kernels this host needs."""


_lock = threading.Lock()
_module: ModuleType | None = None


def build_log_path() -> Path:
    """Where setup.py writes the CMake log for this interpreter (in the source tree)."""
    root = Path(__file__).resolve().parents[2]
    tag = f"{sysconfig.get_platform()}-{sys.implementation.cache_tag}"
    return root / "build" / f"cmake.{tag}" / "build.log"


def _error(problem: str) -> ExtensionError:
    return ExtensionError(
        f"vllm-ascend native extension {MODULE}: {problem}\n"
        f"  Rebuild it with: {REBUILD_COMMAND}\n"
        f"  Build log: {build_log_path()} (for a wheel install, rebuild with pip -v to see it)"
    )


def npu_host() -> bool:
    """True when this process should drive an NPU: torch_npu is installed and the device
    choice is not forced to the CPU backend. torch_npu is looked up, not imported."""
    from vllm_ascend import envs

    if envs.VLLM_ASCEND_DEVICE == "cpu":
        return False
    return importlib.util.find_spec("torch_npu") is not None


def registered_schemas() -> dict[str, str]:
    """Schema text of every op currently registered in the _C_ascend namespace."""
    prefix = f"{NAMESPACE}::"
    out: dict[str, str] = {}
    for qualname in torch._C._dispatch_get_all_op_names():
        if qualname.startswith(prefix):
            name = qualname[len(prefix):].split(".", 1)[0]
            out[name] = str(torch._C._get_schema(qualname, ""))
    return out


def _check_schemas() -> None:
    found = registered_schemas()
    missing = sorted(set(EXPECTED_SCHEMAS) - set(found))
    extra = sorted(set(found) - set(EXPECTED_SCHEMAS))
    changed = sorted(n for n in EXPECTED_SCHEMAS if n in found and found[n] != EXPECTED_SCHEMAS[n])
    if missing or extra or changed:
        details = []
        if missing:
            details.append(f"missing ops {missing}")
        if extra:
            details.append(f"unexpected ops {extra}")
        for name in changed:
            details.append(f"{name}: built {found[name]!r}, expected {EXPECTED_SCHEMAS[name]!r}")
        raise _error("stale build, its ops differ from this source tree: " + "; ".join(details))


def load(require_npu_kernels: bool | None = None) -> ModuleType:
    """Import the extension once, validate it, and return the module.

    ``require_npu_kernels``: demand the Ascend C (PrivateUse1) kernels; by default demanded on an
    NPU host (see ``npu_host``). The CPU kernels are always built, so on the CPU backend a
    missing extension is an error as well.
    """
    global _module
    with _lock:
        if _module is None:
            try:
                module = importlib.import_module(MODULE)
            except ImportError as exc:
                raise _error(f"cannot be imported ({exc})") from exc
            _check_schemas()
            _module = module
    if require_npu_kernels is None:
        require_npu_kernels = npu_host()
    if require_npu_kernels and not getattr(_module, "WITH_CANN", False):
        raise _error(
            "was built without CANN, so it has no NPU kernels. Set ASCEND_HOME_PATH (source "
            "CANN's set_env.sh) before building"
        )
    return _module


def ops():
    """``torch.ops._C_ascend`` after making sure the extension is loaded and current."""
    load()
    return torch.ops._C_ascend


def is_available() -> bool:
    """Whether load() would succeed (for diagnostics; code paths should call load())."""
    try:
        load()
        return True
    except ExtensionError:
        return False


def build_info() -> dict[str, object]:
    module = load(require_npu_kernels=False)
    return {
        "path": os.fspath(module.__file__ or ""),
        "with_cann": bool(module.WITH_CANN),
        "cpu_kernel_isa": module.CPU_KERNEL_ISA,
        "soc_version": module.SOC_VERSION,
    }
