"""setup.py: the Ascend C build decision (VLLM_ASCEND_BUILD_ASCENDC), its record in the module,
and the one message an install stops with when the Ascend C build fails. The CMake checks run a
real configure against a fake CANN tree in tmp_path (about a second each)."""

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vllm_ascend import envs

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def setup_py():
    spec = importlib.util.spec_from_file_location("vllm_ascend_setup_under_test",
                                                  ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)  # does not run setup(): that is behind __main__
    yield module
    sys.modules.pop(spec.name, None)


def broken_cann(root: Path) -> Path:
    """A CANN tree whose ascendc.cmake fails, as a broken or mismatched toolkit would."""
    cmake_dir = root / "tools" / "tikcpp" / "ascendc_kernel_cmake"
    cmake_dir.mkdir(parents=True)
    (cmake_dir / "ascendc.cmake").write_text(
        'message(FATAL_ERROR "fake CANN: ascendc.cmake is broken on purpose")\n')
    return root


# ---- the decision ------------------------------------------------------------------------------


def defines(plan, env=None):
    return dict(d[2:].split("=", 1) for d in plan.cmake_defines(env or {}))


def test_without_cann_builds_cpu_kernels_and_records_no_opt_out(setup_py, tmp_path):
    plan = setup_py.plan_build({"ASCEND_HOME_PATH": str(tmp_path / "missing")})
    assert plan.cann is None and not plan.ascendc and not plan.opt_out
    assert defines(plan) == {"VLLM_ASCEND_CANN_PATH": "", "CMAKE_CXX_FLAGS": ""}
    assert "CANN not found" in plan.summary()


@pytest.mark.parametrize("var", ["ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME"])
def test_with_cann_builds_ascendc(setup_py, tmp_path, var):
    plan = setup_py.plan_build({var: str(tmp_path), "CXXFLAGS": "-g"})
    assert plan.cann == (var, tmp_path.resolve()) and plan.ascendc and not plan.opt_out
    assert defines(plan, {"CXXFLAGS": "-g"}) == {
        "VLLM_ASCEND_CANN_PATH": str(tmp_path.resolve()), "CMAKE_CXX_FLAGS": "-g"}


@pytest.mark.parametrize("value", ["0", "off", "false", "No"])
def test_opt_out_builds_cpu_only_even_with_cann_and_records_it(setup_py, tmp_path, value):
    env = {"ASCEND_HOME_PATH": str(tmp_path), "VLLM_ASCEND_BUILD_ASCENDC": value}
    plan = setup_py.plan_build(env)
    assert plan.cann is not None and not plan.ascendc and plan.opt_out
    assert defines(plan, env) == {"VLLM_ASCEND_CANN_PATH": "",
                                  "CMAKE_CXX_FLAGS": "-DVLLM_ASCEND_ASCENDC_OPT_OUT=1"}
    assert "VLLM_ASCEND_BUILD_ASCENDC=0" in plan.summary() and "CANN found" in plan.summary()


def test_opt_out_without_cann_is_recorded_too(setup_py):
    """A wheel built CPU-only on purpose elsewhere still runs on an NPU (compositions)."""
    plan = setup_py.plan_build({"VLLM_ASCEND_BUILD_ASCENDC": "0"})
    assert plan.opt_out and not plan.ascendc
    assert "VLLM_ASCEND_ASCENDC_OPT_OUT" in defines(plan)["CMAKE_CXX_FLAGS"]


def test_invalid_value_is_an_error(setup_py):
    with pytest.raises(setup_py.NativeBuildError, match="VLLM_ASCEND_BUILD_ASCENDC='maybe'"):
        setup_py.plan_build({"VLLM_ASCEND_BUILD_ASCENDC": "maybe"})


@pytest.mark.parametrize("value", ["", "1", "yes", "ON", "0", "off", "False"])
def test_setup_reads_the_variable_like_envs(setup_py, monkeypatch, value):
    monkeypatch.setenv("VLLM_ASCEND_BUILD_ASCENDC", value)
    assert setup_py.plan_build({"VLLM_ASCEND_BUILD_ASCENDC": value}).opt_out is (
        not envs.VLLM_ASCEND_BUILD_ASCENDC)
    assert "VLLM_ASCEND_BUILD_ASCENDC" in envs.describe()
    assert "VLLM_ASCEND_BUILD_ASCENDC" in setup_py.__doc__


def test_failure_message_names_log_and_opt_out(setup_py, tmp_path):
    log = tmp_path / "build.log"
    with_cann = setup_py.plan_build({"ASCEND_HOME_PATH": str(tmp_path)})
    msg = with_cann.failure_message("compile", log)
    assert str(log) in msg and "VLLM_ASCEND_BUILD_ASCENDC=0" in msg and "Ascend C" in msg
    # Without CANN there is nothing to opt out of: the message does not suggest it.
    cpu_only = setup_py.plan_build({})
    assert "VLLM_ASCEND_BUILD_ASCENDC" not in cpu_only.failure_message("compile", log)
    assert str(log) in cpu_only.failure_message("compile", log)


