"""Sleep mode (levels 1 and 2) on the CPU backend, offline and through the real server.

Greedy output after wake-up equals the output before sleep, with graphs (the default PIECEWISE
mode: the tape graphs captured at start-up are replayed after wake-up, not re-captured) and
eager; the process's resident memory drops while asleep by most of the weights + KV cache
(a 256 MiB KV cache, so the drop is far above allocator noise)."""

from __future__ import annotations

import json
import os
import time
import urllib.request

import pytest
from engine import engine, graph_replays, greedy, random_prompts
from figures import report_figure
from server import Server

MiB = 1 << 20
KV_BYTES = 256 * MiB
# Share of (weights + KV cache) that must leave the resident set while asleep.
MIN_DROP = 0.8
PROMPTS_LENGTHS = [5, 130, 40]
MAX_TOKENS = 12


def rss(pid: str | int = "self") -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def resident_model_bytes(worker) -> int:
    """Bytes of the worker's parameters, buffers and KV cache (distinct storages)."""
    tensors = list(worker.model_runner.get_model().parameters())
    tensors += list(worker.model_runner.get_model().buffers())
    tensors += list(worker.model_runner.kv_caches)
    return sum({t.untyped_storage()._cdata: t.untyped_storage().nbytes()
                for t in tensors}.values())


def parameters_all_zero(worker) -> bool:
    return all(not p.any() for p in worker.model_runner.get_model().parameters())


def sleep_and_measure(llm, level: int, mode: str) -> tuple[int, int]:
    """(bytes the process's RSS fell by while asleep, weights + KV bytes)."""
    from vllm_ascend.device.sleep import _malloc_trim

    (model_bytes,) = llm.collective_rpc(resident_model_bytes)
    _malloc_trim()  # heap freed earlier (not by sleep) leaves RSS now, not during the sleep
    before = rss()
    start = time.perf_counter()
    llm.sleep(level=level)
    seconds = time.perf_counter() - start
    dropped = before - rss()
    report_figure(f"sleep level {level} ({mode}): RSS fell by {dropped / MiB:.1f} MiB of "
                  f"{model_bytes / MiB:.1f} MiB weights + KV cache ({dropped / model_bytes:.0%}) "
                  f"in {seconds:.2f} s")
    return dropped, model_bytes


@pytest.mark.parametrize("mode", ["graphs", "eager"])
def test_offline_sleep_levels_1_and_2(checkpoints, mode):
    path = checkpoints("llama")
    prompts = random_prompts(PROMPTS_LENGTHS, vocab=512, seed=3)
    kwargs = {"enforce_eager": True} if mode == "eager" else {}
    with engine(path, enable_sleep_mode=True, kv_cache_memory_bytes=KV_BYTES, **kwargs) as llm:
        expected = greedy(llm, prompts, MAX_TOKENS)
        replays = sum(sum(v.values()) for v in graph_replays(llm).values())

        # Level 1: weights backed up, KV cache discarded; woken in two steps.
        dropped, model_bytes = sleep_and_measure(llm, 1, mode)
        assert llm.llm_engine.is_sleeping()
        assert dropped >= MIN_DROP * model_bytes, (dropped / MiB, model_bytes / MiB)
        start = time.perf_counter()
        assert llm.wake_up(tags=["weights"]) is False  # the KV cache still asleep
        assert llm.wake_up(tags=["kv_cache"]) is True
        report_figure(f"wake-up after level 1 ({mode}): {time.perf_counter() - start:.2f} s")
        assert greedy(llm, prompts, MAX_TOKENS) == expected

        # Level 2: everything discarded; the weights come back by reloading the checkpoint.
        dropped, model_bytes = sleep_and_measure(llm, 2, mode)
        assert dropped >= MIN_DROP * model_bytes, (dropped / MiB, model_bytes / MiB)
        llm.wake_up()
        # Discarded for real: the parameters are zeros until the checkpoint is reloaded. (Not
        # checked by generating: that would fill the prefix cache with zero-weight KV blocks.)
        assert llm.collective_rpc(parameters_all_zero) == [True]
        start = time.perf_counter()
        llm.collective_rpc("reload_weights")
        report_figure(f"reload_weights after level 2 ({mode}): "
                      f"{time.perf_counter() - start:.2f} s")
        assert greedy(llm, prompts, MAX_TOKENS) == expected

        after = sum(sum(v.values()) for v in graph_replays(llm).values())
        if mode == "graphs":
            # The graphs captured at start-up were replayed after each wake-up.
            assert after > replays > 0
        else:
            assert after == 0


def post(url: str) -> dict:
    req = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read() or b"{}")


def post_json(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read() or b"{}")


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def complete(url: str) -> str:
    out = post_json(url + "/v1/completions", {"model": "test", "prompt": "The quick brown fox",
                                              "max_tokens": 10, "temperature": 0})
    return out["choices"][0]["text"]


@pytest.mark.slow
def test_server_sleep_wake_up_is_sleeping(checkpoints):
    env_before = os.environ.get("VLLM_SERVER_DEV_MODE")
    os.environ["VLLM_SERVER_DEV_MODE"] = "1"  # the /sleep family are development endpoints
    try:
        srv = Server(checkpoints("qwen3"), "--enable-sleep-mode", "--max-model-len", "512",
                     "--kv-cache-memory-bytes", str(KV_BYTES), "--dtype", "float32")
    finally:
        if env_before is None:
            os.environ.pop("VLLM_SERVER_DEV_MODE")
        else:
            os.environ["VLLM_SERVER_DEV_MODE"] = env_before
    try:
        expected = complete(srv.url)
        pid = srv.engine_core_pid()
        assert get(srv.url + "/is_sleeping") == {"is_sleeping": False}

        before = rss(pid)
        assert post(srv.url + "/sleep?level=1")["level"] == 1
        assert get(srv.url + "/is_sleeping") == {"is_sleeping": True}
        dropped = before - rss(pid)
        report_figure(f"server /sleep?level=1: engine core RSS fell by {dropped / MiB:.1f} MiB "
                      f"(KV cache {KV_BYTES // MiB} MiB)")
        assert dropped >= MIN_DROP * KV_BYTES
        assert post(srv.url + "/wake_up")["status"] == "awake"
        assert get(srv.url + "/is_sleeping") == {"is_sleeping": False}
        assert complete(srv.url) == expected

        post(srv.url + "/sleep?level=2")
        assert get(srv.url + "/is_sleeping") == {"is_sleeping": True}
        assert post(srv.url + "/wake_up?tags=weights")["status"] == "sleeping"
        assert post(srv.url + "/wake_up?tags=kv_cache")["status"] == "awake"
        post_json(srv.url + "/collective_rpc", {"method": "reload_weights"})
        assert complete(srv.url) == expected
    finally:
        srv.stop()
