"""The engine through the plugin (CPU backend) equals Hugging Face transformers' greedy output,
token for token, on the test checkpoints, with graphs on: each test runs either the default
(PIECEWISE: graph segments replayed with attention eager between them) or FULL_DECODE_ONLY
(whole decode graphs), and checks that replays really happened (5 running requests replay
the graphs of 8, padded)."""

from __future__ import annotations

import json

import pytest
import torch
from engine import counter, engine, greedy, layer_methods, random_prompts, total_replays
from figures import report_figure
from hf_reference import hf_greedy, hf_logprobs

# mistral_sw: sliding window 32, shorter than most prompts here.
MODELS = ["llama", "qwen2", "qwen3", "qwen3_moe", "mixtral", "mistral_sw"]
# Mixed lengths: 1 token to several 128-token blocks (block sizes 128 and 256: the NPU's paged
# attention takes multiples of 128 up to 512).
LENGTHS = [1, 5, 37, 130, 300]
MAX_TOKENS = 20
# bf16 against fp32 (teacher-forced log-probabilities of the fp32 greedy tokens): bf16 keeps
# 8 bits of mantissa, so a log-probability moves by a few hundredths on average.
BF16_MEAN_LOGPROB_TOL = 0.1
BF16_MAX_LOGPROB_TOL = 0.5
BF16_TIE_GAP = 0.25
# Graph modes: the default (PIECEWISE), or whole decode graphs.
MODES = {
    "default": {},
    "full_decode": {"compilation_config": {"cudagraph_mode": "FULL_DECODE_ONLY"}},
}


def run_greedy(llm, prompts, max_tokens=MAX_TOKENS):
    """Greedy outputs, asserting that graph replays served part of the run."""
    before = total_replays(llm)
    got = greedy(llm, prompts, max_tokens)
    assert total_replays(llm) > before, "no graph was replayed"
    return got


def _torch_threads(worker) -> int:
    return torch.get_num_threads()


def vocab_of(path) -> int:
    return json.loads((path / "config.json").read_text())["vocab_size"]


@pytest.fixture(scope="module")
def reference(checkpoints):
    cache = {}

    def get(name, prompts, max_tokens=MAX_TOKENS):
        key = (name, json.dumps(prompts), max_tokens)
        if key not in cache:
            cache[key] = hf_greedy(checkpoints(name), prompts, max_tokens, ignore_eos=True)
        return cache[key]

    return get


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("block_size, mode", [(None, "default"), (256, "full_decode")])
def test_mixed_batch_matches_hf(checkpoints, reference, model, block_size, mode):
    path = checkpoints(model)
    prompts = random_prompts(LENGTHS, vocab_of(path))
    kwargs = {} if block_size is None else {"block_size": block_size}
    with engine(path, **kwargs, **MODES[mode]) as llm:
        got = run_greedy(llm, prompts)
        resolved = llm.llm_engine.vllm_config.cache_config.block_size
        methods = layer_methods(llm)
        threads = llm.collective_rpc(_torch_threads)[0]
    assert resolved == (block_size or 128), "the platform default block size is 128"
    # These heads are far below the oneDNN threshold (2**23 elements): vLLM's methods stay.
    assert "OneDnnEmbeddingMethod" not in methods and "UnquantizedLinearMethod" in methods, methods
    # The worker computes with the host's CPUs less one for the front-end (vLLM's serving
    # default would be one thread), unless OMP_NUM_THREADS says otherwise.
    from vllm_ascend.device.cpu import CpuDevice

    assert threads == (CpuDevice.compute_threads(1) or threads)
    assert got == reference(model, prompts)


@pytest.mark.parametrize("model, mode", [("llama", "default"), ("qwen3_moe", "full_decode")])
def test_small_chunked_prefill_matches_hf(checkpoints, reference, model, mode):
    path = checkpoints(model)
    prompts = random_prompts(LENGTHS, vocab_of(path))
    # 64-token steps: the 130- and 300-token prompts are prefilled in chunks beside decodes.
    with engine(path, max_num_batched_tokens=64, enable_chunked_prefill=True,
                **MODES[mode]) as llm:
        got = run_greedy(llm, prompts)
    assert got == reference(model, prompts)


@pytest.mark.parametrize("model, mode", [("llama", "default"), ("qwen2", "full_decode")])
def test_prefix_cache_hits_match_hf(checkpoints, reference, model, mode):
    path = checkpoints(model)
    vocab = vocab_of(path)
    shared = random_prompts([300], vocab, seed=1)[0]
    # The shared prefix fills two 128-token blocks and part of a third (a partial-block hit is
    # recomputed); the suffixes differ in length.
    prompts = [shared + tail for tail in random_prompts([3, 20, 41], vocab, seed=2)]
    with engine(path, enable_prefix_caching=True, **MODES[mode]) as llm:
        greedy(llm, [shared + [9, 10]], 2)  # fills the cache with the shared prefix
        hits_before = counter(llm, "vllm:prefix_cache_hits")
        got = run_greedy(llm, prompts)
        hits = counter(llm, "vllm:prefix_cache_hits") - hits_before
    assert hits >= 3 * 256, f"expected prefix-cache hits, got {hits} tokens"
    assert got == reference(model, prompts)


