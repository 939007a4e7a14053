"""Parallel modes beyond plain tensor parallel, on the CPU backend over gloo, each against Hugging
Face greedy: pipeline parallel (two stages in two worker processes), expert parallel with TP=2
(also DeepSeek-V3 with MLA, teacher-forced), data parallel with and without expert parallel (two
engine cores behind the real `vllm serve`), and tensor parallel through a local Ray cluster."""

from __future__ import annotations

import json
import time

import openai
import pytest
from engine import engine, graph_replays, greedy, random_prompts
from hf_reference import hf_greedy, hf_logprobs
from server import Server

LENGTHS = [1, 5, 37, 130, 300]
MAX_TOKENS = 12


def vocab_of(path) -> int:
    return json.loads((path / "config.json").read_text())["vocab_size"]


@pytest.mark.parametrize("model", ["llama", "qwen3_moe"])
def test_pipeline_parallel_2_matches_hf(checkpoints, model, monkeypatch):
    """Two stages, one layer each: hidden states and residuals cross between the workers
    (gloo send/recv), with the default piecewise graphs replayed on both stages."""
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    # The workers are asked for their graph replays with a function (pickled; loopback only).
    monkeypatch.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    path = checkpoints(model)
    prompts = random_prompts(LENGTHS, vocab_of(path), seed=11)
    with engine(path, pipeline_parallel_size=2, distributed_executor_backend="mp") as llm:
        mode = llm.llm_engine.vllm_config.compilation_config.cudagraph_mode
        got = greedy(llm, prompts, MAX_TOKENS)
        replays = graph_replays(llm, every_rank=True)
    assert mode.name == "PIECEWISE"
    assert len(replays) == 2 and all(sum(r["piecewise"].values()) > 0 for r in replays), replays
    assert got == hf_greedy(path, prompts, MAX_TOKENS, ignore_eos=True)


