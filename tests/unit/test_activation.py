"""The plugin activates only where it should, and explains itself where it must not."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vllm_ascend.device.select import check_vllm_version

PROBE = (
    "from vllm.platforms import current_platform as p; "
    "print(type(p).__name__, p.device_type)"
)


def run_python(code: str, device: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ASCEND_DEVICE"}
    if device is not None:
        env["VLLM_ASCEND_DEVICE"] = device
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


def test_cpu_backend_is_selected_explicitly():
    out = run_python(PROBE, "cpu")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "NPUPlatform cpu"


def test_inactive_without_npu_or_variable():
    out = run_python(PROBE, None)
    assert out.returncode == 0, out.stderr
    assert "NPUPlatform" not in out.stdout


def test_npu_requested_without_npu_fails_with_one_clear_line():
    out = run_python(PROBE, "npu")
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()
    assert len(last) == 1, out.stderr
    assert "VLLM_ASCEND_DEVICE=npu" in last[0] and "torch_npu is not installed" in last[0]


def test_invalid_device_value_names_choices():
    out = run_python(PROBE, "gpu")
    assert out.returncode == 1
    assert "auto, npu, cpu" in out.stderr


def test_importing_the_package_imports_neither_torch_npu_nor_current_platform():
    code = (
        "import sys, vllm_ascend, vllm_ascend.envs; "
        "import vllm.platforms as vp; "
        "print('torch_npu' in sys.modules, vp._current_platform is None)"
    )
    out = run_python(code, "cpu")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]


def test_wrong_vllm_release_stops_with_versions_and_command():
    # A real start-up path with vLLM's version reported as another release.
    code = (
        "import importlib.metadata as m; real = m.version; "
        "m.version = lambda n: '0.31.2' if n == 'vllm' else real(n); " + PROBE
    )
    out = run_python(code, "cpu")
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "0.32.x" in lines[0] and "0.31.2" in lines[0] and "pip install" in lines[0]


@pytest.mark.parametrize("version", ["0.32.0", "0.32.1", "0.32.0+empty"])
def test_matching_vllm_versions_pass(version):
    check_vllm_version(version)


@pytest.mark.parametrize("version", ["0.31.9", "0.33.0", "0.3.2"])
def test_other_vllm_versions_stop(version):
    with pytest.raises(SystemExit, match=version):
        check_vllm_version(version)


def test_installed_distribution_never_requires_torch_npu():
    from importlib.metadata import requires

    reqs = requires("vllm-ascend") or []
    base = [r for r in reqs if "extra ==" not in r]
    assert not any(r.lower().startswith(("torch-npu", "torch_npu")) for r in base)
    assert not any(r.lower().startswith("vllm") for r in base), "vLLM must not be a dependency"
    assert any(r.startswith("torch-npu") and 'extra == "npu"' in r for r in reqs)
