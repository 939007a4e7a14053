"""The CPU backend's memory budget on a real engine: without kv_cache_memory_bytes the KV cache
gets gpu_memory_utilization of the device less what the model took (not the interpreter and
libraries), and a model whose weights alone exceed the budget stops right after loading."""

from __future__ import annotations

import contextlib
import logging

import pytest
from engine import engine, greedy

GiB = 1 << 30
MiB = 1 << 20
WORKER_LOG = "vllm.vllm_ascend.worker.worker"


@contextlib.contextmanager
def messages(name: str):
    """Messages logged on ``name``, collected by a filter (vLLM's logging config keeps filters
    on its child loggers, not handlers)."""
    seen: list[str] = []

    class Collect(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            seen.append(record.getMessage())
            return True

    collect = Collect()
    logger = logging.getLogger(name)
    logger.addFilter(collect)
    try:
        yield seen
    finally:
        logger.removeFilter(collect)


def _figures(worker) -> tuple[int, int, int]:
    """(KV cache bytes allocated, weight bytes, KV bytes the worker derived from the budget)."""
    model = worker.model_runner.get_model()
    weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    kv = sum(t.numel() * t.element_size() for t in worker.model_runner.kv_caches)
    return kv, weights, worker.available_kv_cache_memory_bytes


def test_kv_cache_gets_the_budget_less_what_the_model_took(checkpoints, monkeypatch):
    monkeypatch.setenv("VLLM_ASCEND_CPU_MEMORY_GB", "1")
    budget = int(0.3 * GiB)
    with messages(WORKER_LOG) as log:
        with engine(checkpoints("llama_wide"), kv_cache_memory_bytes=None,
                    gpu_memory_utilization=0.3, enforce_eager=True,
                    max_num_batched_tokens=512) as llm:
            ((kv, weights, derived),) = llm.collective_rpc(_figures)
            got = greedy(llm, [[11, 12, 13]], 4)
    assert len(got[0]) == 4
    model_took = budget - derived  # eager: nothing set aside for graphs
    print(f"\n[metric] llama_wide float32, gpu_memory_utilization 0.3 of 1 GiB: budget "
          f"{budget / MiB:.0f} MiB, model {model_took / MiB:.1f} MiB at its peak (weights "
          f"{weights / MiB:.1f} MiB), KV cache {kv / MiB:.1f} MiB")
    # What the model took is its weights plus its buffers and activations, not the process.
    assert weights < model_took < weights + 96 * MiB, (model_took, weights)
    assert derived - 4 * MiB < kv <= derived  # whole blocks of what was derived
    assert any(m.startswith("Model loaded: ") for m in log), log
    assert any(m.startswith("KV cache: ") and "profile run's peak" in m for m in log), log


def test_weights_over_the_budget_stop_right_after_loading(checkpoints, monkeypatch):
    monkeypatch.setenv("VLLM_ASCEND_CPU_MEMORY_GB", "0.1")  # 92 MiB budget for 120 MB weights
    with messages(WORKER_LOG) as log:
        with pytest.raises(Exception) as err:
            with engine(checkpoints("llama_wide"), kv_cache_memory_bytes=None,
                        gpu_memory_utilization=0.9, enforce_eager=True):
                pass
    message = str(err.value)
    for words in ("after loading", "--gpu-memory-utilization 0.9", "VLLM_ASCEND_CPU_MEMORY_GB",
                  "--kv-cache-memory-bytes"):
        assert words in message, (words, message)
    assert not any(m.startswith("KV cache") for m in log), "stopped before the profile run"
