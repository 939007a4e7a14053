"""The native extension ``vllm_ascend._C_ascend``: loading, validation and the op handles.

The extension is built from ``csrc/`` by ``setup.py`` (CMake). It registers the ``_C_ascend``
operator library with torch's dispatcher: CPU kernels and Meta (shape) functions always, and the
Ascend C kernels under PrivateUse1 when CANN was present at build time. Call the ops through
``ops()`` (the ``torch.ops._C_ascend`` namespace) after ``load()``.

A missing or stale extension is an error, never a silent fallback to slower code: the message
names the build log and the rebuild command. So is an extension without the Ascend C kernels on
an NPU host, unless it was built that way on purpose (``VLLM_ASCEND_BUILD_ASCENDC=0``, recorded
in the module as ``ASCENDC_OPT_OUT``): then the ops are served on the NPU by the torch
compositions in ``composed.py``, and start-up says so once (``npu_kernel_source``).
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
# Build-time variable (setup.py) choosing a CPU-only build on purpose; see envs.py.
OPT_OUT_VARIABLE = "VLLM_ASCEND_BUILD_ASCENDC"

# Where the NPU's _C_ascend kernels come from (npu_kernel_source).
ASCENDC = "ascendc"  # the Ascend C kernels compiled into the extension
COMPOSED = "composed"  # torch compositions (kernels/composed.py), build opted out of Ascend C
NOT_NEEDED = "not-needed"  # no NPU in this process (the CPU backend)


class ExtensionError(RuntimeError):
    """The native extension is missing, stale, or lacks the kernels this host needs."""


# Re-entrant: serving the compositions imports npu_ops, whose fast CPU kernels load the module.
_lock = threading.RLock()
_module: ModuleType | None = None
_composed_announced = False


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


def npu_kernel_source(*, need_npu: bool, with_cann: bool, ascendc_opt_out: bool) -> str:
    """Decide what serves the ``_C_ascend`` ops on the NPU; raise for an incomplete build.

    ``need_npu``: this process drives an NPU. ``with_cann`` / ``ascendc_opt_out``: the module's
    build record (``WITH_CANN``, ``ASCENDC_OPT_OUT``). A CPU-only build that was not an explicit
    opt-out (CANN not found at build time, an old build) is refused on an NPU host.
    """
    if not need_npu:
        return NOT_NEEDED
    if with_cann:
        return ASCENDC
    if ascendc_opt_out:
        return COMPOSED
    raise _error(
        "was built without CANN, so it has no NPU kernels. Set ASCEND_HOME_PATH (source "
        "CANN's set_env.sh) before building; or, to run the ops as slower torch compositions "
        f"on purpose, rebuild with {OPT_OUT_VARIABLE}=0"
    )


COMPOSED_WARNING = (
    "vllm-ascend: the native extension was built without its Ascend C kernels on purpose "
    f"({OPT_OUT_VARIABLE}=0), so on the NPU the _C_ascend ops (rotary_embedding, "
    "get_masked_input_and_mask, add_rms_norm_dynamic_quant) run as compositions of torch / "
    "torch_npu ops: several kernel launches and fp32 intermediates per call instead of one "
    "fused kernel, which makes every layer slower. For the fused kernels rebuild with CANN "
    f"(source set_env.sh) and without {OPT_OUT_VARIABLE}=0: {REBUILD_COMMAND}"
)


def _serve_composed() -> None:
    """Register the compositions under the NPU's dispatch key and warn, once per process.
    Called with ``_lock`` held."""
    global _composed_announced
    from vllm_ascend.kernels import composed

    composed.register()
    if not _composed_announced:
        from vllm_ascend.logger import init_logger

        init_logger(__name__).warning(COMPOSED_WARNING)
        _composed_announced = True


def load(require_npu_kernels: bool | None = None) -> ModuleType:
    """Import the extension once, validate it, and return the module.

    ``require_npu_kernels``: this process needs the ops on the NPU (PrivateUse1); by default
    on an NPU host (see ``npu_host``). They are the Ascend C kernels, or the torch compositions
    for a build that opted out of them (see ``npu_kernel_source``). The CPU kernels are always
    built, so on the CPU backend a missing extension is an error as well.
    """
    global _module
    if require_npu_kernels is None:
        require_npu_kernels = npu_host()
    with _lock:
        if _module is None:
            try:
                module = importlib.import_module(MODULE)
            except ImportError as exc:
                raise _error(f"cannot be imported ({exc})") from exc
            _check_schemas()
            _module = module
        source = npu_kernel_source(
            need_npu=require_npu_kernels,
            with_cann=bool(getattr(_module, "WITH_CANN", False)),
            ascendc_opt_out=bool(getattr(_module, "ASCENDC_OPT_OUT", False)),
        )
        if source == COMPOSED:
            _serve_composed()
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
        "ascendc_opt_out": bool(getattr(module, "ASCENDC_OPT_OUT", False)),
        "npu_ops_composed": _composed_announced,
        "cpu_kernel_isa": module.CPU_KERNEL_ISA,
        "soc_version": module.SOC_VERSION,
    }
