"""Builds the native extension vllm_ascend._C_ascend with CMake (metadata is in pyproject.toml).

    pip install --no-build-isolation -e .   # editable; an unchanged re-run is a no-op build
    pip wheel --no-build-isolation .           # regular wheel

CMake/Ninja come from the `cmake` and `ninja` Python packages when installed (pyproject's build
requirements), else from PATH. The CMake tree is kept in build/cmake.<platform>-<python>/ so a
re-run only re-checks timestamps. Environment:

    MAX_JOBS                      parallel compile jobs (default: number of CPUs)
    ASCEND_HOME_PATH / ASCEND_TOOLKIT_HOME   CANN toolkit; when set and present, the Ascend C
                                  kernels and the NPU launchers are built as well
    SOC_VERSION                   Ascend SoC for the Ascend C kernels (default Ascend910B1)
    VLLM_ASCEND_BUILD_TYPE        CMake build type (default Release)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
EXT_NAME = "vllm_ascend._C_ascend"


def _find_cann() -> tuple[str, Path] | None:
    for var in ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME"):
        value = os.environ.get(var, "").strip()
        if value and Path(value).is_dir():
            return var, Path(value).resolve()
    return None


def _tool(module: str, attr: str, exe: str) -> str:
    """Path of `exe` from the pip package `module` (e.g. cmake>=3.26), else from PATH."""
    try:
        mod = __import__(module)
        candidate = Path(getattr(mod, attr)) / exe
        if candidate.is_file():
            return str(candidate)
    except (ImportError, AttributeError):
        pass
    found = shutil.which(exe)
    if found is None:
        raise RuntimeError(f"vllm-ascend: {exe} not found; pip install {module}")
    return found


def _max_jobs() -> int:
    raw = os.environ.get("MAX_JOBS", "").strip()
    if raw:
        try:
            return max(1, int(raw))
        except ValueError:
            raise RuntimeError(f"MAX_JOBS={raw!r} is not an integer") from None
    return os.cpu_count() or 1


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeExtension):
            return super().build_extension(ext)
        import torch.utils  # the installed torch (--no-build-isolation) or the isolated one

        target = Path(self.get_ext_fullpath(ext.name)).resolve()
        tag = f"{sysconfig.get_platform()}-{sys.implementation.cache_tag}"
        build_dir = ROOT / "build" / f"cmake.{tag}"
        build_dir.mkdir(parents=True, exist_ok=True)
        log_path = build_dir / "build.log"

        cann = _find_cann()
        if cann is not None:
            line = f"vllm-ascend: CANN found at {cann[1]} ({cann[0]}); building Ascend C kernels"
        else:
            line = "vllm-ascend: CANN not found (set ASCEND_HOME_PATH); building CPU kernels only"

        cmake = _tool("cmake", "CMAKE_BIN_DIR", "cmake")
        ninja = _tool("ninja", "BIN_DIR", "ninja")
        configure = [
            cmake,
            "-S", str(ROOT),
            "-B", str(build_dir),
            "-G", "Ninja",
            f"-DCMAKE_MAKE_PROGRAM={ninja}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('VLLM_ASCEND_BUILD_TYPE', 'Release')}",
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DTORCH_CMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DVLLM_ASCEND_EXT_SUFFIX={sysconfig.get_config_var('EXT_SUFFIX')}",
            f"-DVLLM_ASCEND_OUTPUT_DIR={build_dir / 'out'}",
            f"-DVLLM_ASCEND_CANN_PATH={cann[1] if cann else ''}",
            f"-DVLLM_ASCEND_SOC_VERSION={os.environ.get('SOC_VERSION', 'Ascend910B1')}",
        ]
        if shutil.which("ccache"):
            configure.append("-DCMAKE_CXX_COMPILER_LAUNCHER=ccache")

        with open(log_path, "w") as log:
            self._say(line, log)
            # Configure only when the arguments changed (or on the first build); otherwise the
            # generated ninja file re-runs CMake by itself if CMakeLists.txt changed.
            stamp = build_dir / "configure-args.txt"
            args_text = "\n".join(configure)
            if not (build_dir / "CMakeCache.txt").exists() or (
                not stamp.exists() or stamp.read_text() != args_text
            ):
                self._run(configure, log, log_path)
                stamp.write_text(args_text)
            self._run(
                [cmake, "--build", str(build_dir), "--target", "_C_ascend", "-j", str(_max_jobs())],
                log,
                log_path,
            )

        built = build_dir / "out" / target.name
        if not built.exists():
            raise RuntimeError(f"vllm-ascend: CMake did not produce {built}; see {log_path}")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or built.stat().st_mtime_ns != target.stat().st_mtime_ns:
            shutil.copy2(built, target)

    @staticmethod
    def _say(line: str, log) -> None:
        print(line, flush=True)
        log.write(line + "\n")
        log.flush()

    @staticmethod
    def _run(cmd: list[str], log, log_path: Path) -> None:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for out_line in proc.stdout:
            sys.stdout.write(out_line)
            log.write(out_line)
        if proc.wait() != 0:
            log.flush()
            raise RuntimeError(
                f"vllm-ascend: native build failed ({cmd[1] if len(cmd) > 1 else cmd[0]}); "
                f"full log: {log_path}"
            )


setup(
    ext_modules=[CMakeExtension(EXT_NAME)],
    cmdclass={"build_ext": CMakeBuild},
)
