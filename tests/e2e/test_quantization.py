"""Quantized checkpoints through the engine, each against an independent reference.

The checkpoints are the tiny test models quantized by tests/quant_checkpoints.py into the
layouts msModelSlim and LLM-Compressor write. The reference (tests/quant_reference.py) is
Hugging Face transformers in float64 with every quantized linear and expert replaced by a
plain-PyTorch implementation of the scheme's documented arithmetic; it shares no code with the
plugin. The engine runs in float32 (the CPU backend's relaxation), with the default piecewise
graphs, and nobody passes --quantization: the format is detected from the checkpoint.

How they are compared: teacher-forced. The engine generates greedily and reports each chosen
token's logprob; the reference scores the same sequence. Where activations are quantized with
scales that are not powers of two (every dynamic scheme; compressed-tensors' static scale), a
value that float32 and float64 put on either side of a rounding boundary becomes a different
int8 code, a one-step change the model then carries: these tiny random models amplify it to a
few hundredths of a nat on average, and now and then the greedy choice flips between two
close tokens. So each case asserts
  - the mean |engine - reference| logprob of the chosen tokens is below MEAN_TOLERANCE
    (measured 0.004-0.014; a bias 10% off gives 0.08),
  - every token the engine chose that is not the reference's top token is within NEAR_TIE
    of it (the flips measured were 0.15 to 0.29 nats), and most sequences have no such token.
ModelSlim's static W8A8 with power-of-two activation scales has no such boundary effects and
matches exactly (difference 0).
"""

from __future__ import annotations

import json

import pytest
from engine import engine, random_prompts
from quant_checkpoints import QuantSpec, build_quant_checkpoint
from quant_reference import quant_hf_logprobs

LENGTHS = [1, 5, 37, 130, 300]
MAX_TOKENS = 12
MEAN_TOLERANCE = 0.025
NEAR_TIE = 0.5

CASES = [
    # base, scheme, the method vLLM should pick
    ("qwen2", "W8A8", "ascend"),
    ("llama", "W8A8_DYNAMIC", "ascend"),
    ("qwen2", "W8A8_DYNAMIC", "ascend"),
    ("qwen2", "W8A16", "ascend"),
    ("qwen3_moe", "W8A8", "ascend"),  # static attention, W8A8_DYNAMIC experts
    ("qwen3_moe", "W8A8_DYNAMIC", "ascend"),
    ("qwen3_moe", "W4A8_DYNAMIC", "ascend"),  # int4 experts, W8A8_DYNAMIC attention
    ("qwen2", "ct_w8a8_static", "compressed-tensors"),
    ("qwen2", "ct_w8a8_dynamic", "compressed-tensors"),
]


def vocab_of(path) -> int:
    return json.loads((path / "config.json").read_text())["vocab_size"]


def _fused_norms(worker) -> int:
    model = worker.model_runner.get_model()
    return sum(bool(getattr(m, "feeds_int8_dynamic", False)) for m in model.modules())


def generate_with_logprobs(llm, prompts):
    """Greedy tokens of each prompt and the engine's logprob of each."""
    from vllm import SamplingParams, TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True,
                            logprobs=0)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                        use_tqdm=False)
    result = []
    for out in outs:
        tokens = list(out.outputs[0].token_ids)
        result.append((tokens, [lp[t].logprob for lp, t in zip(out.outputs[0].logprobs,
                                                                tokens, strict=True)]))
    return result


def assert_matches_reference(path, prompts, generated, label: str) -> dict:
    """Teacher-forced comparison (module docstring); returns the figures it checked."""
    diffs, flips, clean = [], [], 0
    for prompt, (tokens, logprobs) in zip(prompts, generated, strict=True):
        ref = quant_hf_logprobs(path, prompt + tokens)
        rows = ref[len(prompt) - 1: len(prompt) - 1 + len(tokens)]
        seq_flips = []
        for row, token, logprob in zip(rows, tokens, logprobs, strict=True):
            diffs.append(abs(logprob - float(row[token])))
            if int(row.argmax()) != token:
                seq_flips.append(float(row.max() - row[token]))
        flips += seq_flips
        clean += not seq_flips
    mean = sum(diffs) / len(diffs)
    figures = {"mean": mean, "max": max(diffs), "flips": flips, "clean": clean}
    print(f"\n[metric] {label}: mean |dlogprob| {mean:.4f}, max {max(diffs):.4f}, "
          f"near-tie flips {[round(f, 3) for f in flips]}, "
          f"{clean}/{len(prompts)} sequences all on the reference's top token")
    assert mean < MEAN_TOLERANCE, figures
    assert all(f < NEAR_TIE for f in flips), figures
    assert clean >= len(prompts) - 2, figures
    return figures


@pytest.mark.parametrize("base, scheme, method", CASES,
                         ids=[f"{b}-{s}" for b, s, _ in CASES])
