"""``python -m vllm_ascend.doctor`` (script ``vllm-ascend-doctor``): will the plugin run here?

Prints one table of everything that decides it: Python, torch, torch-npu, vLLM (release, empty
build or not), the CANN toolkit and its match with torch-npu, the NPU driver, visible NPUs and
``ASCEND_RT_VISIBLE_DEVICES``, the backend ``VLLM_ASCEND_DEVICE`` selects, the compiled extension,
the kernel each op will use, and the platform vLLM resolves (in a subprocess, so this process never
imports vLLM's platform). Every failing row names its fix. Exit status 1 when any row would stop
the plugin, else 0. Nothing here imports torch_npu unless it is installed and CANN fits it, and a
missing piece is a row, never a crash.

``--selfcheck`` then runs every NPU op the engine calls against its CPU golden reference and a
tiny end-to-end greedy run (see ``vllm_ascend.selfcheck``); without an NPU it runs the CPU kernels
and the CPU backend, and says what it skipped.
"""

from __future__ import annotations

import argparse
import glob
import importlib.metadata
import importlib.util
import json
import os
import platform as host_platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from vllm_ascend.device import host_checks
from vllm_ascend.device.select import SUPPORTED_VLLM, VLLM_INSTALL_COMMAND

OK, INFO, WARN, FAIL = "ok", "info", "warn", "FAIL"
TORCH_VERSION = "2.13.0"
CPU_BACKEND_FIX = (
    "export VLLM_ASCEND_DEVICE=cpu to run the plugin on the CPU backend (testing and development)"
)
NPU_SETUP_FIX = "on an Ascend host: install the NPU driver, CANN and torch-npu (README: Install)"
PROBE_FLAG = "--probe-platform"


@dataclass
class Row:
    check: str
    found: str
    status: str
    fix: str = ""


@dataclass
class Host:
    """What the rows were decided from (the self-check reuses it)."""

    requested: str | None
    npu_usable: bool
    torch_npu_imported: bool


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def python_row() -> Row:
    v = sys.version_info
    found = f"{host_platform.python_version()} ({sys.executable})"
    if (3, 10) <= v[:2] <= (3, 12):
        return Row("Python", found, OK)
    return Row("Python", found, FAIL, "use Python 3.10-3.12 (3.11 recommended)")


def torch_row() -> Row:
    installed = _version("torch")
    if installed is None:
        return Row("torch", "not installed", FAIL, f"pip install torch=={TORCH_VERSION}")
    if installed.split("+")[0] != TORCH_VERSION:
        return Row("torch", installed, FAIL, f"pip install torch=={TORCH_VERSION}")
    return Row("torch", installed, OK)


def vllm_rows() -> list[Row]:
    installed = _version("vllm")
    if installed is None:
        return [Row("vLLM", "not installed", FAIL, VLLM_INSTALL_COMMAND)]
    spec = importlib.util.find_spec("vllm")  # the top-level package is located, not imported
    roots = list(spec.submodule_search_locations or []) if spec else []
    compiled = [p for root in roots for p in glob.glob(os.path.join(root, "_C*.so"))]
    rows = []
    if installed.split("+")[0].startswith(SUPPORTED_VLLM + "."):
        rows.append(Row("vLLM", installed, OK))
    else:
        rows.append(Row("vLLM", f"{installed} (vllm-ascend needs {SUPPORTED_VLLM}.x)", FAIL,
                        VLLM_INSTALL_COMMAND))
    if compiled:
        rows.append(Row("vLLM build", f"CUDA kernels present ({Path(compiled[0]).name})", WARN,
                        f"reinstall vLLM's empty build: {VLLM_INSTALL_COMMAND}"))
    else:
        rows.append(Row("vLLM build", "empty build (no vllm._C)", OK))
    return rows


def requested_backend() -> tuple[str | None, Row]:
    from vllm_ascend import envs

    try:
        value = envs.VLLM_ASCEND_DEVICE
    except ValueError as exc:
        return None, Row("VLLM_ASCEND_DEVICE", str(exc), FAIL, "set it to auto, npu or cpu")
    raw = os.environ.get("VLLM_ASCEND_DEVICE")
    return value, Row("VLLM_ASCEND_DEVICE", value if raw else f"{value} (unset)", INFO)


