"""Fidelity of the CPU ops to torch-npu 2.13.0 (its wheel, fetched by tests/torch_npu_wheel.py).

(a) every op in ``npu_library.SCHEMAS`` declares exactly the schema of torch-npu's codegen yaml;
(b) on representative inputs (the ``SAMPLES`` table) each CPU kernel returns outputs with the
    shapes and dtypes that torch-npu's own Meta functions compute. ``_meta_registrations.py`` is
    executed as plain Python with stand-ins for its torch_npu imports; its
    ``@impl(Library("npu", "IMPL", "Meta"), name)`` registrations land in a dict instead of the
    dispatcher.
(c) (no wheel needed) each op's registered fake implementation agrees with its CPU kernel.

To cover a new op, append ``(op_name, case_id, builder)`` rows to ``SAMPLES``; ``builder()``
returns ``(args, kwargs)`` for one call and must build fresh tensors (in-place ops mutate them).
``test_every_op_has_a_sample`` fails for any op in SCHEMAS without a row.
"""

from __future__ import annotations

import builtins
import math
import re
import types
from collections.abc import Callable

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch_npu_wheel import require_reference_files

import vllm_ascend.kernels.npu_ops  # noqa: F401  (registers every op)
from vllm_ascend.kernels.npu_library import NAMESPACE, SCHEMAS

# ----------------------------------------------------------------------------------------------
# sample inputs
# ----------------------------------------------------------------------------------------------

MASK2048 = torch.triu(torch.ones(2048, 2048, dtype=torch.bool), diagonal=1)


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def _fia_tnd_paged(fmt: str, lse: bool):
    def build():
        n, kvn, d, bs, nb = 4, 2, 64, 128, 6  # TND: head dim 64/128/192, blocks of 128k
        if fmt == "BSH":
            kc = torch.randn(nb, bs, kvn * d, generator=_g()).half()
        else:
            kc = torch.randn(nb, kvn, bs, d, generator=_g()).half()
        table = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32)
        return (torch.randn(5, n, d, generator=_g(1)).half(), kc, kc.clone()), dict(
            atten_mask=MASK2048, block_table=table, actual_seq_lengths=[1, 5],
            actual_seq_lengths_kv=[20, 40], num_heads=n, num_key_value_heads=kvn, scale=0.25,
            input_layout="TND", sparse_mode=3, block_size=bs, softmax_lse_flag=lse)
    return build


def _fia_dense(layout: str, lse: bool, dtype=torch.float16):
    def build():
        b, s, skv, n, kvn, d, dv = 2, 3, 5, 4, 2, 16, 16  # Q_S > 1: D 16-aligned
        shapes = {"BSH": ([b, s, n * d], [b, skv, kvn * d], [b, skv, kvn * dv]),
                  "BSND": ([b, s, n, d], [b, skv, kvn, d], [b, skv, kvn, dv]),
                  "BNSD": ([b, n, s, d], [b, kvn, skv, d], [b, kvn, skv, dv]),
                  "BNSD_BSND": ([b, n, s, d], [b, kvn, skv, d], [b, kvn, skv, dv])}[layout]
        q, k, v = (torch.randn(sh, generator=_g(i)).to(dtype) for i, sh in enumerate(shapes))
        return (q, k, v), dict(num_heads=n, num_key_value_heads=kvn, input_layout=layout,
                               scale=0.3, softmax_lse_flag=lse)
    return build


def _fia_decode_bsh():
    n, kvn, d, bs = 8, 2, 16, 128
    kc = torch.randn(3, bs, kvn * d, generator=_g()).to(torch.bfloat16)
    return (torch.randn(3, 1, n * d, generator=_g(1)).to(torch.bfloat16), kc, kc.clone()), dict(
        block_table=torch.tensor([[0], [1], [2]], dtype=torch.int32),
        actual_seq_lengths=[1, 1, 1], actual_seq_lengths_kv=[1, 64, 128], num_heads=n,
        num_key_value_heads=kvn, input_layout="BSH", block_size=bs, softmax_lse_flag=True)


def _fia_tnd_dense():
    q = torch.randn(7, 2, 192, generator=_g()).to(torch.bfloat16)
    k = torch.randn(9, 2, 192, generator=_g(1)).to(torch.bfloat16)
    v = torch.randn(9, 2, 128, generator=_g(2)).to(torch.bfloat16)
    return (q, k, v), dict(atten_mask=MASK2048, actual_seq_lengths=[3, 7],
                           actual_seq_lengths_kv=[4, 9], num_heads=2, input_layout="TND",
                           sparse_mode=3, scale=1 / math.sqrt(192), softmax_lse_flag=True)