def test_quantized_model_matches_reference(base, scheme, method, monkeypatch):
    # The workers are asked about their norms with a function (pickled; loopback only).
    monkeypatch.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    path = build_quant_checkpoint(base, scheme)
    prompts = random_prompts(LENGTHS, vocab_of(path), seed=21)
    with engine(path) as llm:
        config = llm.llm_engine.vllm_config
        (fused,) = llm.collective_rpc(_fused_norms)
        generated = generate_with_logprobs(llm, prompts)
    assert config.model_config.quantization == method
    assert config.compilation_config.cudagraph_mode.name == "PIECEWISE"
    # Add + RMSNorm + dynamic quant fused before each W8A8_DYNAMIC qkv / gate_up (not the
    # first layer's input norm, which has no residual; the MoE's post-attention norm feeds
    # the router and experts).
    dynamic_attention = scheme == "W8A8_DYNAMIC" or (base, scheme) == ("qwen3_moe",
                                                                       "W4A8_DYNAMIC")
    expected_fused = (4 if base != "qwen3_moe" else 2) if dynamic_attention else 0
    assert fused == expected_fused
    figures = assert_matches_reference(path, prompts, generated, f"{base} {scheme}")
    if scheme == "W8A8":  # power-of-two activation scales: no rounding-boundary effects
        assert figures["max"] < 1e-4 and not figures["flips"], figures


BF16_CASES = [("qwen2", "W8A8"), ("qwen2", "W8A16"), ("qwen3_moe", "W4A8_DYNAMIC"),
              ("qwen2", "ct_w8a8_static")]
# bfloat16 rounds every activation to 8 bits before it is quantized, so int8 codes flip at
# many rounding boundaries: the engine's distance from the float64 reference grows from
# 0.035 (the unquantized model in bfloat16) to 0.06-0.31 mean |dlogprob| measured here.
BF16_MEAN_TOLERANCE = 0.5


@pytest.mark.parametrize("base, scheme", BF16_CASES, ids=[f"{b}-{s}" for b, s in BF16_CASES])
def test_bfloat16_runs_every_kernel_in_its_documented_dtypes(base, scheme):
    """The dtype rules of the NPU ops (a float32 bias with bfloat16 activations, bfloat16 scales
    for a bfloat16 grouped-matmul output, ...) only bite in half precision: each scheme runs in
    bfloat16 and stays near the reference (see BF16_MEAN_TOLERANCE)."""
    path = build_quant_checkpoint(base, scheme)
    prompts = random_prompts([5, 37, 130], vocab_of(path), seed=24)
    with engine(path, dtype="bfloat16") as llm:
        generated = generate_with_logprobs(llm, prompts)
    diffs = [abs(lp - float(quant_hf_logprobs(path, p + t)[len(p) - 1 + j][tok]))
             for p, (t, lps) in zip(prompts, generated, strict=True)
             for j, (tok, lp) in enumerate(zip(t, lps, strict=True))]
    mean = sum(diffs) / len(diffs)
    print(f"\n[metric] {base} {scheme} bfloat16: mean |dlogprob| {mean:.4f}")
    assert mean < BF16_MEAN_TOLERANCE


def test_mixed_checkpoint_with_float_layers():
    """FLOAT layers keep vLLM's unquantized path beside quantized ones in one model."""
    spec = QuantSpec("W8A8_DYNAMIC", overrides={"model.layers.1.*": "FLOAT"})
    path = build_quant_checkpoint("qwen2", spec)
    prompts = random_prompts(LENGTHS, vocab_of(path), seed=22)
    with engine(path) as llm:
        generated = generate_with_logprobs(llm, prompts)
    assert_matches_reference(path, prompts, generated, "qwen2 W8A8_DYNAMIC + FLOAT layer 1")


@pytest.mark.parametrize("overrides, message", [
    ({"model.layers.0.self_attn.k_proj": "W8A8_DYNAMIC"},
     "'model.layers.0.self_attn.qkv_proj' fuses q_proj, k_proj, v_proj, whose quant types "
     "differ"),
], ids=["fused_shards_disagree"])
def test_bad_checkpoints_stop_start_up_naming_the_layer(overrides, message):
    path = build_quant_checkpoint("qwen2", QuantSpec("W8A8", overrides=overrides))
    with pytest.raises(Exception) as info:
        with engine(path):
            pass
    assert message in _all_text(info.value)


def test_explicit_other_method_wins_with_a_warning(caplog):
    """A user's --quantization is kept: on a ModelSlim checkpoint another method then fails
    in that method's own terms, after our warning says what the checkpoint is."""
    from vllm.engine.arg_utils import EngineArgs

    path = build_quant_checkpoint("qwen2", "W8A8_DYNAMIC")
    with caplog.at_level("WARNING"):
        try:
            EngineArgs(model=str(path), quantization="fp8",
                       max_model_len=512).create_engine_config()
        except Exception:  # fp8 itself may refuse this host; the warning came first
            pass
    assert any("quant_model_description.json (an msModelSlim checkpoint) but --quantization "
               "fp8 was given" in r.getMessage() for r in caplog.records)


