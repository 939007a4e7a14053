"""Every covered vLLM rotary class, built through vLLM's own ``get_rope`` after the plugin's layers
are registered, is the plugin's class and its forward (the _C_ascend kernel) equals vLLM's
``forward_native`` of the same vLLM class built with the same arguments."""

from __future__ import annotations

import pytest
import torch
import vllm.model_executor.layers.rotary_embedding as rope_pkg
from vllm.config import DeviceConfig, VllmConfig, set_current_vllm_config
from vllm.model_executor.custom_op import op_registry_oot
from vllm.model_executor.layers.rotary_embedding import get_rope

from vllm_ascend import kernels
from vllm_ascend.ops import ascend_class, register_layers

MAX_POS = 512
# Result computed in fp32 and rounded once vs vLLM's forward_native in float32 / in the dtype.
TOL_F32 = dict(atol=2e-5, rtol=2e-5)
TOL_BF16_VS_F32 = dict(atol=3e-2, rtol=1.6e-2)
TOL_BF16_VS_NATIVE = dict(atol=6e-2, rtol=3e-2)

LLAMA3 = dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
              high_freq_factor=4.0, original_max_position_embeddings=64)
YARN = dict(rope_type="yarn", rope_theta=10000.0, factor=4.0,
            original_max_position_embeddings=MAX_POS // 4)
DEEPSEEK_YARN = dict(rope_type="deepseek_yarn", rope_theta=10000.0, factor=4.0,
                     original_max_position_embeddings=MAX_POS // 4, beta_fast=32, beta_slow=1,
                     mscale=0.707, mscale_all_dim=0.707)

# (case id, expected vLLM class name, rope_parameters); head size 128 unless partial.
ROPE_CASES = [
    ("default", "RotaryEmbedding", dict(rope_type="default", rope_theta=10000.0)),
    ("llama3", "Llama3RotaryEmbedding", LLAMA3),
    ("yarn", "YaRNScalingRotaryEmbedding", YARN),
    ("yarn_attention_factor", "YaRNScalingRotaryEmbedding",
     {**YARN, "attention_factor": 0.8, "beta_fast": 16}),
    ("linear", "LinearScalingRotaryEmbedding", dict(rope_type="linear", factor=2.0)),
    ("ntk", "NTKScalingRotaryEmbedding", dict(rope_type="ntk", factor=2.0)),
    ("ntk_mixed", "NTKScalingRotaryEmbedding", dict(rope_type="ntk", factor=2.0, mixed_b=0.5)),
    ("dynamic_factor", "DynamicNTKScalingRotaryEmbedding",
     dict(rope_type="dynamic", factor=2.0, max_trained_positions=MAX_POS // 2)),
    ("dynamic_alpha", "DynamicNTKAlphaRotaryEmbedding", dict(rope_type="dynamic", alpha=2.0)),
    ("proportional", "Gemma4RotaryEmbedding", dict(rope_type="proportional")),
]
PARTIAL = 0.5  # partial_rotary_factor: rotary_dim = head_size / 2


@pytest.fixture(autouse=True)
def plugin_layers(monkeypatch):
    kernels.load()
    register_layers()  # what the plugin's general plugin does in every vLLM process
    # get_rope caches instances per process; start each test from an empty cache.
    monkeypatch.setattr(rope_pkg, "_ROPE_DICT", {})
    with set_current_vllm_config(VllmConfig(device_config=DeviceConfig(device="cpu"))):
        yield


def build_layers(monkeypatch, vllm_name, head_size, is_neox, params, dtype):
    """(plugin layer, vLLM's own layer, vLLM's own layer in float32) from get_rope with identical
    arguments (but the dtype, for the last)."""
    kwargs = dict(head_size=head_size, max_position=MAX_POS, is_neox_style=is_neox,
                  rope_parameters=params, dtype=dtype)
    ours = get_rope(**kwargs)
    assert type(ours) is ascend_class(vllm_name)
    # dispatch picked the plugin's forward (custom ops on, out-of-tree platform)
    assert ours._forward_method == ours.forward_oot

    with monkeypatch.context() as m:
        m.delitem(op_registry_oot, vllm_name)
        m.setattr(rope_pkg, "_ROPE_DICT", {})
        ref = get_rope(**kwargs)
        ref32 = get_rope(**{**kwargs, "dtype": torch.float32})
    assert type(ref).__name__ == vllm_name and type(ref).__module__.startswith("vllm.")
    assert isinstance(ours, type(ref))
    torch.testing.assert_close(ours.cos_sin_cache, ref.cos_sin_cache, atol=0, rtol=0)
    return ours, ref, ref32


def qk(tokens, nq, nk, head_size, dtype, shape3d):
    q = torch.randn(tokens, nq, head_size) * 2
    k = torch.randn(tokens, nk, head_size) * 2
    if not shape3d:
        q, k = q.flatten(1), k.flatten(1)
    return q.to(dtype), k.to(dtype)


def check(got, native, want32, dtype):
    if dtype == torch.float32:
        torch.testing.assert_close(got, native, **TOL_F32)
    else:
        torch.testing.assert_close(got.float(), want32, **TOL_BF16_VS_F32)
        torch.testing.assert_close(got, native, **TOL_BF16_VS_NATIVE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize("partial", [False, True], ids=["full", "partial"])
@pytest.mark.parametrize("case,vllm_name,params", ROPE_CASES, ids=[c[0] for c in ROPE_CASES])
def test_rope_variant_matches_vllm(monkeypatch, case, vllm_name, params, partial, is_neox,
                                   dtype):
    params = {**params, "partial_rotary_factor": PARTIAL} if partial else params
    head_size = 128
    ours, ref, ref32 = build_layers(monkeypatch, vllm_name, head_size, is_neox, params, dtype)
    if partial and vllm_name != "Gemma4RotaryEmbedding":
        assert ours.rotary_dim == head_size // 2

    tokens = 23
    positions = torch.randint(0, ours.cos_sin_cache.shape[0], (tokens,))
    positions[0] = ours.cos_sin_cache.shape[0] - 1  # the last cache row
    q, k = qk(tokens, 4, 2, head_size, dtype, shape3d=False)

    native_q, native_k = ref.forward_native(positions, q.clone(), k.clone())
    want_q, want_k = ref32.forward_native(positions, q.float(), k.float())

    q_in, k_in = q.clone(), k.clone()
    got_q, got_k = ours(positions, q_in, k_in)
    assert got_q.data_ptr() == q_in.data_ptr() and got_k.data_ptr() == k_in.data_ptr()
    check(got_q, native_q, want_q, dtype)
    check(got_k, native_k, want_k, dtype)

    # key may be None (e.g. cross-layer KV sharing): the query alone is rotated the same way.
    q_only, none = ours(positions, q.clone(), None)
    assert none is None
    torch.testing.assert_close(q_only, got_q, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("is_neox", [False, True], ids=["gptj", "neox"])
@pytest.mark.parametrize("with_offsets", [False, True])
def test_deepseek_yarn_matches_vllm(monkeypatch, dtype, is_neox, with_offsets):
    # DeepSeek MLA: get_rope(qk_rope_head_dim), q_pe [T, heads, 64] as a slice of each head.
    rope_dim, nope = 64, 32
    ours, ref, ref32 = build_layers(monkeypatch, "DeepseekScalingRotaryEmbedding", rope_dim,
                                    is_neox, DEEPSEEK_YARN, dtype)
    tokens = 17
    positions = torch.randint(0, MAX_POS - 8, (tokens,))
    offsets = torch.randint(0, 8, (tokens,)) if with_offsets else None
    q_full = (torch.randn(tokens, 8, nope + rope_dim) * 2).to(dtype)
    k_pe = (torch.randn(tokens, 1, rope_dim) * 2).to(dtype)

    native_q, native_k = ref.forward_native(positions, q_full[..., nope:].clone(), k_pe.clone(),
                                            offsets)
    want_q, want_k = ref32.forward_native(positions, q_full[..., nope:].float(), k_pe.float(),
                                          offsets)

    q_in, k_in = q_full.clone(), k_pe.clone()
    got_q, got_k = ours(positions, q_in[..., nope:], k_in, offsets)
    torch.testing.assert_close(q_in[..., :nope], q_full[..., :nope], atol=0, rtol=0)
    torch.testing.assert_close(q_in[..., nope:], got_q, atol=0, rtol=0)  # in place in the slice
    check(got_q, native_q, want_q, dtype)
    check(got_k, native_k, want_k, dtype)


MROPE_CASES = [
    ("chunked", dict(rope_type="default", rope_theta=1000000.0, mrope_section=[16, 24, 24])),
    ("interleaved", dict(rope_type="default", rope_theta=5000000.0, mrope_section=[24, 20, 20],
                         mrope_interleaved=True)),
    ("yarn", dict(rope_type="yarn", rope_theta=1000000.0, factor=2.0,
                  original_max_position_embeddings=MAX_POS, mrope_section=[16, 24, 24])),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("multimodal", [False, True], ids=["text_positions", "thw_positions"])
@pytest.mark.parametrize("case,params", MROPE_CASES, ids=[c[0] for c in MROPE_CASES])
def test_mrope_matches_vllm(monkeypatch, case, params, multimodal, dtype):
    # Qwen2-VL / Qwen2.5-VL text: head 128, mrope_section sums to rotary_dim / 2.
    ours, ref, ref32 = build_layers(monkeypatch, "MRotaryEmbedding", 128, True, params, dtype)
    tokens = 29
    rows = ours.cos_sin_cache.shape[0]
    if multimodal:
        positions = torch.randint(0, rows, (3, tokens))
    else:
        positions = torch.randint(0, rows, (tokens,))
    q, k = qk(tokens, 4, 2, 128, dtype, shape3d=False)

    native_q, native_k = ref.forward_native(positions, q.clone(), k.clone())
    want_q, want_k = ref32.forward_native(positions, q.float(), k.float())

    q_in, k_in = q.clone(), k.clone()
    got_q, got_k = ours(positions, q_in, k_in)
    # T/H/W positions with consecutive sections go through npu_mrope, which returns new tensors;
    # the other forms rotate in place through the _C_ascend kernel.
    through_npu_mrope = multimodal and case != "interleaved"
    assert (got_q.data_ptr() == q_in.data_ptr()) != through_npu_mrope
    check(got_q, native_q, want_q, dtype)
    check(got_k, native_k, want_k, dtype)
