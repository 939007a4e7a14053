"""Sleep mode on a real NPU (marked ``npu``; never run in CI here): the pinned-host offloader
frees device memory and restores contents in place, and an engine gives the same greedy output
after wake-up, with its graphs captured again (NPUGraph holds device addresses)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.npu


def test_offloader_frees_and_restores_device_memory():
    import torch

    from vllm_ascend.device import sleep as device_sleep
    from vllm_ascend.device.npu import NpuSleepOffloader

    torch.npu.set_device(0)
    weight = torch.randn(64 << 20 >> 2, device="npu")  # 64 MiB
    view = weight.view(1024, -1).t()
    expected = weight.cpu()
    off = NpuSleepOffloader()
    handle = off.save(weight.untyped_storage())
    free_before = torch.npu.mem_get_info()[0]
    nbytes = device_sleep.free_storage(weight.untyped_storage())
    off.release_cache()
    assert torch.npu.mem_get_info()[0] - free_before >= nbytes // 2
    device_sleep.reallocate_storage(weight.untyped_storage(), nbytes, zero=False)
    off.load(handle, weight.untyped_storage())
    assert torch.equal(weight.cpu(), expected)
    assert torch.equal(view.cpu(), expected.view(1024, -1).t())


ENGINE = textwrap.dedent("""
    import sys
    from vllm import LLM, SamplingParams
    eager = sys.argv[2] == "eager"
    llm = LLM(model=sys.argv[1], enable_sleep_mode=True, max_model_len=512,
              kv_cache_memory_bytes=256 << 20, enforce_eager=eager, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    prompts = ["The quick brown fox", "Hello"]
    run = lambda: [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    expected = run()
    llm.sleep(level=1)
    llm.wake_up()
    assert run() == expected, "level 1"
    llm.sleep(level=2)
    llm.wake_up()
    llm.collective_rpc("reload_weights")
    assert run() == expected, "level 2"
    print("ok")
""")


@pytest.mark.parametrize("mode", ["graphs", "eager"])
def test_engine_sleep_levels_on_npu(checkpoints, mode):
    env = dict(os.environ, VLLM_ASCEND_DEVICE="npu")
    out = subprocess.run([sys.executable, "-c", ENGINE, str(checkpoints("llama")), mode],
                         env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-4000:]
