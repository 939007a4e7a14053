"""What an Ascend host needs under torch-npu 2.13.0 (CANN toolkit, NPU driver), read from files.

Standard library only, and no vLLM or torch_npu import: ``select.py`` runs these checks before it
imports torch_npu (a torch_npu built for another CANN can crash the interpreter on import), and the
doctor runs them on hosts where torch_npu is absent.

The CANN requirement, and where it comes from:

* torch_npu 2.13.0 is the TorchNPU 26.2.0 release for PyTorch 2.13.0, paired with **CANN 9.2.0**
  (Ascend/pytorch ``docs/zh/release_notes/release_notes.md``, TorchNPU 26.2.0 release notes: branch
  ``v2.13.0-26.2.0``, package 2.13.0, CANN 9.2.0). The same notes declare TorchNPU 26.2.X
  compatible with CANN 8.5.X, 9.0.X, 9.1.X and 9.2.X, so **8.5.0 is the minimum**.
* The 2.13.0 wheel itself enforces no minimum: ``torch_npu/_init/registry/registry_manager.py``
  (``_cann_package_check``, lines 19-64) only checks ``ASCEND_HOME_PATH``/``ASCEND_OPP_PATH`` and
  the ``runtime``/``compiler`` directories, and warns for a table of 6.x versions. Its METADATA
  matching table stops at torch-npu 2.12.0 / CANN 8.5.0. It gates features on newer CANN at run
  time, e.g. ``torch_npu/distributed/distributed_c10d.py:49`` (9.0.0),
  ``torch_npu/npu/_npugraph_handlers/_fa3_graph_handler.py:22`` (9.1.0),
  ``torch_npu/op_plugin/meta/_meta_registrations.py:307`` (9.2.0): below 9.2.0 those features are
  off, which is why 9.2.0 is recommended and 8.5.0-9.1.x only noted.
* torch_npu reads the installed version the way ``version_of_toolkit`` does here:
  ``torch_npu/utils/collect_env.py:75`` (``get_cann_version``) walks ``ASCEND_HOME_PATH`` for an
  ``ascend_*_install.info`` file and takes its ``version=`` line. CANN writes
  ``<toolkit>/<arch>-linux/ascend_toolkit_install.info``; each component also has a
  ``version.info`` (``Version=...``), e.g. ``<toolkit>/runtime/version.info``.
* The driver records its version in ``<install root>/driver/version.info`` (``Version=...``); the
  install root is ``Driver_Install_Path_Param`` in ``/etc/ascend_install.info``, by default
  ``/usr/local/Ascend``.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

TORCH_NPU_VERSION = "2.13.0"
CANN_MINIMUM = "8.5.0"
CANN_PAIRED = "9.2.0"
CANN_SOURCE = (
    "TorchNPU 26.2.0 release notes (Ascend/pytorch docs/zh/release_notes/release_notes.md): "
    "torch-npu 2.13.0 pairs with CANN 9.2.0 and is compatible with CANN 8.5.x-9.2.x"
)
DEFAULT_ASCEND_ROOT = Path("/usr/local/Ascend")
ASCEND_INSTALL_INFO = Path("/etc/ascend_install.info")
SET_ENV = "source /usr/local/Ascend/ascend-toolkit/set_env.sh (or <CANN install dir>/set_env.sh)"
INSTALL_CANN = (
    f"install the CANN {CANN_PAIRED} toolkit and kernels for your NPU from "
    "https://www.hiascend.com/cann, then " + SET_ENV
)
INSTALL_TORCH_NPU = (
    f"pip install torch-npu=={TORCH_NPU_VERSION}  (or: pip install 'vllm-ascend[npu]')"
)

_STAGES = {"alpha": 0, "t": 0, "beta": 1, "rc": 2}
_VERSION_RE = re.compile(
    r"^\s*(\d+)\.(\d+)(?:\.(\d+))?(?:[.\-]?(alpha|beta|rc|t)\.?(\d*))?\s*$", re.IGNORECASE
)


def version_key(version: str) -> tuple[int, int, int, int, int]:
    """Sort key of a CANN version: 8.3.RC1 < 8.3.0 < 8.5.0.alpha003 < 8.5.0 < 9.0.0.beta2 < 9.0.0.

    Accepts the spellings CANN and torch_npu use: ``8.5.0``, ``8.3.RC1`` (the RC takes the place
    of the patch number), ``8.5.0.alpha003``, ``9.0.0.beta2``, ``9.2.0-beta``, ``8.0.T13``.
    Raises ValueError for anything else.
    """
    m = _VERSION_RE.match(version)
    if not m:
        raise ValueError(f"not a CANN version: {version!r}")
    major, minor, patch, stage, number = m.groups()
    rank = _STAGES[stage.lower()] if stage else 3
    return int(major), int(minor), int(patch or 0), rank, int(number or 0)


def read_key_values(path: Path) -> dict[str, str]:
    """``key=value`` lines of an install/version file; keys lower-cased, values stripped."""
    out: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        if "=" in line:
            key, _, value = line.partition("=")
            out[key.strip().lower()] = value.strip().strip('"')
    return out


def toolkit_home(env: Mapping[str, str]) -> str | None:
    """The CANN toolkit directory set_env.sh exports (ASCEND_HOME_PATH, or ASCEND_TOOLKIT_HOME)."""
    return env.get("ASCEND_HOME_PATH") or env.get("ASCEND_TOOLKIT_HOME") or None


def find_toolkit_version_file(home: Path) -> Path | None:
    """The file that records the toolkit version under ``home``, in order of preference:
    ``<arch>-linux/ascend_toolkit_install.info``, any ``ascend_*_install.info`` up to two levels
    down (torch_npu's own search pattern), then ``runtime``/``compiler``/``opp``
    ``version.info``."""
    for pattern in ("*-linux/ascend_toolkit_install.info", "ascend_*_install.info",
                    "*/ascend_*_install.info"):
        found = sorted(home.glob(pattern))
        if found:
            return found[0]
    for component in ("runtime", "compiler", "opp"):
        candidate = home / component / "version.info"
        if candidate.is_file():
            return candidate
    return None


def version_of_toolkit(home: Path) -> tuple[str | None, Path | None]:
    """(version string, file it came from); (None, None) when no version file exists."""
    path = find_toolkit_version_file(home)
    if path is None:
        return None, None
    values = read_key_values(path)
    return values.get("version") or None, path


def driver_root(install_info: Path = ASCEND_INSTALL_INFO) -> Path:
    """Where the driver is installed: Driver_Install_Path_Param of /etc/ascend_install.info."""
    try:
        configured = read_key_values(install_info).get("driver_install_path_param")
    except OSError:
        configured = None
    return Path(configured) if configured else DEFAULT_ASCEND_ROOT


def driver_version(root: Path) -> tuple[str | None, Path]:
    """(driver version or None when not installed, the version.info path looked at)."""
    path = root / "driver" / "version.info"
    try:
        return read_key_values(path).get("version") or None, path
    except OSError:
        return None, path


def installed_torch_npu() -> str | None:
    """torch-npu's installed version from its metadata (torch_npu is not imported)."""
    try:
        return importlib.metadata.version("torch-npu")
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class Problem:
    what: str
    fix: str
    topic: str = "CANN"  # "torch-npu", "CANN" or "driver"

    def line(self) -> str:
        return f"{self.what}; fix: {self.fix}"


@dataclass
class HostReport:
    torch_npu: str | None
    toolkit_home: str | None
    cann: str | None
    cann_file: Path | None
    driver: str | None
    driver_file: Path
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def cann_problems(version: str | None, source: Path | None) -> tuple[list[Problem], list[str]]:
    """Decide on an installed CANN version against torch-npu 2.13.0's requirement."""
    if version is None:
        where = f" in {source}" if source else ""
        return [Problem(f"the CANN toolkit records no version{where}", INSTALL_CANN)], []
    try:
        key = version_key(version)
    except ValueError:
        return [Problem(f"unrecognised CANN version {version!r} in {source}", INSTALL_CANN)], []
    if key < version_key(CANN_MINIMUM):
        return [Problem(
            f"CANN {version} is older than {CANN_MINIMUM}, the oldest torch-npu "
            f"{TORCH_NPU_VERSION} supports", INSTALL_CANN)], []
    notes = []
    paired = version_key(CANN_PAIRED)
    if key[:2] < paired[:2]:
        notes.append(f"CANN {version} is supported; torch-npu {TORCH_NPU_VERSION} is paired with "
                     f"CANN {CANN_PAIRED} (some torch_npu features need it)")
    elif key[:2] > paired[:2]:
        notes.append(f"CANN {version} is newer than {CANN_PAIRED}, the version torch-npu "
                     f"{TORCH_NPU_VERSION} was released with; not yet verified")
    return [], notes


def check_host(
    env: Mapping[str, str] | None = None,
    *,
    ascend_root: Path | None = None,
    torch_npu_version: str | None | bool = False,
) -> HostReport:
    """Everything an NPU start needs besides the devices themselves; each problem names its fix.

    ``env`` defaults to os.environ, ``ascend_root`` to the driver install root of
    /etc/ascend_install.info, ``torch_npu_version`` to the installed distribution's (pass None to
    mean "not installed").
    """
    env = os.environ if env is None else env
    npu_version = installed_torch_npu() if torch_npu_version is False else torch_npu_version
    root = driver_root() if ascend_root is None else ascend_root
    drv, drv_file = driver_version(root)
    home = toolkit_home(env)
    report = HostReport(npu_version, home, None, None, drv, drv_file)

    if npu_version is None:
        report.problems.append(Problem("torch-npu is not installed", INSTALL_TORCH_NPU,
                                       "torch-npu"))
    elif npu_version.split("+")[0] != TORCH_NPU_VERSION:
        report.problems.append(Problem(
            f"torch-npu {npu_version} is installed, vllm-ascend needs {TORCH_NPU_VERSION}",
            INSTALL_TORCH_NPU, "torch-npu"))

    if home is None:
        report.problems.append(Problem("CANN is not set up (ASCEND_HOME_PATH is unset)", SET_ENV))
    elif not Path(home).is_dir():
        report.problems.append(Problem(f"ASCEND_HOME_PATH={home} does not exist", SET_ENV))
    else:
        report.cann, report.cann_file = version_of_toolkit(Path(home))
        problems, notes = cann_problems(report.cann, report.cann_file or Path(home))
        report.problems += problems
        report.notes += notes

    if drv is None:
        report.problems.append(Problem(
            f"no NPU driver ({drv_file} is missing)",
            "install the Ascend NPU driver and firmware matching CANN "
            f"{report.cann or CANN_PAIRED} (see the CANN release notes), then reboot", "driver"))
    return report
