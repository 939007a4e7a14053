"""The "ascend" sleep-mode backend on plain modules (CPU backend): storages freed and restored in
place, the memory really released, captured tape graphs still right after wake-up."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("VLLM_ASCEND_DEVICE", "cpu")

MiB = 1 << 20


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Tiny(torch.nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(hidden, hidden, bias=True)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, hidden))

    def forward(self, x: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
        cache[: x.shape[0]] = x  # a KV-cache-like write
        return self.proj(x) * self.scale + cache[: x.shape[0]]


@pytest.fixture
def backend():
    from vllm_ascend.worker import sleep_mode

    sleep_mode.STORAGES.regions.clear()
    yield sleep_mode.AscendSleepBackend()
    sleep_mode.STORAGES.regions.clear()


def track(model: torch.nn.Module, cache: torch.Tensor, preserve: tuple[str, ...] = ()) -> None:
    from vllm_ascend.worker import sleep_mode

    sleep_mode.STORAGES.track("weights", [(p, n in preserve) for n, p in model.named_parameters()]
                              + [(b, True) for b in model.buffers()])
    sleep_mode.STORAGES.track("kv_cache", [(cache, False)])


def test_backend_is_registered_with_vllm():
    from vllm.device_allocator.sleep_mode_backend import SleepModeBackendFactory

    from vllm_ascend.worker.sleep_mode import BACKEND_NAME, AscendSleepBackend

    assert SleepModeBackendFactory.get_backend_class(BACKEND_NAME) is AscendSleepBackend


@torch.inference_mode()
def test_level1_frees_memory_and_restores_in_place(backend):
    hidden = 2048  # 16 MiB of weights
    model = Tiny(hidden)
    cache = torch.ones(16384, hidden)  # 128 MiB "KV cache"
    weight, view = model.proj.weight, model.proj.weight.t()
    before = {n: t.clone() for n, t in model.state_dict().items()}
    track(model, cache)
    used = rss()
    backend.suspend(level=1)
    freed = used - rss()
    assert backend.state() == "SUSPENDED"
    assert model.proj.weight.untyped_storage().nbytes() == 0
    # Weights (16 MiB) and the cache (128 MiB) left the process; allow for allocator slack.
    assert freed > 0.9 * (16 + 128) * MiB, freed / MiB
    backend.resume()
    assert backend.state() == "RUNNING"
    assert model.proj.weight is weight  # the same objects, views included
    for name, t in model.state_dict().items():
        assert torch.equal(t, before[name]), name
    assert torch.equal(view, before["proj.weight"].t())
    assert cache.abs().sum() == 0  # discarded: zeroed, not restored


@torch.inference_mode()
def test_level2_discards_parameters_keeps_buffers_and_preserved(backend):
    model = Tiny(64)
    cache = torch.ones(128, 64)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    track(model, cache, preserve=("proj.bias",))
    backend.suspend(level=2)
    backend.resume()
    assert model.proj.weight.abs().sum() == 0  # discarded: reloaded by the user
    assert torch.equal(model.proj.bias, before["proj.bias"])  # preserved parameter
    assert torch.equal(model.scale, before["scale"])  # buffers are kept at level 2


@torch.inference_mode()
def test_selective_wake_and_discard(backend):
    from vllm_ascend.worker import sleep_mode

    model = Tiny(64)
    cache = torch.ones(128, 64)
    before = model.proj.weight.clone()
    track(model, cache)
    backend.suspend(level=1)
    backend.resume(["weights"])
    assert backend.state() == "SUSPENDED"  # the KV cache still asleep
    assert torch.equal(model.proj.weight, before)
    assert cache.untyped_storage().nbytes() == 0
    backend.resume(["kv_cache"])
    assert backend.state() == "RUNNING"
    assert not sleep_mode.STORAGES.regions  # nothing kept alive once awake
    track(model, cache)
    backend.discard(("kv_cache",))
    assert cache.untyped_storage().nbytes() == 0
    backend.resume()
    assert cache.untyped_storage().nbytes() == 128 * 64 * 4


@torch.inference_mode()
def test_tape_graph_replays_right_after_wake_up(backend):
    """The CPU backend's graphs hold tensors by identity: after the storages got new memory a
    replay reads the restored weights and writes the (re-zeroed) cache."""
    from vllm_ascend import device

    dev = device.current()
    model = Tiny(256)
    cache = torch.zeros(64, 256)
    x = torch.randn(8, 256)
    with torch.no_grad():
        expected = model(x, cache).clone()
        graph = dev.Graph()
        with dev.graph(graph):
            out = model(x, cache)
    track(model, cache)
    backend.suspend(level=1)
    backend.resume()
    assert cache.abs().sum() == 0
    graph.replay()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert torch.equal(cache[:8], x)


def test_platform_selects_the_ascend_backend(checkpoints):
    from vllm.engine.arg_utils import EngineArgs

    cfg = EngineArgs(model=str(checkpoints("llama")), max_model_len=512,
                     enable_sleep_mode=True).create_engine_config()
    assert cfg.model_config.sleep_mode_backend == "ascend"
    cfg = EngineArgs(model=str(checkpoints("llama")), max_model_len=512).create_engine_config()
    assert cfg.model_config.sleep_mode_backend == "cumem"  # untouched without sleep mode
