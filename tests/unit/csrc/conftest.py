"""Shared set-up for the native-extension tests: the extension must be built (it always is)."""

import pytest
import torch

from vllm_ascend.kernels import extension


@pytest.fixture(scope="session")
def C():
    """torch.ops._C_ascend, after loading and validating the extension (CPU kernels)."""
    extension.load(require_npu_kernels=False)
    return torch.ops._C_ascend


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
