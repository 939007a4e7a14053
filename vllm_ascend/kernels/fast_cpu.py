"""Fast C++ CPU kernels for the hot torch_npu ops (csrc/cpu/fast_ops.cpp, fast_moe_ops.cpp), and
their selection.

Every torch_npu op the plugin calls has a Python reference (``kernels/npu_ops``), registered as
``torch.ops.vllm_ascend_ref.<op>`` (same schema) on every host. For the ops in ``FAST_OPS`` the
CPU kernel of ``torch.ops.npu.<op>`` is, unless the references are selected
(``VLLM_ASCEND_CPU_KERNELS``), a C++ kernel that serves the calls it covers and hands every
other call unchanged to the reference: an illegal call then raises the reference's error naming
the violated constraint, and a legal call of a kind the fast kernel lacks (MLA attention, the
PA_NZ cache, ...) is computed by the reference, logged once per (op, reason).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import ModuleType

from vllm_ascend import envs

REF_NAMESPACE = "vllm_ascend_ref"
# The ops csrc/cpu/fast_ops.cpp and fast_moe_ops.cpp serve; install() checks the build agrees.
FAST_OPS = (
    "npu_rms_norm",
    "npu_add_rms_norm",
    "npu_swiglu",
    "npu_scatter_pa_kv_cache",
    "npu_fused_infer_attention_score",
    "npu_moe_gating_top_k_softmax",
    "npu_moe_init_routing_v2",
    "npu_grouped_matmul",
    "npu_moe_token_unpermute",
)

# The extension module once the fast kernels are installed (None: the references serve).
_module: ModuleType | None = None


def mode() -> str:
    """'fast' or 'reference': what serves ``FAST_OPS`` on CPU tensors in this process."""
    choice = envs.VLLM_ASCEND_CPU_KERNELS
    if choice != "auto":
        return choice
    from vllm_ascend.kernels import extension

    return "reference" if extension.npu_host() else "fast"


def serves(name: str) -> bool:
    """Whether the fast kernel (not the reference) is npu::<name>'s CPU kernel here."""
    return name in FAST_OPS and mode() == "fast"


def install() -> None:
    """Register the fast kernels (after the npu_ops modules defined the schemas and references)."""
    global _module
    if _module is not None or mode() != "fast":
        return
    from vllm_ascend.kernels import extension

    module = extension.load(require_npu_kernels=False)
    built = tuple(module.fast_cpu_op_names())
    if sorted(built) != sorted(FAST_OPS):
        raise extension.ExtensionError(
            f"vllm-ascend native extension: stale build, its fast CPU kernels {sorted(built)} "
            f"differ from this source tree's {sorted(FAST_OPS)}; rebuild with "
            f"{extension.REBUILD_COMMAND}")
    for name in FAST_OPS:
        module.fast_cpu_install(name)
    _module = module


def counters() -> dict[str, tuple[int, int]]:
    """op -> (calls the fast kernel served, calls handed to the reference) in this process."""
    return dict(_module.fast_cpu_counters()) if _module is not None else {}


@contextlib.contextmanager
def references_only() -> Iterator[None]:
    """Within the block the installed fast kernels hand every call to their references (tests
    run each corner case through both implementations in one process)."""
    if _module is None:
        yield
        return
    _module.fast_cpu_set_enabled(False)
    try:
        yield
    finally:
        _module.fast_cpu_set_enabled(True)


def log_new_declines() -> None:
    """One log line per (op, reason) of a call the fast kernel handed to the reference."""
    if _module is None:
        return
    from vllm_ascend.ops.fallback import log_fallback_once

    for op, reason in _module.fast_cpu_take_new_declines():
        log_fallback_once(f"the fast CPU kernel of npu::{op}",
                          f"{reason}; its Python reference serves (or refuses) such calls")
