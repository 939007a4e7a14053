"""``python -m vllm_ascend.doctor`` and ``--selfcheck`` on this host (no NPU), run as a user runs
them, plus the self-check's case list: it covers every NPU op call in the package, and each case's
check rejects a wrong result."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vllm_ascend
from vllm_ascend.selfcheck import SEED
from vllm_ascend.selfcheck.cases import CASES, covered_ops

PACKAGE = Path(vllm_ascend.__file__).parent


def doctor(*args: str, timeout: int = 240, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if k not in ("VLLM_ASCEND_DEVICE", "ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME")}
    return subprocess.run([sys.executable, "-m", "vllm_ascend.doctor", *args],
                          env=base | env, capture_output=True, text=True, timeout=timeout)


def row(output: str, check: str) -> str:
    match = re.search(rf"^{re.escape(check)}\s+(ok|info|warn|FAIL)\s+(.*)$", output, re.M)
    assert match, f"no {check!r} row in:\n{output}"
    return f"{match.group(1)} {match.group(2)}"


def test_auto_without_npu_fails_and_names_the_cpu_backend():
    proc = doctor()
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert row(out, "torch").startswith("ok 2.13.0")
    assert row(out, "vLLM build") == "ok empty build (no vllm._C)"
    assert row(out, "torch-npu") == "info not installed"
    assert row(out, "NPUs").startswith("info none (no /dev/davinci* device")
    assert "no NPU is present" in row(out, "backend") and row(out, "backend").startswith("FAIL")
    assert "-> fix: export VLLM_ASCEND_DEVICE=cpu to run the plugin on the CPU backend" in out
    assert row(out, "vLLM platform").startswith("FAIL UnspecifiedPlatform")
    assert "problem(s) would stop the plugin" in out


def test_cpu_backend_passes_with_every_row():
    proc = doctor(VLLM_ASCEND_DEVICE="cpu")
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "FAIL" not in out
    assert "not needed: the CPU backend is selected" in row(out, "NPUs")
    assert row(out, "backend").startswith("ok cpu")
    assert row(out, "vLLM platform") == "ok NPUPlatform (device_type cpu)"
    assert "current; C++ CPU only" in row(out, "extension _C_ascend")
    for op in covered_ops():
        assert row(out, f"op {op}").startswith("ok ")
    assert "C++ CPU kernel" in row(out, "op _C_ascend::rotary_embedding")
    assert "vllm-ascend will run on this host (CPU backend)" in out


def test_npu_requested_with_old_cann_names_each_fix(tmp_path):
    home = tmp_path / "latest"
    (home / "x86_64-linux").mkdir(parents=True)
    (home / "x86_64-linux" / "ascend_toolkit_install.info").write_text("version=8.3.RC1\n")
    proc = doctor(VLLM_ASCEND_DEVICE="npu", ASCEND_HOME_PATH=str(home))
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert row(out, "torch-npu").startswith("FAIL not installed")
    assert "pip install torch-npu==2.13.0" in out
    assert row(out, "CANN toolkit").startswith("FAIL CANN 8.3.RC1 is older than 8.5.0")
    assert "install the CANN 9.2.0 toolkit" in out
    assert row(out, "NPU driver").startswith("FAIL no NPU driver")
    assert "VLLM_ASCEND_DEVICE=npu but no NPU is usable" in row(out, "backend")


@pytest.mark.timeout(240)
def test_selfcheck_passes_on_the_cpu_backend():
    proc = doctor("--selfcheck", timeout=240, VLLM_ASCEND_DEVICE="cpu")
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    assert f"{len(CASES)}/{len(CASES)} passed" in out
    for case in CASES:
        assert re.search(rf"^  pass {re.escape(case.name)} \(", out, re.M), case.name
    assert "skipped: the NPU kernels (no usable NPU on this host)" in out
    assert "pass CPU backend (default graph mode) vs transformers (float32): equal" in out
    assert "skipped: the NPU engine runs (no usable NPU on this host)" in out
    assert out.rstrip().endswith("self-check passed")


def test_cases_cover_every_npu_op_call_in_the_package():
    called = set()
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).parts
        if rel[0] in ("kernels", "selfcheck"):
            continue  # op definitions and the cases themselves
        text = path.read_text()
        called |= {f"npu::{n}" for n in re.findall(r"torch\.ops\.npu\.(\w+)\(", text)}
        called |= {f"_C_ascend::{n}" for n in re.findall(r"_ascend_ops\(\)\.(\w+)\(", text)}
        called |= {f"_C_ascend::{n}" for n in re.findall(r"torch\.ops\._C_ascend\.(\w+)\(", text)}
    assert "npu::npu_fused_infer_attention_score" in called  # the scan sees the call sites
    assert called <= covered_ops(), sorted(called - covered_ops())
    from vllm_ascend.kernels.extension import EXPECTED_SCHEMAS

    assert {f"_C_ascend::{n}" for n in EXPECTED_SCHEMAS} <= covered_ops()


def test_attention_cases_cover_the_engine_shapes():
    attn = [c for c in CASES if c.op == "npu::npu_fused_infer_attention_score"]
    names = " ".join(c.name for c in attn)
    for d in (64, 128, 192):
        for bs in (128, 256):
            assert f"_d{d}_bs{bs}" in names
    for part in ("strided_query", "window_prefill", "window_decode", "window_mixed"):
        assert part in names
    assert any(c.op == "npu::npu_scatter_pa_kv_cache" for c in CASES)


def _perturb(outputs: dict) -> dict:
    key = next(iter(outputs))
    t = outputs[key].clone()
    flat = t.view(-1)
    if t.dtype == torch.bool:
        flat[0] = ~flat[0]
    elif t.is_floating_point():
        i = int(torch.isfinite(flat).nonzero()[0])
        flat[i] = flat[i] + 10 * (1 + float(flat[torch.isfinite(flat)].abs().max()))
    else:
        flat[0] = flat[0] + 50
    return outputs | {key: t}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_each_case_rejects_a_wrong_result(case):
    """The check that --selfcheck relies on fails when one output element is wrong."""
    import vllm_ascend.kernels as kernels

    kernels.load()
    inputs = case.build(torch.Generator().manual_seed(SEED))
    wrong = _perturb(case.run(inputs, "cpu"))
    with pytest.raises(AssertionError):
        case.verify(inputs, wrong)
