"""The shim and the device check stop what the device toolchain and hardware would stop."""

import ctypes

import ascendc_harness as ah
import pytest
import torch

SNIPPETS = ah.HERE / "snippets"


# ---- kernel-side qualifier (device-mode compile) ---------------------------------------------
def test_device_check_rejects_kernel_calling_plain_inline_function():
    errors = ah.device_check(SNIPPETS / "plain_inline_call.cpp")
    assert errors, "a kernel calling a function without __aicore__ must not compile"
    assert any("__host__ function 'start'" in e for e in errors), errors


def test_device_check_accepts_tiling_helpers():
    assert ah.device_check(SNIPPETS / "tiling_calls.cpp") == []


def test_device_check_rejects_tiling_helper_without_qualifier(tmp_path):
    """tiling.h as it was (TokenSplit::range without __aicore__) fails the check."""
    broken = (ah.ASCEND / "tiling.h").read_text().replace(
        "__aicore__ inline void range(", "inline void range(")
    assert "inline void range(" in broken
    (tmp_path / "tiling.h").write_text(broken)
    kernel = ah.ASCEND / "kernels" / "masked_input_kernel.cpp"
    text = kernel.read_text().replace('#include "tiling.h"', f'#include "{tmp_path}/tiling.h"')
    errors = ah.device_check(kernel, text)
    assert any("'range'" in e for e in errors), errors


@pytest.mark.parametrize("kernel", ah.KERNELS, ids=lambda p: p.stem)
def test_device_check_kernels_clean(kernel):
    assert ah.device_check(kernel) == []


# ---- runtime rules (host build of small kernels) ---------------------------------------------
@pytest.fixture(scope="module")
def violations():
    lib = ah.build_snippet(SNIPPETS / "shim_violations.cpp")
    lib.run_violation.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_uint64,
                                  ctypes.c_char_p, ctypes.c_int]
    gm = torch.zeros(64, dtype=torch.float32)

    def run(name):
        err = ctypes.create_string_buffer(1024)
        rc = lib.run_violation(name.encode(), gm.data_ptr(), gm.numel() * 4, err, len(err))
        assert rc in (0, 1), f"unknown snippet {name}"
        return err.value.decode() if rc else None

    return run


@pytest.mark.parametrize("name,message", [
    ("unaligned_datacopy_len", "not a multiple of 32 bytes (use DataCopyPad)"),
    ("unaligned_datacopy_addr", "is not 32-byte aligned"),
    ("unaligned_ub_operand", "Adds: operand at UB address 12 is not 32-byte aligned"),
    ("ub_overflow", "UB overflow"),
    ("dequeue_empty", "DeQue on an empty queue"),
    ("gm_out_of_bounds", "outside every tensor passed to the kernel"),
])
def test_shim_stops_violation(violations, name, message):
    err = violations(name)
    assert err is not None and message in err, err


@pytest.mark.parametrize("name", ["datacopypad_ok", "ub_full"])
def test_shim_accepts_legal_kernel(violations, name):
    assert violations(name) is None


def test_ub_overflow_names_the_sizes(violations):
    err = violations("ub_overflow")
    assert "204800 bytes" in err and "196608-byte Unified Buffer" in err, err


# ---- the same rules on the real kernels, given a bad tiling ----------------------------------
def test_real_kernel_ub_overflow(hx):
    """A mask tiling with 16384-id tiles needs 2 x (16384 x (8 + 8 + 1)) bytes: over 192 KiB."""
    ids = torch.arange(20000, dtype=torch.int64)
    masked = torch.empty_like(ids)
    mask = torch.empty(ids.shape, dtype=torch.bool)
    t = hx.mask_tiling(ids.numel(), 0, 100, 0, 100, 100, 1)
    t[6] = 16384  # ids_per_tile
    with pytest.raises(ah.KernelError, match="UB overflow"):
        hx.launch_mask(ids, masked, mask, t)


def test_real_kernel_unaligned_table_copy(hx):
    """A rotary tiling whose tile is not a whole number of 32-byte fp32 blocks."""
    pos = torch.zeros(2, dtype=torch.int64)
    q = torch.randn(2, 64)
    cache = torch.randn(4, 64)
    t = hx.rotary_tiling(2, 1, 0, 64, 64, 64, 0, 64, 4, 2)
    t[9] = 68  # tile_elems: 68 x 4 bytes is not a multiple of 32
    tables = hx.rotary_tables(64, 64, True, t[8], t[9])
    with pytest.raises(ah.KernelError, match="not a multiple of 32 bytes"):
        hx.launch_rotary(pos, q, None, cache, tables, t)