@pytest.mark.parametrize("model, mode", [("llama", "default"), ("mixtral", "full_decode")])
def test_preemption_matches_hf(checkpoints, reference, model, mode):
    path = checkpoints(model)
    prompts = random_prompts([100, 90, 80, 70, 60, 50], vocab_of(path), seed=3)
    max_tokens = 40
    # 4 blocks of 128 tokens admit four prompts, then the two that grow past 128 tokens
    # (100 + 40, 90 + 40) need a second block each and someone is preempted.
    with engine(path, num_gpu_blocks_override=4, max_model_len=256, **MODES[mode]) as llm:
        got = run_greedy(llm, prompts, max_tokens)
        preemptions = counter(llm, "vllm:num_preemptions")
    assert preemptions > 0, "the small KV cache should have forced preemption"
    assert got == reference(model, prompts, max_tokens)


@pytest.mark.parametrize("model", ["llama", "qwen3_moe"])
def test_bf16_logprobs_track_fp32_hf(checkpoints, reference, model, record_property):
    """bf16 on the plugin against an independent reference: Hugging Face in fp32, teacher-forced
    on HF's own greedy continuation (so one early near-tie cannot derail the comparison)."""
    from vllm import SamplingParams, TokensPrompt

    path = checkpoints(model)
    prompts = random_prompts([5, 37, 130], vocab_of(path), seed=4)
    sequences = [p + c for p, c in zip(prompts, reference(model, prompts), strict=True)]
    with engine(path, dtype="bfloat16") as llm:
        outs = llm.generate([TokensPrompt(prompt_token_ids=s) for s in sequences],
                            SamplingParams(max_tokens=1, prompt_logprobs=1), use_tqdm=False)
    diffs, flips = [], 0
    for prompt, seq, out in zip(prompts, sequences, outs, strict=True):
        ref = hf_logprobs(path, seq)
        for pos in range(len(prompt), len(seq)):
            token, entries = seq[pos], out.prompt_logprobs[pos]
            diffs.append(abs(entries[token].logprob - float(ref[pos - 1, token])))
            top = next(t for t, lp in entries.items() if lp.rank == 1)
            if top != token:
                flips += 1
                # A bf16 argmax may differ from fp32 only where fp32 itself is nearly tied.
                gap = float(ref[pos - 1, token] - ref[pos - 1, top])
                assert gap < BF16_TIE_GAP, (model, pos, token, top, gap)
    diffs_t = torch.tensor(diffs)
    record_property("bf16_mean_abs_logprob_diff", float(diffs_t.mean()))
    report_figure(f"{model} bf16 vs HF fp32, teacher-forced on {len(diffs)} tokens: "
                  f"mean |dlogprob| {diffs_t.mean():.4f}, max {diffs_t.max():.4f}, "
                  f"argmax flips {flips}")
    assert float(diffs_t.mean()) < BF16_MEAN_LOGPROB_TOL
    assert float(diffs_t.max()) < BF16_MAX_LOGPROB_TOL


@pytest.mark.parametrize("model, mode", [("qwen3_moe", "full_decode")])
def test_tensor_parallel_2_matches_hf(checkpoints, reference, model, mode, monkeypatch):
    # Two worker processes with gloo collectives: sharded linears and sharded experts; the
    # all-reduces are captured in whole decode graphs and replayed (the tape waits on each
    # collective's work). A dense model's TP=2 in the default graph mode (vocab-parallel
    # embedding tied to the LM head) runs through Ray in test_distributed.
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    # The replay counters are read from the workers with a function (pickled; loopback only).
    monkeypatch.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    path = checkpoints(model)
    prompts = random_prompts(LENGTHS, vocab_of(path))
    with engine(path, tensor_parallel_size=2, distributed_executor_backend="mp",
                **MODES[mode]) as llm:
        got = run_greedy(llm, prompts)
    assert got == reference(model, prompts)


@pytest.mark.parametrize("model, mode", [("llama", "default"), ("qwen3", "full_decode")])
def test_bf16_with_prefix_cache_chunking_and_preemption_is_fp32_greedy_up_to_ties(
        checkpoints, model, mode):
    """bf16 through every scheduling path at once (prefix-cache hits, 64-token prefill chunks
    beside decodes, preemption from a 5-block cache), checked against an independent reference:
    at every step the engine's token must be Hugging Face fp32's argmax on the engine's own
    sequence, or within a bf16 near-tie of it."""
    path = checkpoints(model)
    vocab = vocab_of(path)
    shared = random_prompts([140], vocab, seed=5)[0]
    # 230-250-token prompts: two blocks each (the first shared), and a third during decoding,
    # which a 5-block cache cannot give every running request.
    prompts = [shared + tail for tail in random_prompts([90, 95, 100, 105, 110], vocab, seed=6)]
    max_tokens = 30
    with engine(path, dtype="bfloat16", enable_prefix_caching=True, enable_chunked_prefill=True,
                max_num_batched_tokens=64, num_gpu_blocks_override=5, **MODES[mode]) as llm:
        greedy(llm, [shared + [9]], 1)  # caches the shared prefix's first block
        hits_before = counter(llm, "vllm:prefix_cache_hits")
        got = run_greedy(llm, prompts, max_tokens)
        hits = counter(llm, "vllm:prefix_cache_hits") - hits_before
        preemptions = counter(llm, "vllm:num_preemptions")
    assert hits >= 128 and preemptions > 0, (hits, preemptions)
    worst = 0.0
    for prompt, out in zip(prompts, got, strict=True):
        assert len(out) == max_tokens
        ref = hf_logprobs(path, prompt + out)
        for i, token in enumerate(out):
            row = ref[len(prompt) + i - 1]
            worst = max(worst, float(row.max() - row[token]))
    report_figure(f"{model} bf16 (prefix hits {hits:.0f} tokens, {preemptions:.0f} "
                  f"preemptions): worst gap to fp32 argmax {worst:.4f} nats")
    assert worst < BF16_TIE_GAP, f"a bf16 token is {worst:.3f} nats below fp32's argmax"