def ascend_rows(requested: str | None) -> tuple[list[Row], bool]:
    """torch-npu, CANN and driver rows; True when they fit together (torch_npu may be imported).

    Off the NPU path (CPU backend requested, or nothing Ascend installed) a missing piece is
    information, not a failure."""
    report = host_checks.check_host(os.environ)
    nothing_installed = (report.torch_npu is None and report.toolkit_home is None
                         and report.driver is None)
    needed = requested == "npu" or (requested == "auto" and not nothing_installed)
    bad = FAIL if needed else INFO
    by_topic: dict[str, host_checks.Problem] = {}
    for problem in report.problems:
        by_topic.setdefault(problem.topic, problem)

    rows = []
    p = by_topic.get("torch-npu")
    rows.append(Row("torch-npu", report.torch_npu or "not installed", bad if p else OK,
                    p.fix if p and needed else ""))
    p = by_topic.get("CANN")
    if p:
        cann = p.what + (f" ({report.cann_file})" if report.cann_file else "")
    else:
        cann = f"{report.cann} ({report.cann_file})"
    if p:
        rows.append(Row("CANN toolkit", cann, bad, p.fix if needed else ""))
    else:
        rows.append(Row("CANN toolkit", cann, WARN if report.notes else OK,
                        "; ".join(report.notes)))
    rows.append(Row(
        "CANN for torch-npu " + host_checks.TORCH_NPU_VERSION,
        f">= {host_checks.CANN_MINIMUM}, paired with {host_checks.CANN_PAIRED} "
        f"(source: {host_checks.CANN_SOURCE})", INFO))
    p = by_topic.get("driver")
    rows.append(Row("NPU driver", report.driver or p.what if p else report.driver or "",
                    bad if p else OK, p.fix if p and needed else ""))
    return rows, report.ok


def _npu_count_subprocess() -> tuple[int | None, str]:
    """torch.npu.device_count() in a child (a broken runtime can hang or abort on import)."""
    code = "import torch, torch_npu; print(torch.npu.device_count())"
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=120)
    except subprocess.TimeoutExpired:
        return None, "torch_npu import timed out"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"torch_npu failed to start: {last}"
    return int(proc.stdout.strip().splitlines()[-1]), ""


def npu_rows(requested: str | None, stack_ok: bool) -> tuple[list[Row], int]:
    devices = sorted(glob.glob("/dev/davinci[0-9]*"))
    visible = os.environ.get("ASCEND_RT_VISIBLE_DEVICES")
    count, why = 0, ""
    if not devices:
        why = "no /dev/davinci* device on this host"
    elif not stack_ok:
        why = f"{len(devices)} NPU device file(s), but torch-npu/CANN/driver do not fit (above)"
    elif importlib.util.find_spec("torch_npu") is None:
        why = "torch_npu is not installed"
    else:
        n, err = _npu_count_subprocess()
        count, why = (n or 0), err
        if n == 0:
            why = "torch.npu.device_count() is 0"
    found = f"{count} visible" if count else f"none ({why})"
    found += f"; ASCEND_RT_VISIBLE_DEVICES={visible}" if visible is not None else ""
    if count:
        status, fix = OK, ""
    elif requested == "cpu":
        status, fix = INFO, ""
        found += "; not needed: the CPU backend is selected"
    else:
        status = FAIL if requested == "npu" else INFO  # auto: the backend row says what follows
        fix = (NPU_SETUP_FIX if not devices else
               "check npu-smi info and ASCEND_RT_VISIBLE_DEVICES (device ids, comma-separated)")
    return [Row("NPUs", found, status, fix)], count


def backend_row(requested: str | None, npus: int) -> tuple[Row, str | None]:
    if requested == "cpu":
        return Row("backend", "cpu (CPU backend: CPU kernels, gloo)", OK), "cpu"
    if npus:
        return Row("backend", "npu (hccl)", OK), "npu"
    why = ("no NPU is present, so vllm-ascend stays inactive" if requested == "auto" else
           "VLLM_ASCEND_DEVICE=npu but no NPU is usable: vllm-ascend stops at start-up")
    return Row("backend", f"none: {why}", FAIL, CPU_BACKEND_FIX), None


