"""The Ascend host checks (CANN toolkit, driver, torch-npu) on fake install trees in tmp_path, and
their wiring into the backend selection."""

from __future__ import annotations

from pathlib import Path

import pytest

from vllm_ascend.device import host_checks, select


def toolkit(root: Path, version: str | None, *, layout: str = "install_info") -> Path:
    """A CANN toolkit tree as set_env.sh points ASCEND_HOME_PATH at."""
    home = root / "ascend-toolkit" / "latest"
    (home / "runtime").mkdir(parents=True)
    (home / "compiler").mkdir()
    if layout == "install_info":
        arch = home / "x86_64-linux"
        arch.mkdir()
        lines = ["package_name=Ascend-cann-toolkit", "innerversion=V100R001C25B050",
                 "arch=x86_64", "os=linux", f"path={arch}"]
        if version is not None:
            lines.insert(1, f"version={version}")
        (arch / "ascend_toolkit_install.info").write_text("\n".join(lines) + "\n")
    elif layout == "version_info":
        (home / "runtime" / "version.info").write_text(f"Version={version}\nversion_dir=x\n")
    return home


def driver(root: Path, version: str | None) -> Path:
    d = root / "driver"
    d.mkdir(parents=True, exist_ok=True)
    if version is not None:
        (d / "version.info").write_text(f"Version={version}\nascendhal_version=7.35.23\n")
    return root


@pytest.mark.parametrize("older,newer", [
    ("8.3.RC1", "8.3.0"), ("8.3.0", "8.5.0.alpha003"), ("8.5.0.alpha003", "8.5.0"),
    ("8.5.0", "9.0.0.beta2"), ("9.0.0.beta2", "9.0.0"), ("9.2.0-beta", "9.2.0"),
    ("8.0.T13", "8.0.RC1"), ("8.2.RC1", "8.2.RC2"), ("9.1.0", "10.0.0"),
])
def test_version_order(older, newer):
    assert host_checks.version_key(older) < host_checks.version_key(newer)


@pytest.mark.parametrize("bad", ["", "latest", "8", "8.x.0", "9.2.0 final"])
def test_version_key_rejects_garbage(bad):
    with pytest.raises(ValueError):
        host_checks.version_key(bad)


def test_reads_toolkit_install_info(tmp_path):
    home = toolkit(tmp_path, "9.2.0")
    version, path = host_checks.version_of_toolkit(home)
    assert version == "9.2.0"
    assert path == home / "x86_64-linux" / "ascend_toolkit_install.info"


def test_falls_back_to_component_version_info(tmp_path):
    home = toolkit(tmp_path, "8.5.0", layout="version_info")
    assert host_checks.version_of_toolkit(home) == ("8.5.0", home / "runtime" / "version.info")


def test_driver_root_from_ascend_install_info(tmp_path):
    info = tmp_path / "ascend_install.info"
    info.write_text(f"UserName=HwHiAiUser\nDriver_Install_Path_Param={tmp_path / 'opt'}\n")
    assert host_checks.driver_root(info) == tmp_path / "opt"
    assert host_checks.driver_root(tmp_path / "absent.info") == host_checks.DEFAULT_ASCEND_ROOT


def check(tmp_path, cann="9.2.0", drv="25.5.0", npu="2.13.0", layout="install_info", env=None):
    home = toolkit(tmp_path, cann, layout=layout) if cann != "absent" else None
    root = driver(tmp_path / "Ascend", drv)
    env = {"ASCEND_HOME_PATH": str(home)} if env is None and home else (env or {})
    return host_checks.check_host(env, ascend_root=root, torch_npu_version=npu)


def test_matching_host_has_no_problem(tmp_path):
    report = check(tmp_path)
    assert report.ok and report.notes == []
    assert (report.cann, report.driver, report.torch_npu) == ("9.2.0", "25.5.0", "2.13.0")


@pytest.mark.parametrize("cann", ["8.5.0", "9.0.0", "9.1.0"])
def test_supported_older_cann_is_a_note(tmp_path, cann):
    report = check(tmp_path, cann=cann)
    assert report.ok
    assert len(report.notes) == 1 and "paired with CANN 9.2.0" in report.notes[0]


@pytest.mark.parametrize("cann", ["8.3.RC1", "8.0.0", "8.5.0.alpha003", "7.0.0"])
def test_too_old_cann_is_a_problem_with_the_fix(tmp_path, cann):
    (problem,) = check(tmp_path, cann=cann).problems
    assert f"CANN {cann} is older than 8.5.0" in problem.what
    assert "CANN 9.2.0" in problem.fix and "set_env.sh" in problem.fix


def test_newer_cann_is_a_note_not_a_problem(tmp_path):
    report = check(tmp_path, cann="9.3.0")
    assert report.ok and "not yet verified" in report.notes[0]


def test_toolkit_without_version_is_a_problem(tmp_path):
    (problem,) = check(tmp_path, cann=None).problems
    assert "records no version" in problem.what


def test_unset_and_missing_home(tmp_path):
    (problem,) = check(tmp_path, cann="absent").problems
    assert "ASCEND_HOME_PATH is unset" in problem.what and "set_env.sh" in problem.fix
    (problem,) = check(tmp_path / "x", cann="absent",
                       env={"ASCEND_HOME_PATH": str(tmp_path / "nowhere")}).problems
    assert "does not exist" in problem.what


def test_missing_driver_names_the_fix(tmp_path):
    (problem,) = check(tmp_path, drv=None).problems
    assert "driver/version.info is missing" in problem.what
    assert "install the Ascend NPU driver" in problem.fix


@pytest.mark.parametrize("npu,expected", [(None, "torch-npu is not installed"),
                                          ("2.12.0", "torch-npu 2.12.0 is installed")])
def test_torch_npu_version(tmp_path, npu, expected):
    (problem,) = check(tmp_path, npu=npu).problems
    assert expected in problem.what and "torch-npu==2.13.0" in problem.fix


def test_start_up_check_is_one_line_naming_the_fix(tmp_path, monkeypatch):
    """select.check_ascend_software reads the real environment and the real files."""
    home = toolkit(tmp_path, "8.3.RC1")
    monkeypatch.setenv("ASCEND_HOME_PATH", str(home))
    monkeypatch.setattr(host_checks, "ASCEND_INSTALL_INFO", tmp_path / "absent.info")
    monkeypatch.setattr(host_checks, "DEFAULT_ASCEND_ROOT", driver(tmp_path / "Ascend", "25.5.0"))
    monkeypatch.setattr(host_checks, "installed_torch_npu", lambda: "2.13.0")
    with pytest.raises(select.HostMisconfigured) as err:
        select.check_ascend_software()
    message = str(err.value)
    assert "\n" not in message
    assert "CANN 8.3.RC1 is older than 8.5.0" in message
    assert "fix: install the CANN 9.2.0" in message


def test_start_up_check_counts_further_problems(tmp_path, monkeypatch):
    monkeypatch.setenv("ASCEND_HOME_PATH", str(toolkit(tmp_path, "8.3.RC1")))
    monkeypatch.setattr(host_checks, "ASCEND_INSTALL_INFO", tmp_path / "absent.info")
    monkeypatch.setattr(host_checks, "DEFAULT_ASCEND_ROOT", tmp_path / "no-driver")
    monkeypatch.setattr(host_checks, "installed_torch_npu", lambda: "2.13.0")
    with pytest.raises(select.HostMisconfigured, match=r"\(and 1 more: run python -m "
                                                       r"vllm_ascend.doctor\)"):
        select.check_ascend_software()