def _scatter(mode: str):
    def build():
        t, n, d, nb, bs = 4, 2, 16, 2, 16
        key = torch.randn(t, n, d, generator=_g()).half()
        if mode == "Norm":
            kc = torch.zeros(nb, bs, n, d, dtype=torch.half)
        else:
            kc = torch.zeros(nb, n * d // 16, bs, 16, dtype=torch.half)
        return (key, key.clone(), kc, kc.clone(), torch.tensor([0, 5, 17, 31])), dict(
            cache_mode=mode)
    return build


SAMPLES: list[tuple[str, str, Callable[[], tuple[tuple, dict]]]] = [
    ("npu_rms_norm", "2d", lambda: ((torch.randn(5, 16).half(), torch.randn(16).half()), {})),
    ("npu_rms_norm", "3d_gamma2d", lambda: ((torch.randn(2, 3, 8), torch.randn(3, 8)),
                                            dict(epsilon=1e-5))),
    ("npu_add_rms_norm", "bf16", lambda: ((torch.randn(4, 8).bfloat16(),
                                           torch.randn(4, 8).bfloat16(),
                                           torch.randn(8).bfloat16()), {})),
    ("npu_add_rms_norm", "3d", lambda: ((torch.randn(2, 3, 8), torch.randn(2, 3, 8),
                                         torch.randn(8)), {})),
    ("npu_swiglu", "last", lambda: ((torch.randn(4, 12).half(),), {})),
    ("npu_swiglu", "dim1", lambda: ((torch.randn(2, 6, 3),), dict(dim=1))),
    ("npu_top_k_top_p", "p_k", lambda: ((torch.randn(3, 20), torch.rand(3),
                                         torch.tensor([1, 4, 20], dtype=torch.int32)), {})),
    ("npu_top_k_top_p", "k_only", lambda: ((torch.randn(3, 20).half(),),
                                           dict(k=torch.tensor([1, 4, 20], dtype=torch.int32)))),
    ("npu_scatter_pa_kv_cache", "norm", _scatter("Norm")),
    ("npu_scatter_pa_kv_cache", "pa_nz", _scatter("PA_NZ")),
    ("npu_fused_infer_attention_score", "tnd_paged_bsh_lse", _fia_tnd_paged("BSH", True)),
    ("npu_fused_infer_attention_score", "tnd_paged_bnsd", _fia_tnd_paged("BNSD", False)),
    ("npu_fused_infer_attention_score", "tnd_dense_dv", _fia_tnd_dense),
    ("npu_fused_infer_attention_score", "decode_bsh_paged", _fia_decode_bsh),
] + [
    ("npu_fused_infer_attention_score", f"dense_{layout}_{lse}", _fia_dense(layout, lse))
    for layout in ("BSH", "BSND", "BNSD", "BNSD_BSND") for lse in (True, False)
] + [
    # MoE routing path.
    ("npu_moe_gating_top_k_softmax", "k2", lambda: ((torch.randn(6, 8), None), dict(k=2))),
    ("npu_moe_init_routing_v2", "count", lambda: (
        (torch.randn(6, 16),
         torch.stack([torch.randperm(8)[:2] for _ in range(6)]).int()),
        dict(expert_num=8, expert_tokens_num_type=1, expert_tokens_num_flag=True,
             active_expert_range=[0, 8]))),
    ("npu_grouped_matmul", "split2_counts", lambda: (
        ([torch.randn(7, 16)], [torch.randn(3, 16, 8)]),
        dict(group_list=torch.tensor([2, 0, 5]), split_item=2, group_type=0,
             group_list_type=1))),
    ("npu_moe_token_unpermute", "probs", lambda: (
        (torch.randn(12, 16), torch.randperm(12).int(), torch.rand(6, 2)), {})),
    ("npu_moe_finalize_routing", "mode0", lambda: (
        (torch.randn(12, 16), None, None, None, torch.rand(6, 2), torch.randperm(12).int(),
         torch.randint(0, 4, (6, 2)).int(), 0, 2), {})),
    ("npu_moe_compute_expert_tokens", "int32", lambda: (
        (torch.tensor([0, 0, 1, 3], dtype=torch.int32), 4), {})),
]

from test_fia_mla import FIDELITY_SAMPLES as MLA_SAMPLES  # noqa: E402
from test_moe_gating_top_k import FIDELITY_SAMPLES as GATING_SAMPLES  # noqa: E402
from test_quant_ops import FIDELITY_SAMPLES  # noqa: E402
from test_rotary_ops import FIDELITY_SAMPLES as ROTARY_SAMPLES  # noqa: E402

SAMPLES += FIDELITY_SAMPLES + GATING_SAMPLES + MLA_SAMPLES + ROTARY_SAMPLES

# ----------------------------------------------------------------------------------------------
# torch-npu reference files
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel_files():
    return require_reference_files()


def yaml_schemas(path) -> dict[str, set[str]]:
    """Op name (overload included, e.g. 'foo.out') -> the schemas its ``func:`` lines declare."""
    out: dict[str, set[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\s*(?:-\s*)?func:\s*(.+?)\s*$", line)
        if m:
            schema = m.group(1)
            out.setdefault(schema.split("(", 1)[0], set()).add(schema)
    return out


class _AnyAttr:
    """Stand-in whose every attribute is another stand-in (ErrCode.VALUE, torch_npu.hifloat8...)."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, item):
        if item.startswith("__"):
            raise AttributeError(item)
        return _AnyAttr(f"{self._name}.{item}")

    def __call__(self, *args, **kwargs):
        return _AnyAttr(f"{self._name}()")

    def __repr__(self):
        return f"<stand-in {self._name}>"


def _stub_module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    mod.__getattr__ = lambda item: _AnyAttr(f"{name}.{item}")  # PEP 562 module fallback
    return mod


def load_meta_functions(path) -> dict[tuple[str, str], Callable]:
    """Execute torch-npu's _meta_registrations.py without torch_npu; return its registrations as
    {(namespace, op name): meta function}. Nothing is registered with the dispatcher."""
    registry: dict[tuple[str, str], Callable] = {}

    class Library:
        def __init__(self, ns, kind, dispatch_key=""):
            self.ns = ns

        def impl(self, name, fn, dispatch_key="", **_):
            registry[(self.ns, name)] = fn

        def define(self, *args, **kwargs):
            pass

    def impl(lib, name, fn=None, **_):
        if fn is not None:
            registry[(lib.ns, name)] = fn
            return fn

        def deco(f):
            registry[(lib.ns, name)] = f
            return f
        return deco

    class _NpuOps:  # torch.ops.npu for ops torch_npu would define (e.g. has_side_effect targets)
        def __getattr__(self, item):
            try:
                return getattr(torch.ops.npu, item)
            except (AttributeError, RuntimeError):
                return _AnyAttr(f"torch.ops.npu.{item}")

    class _Ops:
        npu = _NpuOps()

        def __getattr__(self, item):
            return getattr(torch.ops, item)

    torch_proxy = _stub_module("torch")
    torch_proxy.__getattr__ = lambda item: getattr(torch, item)
    torch_proxy.ops = _Ops()

    # Stand-ins for the torch_npu imports; the values only matter inside meta functions of ops
    # this project does not provide (A2-class SoC, a recent CANN).
    npu_utils = _stub_module("torch_npu.npu.utils", get_cann_version=lambda *a, **k: "8.5.0",
                             _is_gte_cann_version=lambda *a, **k: True)
    backends = _stub_module("torch_npu.npu._backends", get_soc_version=lambda: 220)
    npu_pkg = _stub_module("torch_npu.npu", utils=npu_utils, _backends=backends)
    err = _stub_module("torch_npu.utils._error_code", ErrCode=_AnyAttr("ErrCode"),
                       ops_error=lambda *a, **k: "")
    utils = _stub_module("torch_npu.utils", _error_code=err)
    torch_npu = _stub_module("torch_npu", npu=npu_pkg, utils=utils)
    stubs = {
        "torch_npu": torch_npu, "torch_npu.npu": npu_pkg, "torch_npu.npu.utils": npu_utils,
        "torch_npu.npu._backends": backends, "torch_npu.utils": utils,
        "torch_npu.utils._error_code": err,
        "torch.library": _stub_module("torch.library", Library=Library, impl=impl),
        "torch.fx.node": _stub_module("torch.fx.node", has_side_effect=lambda *a, **k: None),
    }
    real_import = builtins.__import__

    def fake_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0:
            if name == "torch" and not fromlist:
                return torch_proxy
            if name in stubs:
                return stubs[name] if fromlist else stubs[name.split(".")[0]]
            if name.startswith("torch_npu"):
                return _stub_module(name)
        return real_import(name, globals, locals, fromlist, level)

    g = {"__name__": "torch_npu_meta_registrations", "__file__": str(path),
         "__builtins__": {**builtins.__dict__, "__import__": fake_import}}
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), g)
    return registry


@pytest.fixture(scope="module")
def meta_functions(wheel_files):
    return load_meta_functions(wheel_files["meta"])


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _map_tensors(obj, fn):
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(o, fn) for o in obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    return obj


def _signature(out) -> list:
    """Flattened (shape, dtype) of an op result; None stays None."""
    if out is None:
        return [None]
    if isinstance(out, torch.Tensor):
        return [(tuple(out.shape), out.dtype)]
    return [s for o in out for s in _signature(o)]


def _as_dispatched(name, args, kwargs):
    """Bind a call to the op's schema and fill every default, as the dispatcher does before it
    calls a Python kernel (positional arguments positionally, keyword-only ones by name)."""
    schema = torch._C.parse_schema(f"{NAMESPACE}::{SCHEMAS[name]}")
    pos, kw = [], {}
    for i, arg in enumerate(schema.arguments):
        if i < len(args):
            val = args[i]
        elif arg.name in kwargs:
            val = kwargs[arg.name]
        elif arg.has_default_value():
            val = arg.default_value
        else:
            raise TypeError(f"{name}: missing argument {arg.name}")
        if arg.kwarg_only:
            kw[arg.name] = val
        else:
            pos.append(val)
    return tuple(pos), kw


def _call(name, args, kwargs):
    return getattr(getattr(torch.ops, NAMESPACE), name)(*args, **kwargs)


_SAMPLE_IDS = [f"{op}-{case}" for op, case, _ in SAMPLES]

# ----------------------------------------------------------------------------------------------
# tests
# ----------------------------------------------------------------------------------------------


def test_every_op_has_a_sample():
    covered = {op for op, _, _ in SAMPLES}
    missing = sorted(set(SCHEMAS) - covered)
    assert not missing, f"add SAMPLES rows in {__file__} for: {missing}"


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schema_matches_torch_npu_yaml(name, wheel_files):
    declared = yaml_schemas(wheel_files["yaml"]).get(name)
    assert declared, f"torch-npu 2.13.0 declares no op {name!r}"
    assert declared == {SCHEMAS[name]}, f"{name}: ours {SCHEMAS[name]!r}, torch-npu {declared!r}"
    # ...and the dispatcher holds that schema (normalised by torch's own parser).
    registered = torch._C._get_schema(f"{NAMESPACE}::{name}", "")
    assert str(registered) == str(torch._C.parse_schema(f"{NAMESPACE}::{SCHEMAS[name]}"))


@pytest.mark.parametrize("name,case,build", SAMPLES, ids=_SAMPLE_IDS)
def test_outputs_match_torch_npu_meta(name, case, build, meta_functions):
    meta_fn = meta_functions.get((NAMESPACE, name))
    assert meta_fn is not None, f"torch-npu registers no Meta function for {name}"
    args, kwargs = build()
    margs, mkwargs = _map_tensors(_as_dispatched(name, args, kwargs), lambda t: t.to("meta"))
    expected = _signature(meta_fn(*margs, **mkwargs))
    actual = _signature(_call(name, args, kwargs))
    assert actual == expected, f"{name}[{case}]: CPU {actual} vs torch-npu meta {expected}"


@pytest.mark.parametrize("name,case,build", SAMPLES, ids=_SAMPLE_IDS)
def test_fake_matches_cpu_kernel(name, case, build):
    args, kwargs = build()
    with FakeTensorMode() as mode:
        fargs, fkwargs = _map_tensors((args, kwargs), mode.from_tensor)
        fake = _signature(_call(name, fargs, fkwargs))
    assert fake == _signature(_call(name, args, kwargs)), f"{name}[{case}]"


def test_meta_loader_sees_the_registrations(meta_functions):
    # Guards the stand-ins: a change in how the file registers would show up as few entries.
    assert sum(ns == "npu" for ns, _ in meta_functions) > 100
    assert (NAMESPACE, "npu_fused_infer_attention_score") in meta_functions