def extension_rows(backend: str | None) -> list[Row]:
    from vllm_ascend.kernels import extension

    try:
        info = extension.build_info()
    except extension.ExtensionError as exc:
        first, *rest = str(exc).splitlines()
        return [Row("extension _C_ascend", first, FAIL, " ".join(s.strip() for s in rest))]
    except Exception as exc:  # e.g. a torch ABI mismatch
        return [Row("extension _C_ascend", f"{type(exc).__name__}: {exc}", FAIL,
                    extension.REBUILD_COMMAND)]
    kernels = "Ascend C + C++ CPU" if info["with_cann"] else "C++ CPU only (built without CANN)"
    found = (f"current; {kernels}; CPU ISA {info['cpu_kernel_isa']}; SoC "
             f"{info['soc_version']}; {info['path']}")
    if backend == "npu" and not info["with_cann"]:
        return [Row("extension _C_ascend", found, FAIL,
                    "source CANN's set_env.sh, then rebuild: " + extension.REBUILD_COMMAND)]
    return [Row("extension _C_ascend", found, OK)]


def _registered_in(qualname: str, key: str) -> str:
    """The file that registered ``qualname``'s kernel for dispatch key ``key`` ('' if none)."""
    import torch

    for line in torch._C._dispatch_dump_table(qualname).splitlines():
        if line.startswith(key + ":"):
            return line
    return ""


def _cpu_kernel_source(qualname: str) -> str:
    line = _registered_in(qualname, "CPU")
    return "C++ CPU kernel" if ".cpp" in line else "Python CPU kernel (reference)"


def kernel_rows(backend: str | None) -> list[Row]:
    """Which kernel serves each op the engine calls, on the backend that will run."""
    import torch

    from vllm_ascend import kernels
    from vllm_ascend.selfcheck.cases import covered_ops

    try:
        kernels.load()
    except Exception as exc:
        return [Row("kernels", f"cannot load ({type(exc).__name__}: {exc})", FAIL,
                    "fix the extension row above")]
    if backend == "npu":
        try:
            # The device layer's NPU backend imports torch_npu (the npu:: NPU kernels).
            import vllm_ascend.device.npu  # noqa: F401
        except Exception as exc:
            return [Row("kernels", f"torch_npu failed to import: {exc}", FAIL,
                        "check the CANN install (rows above)")]
    rows = []
    for qualname in sorted(covered_ops()):
        ns = qualname.split("::")[0]
        try:
            has_cpu = torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CPU")
            has_npu = torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "PrivateUse1")
        except RuntimeError:
            rows.append(Row(f"op {qualname}", "not registered", FAIL,
                            "rebuild the extension: pip install --no-build-isolation -e ."))
            continue
        if backend == "npu":
            native = "Ascend C kernel" if ns == "_C_ascend" else "torch_npu kernel"
            if ns == "_C_ascend" and ".py" in _registered_in(qualname, "PrivateUse1"):
                native = "composed of torch_npu ops (vllm_ascend/kernels)"
            rows.append(Row(f"op {qualname}", native if has_npu else "no NPU kernel",
                            OK if has_npu else FAIL,
                            "" if has_npu else ("rebuild with CANN set up" if ns == "_C_ascend"
                                                else f"install torch-npu=="
                                                     f"{host_checks.TORCH_NPU_VERSION}")))
        else:
            source = _cpu_kernel_source(qualname) if has_cpu else "no CPU kernel"
            rows.append(Row(f"op {qualname}", source, OK if has_cpu else FAIL))
    return rows


def _probe_platform() -> None:
    """Child side of platform_row: print what vLLM resolves as its platform."""
    result: dict[str, str] = {}
    try:
        from vllm.platforms import current_platform

        result = dict(platform=type(current_platform).__name__,
                      device_type=str(current_platform.device_type))
    except BaseException as exc:  # SystemExit from the plugin's start-up check included
        result = dict(error=f"{type(exc).__name__}: {exc}")
    print(json.dumps(result), flush=True)


def platform_row(requested: str | None) -> Row:
    try:
        proc = subprocess.run([sys.executable, "-m", "vllm_ascend.doctor", PROBE_FLAG],
                              capture_output=True, text=True, timeout=180)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except Exception as exc:
        return Row("vLLM platform", f"probe failed: {type(exc).__name__}: {exc}", FAIL,
                   "run: python -c 'from vllm.platforms import current_platform'")
    if "error" in result:
        return Row("vLLM platform", result["error"], FAIL, "see the rows above")
    found = f"{result['platform']} (device_type {result['device_type'] or '-'})"
    if result["platform"] == "NPUPlatform":
        return Row("vLLM platform", found, OK)
    return Row("vLLM platform", found + "; vllm-ascend is not active", FAIL,
               "follows from the backend row")


