"""Graph modes on the CPU backend (the op tape standing in for NPUGraph): the default PIECEWISE
(graph segments with attention eager between them), FULL_DECODE_ONLY (uniform decode steps as
whole graphs, lengths updated before each replay) and FULL_AND_PIECEWISE. Batches are padded
to the captured sizes; greedy output equals Hugging Face token for token; replay counters show
the graphs ran; negative tests show what the tape catches (frozen lengths, missing breaks).
tests/e2e/test_greedy_vs_hf.py runs the scheduling paths (chunked prefill, prefix caching,
preemption, tensor parallel 2) in both modes."""

from __future__ import annotations

import contextlib
import json
import logging

import pytest
from engine import engine, graph_replays, greedy, random_prompts
from hf_reference import hf_greedy

from vllm_ascend.device import tape_graph
from vllm_ascend.worker import breakable_graph, graph_wrapper

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
        before = graph_replays(llm)["full"]
        got = greedy(llm, prompts, MAX_TOKENS)
        after = graph_replays(llm)["full"]
        assert got == hf_greedy(path, prompts, MAX_TOKENS, ignore_eos=True), (model, n)
        # The batch of n decodes ran as the graph of the next captured size up (padded).
        padded = min(size for size in SIZES if size >= n)
        assert padded != n
        assert after[padded] > before.get(padded, 0), (model, n, before, after)


def _input_buffers(worker) -> tuple[int, int, bool]:
    from vllm.v1.utils import CpuGpuBuffer

    runner = worker.model_runner
    holders = [runner, *runner.input_batch.block_table.block_tables]
    bufs = [v for h in holders for v in vars(h).values() if isinstance(v, CpuGpuBuffer)]
    batch = runner.input_batch
    return len(bufs), sum(b.gpu is b.cpu for b in bufs), (
        batch.temperature is batch.temperature_cpu_tensor)


def test_cpu_backend_inputs_are_not_copied_to_the_device(graph_engine):
    """On the CPU backend the runner's device input buffers are its host buffers
    (worker/host_buffers.py), so a step makes no host-to-device input copies; the graphs above
    replayed over them and matched HF."""
    model, _, llm, _ = graph_engine
    ((n, aliased, sampling_aliased),) = llm.collective_rpc(_input_buffers)
    assert n >= 8 and aliased == n and sampling_aliased, (model, n, aliased)


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


def num_layers(path) -> int:
    return json.loads((path / "config.json").read_text())["num_hidden_layers"]


def test_default_is_piecewise_and_matches_hf(checkpoints):
    """No graph option: PIECEWISE at the CPU backend's default sizes, each size captured as
    layers + 1 segments; decode batches of 3 and 5 replay the segments of 4 and 8 (padded),
    with attention run eagerly on the real tokens between them."""
    path = checkpoints("qwen3")
    captures_before = tape_graph.COUNTERS["captures"]
    with log_records("vllm.vllm_ascend.worker.worker") as records:
        with engine(path) as llm:
            cc = llm.llm_engine.vllm_config.compilation_config
            captures = tape_graph.COUNTERS["captures"] - captures_before
            for n, lengths in BATCHES.items():
                prompts = random_prompts(lengths, vocab_of(path), seed=n)
                before = graph_replays(llm)["piecewise"]
                got = greedy(llm, prompts, MAX_TOKENS)
                after = graph_replays(llm)["piecewise"]
                assert got == hf_greedy(path, prompts, MAX_TOKENS, ignore_eos=True), n
                padded = 4 if n == 3 else 8
                assert after.get(padded, 0) > before.get(padded, 0), (n, before, after)
    assert cc.cudagraph_mode.name == "PIECEWISE"
    assert cc.cudagraph_capture_sizes == [1, 2, 4, 8, 16]
    assert captures == 5 * (num_layers(path) + 1)
    logged = [r.getMessage() for r in records if r.getMessage().startswith("Graph capture")]
    assert len(logged) == 1 and logged[0].startswith("Graph capture (PIECEWISE"), logged


def test_attention_captured_inside_a_segment_diverges(checkpoints, monkeypatch):
    """Without the eager break, attention is recorded into the graph segment with the lengths
    of the capture batch; replays then attend with those and the output goes wrong. (What the
    break exists for, shown by the tape as a device graph would show it.)"""
    monkeypatch.setattr(breakable_graph.DeviceSegmentCapture, "add_eager",
                        lambda self, fn: fn())
    path = checkpoints("qwen3")
    prompts = random_prompts(BATCHES[3], vocab_of(path), seed=3)
    with engine(path) as llm:
        got = greedy(llm, prompts, MAX_TOKENS)
        assert sum(graph_replays(llm)["piecewise"].values()) > 0
    assert got != hf_greedy(path, prompts, MAX_TOKENS, ignore_eos=True)


def test_full_runs_full_and_piecewise_with_a_warning(checkpoints):
    """FULL (whole graphs of mixed batches) is not offered: it runs as FULL_AND_PIECEWISE,
    uniform decodes as whole graphs and small mixed or prefill steps as piecewise graphs."""
    path = checkpoints("qwen2")
    # 3 short prompts: the 9-token prefill step is replayed piecewise (padded to 16).
    prompts = random_prompts([3, 4, 2], vocab_of(path), seed=7)
    with log_records("vllm.vllm_ascend.graph_modes") as records:
        with engine(path, compilation_config={"cudagraph_mode": "FULL"}) as llm:
            mode = llm.llm_engine.vllm_config.compilation_config.cudagraph_mode
            got = greedy(llm, prompts, MAX_TOKENS)
            replays = graph_replays(llm)
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "FULL_AND_PIECEWISE" in warnings[0], warnings
    assert mode.name == "FULL_AND_PIECEWISE"
    assert replays["full"].get(4, 0) > 0 and replays["piecewise"].get(16, 0) > 0, replays
    assert got == hf_greedy(path, prompts, MAX_TOKENS, ignore_eos=True)


@pytest.mark.parametrize("graphs", [GRAPHS, {}], ids=["full_decode_only", "default"])
def test_kv_budget_leaves_room_for_graphs(checkpoints, graphs):
    """Without an explicit KV size, the KV cache gets the budget less what is in use and less
    vLLM's estimate of the graphs' memory (measured by capturing two sizes first)."""
    path = checkpoints("llama")
    with log_records("vllm.vllm_ascend.worker.worker") as records:
        with engine(path, compilation_config=graphs, kv_cache_memory_bytes=None,
                    gpu_memory_utilization=0.9) as llm:
            (estimate,) = llm.collective_rpc(lambda worker: worker.graph_memory_estimate)
            got = greedy(llm, [[11, 12, 13]], 4)
    assert len(got[0]) == 4
    sizes = GRAPHS["cudagraph_capture_sizes"] if graphs else [1, 2, 4, 8, 16]
    assert estimate >= len(sizes) << 20, estimate  # at least 1 MiB per captured size
    budget_lines = [r for r in records if r.getMessage().startswith("KV cache:")]
    assert len(budget_lines) == 1 and "estimated for graphs" in budget_lines[0].getMessage()
    available, budget, used, graphs_mib = (float(a) for a in budget_lines[0].args)
    assert graphs_mib == pytest.approx(estimate / (1 << 20))
    mode = "FULL_DECODE_ONLY" if graphs else "PIECEWISE"
    assert any(r.getMessage().startswith(f"Graph capture ({mode}") for r in records)
    assert available == pytest.approx(budget - used - graphs_mib / 1024, abs=0.02)
