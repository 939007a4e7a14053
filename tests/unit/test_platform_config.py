"""NPUPlatform adapts realistic vLLM configurations (CPU backend; the same rules hold on NPU)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

os.environ.setdefault("VLLM_ASCEND_DEVICE", "cpu")


def make_config(model, **kwargs):
    from vllm.engine.arg_utils import EngineArgs

    return EngineArgs(model=str(model), max_model_len=512, **kwargs).create_engine_config()


@pytest.fixture(scope="module")
def llama(checkpoints):
    return checkpoints("llama")


@pytest.mark.parametrize("enforce_eager", [True, False])
@pytest.mark.parametrize("chunked_prefill", [True, False])
@pytest.mark.parametrize("tp", [1, 2])
def test_config_adaptation(llama, enforce_eager, chunked_prefill, tp):
    from vllm.config import CompilationMode, CUDAGraphMode
    from vllm.platforms import current_platform

    cfg = make_config(
        llama,
        enforce_eager=enforce_eager,
        enable_chunked_prefill=chunked_prefill,
        max_num_batched_tokens=512,
        tensor_parallel_size=tp,
        distributed_executor_backend="mp" if tp > 1 else None,
    )
    assert type(current_platform).__name__ == "NPUPlatform"
    assert cfg.parallel_config.worker_cls == "vllm_ascend.worker.worker.NPUWorker"
    assert cfg.parallel_config.tensor_parallel_size == tp
    assert cfg.compilation_config.mode == CompilationMode.NONE
    if enforce_eager:
        assert cfg.compilation_config.cudagraph_mode == CUDAGraphMode.NONE
        assert cfg.compilation_config.cudagraph_capture_sizes == []
    else:  # the default: piecewise graphs, batches up to the CPU backend's default of 16
        assert cfg.compilation_config.cudagraph_mode == CUDAGraphMode.PIECEWISE
        assert cfg.compilation_config.cudagraph_capture_sizes == [1, 2, 4, 8, 16]
        assert cfg.compilation_config.max_cudagraph_capture_size == 16
    assert "all" in cfg.compilation_config.custom_ops
    assert cfg.scheduler_config.async_scheduling is False  # CPU backend
    assert cfg.scheduler_config.enable_chunked_prefill == chunked_prefill
    assert cfg.cache_config.block_size == 128
    assert cfg.shutdown_timeout == 5
    assert cfg.device_config.device_type == "cpu"
    assert os.environ["VLLM_USE_V2_MODEL_RUNNER"] == "0"
    assert cfg.use_v2_model_runner is False
    assert current_platform.is_pin_memory_available() is False
    assert current_platform.dist_backend == "gloo"


def test_user_block_size_is_kept(llama):
    assert make_config(llama, block_size=256).cache_config.block_size == 256


@pytest.mark.parametrize("block_size", [16, 64, 192, 640])
def test_block_size_the_npu_cannot_page_is_refused_with_the_fix(llama, block_size):
    # torch_npu's paged fused attention: blocks of 128..512 tokens, multiples of 128.
    with pytest.raises(ValueError, match=r"128, 256, 384, 512.*--block-size 128"):
        make_config(llama, block_size=block_size)


def with_config(src, tmp_path, **changes):
    """A copy of a checkpoint whose config.json has ``changes``."""
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(changes)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("head_dim", [32, 80, 256])
def test_head_size_the_npu_cannot_attend_is_refused(llama, tmp_path, head_dim):
    model = with_config(llama, tmp_path, head_dim=head_dim)
    with pytest.raises(ValueError, match=rf"head size {head_dim} .*64, 128, 192"):
        make_config(model)


def test_head_size_192_is_accepted(llama, tmp_path):
    model = with_config(llama, tmp_path, head_dim=192)
    assert make_config(model).model_config.get_head_size() == 192


def test_async_scheduling_with_speculative_decoding_reads_exact_lengths(llama):
    # Accepted: with async scheduling the attention metadata builder takes the sequence
    # lengths from the device (tests/unit/spec_decode/test_exact_seq_lens.py).
    from vllm_ascend.attention.metadata import host_lengths_optimistic

    cfg = make_config(llama, speculative_config={"method": "ngram", "num_speculative_tokens": 2,
                                                 "prompt_lookup_max": 3})
    assert cfg.scheduler_config.async_scheduling is False  # the CPU backend runs synchronously
    assert not host_lengths_optimistic(cfg)
    cfg.scheduler_config.async_scheduling = True  # as on an NPU, where vLLM enables it
    assert host_lengths_optimistic(cfg)


def test_attention_backend_is_ours(llama):
    from vllm.platforms import current_platform

    cls = current_platform.get_attn_backend_cls(None, None)
    assert cls == "vllm_ascend.attention.backend.AscendAttentionBackend"


def test_unsupported_dtype_is_refused():
    import torch
    from vllm.platforms import current_platform

    with pytest.raises(ValueError, match="bfloat16"):
        current_platform.check_if_supports_dtype(torch.float64)


def test_fp32_is_the_cpu_backends_relaxation_only(monkeypatch):
    import torch

    from vllm_ascend import platform
    from vllm_ascend.device.cpu import CpuDevice

    platform.NPUPlatform.check_if_supports_dtype(torch.float32)  # CPU backend: allowed

    class NpuLike(CpuDevice):  # the device layer as an NPU host reports itself
        device_type = "npu"

    monkeypatch.setattr(platform, "_DEVICE", NpuLike)
    with pytest.raises(ValueError, match="npu.*--dtype bfloat16"):
        platform.NPUPlatform.check_if_supports_dtype(torch.float32)
    platform.NPUPlatform.check_if_supports_dtype(torch.bfloat16)


@pytest.mark.parametrize("mode, expected", [
    ("PIECEWISE", "PIECEWISE"),
    ("FULL_AND_PIECEWISE", "FULL_AND_PIECEWISE"),
    ("FULL", "FULL_AND_PIECEWISE"),  # whole mixed-batch graphs are not offered
    ("NONE", "NONE"),
])
def test_graph_modes(llama, mode, expected):
    cfg = make_config(llama, compilation_config={"cudagraph_mode": mode})
    cc = cfg.compilation_config
    assert cc.cudagraph_mode.name == expected
    if expected == "NONE":
        assert cc.cudagraph_capture_sizes == [] and cc.max_cudagraph_capture_size == 0
    else:
        assert cc.cudagraph_capture_sizes == [1, 2, 4, 8, 16]


def test_explicit_capture_sizes_win_over_the_cpu_default(llama):
    cfg = make_config(llama, compilation_config={"max_cudagraph_capture_size": 64})
    assert cfg.compilation_config.cudagraph_capture_sizes[-1] == 64
    cfg = make_config(llama, compilation_config={"cudagraph_capture_sizes": [3, 200]})
    assert cfg.compilation_config.cudagraph_capture_sizes == [3, 200]
    # Whole decode graphs stay within one block: 200 is dropped for FULL_AND_PIECEWISE.
    cfg = make_config(llama, compilation_config={"cudagraph_capture_sizes": [3, 200],
                                                 "cudagraph_mode": "FULL_AND_PIECEWISE"})
    assert cfg.compilation_config.cudagraph_capture_sizes == [3]


def test_breakable_capture_opt_out(llama, monkeypatch):
    """VLLM_USE_BREAKABLE_CUDAGRAPH=0 takes piecewise graphs away (there is no compiler to
    split the model instead): PIECEWISE runs eager, FULL_AND_PIECEWISE whole decode graphs."""
    monkeypatch.setenv("VLLM_USE_BREAKABLE_CUDAGRAPH", "0")
    assert make_config(llama).compilation_config.cudagraph_mode.name == "NONE"
    cfg = make_config(llama, compilation_config={"cudagraph_mode": "FULL_AND_PIECEWISE"})
    assert cfg.compilation_config.cudagraph_mode.name == "FULL_DECODE_ONLY"


def test_graph_budget_keeps_spread_sizes(llama, monkeypatch):
    """An NPU holds about 1800 graphs; a piecewise size costs layers + 1 of them. The tiny
    model has 2 layers (3 graphs a size): a budget of 12 keeps 4 sizes, the ends included."""
    from vllm_ascend import graph_modes

    monkeypatch.setattr(graph_modes, "NPU_GRAPH_BUDGET", 12)
    cfg = make_config(llama, compilation_config={"max_cudagraph_capture_size": 64})
    sizes = cfg.compilation_config.cudagraph_capture_sizes
    assert len(sizes) == 4 and sizes[0] == 1 and sizes[-1] == 64, sizes
    assert cfg.compilation_config.max_cudagraph_capture_size == 64


def test_full_decode_only_is_kept_on_request(llama):
    from vllm.config import CompilationMode, CUDAGraphMode

    cfg = make_config(llama, compilation_config={"cudagraph_mode": "FULL_DECODE_ONLY"})
    cc = cfg.compilation_config
    assert cc.mode == CompilationMode.NONE
    assert cc.cudagraph_mode == CUDAGraphMode.FULL_DECODE_ONLY
    # Captured batches stay within one 128-token block (padding tokens use the null block).
    assert cc.cudagraph_capture_sizes and cc.cudagraph_capture_sizes[-1] <= 128
    assert cc.max_cudagraph_capture_size == cc.cudagraph_capture_sizes[-1]
    eager = make_config(llama, enforce_eager=True,
                        compilation_config={"cudagraph_mode": "FULL_DECODE_ONLY"})
    assert eager.compilation_config.cudagraph_mode == CUDAGraphMode.NONE


def test_graphs_under_parallel_modes(llama, checkpoints):
    """Dense models capture under tensor, pipeline and data parallel; an MoE model under data
    or expert parallel runs eager by default and refuses an explicit mode."""
    for kwargs in ({"pipeline_parallel_size": 2}, {"data_parallel_size": 2}):
        cfg = make_config(llama, distributed_executor_backend="mp", **kwargs)
        assert cfg.compilation_config.cudagraph_mode.name == "PIECEWISE", kwargs
    tp = make_config(llama, tensor_parallel_size=2, distributed_executor_backend="mp",
                     compilation_config={"cudagraph_mode": "FULL_DECODE_ONLY"})
    assert tp.compilation_config.cudagraph_mode.name == "FULL_DECODE_ONLY"
    moe = checkpoints("qwen3_moe")
    for kwargs, named in (({"data_parallel_size": 2}, "data_parallel_size=2"),
                          ({"tensor_parallel_size": 2, "enable_expert_parallel": True},
                           "enable_expert_parallel")):
        cfg = make_config(moe, distributed_executor_backend="mp", **kwargs)
        assert cfg.compilation_config.cudagraph_mode.name == "NONE", kwargs
        with pytest.raises(ValueError, match=rf"MoE model with {named}.*--enforce-eager"):
            make_config(moe, distributed_executor_backend="mp",
                        compilation_config={"cudagraph_mode": "PIECEWISE"}, **kwargs)
    pp = make_config(moe, pipeline_parallel_size=2, distributed_executor_backend="mp")
    assert pp.compilation_config.cudagraph_mode.name == "PIECEWISE"


def test_additional_config_is_checked(llama):
    """Ascend options come through --additional-config; a misspelt key or a bad value stops
    start-up naming the accepted ones, and vLLM's own keys pass through."""
    from vllm_ascend.ascend_config import get_ascend_config

    cfg = make_config(llama, additional_config={"expert_dispatch": "allgather"})
    assert get_ascend_config(cfg).expert_dispatch == "allgather"
    assert get_ascend_config(make_config(llama)).expert_dispatch == "alltoall"
    with pytest.raises(ValueError, match=r"unknown additional_config key\(s\) \['expert_dispach'\]"
                       r".*\['expert_dispatch'\]"):
        make_config(llama, additional_config={"expert_dispach": "allgather"})
    with pytest.raises(ValueError, match="expert_dispatch='ring' is not valid; use one of "
                                         "alltoall, allgather"):
        make_config(llama, additional_config={"expert_dispatch": "ring"})
    cfg = make_config(llama, additional_config={"gdn_prefill_backend": "triton"})
    assert get_ascend_config(cfg).expert_dispatch == "alltoall"
    from vllm_ascend.ascend_config import AscendConfig

    with pytest.raises(ValueError, match="must be a dict of Ascend options"):
        AscendConfig.from_additional_config(("expert_dispatch", "allgather"))
