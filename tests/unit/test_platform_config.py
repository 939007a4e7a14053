"""NPUPlatform adapts realistic vLLM configurations (CPU backend; the same rules hold on NPU)."""

from __future__ import annotations

import os

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
    assert cfg.compilation_config.cudagraph_mode == CUDAGraphMode.NONE
    assert cfg.compilation_config.cudagraph_capture_sizes == []
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
    assert make_config(llama, block_size=16).cache_config.block_size == 16


def test_unaligned_block_size_is_refused_with_the_fix(llama):
    with pytest.raises(Exception, match="multiple of 16"):
        make_config(llama, block_size=24)


def test_attention_backend_is_ours(llama):
    from vllm.platforms import current_platform

    cls = current_platform.get_attn_backend_cls(None, None)
    assert cls == "vllm_ascend.attention.backend.AscendAttentionBackend"


def test_unsupported_dtype_is_refused():
    import torch
    from vllm.platforms import current_platform

    with pytest.raises(ValueError, match="bfloat16"):
        current_platform.check_if_supports_dtype(torch.float64)