def collect() -> tuple[list[Row], Host]:
    rows = [python_row(), torch_row(), *vllm_rows()]
    requested, row = requested_backend()
    rows.append(row)
    ascend, stack_ok = ascend_rows(requested)
    rows += ascend
    npu, count = npu_rows(requested, stack_ok)
    rows += npu
    brow, backend = backend_row(requested, count)
    rows.append(brow)
    rows += extension_rows(backend)
    rows += kernel_rows(backend)
    rows.append(platform_row(requested))
    host = Host(requested, backend == "npu", backend == "npu")
    return rows, host


def render(rows: list[Row]) -> str:
    w0 = max(len(r.check) for r in rows)
    w2 = max(len(r.status) for r in rows)
    lines = []
    for r in rows:
        line = f"{r.check:<{w0}}  {r.status:<{w2}}  {r.found}"
        if r.fix:
            line += f"\n{'':<{w0}}  {'':<{w2}}  -> fix: {r.fix}"
        lines.append(line)
    head = f"{'check':<{w0}}  {'status':<{w2}}  found"
    return "\n".join([head, "-" * len(head)] + lines)


def selfcheck(host: Host) -> bool:
    """Run the op cases and the tiny e2e run; print each result; True when nothing failed."""
    from vllm_ascend import selfcheck as sc
    from vllm_ascend.selfcheck import e2e

    device = "npu" if host.npu_usable else "cpu"
    print(f"\nself-check: {len(sc.CASES)} op cases on the {device.upper()}"
          + (" against the CPU golden reference and float64" if device == "npu" else
             " kernels against float64 references"))
    if device == "cpu":
        print("  skipped: the NPU kernels (no usable NPU on this host)")
    start = time.perf_counter()
    results = sc.run_cases(device, lambda r: print(
        f"  {r.status:<4} {r.name} ({r.seconds:.2f} s)" + (f": {r.detail}" if r.detail else "")))
    failed = [r for r in results if r.status == "fail"]
    print(f"  {len(results) - len(failed)}/{len(results)} passed in "
          f"{time.perf_counter() - start:.1f} s")

    print("\nself-check: tiny Llama (head_dim 64) greedy, "
          f"{len(e2e.PROMPT_LENGTHS)} prompts x {e2e.MAX_TOKENS} tokens")
    ok = not failed
    with tempfile.TemporaryDirectory(prefix="vllm-ascend-selfcheck-") as tmp:
        try:
            model = e2e.build_tiny_llama(Path(tmp))
            prompts = e2e.prompts()
            if device == "npu":
                cpu = e2e.generate_in_subprocess(model, "cpu", "bfloat16", "NONE")
                for mode in e2e.NPU_GRAPH_MODES:
                    npu = e2e.generate_in_subprocess(model, "npu", "bfloat16", mode)
                    same = npu == cpu
                    print(f"  {'pass' if same else 'fail'} NPU ({mode}) vs CPU backend (eager, "
                          f"bfloat16): {'equal' if same else f'NPU {npu} != CPU {cpu}'}")
                    ok &= same
            else:
                ref = e2e.hf_greedy(model, prompts, e2e.MAX_TOKENS)
                cpu = e2e.generate_in_subprocess(model, "cpu", "float32")
                same = cpu == ref
                print(f"  {'pass' if same else 'fail'} CPU backend (default graph mode) vs "
                      f"transformers (float32): {'equal' if same else f'vLLM {cpu} != HF {ref}'}")
                print("  skipped: the NPU engine runs (no usable NPU on this host)")
                ok &= same
        except Exception as exc:
            print(f"  fail end-to-end run: {type(exc).__name__}: {exc}")
            ok = False
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vllm-ascend-doctor",
        description="Check whether vllm-ascend will run on this host; --selfcheck also runs "
                    "every NPU op the engine calls and a tiny end-to-end generation.")
    parser.add_argument("--selfcheck", action="store_true",
                        help="run the op cases and the tiny e2e greedy run after the table")
    parser.add_argument(PROBE_FLAG, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe_platform:
        _probe_platform()
        return 0
    rows, host = collect()
    print(render(rows))
    failures = [r for r in rows if r.status == FAIL]
    print(f"\n{len(failures)} problem(s) would stop the plugin" if failures else
          "\nvllm-ascend will run on this host "
          f"({'NPU' if host.npu_usable else 'CPU backend'})")
    ok = not failures
    if args.selfcheck:
        ok &= selfcheck(host)
        print("\nself-check " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
