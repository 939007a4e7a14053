"""Host harness for the Ascend C kernels in csrc/ascend/kernels.

Two tools:

* ``Harness``: the kernels compiled with g++ against the Ascend C shim (``shim/``) into one shared
  library, with C entry points (``harness_entry.cpp``) that compute the host launchers' tiling
  (``csrc/ascend/host/tiling_host.h``) and run a kernel for every block index on host memory.
  The build is cached under ``build/ascendc_harness/<hash of the sources>``.
* ``device_check``: a syntax-only compile of a kernel source in clang's CUDA device mode (through
  libclang, the ``libclang`` wheel of the dev extras), with ``__aicore__`` as ``__device__`` and
  kernel entry points as ``__global__``: calling a function that lacks ``__aicore__`` from kernel
  code is an error there, as it is for bisheng.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SHIM = HERE / "shim"
ASCEND = REPO / "csrc" / "ascend"
KERNELS = sorted((ASCEND / "kernels").glob("*.cpp"))
BUILD_ROOT = REPO / "build" / "ascendc_harness"
CXX = os.environ.get("CXX", "g++")
CXXFLAGS = ["-std=c++17", "-O2", "-fPIC", "-shared", "-Wall", "-Werror"]
INCLUDES = [f"-I{SHIM}", f"-I{ASCEND}", f"-I{ASCEND / 'host'}", f"-I{HERE}"]

DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
# Vector cores of an Atlas A2 (910B1/B2: 48 AIV; 910B3/B4: 40); the tests use both a small and
# a real count so that token counts below, at and above the core count all occur.
CORES_910B = 40


class KernelError(RuntimeError):
    """A kernel run stopped by the shim (UB overflow, alignment, bounds, queue misuse...)."""


def _sources(extra: list[Path]) -> list[Path]:
    files = [SHIM / "kernel_operator.h", SHIM / "shim_runtime.h", SHIM / "shim_runtime.cpp",
             HERE / "harness_entry.cpp", ASCEND / "tiling.h", ASCEND / "host" / "tiling_host.h"]
    return files + KERNELS + extra


def _compiler_id() -> str:
    return subprocess.run([CXX, "--version"], capture_output=True, text=True,
                          check=True).stdout.splitlines()[0]


def build_library(name: str, compile_units: list[Path], depends: list[Path]) -> Path:
    """Compiles compile_units into build/ascendc_harness/<hash>/<name>.so unless it is cached."""
    h = hashlib.sha256()
    h.update(_compiler_id().encode())
    h.update(" ".join(CXXFLAGS).encode())
    for f in sorted(set(compile_units + depends)):
        h.update(str(f.relative_to(REPO)).encode())
        h.update(f.read_bytes())
    out_dir = BUILD_ROOT / h.hexdigest()[:16]
    lib = out_dir / f"{name}.so"
    if lib.exists():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    cmd = [CXX, *CXXFLAGS, *INCLUDES, "-o", tmp, *map(str, compile_units)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        os.unlink(tmp)
        raise KernelError(f"host build failed:\n{' '.join(cmd)}\n{res.stderr}")
    os.replace(tmp, lib)  # atomic: a concurrent run sees the old state or the whole library
    return lib


def _i64(values) -> ctypes.Array:
    return (ctypes.c_int64 * len(values))(*values)


class Harness:
    """The kernels + shim, loaded. Tensors are CPU torch tensors; the kernels write in place."""

    def __init__(self, lib_path: Path):
        self.lib = ctypes.CDLL(str(lib_path))
        L = self.lib
        vp, i64, u32, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint32, ctypes.c_int
        L.va_error.argtypes = [ctypes.c_char_p, i32]
        L.va_gm_reset.argtypes = []
        L.va_gm_add.argtypes = [vp, ctypes.c_uint64]
        L.va_ub_peak.restype = u32
        L.va_ub_budget.restype = i64
        L.va_rotary_tiling.argtypes = [i64] * 10 + [vp]
        L.va_rotary_tables.argtypes = [i64, i64, i32, i64, i64, vp]
        L.va_mask_tiling.argtypes = [i64] * 7 + [vp]
        L.va_add_rms_norm_tiling.argtypes = [i64, i64, i64, ctypes.c_float, i64, vp, vp]
        L.va_launch_rotary.argtypes = [i32, vp, vp, vp, vp, vp, vp, u32]
        L.va_launch_mask.argtypes = [i32, vp, vp, vp, vp, u32]
        L.va_launch_add_rms_norm.argtypes = [i32, vp, vp, vp, vp, vp, vp, vp, vp, u32]
        self.ub_budget = L.va_ub_budget()

    # -- plumbing --
    def _register(self, *tensors):
        self.lib.va_gm_reset()
        for t in tensors:
            if t is not None:
                base = t.untyped_storage().data_ptr()
                self.lib.va_gm_add(base, t.untyped_storage().nbytes())

    def _check(self, rc: int):
        if rc != 0:
            buf = ctypes.create_string_buffer(4096)
            self.lib.va_error(buf, len(buf))
            raise KernelError(buf.value.decode())

    @property
    def ub_peak(self) -> int:
        """Largest UB total (bytes) one core allocated in the last launch."""
        return self.lib.va_ub_peak()

    # -- tiling --
    def rotary_tiling(self, num_tokens, nq, nk, head_size, rot_dim, q_stride, k_stride,
                      cache_stride, elem_bytes, max_cores) -> list[int]:
        out = _i64([0] * 13)
        rc = self.lib.va_rotary_tiling(num_tokens, nq, nk, head_size, rot_dim, q_stride,
                                       k_stride, cache_stride, elem_bytes, max_cores, out)
        if rc != 0:
            raise ValueError(f"head_size {head_size} does not fit the UB budget")
        return list(out)

    def rotary_tables(self, head_size, rot_dim, is_neox, heads_per_tile, tile_elems):
        t = torch.empty(4 * tile_elems, dtype=torch.int32)
        self.lib.va_rotary_tables(head_size, rot_dim, int(is_neox), heads_per_tile, tile_elems,
                                  t.data_ptr())
        return t

    def mask_tiling(self, n, org_start, org_end, pad, added_start, added_end, max_cores):
        out = _i64([0] * 10)
        self.lib.va_mask_tiling(n, org_start, org_end, pad, added_start, added_end, max_cores,
                                out)
        return list(out)

    def add_rms_norm_tiling(self, rows, hidden, elem_bytes, eps, max_cores):
        out = _i64([0] * 7)
        out_f = (ctypes.c_float * 2)()
        rc = self.lib.va_add_rms_norm_tiling(rows, hidden, elem_bytes, eps, max_cores, out, out_f)
        if rc != 0:
            raise ValueError(f"hidden {hidden} does not fit the UB budget")
        return list(out), list(out_f)

    # -- launches, given a tiling --
    def launch_rotary(self, positions, q, k, cache, tables, tiling, ub_limit=0):
        self._register(positions, q, k, cache, tables)
        self._check(self.lib.va_launch_rotary(
            DTYPE_CODE[q.dtype], positions.data_ptr(), q.data_ptr(),
            None if k is None else k.data_ptr(), cache.data_ptr(), tables.data_ptr(),
            _i64(tiling), ub_limit))

    def launch_mask(self, ids, masked, mask, tiling, ub_limit=0):
        self._register(ids, masked, mask)
        self._check(self.lib.va_launch_mask(int(ids.dtype == torch.int64), ids.data_ptr(),
                                            masked.data_ptr(), mask.data_ptr(), _i64(tiling),
                                            ub_limit))

    def launch_add_rms_norm(self, x, r, w, y, scale, r_out, tiling, tiling_f, ub_limit=0):
        self._register(x, r, w, y, scale, r_out)
        self._check(self.lib.va_launch_add_rms_norm(
            DTYPE_CODE[x.dtype], x.data_ptr(), r.data_ptr(), w.data_ptr(), y.data_ptr(),
            scale.data_ptr(), r_out.data_ptr(), _i64(tiling), (ctypes.c_float * 2)(*tiling_f),
            ub_limit))

    # -- the ops as the NPU launchers (npu_ops.cpp) run them --
    def rotary_embedding(self, positions, query, key, head_size, cache, is_neox, cores):
        """In place, like _C_ascend.rotary_embedding; query/key [T, heads * head_size] with
        dense heads (the launcher's fast path)."""
        num_tokens = positions.numel()
        pos = positions.reshape(-1).to(torch.int64).contiguous()
        cs = cache.to(query.dtype).contiguous()  # the launcher casts the cache to the query dtype
        nq = query.shape[-1] // head_size
        nk = 0 if key is None else key.shape[-1] // head_size
        t = self.rotary_tiling(num_tokens, nq, nk, head_size, cs.shape[1], query.stride(0),
                               0 if key is None else key.stride(0), cs.stride(0),
                               query.element_size(), cores)
        tables = self.rotary_tables(head_size, cs.shape[1], is_neox, t[8], t[9])
        self.launch_rotary(pos, query, key, cs, tables, t)
        return t

    def get_masked_input_and_mask(self, ids, org_start, org_end, pad, added_start, added_end,
                                  cores):
        ids_c = ids.contiguous()
        masked = torch.empty(ids.shape, dtype=torch.int64)
        mask = torch.empty(ids.shape, dtype=torch.bool)
        t = self.mask_tiling(ids.numel(), org_start, org_end, pad, added_start, added_end, cores)
        self.launch_mask(ids_c, masked, mask, t)
        return masked, mask, t

    def add_rms_norm_dynamic_quant(self, x, residual, weight, eps, cores):
        hidden = x.shape[-1]
        rows = x.numel() // hidden
        xc, rc = x.contiguous(), residual.contiguous()
        wc = weight.to(torch.float32).contiguous()  # the launcher passes the weight as fp32
        y = torch.empty(x.shape, dtype=torch.int8)
        scale = torch.empty(x.shape[:-1], dtype=torch.float32)
        r_out = torch.empty_like(x)
        t, tf = self.add_rms_norm_tiling(rows, hidden, x.element_size(), eps, cores)
        self.launch_add_rms_norm(xc, rc, wc, y, scale, r_out, t, tf)
        return y, scale, r_out, t


_HARNESS: Harness | None = None


def harness() -> Harness:
    global _HARNESS
    if _HARNESS is None:
        units = [SHIM / "shim_runtime.cpp", HERE / "harness_entry.cpp", *KERNELS]
        _HARNESS = Harness(build_library("va_harness", units, _sources([])))
    return _HARNESS


def build_snippet(path: Path) -> ctypes.CDLL:
    """A test kernel (tests/ascendc/snippets) built against the shim with the same runtime."""
    units = [SHIM / "shim_runtime.cpp", path]
    lib = ctypes.CDLL(str(build_library(path.stem, units, _sources([path]))))
    return lib


# ---- device-side check (clang, CUDA device mode) ------------------------------------------------
DEVICE_ARGS = [
    "-x", "cuda", "--cuda-device-only", "-nocudainc", "-nocudalib", "--cuda-path=/nonexistent",
    "-std=c++17", "-fsyntax-only", "-DVA_SHIM_DEVICE_CHECK",
    # Constexpr functions are not implicitly callable from device code: they need __aicore__
    # like any other function the kernel calls.
    "-Xclang", "-fno-cuda-host-device-constexpr",
]
_ENTRY = re.compile(r"__global__\s+__aicore__|__aicore__\s+__global__")


def device_check(path: Path, text: str | None = None) -> list[str]:
    """Errors of a device-mode compile of the kernel source at path ([] when it is clean).

    A kernel entry point is written `__global__ __aicore__`; clang accepts only one of the two
    CUDA attributes on a function, so the entry points are rewritten to plain `__global__` in the
    text handed to clang (same line numbers)."""
    import clang.cindex as ci  # the libclang wheel: a dev extra

    src = path.read_text() if text is None else text
    src = _ENTRY.sub("__global__", src)
    args = DEVICE_ARGS + [f"-I{SHIM}", f"-I{ASCEND}"]
    tu = ci.Index.create().parse(str(path), args=args, unsaved_files=[(str(path), src)])
    errors = []
    for d in tu.diagnostics:
        if d.severity >= ci.Diagnostic.Error:
            loc = d.location
            where = f"{loc.file}:{loc.line}:{loc.column}" if loc.file else "<command line>"
            errors.append(f"{where}: {d.spelling}")
    return errors
