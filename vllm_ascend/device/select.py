"""Which backend the plugin drives on this host, decided once from VLLM_ASCEND_DEVICE.

Kept free of vLLM imports: vLLM calls ``vllm_ascend.register()`` while it is still choosing its
platform.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import logging
import os

from vllm_ascend import envs
from vllm_ascend.device import host_checks

# Under "vllm." so that vLLM's logging configuration prints it.
logger = logging.getLogger("vllm." + __name__)

SUPPORTED_VLLM = "0.32"
VLLM_INSTALL_COMMAND = (
    "VLLM_TARGET_DEVICE=empty VLLM_SKIP_VERSION_SUFFIX=1 "
    "pip install --no-binary vllm vllm==0.32.0"
)


class NpuUnavailable(RuntimeError):
    """The host has no usable Ascend NPU; the message names what is missing."""


class HostMisconfigured(RuntimeError):
    """torch_npu and CANN are installed but do not fit together (CANN version, driver, torch-npu
    version): the message is one line naming the fix. Raised before torch_npu is imported."""


def check_ascend_software() -> None:
    """Raise HostMisconfigured when the Ascend software stack does not fit torch-npu 2.13.0."""
    report = host_checks.check_host(os.environ)
    if report.problems:
        first = report.problems[0].line()
        more = len(report.problems) - 1
        tail = f" (and {more} more: run python -m vllm_ascend.doctor)" if more else ""
        raise HostMisconfigured(first + tail)


def probe_npu() -> int:
    """Number of usable NPUs; raises NpuUnavailable naming what is missing, or HostMisconfigured
    when torch_npu and CANN are present but do not match."""
    if importlib.util.find_spec("torch_npu") is None:
        raise NpuUnavailable(
            "torch_npu is not installed (on a host with CANN: pip install 'vllm-ascend[npu]')"
        )
    if not host_checks.toolkit_home(os.environ):
        raise NpuUnavailable(
            f"CANN is not set up: ASCEND_HOME_PATH is unset ({host_checks.SET_ENV})"
        )
    # Before importing torch_npu: one built for another CANN can crash the interpreter on import.
    check_ascend_software()
    try:
        import torch
        import torch_npu  # noqa: F401  (registers torch.npu)
    except Exception as exc:  # a broken CANN install fails here in many ways
        raise NpuUnavailable(f"torch_npu failed to import ({exc}); check the CANN install") from exc
    count = torch.npu.device_count()
    if count == 0:
        raise NpuUnavailable(
            "no NPU is visible (check npu-smi info and ASCEND_RT_VISIBLE_DEVICES)"
        )
    return count


def check_vllm_version(installed: str) -> None:
    """Stop with one line naming both versions when vLLM is not the 0.32.x release."""
    if installed.split("+")[0].startswith(SUPPORTED_VLLM + "."):
        return
    raise SystemExit(
        f"vllm-ascend needs vLLM {SUPPORTED_VLLM}.x but vLLM {installed} is installed; "
        f"install the matching release with: {VLLM_INSTALL_COMMAND}"
    )


@functools.cache
def active_backend() -> str | None:
    """'npu', 'cpu', or None when the plugin must stay inactive.

    Explicit misconfiguration (VLLM_ASCEND_DEVICE=npu without an NPU, or a wrong vLLM release
    while active) raises SystemExit with one line: vLLM swallows ordinary exceptions from platform
    plugins, which would leave the user on the wrong platform with no word why.
    """
    try:
        requested = envs.VLLM_ASCEND_DEVICE
    except ValueError as exc:
        raise SystemExit(f"vllm-ascend: {exc}") from None
    if requested == "cpu":
        backend = "cpu"
    else:
        try:
            probe_npu()
            backend = "npu"
        except HostMisconfigured as exc:
            # torch_npu and CANN are installed: this is meant to be an NPU host, so say why it
            # cannot be one instead of silently leaving the plugin inactive.
            raise SystemExit(f"vllm-ascend: {exc}") from None
        except NpuUnavailable as exc:
            if requested == "npu":
                raise SystemExit(f"vllm-ascend: VLLM_ASCEND_DEVICE=npu but {exc}") from None
            logger.debug("vllm-ascend inactive: %s; set VLLM_ASCEND_DEVICE=cpu for the CPU backend",
                         exc)
            return None
    check_vllm_version(importlib.metadata.version("vllm"))
    return backend
