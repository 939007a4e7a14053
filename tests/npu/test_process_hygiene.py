"""On an Ascend host: a process that never runs a model (vLLM's API server) creates no NPU
context, and torch.accelerator/torch.Event calls reach torch.npu. Marked ``npu``."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.npu

PROBE = textwrap.dedent("""
    import torch
    from vllm.platforms import current_platform
    from vllm.engine.arg_utils import EngineArgs  # what the API server imports
    assert type(current_platform).__name__ == "NPUPlatform"
    try:
        current_platform.get_device_total_memory()
    except RuntimeError as exc:
        assert "creates no NPU context" in str(exc), exc
    else:
        raise AssertionError("total memory answered without a device context")
    current_platform.get_device_name()
    assert not torch.npu.is_initialized(), "the frontend initialised the NPU runtime"
    print("ok")
""")


def test_frontend_queries_create_no_npu_context():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr


def test_accelerator_calls_reach_torch_npu():
    import torch

    from vllm_ascend import patches

    patches.apply()
    torch.npu.set_device(0)
    x = torch.ones(4, device="npu")
    event = torch.Event()
    assert isinstance(event, torch.npu.Event)
    event.record()
    torch.accelerator.synchronize()
    torch.accelerator.empty_cache()
    assert event.query() and float(x.sum()) == 4.0