def serve_greedy(client, prompts, max_tokens):
    """Greedy completions of token-id prompts, sent concurrently (so both DP ranks work)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(prompt):
        out = client.completions.create(
            model="test", prompt=prompt, max_tokens=max_tokens, temperature=0.0,
            extra_body={"ignore_eos": True, "return_token_ids": True})
        return list(out.choices[0].token_ids)

    with ThreadPoolExecutor(len(prompts)) as pool:
        return list(pool.map(one, prompts))


@pytest.mark.parametrize("model, ep", [("qwen2", None), ("qwen3_moe", None),
                                       ("qwen3_moe", "alltoall")])
def test_data_parallel_2_serve_matches_hf(checkpoints, model, ep):
    """`vllm serve --data-parallel-size 2`: two engine cores, each with its own worker (device);
    vLLM's DP coordinator balances requests between them. An MoE model's experts are spread
    over both ranks: sharded (no expert parallel: tokens gathered and scattered back each step
    through the communicator's uneven all-gather / reduce-scatter), or whole experts per rank
    with --enable-expert-parallel, reached all-to-all (each row sent to its expert's owner).
    The ranks step together, with dummy batches on a rank that has no request. (The all-gather
    expert dispatch is the sharded case's gather and scatter with the routing limited to the
    rank's experts; that routing is tested under TP=2 below. Each DP server costs ~1.5 min
    of the suite on two cores.)"""
    path = checkpoints(model)
    prompts = random_prompts(LENGTHS, vocab_of(path), seed=12)
    start = time.perf_counter()
    # vLLM starts one API server per DP rank by default; the dense case keeps that default, the
    # MoE cases run one (a process fewer to start; the engines are what they test).
    api_servers = [] if model == "qwen2" else ["--api-server-count", "1"]
    srv = Server(path, "--data-parallel-size", "2", *api_servers, "--max-model-len", "512",
                 "--kv-cache-memory-bytes", str(64 << 20), "--dtype", "float32",
                 *(["--enable-expert-parallel", "--additional-config",
                    json.dumps({"expert_dispatch": ep})] if ep else []))
    try:
        startup = time.perf_counter() - start
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        got = serve_greedy(client, prompts, MAX_TOKENS)
        # One lone request: the other rank runs dummy batches beside it.
        alone = serve_greedy(client, prompts[:1], MAX_TOKENS)
    finally:
        code = srv.stop()
    print(f"\n[metric] {model} DP=2{f' EP {ep}' if ep else ''} serve start-up {startup:.1f} s")
    assert code == 0, srv.output()
    log = srv.output(tail=None)
    assert "EngineCore_DP0" in log and "EngineCore_DP1" in log, "two engine cores expected"
    # A dense model captures graphs under data parallel; an MoE model runs eager there.
    assert ("Graph capture (PIECEWISE" in log) == (model == "qwen2")
    ref = hf_greedy(path, prompts, MAX_TOKENS, ignore_eos=True)
    assert got == ref
    assert alone == ref[:1]


@pytest.fixture
def ray_cluster(monkeypatch):
    """A one-node Ray cluster on loopback, started as a user starts one (`ray start --head`),
    declaring two NPU slots: the plugin's Ray resource key is "NPU" on both backends (Ray
    refuses "CPU" as a custom resource for actors, which vLLM's executor would request)."""
    import pathlib
    import shutil
    import subprocess
    import sys
    import tempfile

    from server import free_port

    ray = str(pathlib.Path(sys.executable).with_name("ray"))
    port = free_port()
    # A short directory: Ray's unix sockets live under it (path length limit).
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    # Loopback only: no token authentication (a token left in ~/.ray would otherwise switch
    # the head to token mode and the engine's own ray.init could not join).
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    env = dict(__import__("os").environ, VLLM_ASCEND_DEVICE="cpu")
    subprocess.run([ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port",
                    str(port), "--num-cpus", "4", "--resources", '{"NPU": 2}',
                    "--include-dashboard", "false", "--temp-dir", temp_dir],
                   env=env, check=True, capture_output=True, timeout=120)
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    try:
        yield
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_tensor_parallel_2_through_ray_matches_hf(checkpoints, ray_cluster, monkeypatch):
    """Dense TP=2 in the default graph mode: sharded linears, the vocab-parallel embedding's
    masking (qwen2 ties it to the LM head), and all-reduces captured in the piecewise graphs
    and replayed on both workers. (The multiprocessing executor's TP=2 runs in
    test_greedy_vs_hf, with an MoE model and whole decode graphs.)"""
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    # The workers are asked for their graph replays with a function (pickled; loopback only).
    monkeypatch.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    path = checkpoints("qwen2")
    prompts = random_prompts(LENGTHS, vocab_of(path), seed=13)
    start = time.perf_counter()
    with engine(path, tensor_parallel_size=2, distributed_executor_backend="ray") as llm:
        startup = time.perf_counter() - start
        got = greedy(llm, prompts, MAX_TOKENS)
        replays = graph_replays(llm, every_rank=True)
    print(f"\n[metric] qwen2 TP=2 through Ray: start-up {startup:.1f} s")
    assert len(replays) == 2 and all(sum(r["piecewise"].values()) > 0 for r in replays), replays
    assert got == hf_greedy(path, prompts, MAX_TOKENS, ignore_eos=True)


@pytest.mark.parametrize("model, dispatch", [("qwen3_moe", "alltoall"), ("mixtral", "allgather")])
def test_expert_parallel_with_tp_2_matches_hf(checkpoints, model, dispatch, monkeypatch):
    """TP=2 with --enable-expert-parallel: each rank holds half the experts and computes only
    them. alltoall (the default): each rank sends its share of the tokens' rows to the experts'
    owners; allgather: both ranks route all tokens to their own experts (the routing op's active
    expert range) and the runner all-reduces. Expert parallel runs eager (row counts are read
    on the host)."""
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    # The workers are asked for their experts with a function (pickled; loopback only).
    monkeypatch.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    path = checkpoints(model)
    prompts = random_prompts(LENGTHS, vocab_of(path), seed=14)
    with engine(path, tensor_parallel_size=2, enable_expert_parallel=True,
                additional_config={"expert_dispatch": dispatch},
                distributed_executor_backend="mp") as llm:
        (local,) = set(llm.collective_rpc(_local_experts))
        mode = llm.llm_engine.vllm_config.compilation_config.cudagraph_mode
        got = greedy(llm, prompts, MAX_TOKENS)
    assert mode.name == "NONE"
    experts = json.loads((path / "config.json").read_text())
    total = experts.get("num_experts") or experts["num_local_experts"]
    assert local == (total // 2, dispatch == "alltoall"), (local, total)
    assert got == hf_greedy(path, prompts, MAX_TOKENS, ignore_eos=True)


def _local_experts(worker) -> tuple[int, bool]:
    """Experts held by the worker's first MoE layer, and whether it dispatches all-to-all."""
    from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts

    model = worker.model_runner.model
    model = model.unwrap() if hasattr(model, "unwrap") else model
    layer = next(m for m in model.modules() if isinstance(m, RoutedExperts))
    return layer.w13_weight.shape[0], layer.quant_method.dispatcher is not None


def test_deepseek_v3_expert_parallel_with_tp_2_matches_hf(checkpoints, monkeypatch):
    """DeepSeek-V3 (MLA, sigmoid grouped top-k with correction bias, routed_scaling_factor,
    a shared expert) under TP=2 with --enable-expert-parallel (all-to-all dispatch, the
    default): each rank holds 16 of the 32 MLA heads (the MLA decode kernel takes 32: padded)
    and 8 of the 16 experts. Teacher-forced against Hugging Face on its greedy continuation:
    the prompt logprobs (MLA prefill) and the logprobs of the engine's own greedy tokens (MLA
    decode) agree on the top-1 token and to 1e-2 in logprob."""
    from vllm import SamplingParams, TokensPrompt

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    monkeypatch.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    path = checkpoints("deepseek_v3")
    prompts = random_prompts([9, 140], vocab_of(path), seed=15)
    continuations = hf_greedy(path, prompts, MAX_TOKENS, ignore_eos=True)
    sequences = [p + c for p, c in zip(prompts, continuations, strict=True)]
    with engine(path, tensor_parallel_size=2, enable_expert_parallel=True,
                distributed_executor_backend="mp") as llm:
        (local,) = set(llm.collective_rpc(_local_experts))
        (heads,) = set(llm.collective_rpc(_mla_heads))
        forced = llm.generate([TokensPrompt(prompt_token_ids=s) for s in sequences],
                              SamplingParams(max_tokens=1, prompt_logprobs=1), use_tqdm=False)
        decoded = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts],
                               SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, logprobs=0,
                                              ignore_eos=True), use_tqdm=False)
    assert local == (8, True), local
    assert heads == (16, 32), heads
    diffs, agree, total = [], 0, 0
    for seq, out in zip(sequences, forced, strict=True):  # prefill rows
        ref = hf_logprobs(path, seq)
        for pos in range(1, len(seq)):
            entries = out.prompt_logprobs[pos]
            diffs.append(abs(entries[seq[pos]].logprob - float(ref[pos - 1, seq[pos]])))
            top = next(t for t, lp in entries.items() if lp.rank == 1)
            agree += int(top == int(ref[pos - 1].argmax()))
            total += 1
    for prompt, out in zip(prompts, decoded, strict=True):  # decode rows
        done = out.outputs[0]
        ref = hf_logprobs(path, prompt + list(done.token_ids))
        for i, (token, entries) in enumerate(zip(done.token_ids, done.logprobs, strict=True)):
            row = ref[len(prompt) + i - 1]
            diffs.append(abs(entries[token].logprob - float(row[token])))
            agree += int(token == int(row.argmax()))
            total += 1
    print(f"\n[metric] deepseek_v3 TP=2 + EP all-to-all vs HF, {total} positions: top-1 "
          f"agreement {agree / total:.2%}, max |dlogprob| {max(diffs):.2e}")
    assert agree / total >= 0.99
    assert max(diffs) < 1e-2


def _mla_heads(worker) -> tuple[int, int]:
    """Query heads of the worker's first MLA layer, and the MLA decode kernel's head count
    they are padded to."""
    from vllm_ascend.attention.mla_impl import AscendMLAImpl

    model = worker.model_runner.model
    model = model.unwrap() if hasattr(model, "unwrap") else model
    impl = next(m.impl for m in model.modules() if isinstance(getattr(m, "impl", None),
                                                               AscendMLAImpl))
    return impl.num_heads, impl.decode_heads