def _all_text(exc: BaseException) -> str:
    """The message of an exception and of everything it was raised from (engine start-up
    errors arrive wrapped)."""
    parts = []
    while exc is not None:
        parts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


def test_vllm_serve_serves_a_w8a8_dynamic_checkpoint():
    """The real server on a W8A8_DYNAMIC MoE checkpoint (detected, not named on the command
    line): completions over HTTP, scored against the reference like the offline runs."""
    import openai
    from server import Server

    path = build_quant_checkpoint("qwen3_moe", "W8A8_DYNAMIC")
    prompts = random_prompts([5, 37], vocab_of(path), seed=23)
    srv = Server(path, "--max-model-len", "512", "--kv-cache-memory-bytes", str(64 << 20),
                 "--dtype", "float32")
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        generated = []
        for prompt in prompts:
            out = client.completions.create(
                model="test", prompt=prompt, max_tokens=MAX_TOKENS, temperature=0.0,
                logprobs=1, extra_body={"ignore_eos": True, "return_token_ids": True})
            choice = out.choices[0]
            generated.append((list(choice.token_ids), list(choice.logprobs.token_logprobs)))
    finally:
        code = srv.stop()
    assert code == 0, srv.output()
    assert "quantization=ascend" in srv.output(tail=None)
    assert_matches_reference(path, prompts, generated, "vllm serve qwen3_moe W8A8_DYNAMIC")


def _weight_bytes(worker) -> tuple[int, int]:
    """The weights' bytes, and the activations' peak the profile run measured over them."""
    model = worker.model_runner.get_model()
    weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    return weights, worker.peak_activation_memory


def _measure_kv(path: str, results) -> None:
    """In a fresh process (so no earlier engine's memory is counted): the KV cache size vLLM
    derives from the memory in use at the profile run's peak, the weights' bytes and the
    activations' peak."""
    import os

    os.environ["VLLM_ASCEND_DEVICE"] = "cpu"
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    try:
        with engine(path, kv_cache_memory_bytes=None, gpu_memory_utilization=0.5,
                    enforce_eager=True, max_num_batched_tokens=512) as llm:
            cache = llm.llm_engine.vllm_config.cache_config
            (figures,) = llm.collective_rpc(_weight_bytes)
            results.put(("ok", cache.num_gpu_blocks, figures))
    except BaseException as exc:  # reported to the parent, which fails the test
        results.put(("error", repr(exc), (0, 0)))


def test_kv_budget_grows_by_what_the_weights_save(checkpoints):
    """Without an explicit KV size the cache gets the budget less the memory in use at the
    profile run's peak, so int8 weights leave it more room: on a 30M-parameter model (float32
    weights 120 MB) the extra KV bytes equal the weight bytes saved less what the int8 path
    needs more at its activations' peak (the CPU backend's int8 matmul converts each weight to
    float32 one 1024x1024 panel at a time), within the process-memory noise of the CPU backend."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    measured = {}
    for name, path in (("float", checkpoints("llama_wide")),
                       ("W8A8_DYNAMIC", build_quant_checkpoint("llama_wide", "W8A8_DYNAMIC"))):
        results = ctx.Queue()
        proc = ctx.Process(target=_measure_kv, args=(str(path), results))
        proc.start()
        status, blocks, (weights, activations) = results.get(timeout=300)
        proc.join(timeout=60)
        assert status == "ok", blocks
        measured[name] = (blocks, weights, activations)
    config = json.loads((checkpoints("llama_wide") / "config.json").read_text())
    block_bytes = (2 * config["num_hidden_layers"] * 128 * config["num_key_value_heads"]
                   * config["head_dim"] * 4)  # K and V, float32, 128-token blocks
    saved = measured["float"][1] - measured["W8A8_DYNAMIC"][1]
    gained = (measured["W8A8_DYNAMIC"][0] - measured["float"][0]) * block_bytes
    extra_peak = measured["W8A8_DYNAMIC"][2] - measured["float"][2]
    print(f"\n[metric] llama_wide weights {measured['float'][1] / 2**20:.1f} MiB float32 -> "
          f"{measured['W8A8_DYNAMIC'][1] / 2**20:.1f} MiB W8A8_DYNAMIC; KV cache "
          f"{measured['float'][0]} -> {measured['W8A8_DYNAMIC'][0]} blocks "
          f"(+{gained / 2**20:.1f} MiB for {saved / 2**20:.1f} MiB of weights saved, "
          f"{extra_peak / 2**20:.1f} MiB more at the activations' peak)")
    assert saved > 80 << 20, measured
    assert gained > 0, measured
    assert abs(gained - (saved - extra_peak)) < 0.15 * saved, measured
