"""Fixtures of the Ascend C host harness tests."""

import ascendc_harness
import pytest
import torch


@pytest.fixture(scope="session")
def hx():
    """The kernels compiled against the shim (cached build), loaded."""
    return ascendc_harness.harness()


@pytest.fixture(scope="session")
def C():
    """torch.ops._C_ascend with the C++ CPU kernels (the reference the kernels must match)."""
    import vllm_ascend.kernels

    vllm_ascend.kernels.load()
    return torch.ops._C_ascend


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(4321)