def test_install_copies_the_module_and_the_kernel_library_beside_it(setup_py, tmp_path):
    """On CANN hosts CMake also writes libvllm_ascend_kernels.so, which the module loads through
    its $ORIGIN rpath: it must land next to the module."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "_C_ascend.abi3.so").write_bytes(b"module")
    (out / "libvllm_ascend_kernels.so").write_bytes(b"kernels")
    (out / "notes.txt").write_text("not installed")
    target = tmp_path / "pkg" / "vllm_ascend" / "_C_ascend.abi3.so"
    got = setup_py.install_outputs(out / "_C_ascend.abi3.so", target)
    assert got == [target, target.parent / "libvllm_ascend_kernels.so"]
    assert target.read_bytes() == b"module"
    assert (target.parent / "libvllm_ascend_kernels.so").read_bytes() == b"kernels"
    assert sorted(p.name for p in target.parent.iterdir()) == [
        "_C_ascend.abi3.so", "libvllm_ascend_kernels.so"]


# ---- real CMake configure against a fake CANN --------------------------------------------------


def test_broken_ascendc_toolchain_stops_with_the_log_and_the_variable(setup_py, tmp_path):
    cann = broken_cann(tmp_path / "cann")
    plan = setup_py.plan_build({"ASCEND_HOME_PATH": str(cann)})
    build_dir = tmp_path / "build"
    with pytest.raises(setup_py.NativeBuildError) as err:
        setup_py.run_cmake(plan, build_dir, env={})
    log = build_dir / "build.log"
    msg = str(err.value)
    assert str(log) in msg and "VLLM_ASCEND_BUILD_ASCENDC=0" in msg and "configure" in msg
    text = log.read_text()
    assert "broken on purpose" in text and msg in text  # the log holds the cause and the verdict
    assert not (build_dir / "configure-args.txt").exists()  # a re-run configures again


def test_opt_out_configures_cpu_only_with_the_record_despite_broken_cann(setup_py, tmp_path):
    cann = broken_cann(tmp_path / "cann")
    env = {"ASCEND_HOME_PATH": str(cann), "VLLM_ASCEND_BUILD_ASCENDC": "0"}
    build_dir = tmp_path / "build"
    setup_py.run_cmake(setup_py.plan_build(env), build_dir, build=False, env=env)
    cache = (build_dir / "CMakeCache.txt").read_text()
    assert "VLLM_ASCEND_CANN_PATH:PATH=\n" in cache
    assert "CMAKE_CXX_FLAGS:STRING=-DVLLM_ASCEND_ASCENDC_OPT_OUT=1\n" in cache
    assert "broken on purpose" not in (build_dir / "build.log").read_text()


_SETUP_SCRIPT = textwrap.dedent(
    """
    import importlib.util, sys
    from pathlib import Path
    root, tmp = Path(sys.argv[1]), Path(sys.argv[2])
    spec = importlib.util.spec_from_file_location("va_setup", root / "setup.py")
    m = importlib.util.module_from_spec(spec)
    sys.modules["va_setup"] = m
    spec.loader.exec_module(m)
    m.default_build_dir = lambda: tmp / "cmake"  # keep the real build tree untouched
    from setuptools import setup
    sys.argv = ["setup.py", "-q", "build_ext", "--build-lib", str(tmp / "lib"),
                "--build-temp", str(tmp / "temp")]
    setup(name="vllm-ascend-build-test", version="0", py_modules=[],
          ext_modules=[m.CMakeExtension(m.EXT_NAME)], cmdclass={"build_ext": m.CMakeBuild})
    """
)


def test_install_error_is_one_message_without_traceback(tmp_path):
    """setuptools turns the failure into one `error: ...` line (what pip shows last)."""
    cann = broken_cann(tmp_path / "cann")
    env = {k: v for k, v in os.environ.items()
           if k not in ("ASCEND_TOOLKIT_HOME", "VLLM_ASCEND_BUILD_ASCENDC")}
    env["ASCEND_HOME_PATH"] = str(cann)
    proc = subprocess.run(
        [sys.executable, "-c", _SETUP_SCRIPT, str(ROOT), str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    log = tmp_path / "cmake" / "build.log"
    assert errors[0].startswith("error: vllm-ascend: the native build with the Ascend C kernels")
    assert str(log) in errors[0]
    assert "VLLM_ASCEND_BUILD_ASCENDC=0" in proc.stderr.split("error:", 1)[1]
