"""CPU and fake implementations of torch_npu ops, registered under torch_npu's own namespace.

Call sites use ``torch.ops.npu.<op>(...)`` on every host. On an Ascend host torch_npu has already
defined the schema and registered its NPU kernels, so only our CPU kernel is added (it is the
golden reference the NPU tests compare against). Without torch_npu (the CPU backend) the schema
is defined here, text-identical to the one torch-npu 2.13.0 declares;
tests/unit/kernels/test_fidelity.py checks that against the wheel.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vllm_ascend.kernels import fast_cpu

NAMESPACE = "npu"

_define_lib: torch.library.Library | None = None
_impl_lib: torch.library.Library | None = None
_ref_lib: torch.library.Library | None = None
# op name -> schema, for every op this package provides (the fidelity tests iterate over it).
SCHEMAS: dict[str, str] = {}


def _op_exists(name: str) -> bool:
    try:
        torch._C._get_schema(f"{NAMESPACE}::{name}", "")
        return True
    except RuntimeError:
        return False


def _libs() -> tuple[torch.library.Library, torch.library.Library]:
    global _define_lib, _impl_lib
    if _impl_lib is None:
        # FRAGMENT: torch_npu may own the namespace already; we only add to it.
        _define_lib = torch.library.Library(NAMESPACE, "FRAGMENT")
        _impl_lib = torch.library.Library(NAMESPACE, "IMPL")
    return _define_lib, _impl_lib


def _register_reference(name: str, schema: str, fn: Callable) -> None:
    """``fn`` as ``vllm_ascend_ref::<name>``: the golden reference, callable on every host, and
    where a fast kernel hands the calls it does not cover (logged once per reason)."""
    global _ref_lib
    if _ref_lib is None:
        _ref_lib = torch.library.Library(fast_cpu.REF_NAMESPACE, "DEF")
    _ref_lib.define(schema)

    def reference(*args, **kwargs):
        fast_cpu.log_new_declines()
        return fn(*args, **kwargs)

    _ref_lib.impl(name, reference, "CPU")


def npu_op(schema: str, *, fake: Callable | None = None):
    """Decorator registering ``fn`` as the CPU kernel of the torch_npu op declared by ``schema``.

    ``schema`` is the torch-npu declaration without namespace, e.g.
    ``"npu_rms_norm(Tensor self, Tensor gamma, float epsilon=1e-06) -> (Tensor, Tensor)"``.
    ``fake`` computes output shapes/dtypes for tracing (Meta); if None, the CPU kernel must be
    shape-only safe and is not reused (a fake is required for every op that allocates outputs).
    """
    name = schema.split("(", 1)[0]

    def register(fn: Callable) -> Callable:
        if name in SCHEMAS:
            return fn
        define_lib, impl_lib = _libs()
        if not _op_exists(name):
            define_lib.define(schema)
            if fake is not None:
                torch.library.register_fake(f"{NAMESPACE}::{name}", fake, lib=define_lib)
        _register_reference(name, schema, fn)
        # An op with a fast C++ kernel gets it from fast_cpu.install() instead.
        if not fast_cpu.serves(name):
            impl_lib.impl(name, fn, "CPU")
        SCHEMAS[name] = schema
        return fn

    return register
