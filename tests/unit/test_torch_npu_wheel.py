"""The fidelity tests' reference files: an unreachable wheel fails loudly, unless the host is
declared offline."""

from __future__ import annotations

import subprocess
import sys
import textwrap

TEST = textwrap.dedent('''
    import torch_npu_wheel

    def test_needs_the_wheel():
        torch_npu_wheel.require_reference_files()
''')


def run_pytest(tmp_path, **env):
    (tmp_path / "test_probe.py").write_text(TEST)
    tests_dir = str(__import__("pathlib").Path(__file__).resolve().parents[1])
    base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": tests_dir, "HOME": str(tmp_path),
            # An empty cache and an index that cannot answer: the download must fail.
            "VLLM_ASCEND_TEST_CACHE": str(tmp_path / "cache"),
            "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_NO_INDEX": "1",
            "PIP_FIND_LINKS": "", "PIP_CONFIG_FILE": "/dev/null"}
    base.update(env)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-o", "addopts=", "-rs", str(tmp_path / "test_probe.py")],
                          capture_output=True, text=True, env=base, cwd=tmp_path, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


def test_unreachable_wheel_fails_with_the_reason(tmp_path):
    rc, out = run_pytest(tmp_path)
    assert rc == 1, out
    assert "1 failed" in out and "reference files unavailable" in out
    assert "VLLM_ASCEND_TEST_OFFLINE=1" in out


def test_declared_offline_host_skips_and_says_why(tmp_path):
    rc, out = run_pytest(tmp_path, VLLM_ASCEND_TEST_OFFLINE="1")
    assert rc == 0, out
    assert "1 skipped" in out and "VLLM_ASCEND_TEST_OFFLINE=1" in out


def test_an_incomplete_extracted_dir_fails(tmp_path):
    rc, out = run_pytest(tmp_path, VLLM_ASCEND_TORCH_NPU_DIR=str(tmp_path / "empty"))
    assert rc == 1 and "lacks" in out, out
