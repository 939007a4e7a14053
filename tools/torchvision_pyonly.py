"""Install a torchvision that imports beside the CPU build of torch, for the CPU backend's tests.

Qwen2-VL / Qwen2.5-VL image processing (in transformers and in vLLM) imports torchvision, which
must be the release built for the installed torch (torch 2.13.0 <-> torchvision 0.28.0). On an
Ascend host that is an ordinary install (see the README). On an x86_64 machine that reaches only
PyPI, the torchvision wheel for this torch is a CUDA build: its native library cannot load beside
the CPU torch, and its import then fails registering a fake kernel for ``torchvision::nms``, an op
that only the native library defines.

The image transforms these models use are pure Python on tensors. So, when the ordinary install
does not import, this tool repacks that same release as a pure-Python wheel:

* the native libraries (``_C.so``, ``image.so``, ``torchvision.libs/``) are left out: the detection
  ops (nms, roi_align, ...) and native JPEG/PNG decoding become unavailable, and raise
  torchvision's own "Couldn't load custom C++ ops" error if called;
* the two fake-kernel registrations that assume the native ops exist are made conditional on them;
* the version gains the local label ``+pyonly`` (instead of the build's ``+cu130``), so ``pip list``
  and ``torchvision.__version__`` say what it is.

The repacked wheel is cached outside the repository (``$VLLM_ASCEND_TEST_CACHE/wheels``, default
``~/.cache/vllm-ascend-tests/wheels``) and installed with ``--no-deps`` (a second or so).

    python tools/torchvision_pyonly.py 0.28.0      # run by `make install`
"""

from __future__ import annotations

import base64
import hashlib
import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile

NATIVE = ("torchvision/_C.so", "torchvision/image.so", "torchvision.libs/")
META_FILE = "torchvision/_meta_registrations.py"
VERSION_FILE = "torchvision/version.py"
FAKE_DECORATOR = "@torch.library.register_fake("
GUARDED_DECORATOR = "@_register_fake_if_native_ops("
GUARD = '''

def _register_fake_if_native_ops(name):
    # Repacked without the native library (tools/torchvision_pyonly.py in vllm-ascend): the op
    # exists only when that library loaded.
    if torchvision.extension._has_ops():
        return torch.library.register_fake(name)
    return lambda fn: fn
'''


def cache_dir() -> pathlib.Path:
    root = os.environ.get("VLLM_ASCEND_TEST_CACHE") or "~/.cache/vllm-ascend-tests"
    return pathlib.Path(root).expanduser() / "wheels"


def _pip(*args: str) -> None:
    subprocess.check_call([sys.executable, "-m", "pip", "--disable-pip-version-check", *args])


def imports_cleanly() -> bool:
    probe = "import torchvision.transforms.v2.functional"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _rewrite(name: str, data: bytes, version: str, local: str) -> tuple[str, bytes] | None:
    """One member of the original wheel -> its pure-Python counterpart (None: left out)."""
    if name.startswith(NATIVE) or name.endswith("/RECORD"):
        return None
    old_info = f"torchvision-{version}.dist-info/"
    if name.startswith(old_info):
        name = f"torchvision-{local}.dist-info/" + name[len(old_info):]
        text = data.decode()
        if name.endswith("/METADATA"):
            text = text.replace(f"\nVersion: {version}\n", f"\nVersion: {local}\n", 1)
        elif name.endswith("/WHEEL"):
            lines = [ln for ln in text.splitlines() if not ln.startswith(("Tag:", "Root-Is"))]
            text = "\n".join(lines + ["Root-Is-Purelib: true", "Tag: py3-none-any", ""])
        data = text.encode()
    elif name == VERSION_FILE:
        lines = data.decode().splitlines(keepends=True)
        lines = [f"__version__ = '{local}'\n" if ln.startswith("__version__") else ln
                 for ln in lines]
        data = "".join(lines).encode()
    elif name == META_FILE:
        text = data.decode()
        if text.count(FAKE_DECORATOR) != 2:
            raise SystemExit(f"{META_FILE}: expected two register_fake calls (nms, qnms); this "
                             "torchvision release needs the tool updated")
        head, sep, rest = text.partition("\n\n\n")
        data = (head + GUARD + sep + rest.replace(FAKE_DECORATOR, GUARDED_DECORATOR)).encode()
    return name, data


def repack(original: pathlib.Path, version: str, out_dir: pathlib.Path) -> pathlib.Path:
    local = f"{version}+pyonly"
    target = out_dir / f"torchvision-{local}-py3-none-any.whl"
    record_name = f"torchvision-{local}.dist-info/RECORD"
    records = []
    tmp = target.with_suffix(".partial")
    with zipfile.ZipFile(original) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.is_dir():
                continue
            rewritten = _rewrite(info.filename, src.read(info), version, local)
            if rewritten is None:
                continue
            name, data = rewritten
            dst.writestr(name, data)
            records.append(_record_line(name, data))
        dst.writestr(record_name, "\n".join(records + [f"{record_name},,", ""]))
    tmp.replace(target)
    return target


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    version = argv[0]
    if imports_cleanly():
        return 0
    out_dir = cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = out_dir / f"torchvision-{version}+pyonly-py3-none-any.whl"
    if not wheel.exists():
        with tempfile.TemporaryDirectory() as tmp:
            _pip("download", "-q", "--no-deps", "--only-binary=:all:", "-d", tmp,
                 f"torchvision=={version}")
            (original,) = pathlib.Path(tmp).glob("torchvision-*.whl")
            repack(original, version, out_dir)
    _pip("install", "-q", "--no-deps", "--force-reinstall", str(wheel))
    if not imports_cleanly():
        raise SystemExit("torchvision still fails to import after installing the pure-Python "
                         f"repack {wheel}")
    print(f"installed {wheel.name} (torchvision {version} without its native library)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
