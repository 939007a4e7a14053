"""FULL_DECODE_ONLY graph mode (opt-in): uniform decode steps run as captured graphs (the op tape on
the CPU backend), padded to the captured sizes; prefill and mixed steps run eager beside them.
Greedy output equals Hugging Face token for token."""

from __future__ import annotations

import contextlib
import json
import logging

import pytest
from engine import engine, greedy, random_prompts
from hf_reference import hf_greedy

from vllm_ascend.device import tape_graph
from vllm_ascend.worker import graph_wrapper

SIZES = [1, 2, 4, 8]
GRAPHS = {"cudagraph_mode": "FULL_DECODE_ONLY", "cudagraph_capture_sizes": SIZES}
# 3 and 5 requests: decode batches of 3, 5 (and fewer as requests finish) pad to 4 and 8. The
# 130- and 300-token prompts take more than one 128-token block, and their prefill steps run
# eager beside the replayed decodes.
BATCHES = {3: [7, 130, 1], 5: [300, 5, 37, 64, 2]}
MAX_TOKENS = 16


def vocab_of(path) -> int:
    return json.loads((path / "config.json").read_text())["vocab_size"]


@contextlib.contextmanager
def log_records(name: str):
    """Records logged on logger ``name``. Collected by a logger filter, not a handler: vLLM
    (re)applies its logging dictConfig when an engine's config is created, which strips the
    handlers of its child loggers but keeps their filters."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            records.append(record)
            return True

    collect = Collect()
    logger = logging.getLogger(name)
    logger.addFilter(collect)
    try:
        yield records
    finally:
        logger.removeFilter(collect)


def graph_replays_by_size(llm) -> dict[int, int]:
    """Replays per captured batch size, read from the model's graph wrapper."""
    def read(worker):
        wrapper = worker.model_runner.model
        assert isinstance(wrapper, graph_wrapper.AscendGraphWrapper), type(wrapper)
        return {desc.num_tokens: entry.cudagraph.num_replays
                for desc, entry in wrapper.concrete_cudagraph_entries.items()}

    (replays,) = llm.collective_rpc(read)
    return replays


@pytest.fixture(scope="module", params=["llama", "qwen3_moe"])
def graph_engine(request, checkpoints):
    path = checkpoints(request.param)
    captures_before = tape_graph.COUNTERS["captures"]
    with engine(path, **{"compilation_config": GRAPHS}) as llm:
        captures = tape_graph.COUNTERS["captures"] - captures_before
        yield request.param, path, llm, captures


def test_decode_graphs_match_hf(graph_engine):
    model, path, llm, captures = graph_engine
    assert captures == len(SIZES), f"{model}: one graph per capture size, got {captures}"
    assert llm.llm_engine.vllm_config.compilation_config.cudagraph_mode.name == (
        "FULL_DECODE_ONLY")
    for n, lengths in BATCHES.items():
        prompts = random_prompts(lengths, vocab_of(path), seed=n)
        before = graph_replays_by_size(llm)
        got = greedy(llm, prompts, MAX_TOKENS)
        after = graph_replays_by_size(llm)
        assert got == hf_greedy(path, prompts, MAX_TOKENS, ignore_eos=True), (model, n)
        # The batch of n decodes ran as the graph of the next captured size up (padded).
        padded = min(size for size in SIZES if size >= n)
        assert padded != n
        assert after[padded] > before.get(padded, 0), (model, n, before, after)


def test_frozen_lengths_diverge_from_hf(graph_engine, monkeypatch):
    """Without NPUGraph.update, a replay attends with the lengths it holds (those of the last
    update or of the capture), not the step's: the tape freezes host values like a device
    graph, so the output goes wrong. This is what the per-step update fixes."""
    model, path, llm, _ = graph_engine
    prompts = random_prompts(BATCHES[3], vocab_of(path), seed=3)
    monkeypatch.setattr(graph_wrapper, "UPDATE_LENGTHS", False)
    replays_before = tape_graph.COUNTERS["replays"]
    got = greedy(llm, prompts, MAX_TOKENS)
    assert tape_graph.COUNTERS["replays"] > replays_before
    assert got != hf_greedy(path, prompts, MAX_TOKENS, ignore_eos=True), model


def test_unsupported_mode_runs_eager_with_a_warning(checkpoints):
    path = checkpoints("llama")
    prompts = random_prompts(BATCHES[3], vocab_of(path), seed=3)
    captures_before = tape_graph.COUNTERS["captures"]
    replays_before = tape_graph.COUNTERS["replays"]
    with log_records("vllm.vllm_ascend.platform") as records:
        with engine(path, compilation_config={"cudagraph_mode": "PIECEWISE"}) as llm:
            mode = llm.llm_engine.vllm_config.compilation_config.cudagraph_mode
            got = greedy(llm, prompts, MAX_TOKENS)
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if "not supported" in w]) == 1, warnings
    assert "PIECEWISE is not supported" in warnings[0]
    assert mode.name == "NONE"
    assert tape_graph.COUNTERS["captures"] == captures_before
    assert tape_graph.COUNTERS["replays"] == replays_before
    assert got == hf_greedy(path, prompts, MAX_TOKENS, ignore_eos=True)


def test_kv_budget_leaves_room_for_graphs(checkpoints):
    """Without an explicit KV size, the KV cache gets the budget less what is in use and less
    vLLM's estimate of the graphs' memory (measured by capturing two sizes first)."""
    path = checkpoints("llama")
    with log_records("vllm.vllm_ascend.worker.worker") as records:
        with engine(path, compilation_config=GRAPHS, kv_cache_memory_bytes=None,
                    gpu_memory_utilization=0.9) as llm:
            (estimate,) = llm.collective_rpc(lambda worker: worker.graph_memory_estimate)
            got = greedy(llm, [[11, 12, 13]], 4)
    assert len(got[0]) == 4
    assert estimate >= len(SIZES) << 20, estimate  # at least 1 MiB per graph
    budget_lines = [r for r in records if r.getMessage().startswith("KV cache:")]
    assert len(budget_lines) == 1 and "estimated for graphs" in budget_lines[0].getMessage()
    available, budget, used, graphs_mib = (float(a) for a in budget_lines[0].args)
    graphs = graphs_mib / 1024
    assert graphs_mib == pytest.approx(estimate / (1 << 20))
    assert any(r.getMessage().startswith("Graph capture (FULL_DECODE_ONLY") for r in records)
    assert available == pytest.approx(budget - used - graphs, abs=0.02)
