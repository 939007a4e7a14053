"""Builds the native extension vllm_ascend._C_ascend with CMake (metadata is in pyproject.toml).

    pip install --no-build-isolation -e .   # editable; an unchanged re-run is a no-op build
    pip wheel --no-build-isolation .           # regular wheel

CMake/Ninja come from the `cmake` and `ninja` Python packages when installed (pyproject's build
requirements), else from PATH. The CMake tree is kept in build/cmake.<platform>-<python>/ so a
re-run only re-checks timestamps; its build.log holds the full output of the last build.
Environment:

    MAX_JOBS                      parallel compile jobs (default: number of CPUs)
    ASCEND_HOME_PATH / ASCEND_TOOLKIT_HOME   CANN toolkit; when set and present, the Ascend C
                                  kernels and the NPU launchers are built as well
    VLLM_ASCEND_BUILD_ASCENDC     1 (default): build the Ascend C kernels wherever CANN is found;
                                  if that build fails, the install stops and names the build log.
                                  0: build the CPU kernels only, even where CANN is present. The
                                  module records the opt-out (_C_ascend.ASCENDC_OPT_OUT), and on an
                                  NPU the plugin then runs the _C_ascend ops as compositions of
                                  torch / torch_npu ops (slower; logged once at start-up) instead
                                  of refusing the build as incomplete.
    SOC_VERSION                   Ascend SoC for the Ascend C kernels (default Ascend910B1)
    VLLM_ASCEND_BUILD_TYPE        CMake build type (default Release)
    CXXFLAGS                      extra C++ flags, passed on to CMake
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import ExecError

ROOT = Path(__file__).resolve().parent
EXT_NAME = "vllm_ascend._C_ascend"
CANN_VARIABLES = ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME")
OPT_OUT_VARIABLE = "VLLM_ASCEND_BUILD_ASCENDC"
# Compile definition that makes the module report ASCENDC_OPT_OUT = True (csrc/torch_binding.cpp).
OPT_OUT_DEFINE = "-DVLLM_ASCEND_ASCENDC_OPT_OUT=1"


class NativeBuildError(ExecError):
    """The CMake build failed. A distutils error, so setuptools prints its message as one
    ``error: ...`` line instead of a traceback."""


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    """A boolean variable, spelled as in vllm_ascend/envs.py (loaded by path: it needs only the
    standard library, while importing the package would import torch)."""
    path = ROOT / "vllm_ascend" / "envs.py"
    spec = importlib.util.spec_from_file_location("_vllm_ascend_envs", path)
    envs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(envs)
    try:
        return envs.parse_flag(name, env.get(name), default)
    except ValueError as exc:
        raise NativeBuildError(f"vllm-ascend: {exc}") from None


def _find_cann(env: Mapping[str, str]) -> tuple[str, Path] | None:
    for var in CANN_VARIABLES:
        value = env.get(var, "").strip()
        if value and Path(value).is_dir():
            return var, Path(value).resolve()
    return None


@dataclass(frozen=True)
class BuildPlan:
    """What this build compiles, decided from the environment alone (see ``plan_build``)."""

    cann: tuple[str, Path] | None  # (variable, toolkit root) when CANN was found
    ascendc: bool  # compile the Ascend C kernels and the PrivateUse1 launchers
    opt_out: bool  # VLLM_ASCEND_BUILD_ASCENDC=0: recorded in the module for the runtime

    def summary(self) -> str:
        if self.ascendc:
            var, path = self.cann  # type: ignore[misc]
            return f"vllm-ascend: CANN found at {path} ({var}); building Ascend C kernels"
        if self.cann is not None:
            return (
                f"vllm-ascend: CANN found at {self.cann[1]} ({self.cann[0]}), but "
                f"{OPT_OUT_VARIABLE}=0: building CPU kernels only; on an NPU the _C_ascend ops "
                "will run as slower torch/torch_npu compositions"
            )
        if self.opt_out:
            return (
                f"vllm-ascend: {OPT_OUT_VARIABLE}=0: building CPU kernels only; on an NPU the "
                "_C_ascend ops will run as slower torch/torch_npu compositions"
            )
        return "vllm-ascend: CANN not found (set ASCEND_HOME_PATH); building CPU kernels only"

    def cmake_defines(self, env: Mapping[str, str]) -> list[str]:
        cann_path = str(self.cann[1]) if self.ascendc and self.cann else ""
        # CMAKE_CXX_FLAGS is always passed (CXXFLAGS plus, for an opt-out, the define) so a
        # cached value from an earlier configure never outlives the choice.
        cxx_flags = " ".join(f for f in (env.get("CXXFLAGS", "").strip(),
                                          OPT_OUT_DEFINE if self.opt_out else "") if f)
        return [f"-DVLLM_ASCEND_CANN_PATH={cann_path}", f"-DCMAKE_CXX_FLAGS={cxx_flags}"]

    def failure_message(self, step: str, log_path: Path) -> str:
        if not self.ascendc:
            return f"vllm-ascend: native build failed ({step}); full log: {log_path}"
        var, path = self.cann  # type: ignore[misc]
        return (
            f"vllm-ascend: the native build with the Ascend C kernels failed ({step}; CANN at "
            f"{path} from {var}). Full log: {log_path}\n"
            f"  To install without the Ascend C kernels, set {OPT_OUT_VARIABLE}=0: the CPU kernels "
            "are built and, on the NPU, the _C_ascend ops run as slower compositions of "
            "torch/torch_npu ops (the plugin says so at start-up)."
        )


def plan_build(env: Mapping[str, str] | None = None) -> BuildPlan:
    """Decide from the environment whether to build the Ascend C kernels."""
    env = os.environ if env is None else env
    want_ascendc = _flag(env, OPT_OUT_VARIABLE, True)
    cann = _find_cann(env)
    return BuildPlan(cann=cann, ascendc=want_ascendc and cann is not None,
                     opt_out=not want_ascendc)


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
        raise NativeBuildError(f"vllm-ascend: {exe} not found; pip install {module}")
    return found


def _max_jobs() -> int:
    raw = os.environ.get("MAX_JOBS", "").strip()
    if raw:
        try:
            return max(1, int(raw))
        except ValueError:
            raise NativeBuildError(f"MAX_JOBS={raw!r} is not an integer") from None
    return os.cpu_count() or 1


def default_build_dir() -> Path:
    tag = f"{sysconfig.get_platform()}-{sys.implementation.cache_tag}"
    return ROOT / "build" / f"cmake.{tag}"


def run_cmake(plan: BuildPlan, build_dir: Path, *, build: bool = True,
              env: Mapping[str, str] | None = None) -> Path:
    """Configure (when needed) and build the module in ``build_dir``; returns the built file.

    The output goes to the terminal and to ``build_dir/build.log``. A failing step raises
    ``NativeBuildError`` with ``plan.failure_message``. ``build=False`` only configures.
    """
    import torch.utils  # the installed torch (--no-build-isolation) or the isolated one

    env = os.environ if env is None else env
    build_dir.mkdir(parents=True, exist_ok=True)
    log_path = build_dir / "build.log"
    cmake = _tool("cmake", "CMAKE_BIN_DIR", "cmake")
    ninja = _tool("ninja", "BIN_DIR", "ninja")
    configure = [
        cmake,
        "-S", str(ROOT),
        "-B", str(build_dir),
        "-G", "Ninja",
        f"-DCMAKE_MAKE_PROGRAM={ninja}",
        f"-DCMAKE_BUILD_TYPE={env.get('VLLM_ASCEND_BUILD_TYPE', 'Release')}",
        f"-DPython3_EXECUTABLE={sys.executable}",
        f"-DTORCH_CMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
        f"-DVLLM_ASCEND_EXT_SUFFIX={sysconfig.get_config_var('EXT_SUFFIX')}",
        f"-DVLLM_ASCEND_OUTPUT_DIR={build_dir / 'out'}",
        *plan.cmake_defines(env),
        f"-DVLLM_ASCEND_SOC_VERSION={env.get('SOC_VERSION', 'Ascend910B1')}",
    ]
    if shutil.which("ccache"):
        configure.append("-DCMAKE_CXX_COMPILER_LAUNCHER=ccache")

    with open(log_path, "w") as log:
        _say(plan.summary(), log)
        # Configure only when the arguments changed (or on the first build); otherwise the
        # generated ninja file re-runs CMake by itself if CMakeLists.txt changed.
        stamp = build_dir / "configure-args.txt"
        args_text = "\n".join(configure)
        if not (build_dir / "CMakeCache.txt").exists() or (
            not stamp.exists() or stamp.read_text() != args_text
        ):
            stamp.unlink(missing_ok=True)  # a failed configure must re-run next time
            _run(configure, log, plan.failure_message("CMake configure", log_path))
            stamp.write_text(args_text)
        if build:
            _run(
                [cmake, "--build", str(build_dir), "--target", "_C_ascend",
                 "-j", str(_max_jobs())],
                log,
                plan.failure_message("compile", log_path),
            )
    return build_dir / "out" / f"_C_ascend{sysconfig.get_config_var('EXT_SUFFIX')}"


def _say(line: str, log) -> None:
    print(line, flush=True)
    log.write(line + "\n")
    log.flush()


def _run(cmd: list[str], log, failure: str) -> None:
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for out_line in proc.stdout:
        sys.stdout.write(out_line)
        log.write(out_line)
    if proc.wait() != 0:
        log.write(failure + "\n")
        log.flush()
        raise NativeBuildError(failure)


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeExtension):
            return super().build_extension(ext)
        target = Path(self.get_ext_fullpath(ext.name)).resolve()
        build_dir = default_build_dir()
        built = run_cmake(plan_build(), build_dir)
        if not built.exists() or built.name != target.name:
            raise NativeBuildError(
                f"vllm-ascend: CMake did not produce {target.name} in {built.parent}; "
                f"see {build_dir / 'build.log'}"
            )
        install_outputs(built, target)


def install_outputs(built: Path, target: Path) -> list[Path]:
    """Copy the module to ``target`` and the shared libraries CMake put beside it (on CANN hosts
    the Ascend C kernel library, which the module finds through its $ORIGIN rpath) next to it.
    Unchanged files (same mtime) are not copied again. Returns the files now at the target."""
    target.parent.mkdir(parents=True, exist_ok=True)
    pairs = [(built, target)]
    pairs += [(lib, target.parent / lib.name) for lib in sorted(built.parent.glob("lib*.so*"))]
    for src, dst in pairs:
        if not dst.exists() or src.stat().st_mtime_ns != dst.stat().st_mtime_ns:
            shutil.copy2(src, dst)
    return [dst for _, dst in pairs]


if __name__ == "__main__":  # pip / setuptools' build backend runs this file as __main__
    setup(
        ext_modules=[CMakeExtension(EXT_NAME)],
        cmdclass={"build_ext": CMakeBuild},
    )
