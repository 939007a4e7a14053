"""NPUPlatform: how vLLM sees an Ascend NPU (or, with VLLM_ASCEND_DEVICE=cpu, the CPU backend).

Each choice below says why. Everything device-specific goes through the device layer
(``vllm_ascend.device``); nothing here imports torch_npu.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
from vllm.platforms.interface import Platform, PlatformEnum

from vllm_ascend import device, graph_modes, lora
from vllm_ascend.ascend_config import get_ascend_config
from vllm_ascend.logger import init_logger

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

logger = init_logger(__name__)

_DEVICE = device.current()
# Before any VllmConfig exists: PIECEWISE graphs need vLLM's breakable capture (graph_modes.py).
graph_modes.enable_breakable_capture()

WORKER_CLS = "vllm_ascend.worker.worker.NPUWorker"
ATTENTION_BACKEND_CLS = "vllm_ascend.attention.backend.AscendAttentionBackend"
MLA_BACKEND_CLS = "vllm_ascend.attention.mla_backend.AscendMLABackend"
GRAPH_WRAPPER_CLS = "vllm_ascend.worker.graph_wrapper.AscendGraphWrapper"
PUNICA_WRAPPER_CLS = "vllm_ascend.lora.punica_wrapper.AscendPunicaWrapper"
# torch_npu's paged fused attention takes blocks of 128..512 tokens in multiples of 128
# (attention/backend.py SUPPORTED_BLOCK_SIZES); 128 is the default on both backends so the CPU
# backend exercises the same layout (tests also run block size 256).
DEFAULT_BLOCK_SIZE = 128


class NPUPlatform(Platform):
    _enum = PlatformEnum.OOT
    device_name: str = _DEVICE.device_name
    device_type: str = _DEVICE.device_type
    dispatch_key: str = _DEVICE.dispatch_key
    dist_backend: str = _DEVICE.dist_backend
    ray_device_key: str = "NPU"
    # The runtime honours this list of visible devices (like CUDA_VISIBLE_DEVICES).
    device_control_env_var: str = "ASCEND_RT_VISIBLE_DEVICES"
    # Compilation runs in eager mode today (see check_and_update_config); "eager" keeps any
    # vLLM helper that compiles small functions from pulling Inductor/Triton onto the NPU.
    simple_compile_backend: str = "eager"
    supported_quantization: list[str] = []

    @property
    def supported_dtypes(self) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16, torch.float32]

    # ---- device queries: forwarded to the device layer -------------------------------------
    @classmethod
    def get_device_name(cls, device_id: int = 0) -> str:
        return _DEVICE.get_device_name(device_id)

    @classmethod
    def get_device_total_memory(cls, device_id: int = 0) -> int:
        return _DEVICE.total_memory()

    @classmethod
    def set_device(cls, device: torch.device) -> None:
        _DEVICE.set_device(device)

    @classmethod
    def manual_seed_all(cls, seed: int) -> None:
        _DEVICE.manual_seed_all(seed)

    @classmethod
    def device_count(cls) -> int:
        return _DEVICE.device_count()

    @classmethod
    def get_current_memory_usage(cls, device: torch.types.Device | None = None) -> float:
        return float(_DEVICE.memory_used())

    @classmethod
    def check_if_supports_dtype(cls, dtype: torch.dtype) -> None:
        # The NPU's fused attention takes fp16/bf16 queries only. fp32 is the CPU backend's one
        # deliberate relaxation: it runs the same path in fp32 for exact comparison with
        # Hugging Face (DESIGN.md section 2).
        allowed = (torch.bfloat16, torch.float16)
        if _DEVICE.device_type == "cpu":
            allowed += (torch.float32,)
        if dtype not in allowed:
            raise ValueError(
                f"dtype {dtype} is not supported on Ascend {_DEVICE.device_type}: the fused "
                "attention kernel takes float16/bfloat16; pass --dtype bfloat16 (or float16)"
            )

    @classmethod
    def inference_mode(cls):
        return torch.inference_mode(mode=True)

    @classmethod
    def is_pin_memory_available(cls) -> bool:
        # Pinned host buffers make NPU copies asynchronous; on the CPU backend there is no copy
        # to overlap and pinning needs an accelerator runtime.
        return _DEVICE.device_type == "npu"

    @classmethod
    def import_kernels(cls) -> None:
        # vllm._C does not exist in the empty build; our kernels are loaded instead.
        from vllm_ascend import kernels

        kernels.load()

    @classmethod
    def register_triton_kernel_overrides(cls) -> None:
        # The slot-mapping Triton kernel runs every step; replace it with a device-agnostic
        # torch implementation (no Triton on Ascend; the CPU platform's override needs vllm._C).
        from vllm_ascend.spec_decode import TRITON_OVERRIDES
        from vllm_ascend.spec_decode.registration import register_kernel_overrides
        from vllm_ascend.worker.slot_mapping import compute_slot_mapping

        # Speculative decoding's kernels (rejection sampler, EAGLE/MTP/draft-model inputs):
        # tensor programs with the same semantics, see vllm_ascend/spec_decode/.
        register_kernel_overrides(
            {"vllm.v1.worker.block_table.ComputeSlotMappingKernel.kernel": compute_slot_mapping,
             **TRITON_OVERRIDES}
        )

    @classmethod
    def get_attn_backend_cls(
        cls,
        selected_backend: AttentionBackendEnum,
        attn_selector_config,
        num_heads: int | None = None,
    ) -> str:
        if getattr(attn_selector_config, "use_mla", False):
            if getattr(attn_selector_config, "use_sparse", False):
                raise NotImplementedError(
                    "vllm-ascend does not support sparse MLA (DeepSeek-V3.2) yet")
            return MLA_BACKEND_CLS
        return ATTENTION_BACKEND_CLS

    @classmethod
    def get_mla_prefill_backend_cls(cls, mla_selector_config):
        # vLLM's MLA layer asks for one when it is built; the Ascend MLA impl runs prefill
        # itself through the fused attention (attention/mla_impl.py).
        from vllm_ascend.attention.mla_backend import AscendMLAPrefillBackend

        return AscendMLAPrefillBackend

    @classmethod
    def get_device_communicator_cls(cls) -> str:
        # torch.distributed on the process group's backend (hccl on the NPU, gloo on the CPU
        # backend), with uneven all-gather / reduce-scatter and the all-gather/reduce-scatter
        # MoE dispatch that data and expert parallelism need.
        return "vllm_ascend.distributed.communicator.AscendCommunicator"

    @classmethod
    def get_punica_wrapper(cls) -> str:
        # Multi-LoRA on fixed-shape torch ops (graph-safe, exact for base-model rows in a
        # mixed batch): vllm_ascend/lora/punica_wrapper.py.
        return PUNICA_WRAPPER_CLS

    @classmethod
    def opaque_attention_op(cls) -> bool:
        # Attention is called directly (not wrapped in vLLM's opaque unified_attention op), so
        # the fused attention op itself reaches the dispatcher: graph capture records it as an
        # updatable call (torch_npu's auto-dispatch capture and the CPU tape see only the
        # outermost op; behind an opaque op NPUGraph.update would find nothing to update).
        return False

    # ---- graphs ----------------------------------------------------------------------------
    @classmethod
    def support_static_graph_mode(cls) -> bool:
        # Lets vLLM compute capture sizes; which modes actually run is decided in
        # graph_modes.py (resolve_mode, then finalize_sizes).
        return True

    @classmethod
    def get_static_graph_wrapper_cls(cls) -> str:
        return GRAPH_WRAPPER_CLS

    @classmethod
    def graph_pool_handle(cls):
        return _DEVICE.graph_pool_handle()

    @classmethod
    def support_hybrid_kv_cache(cls) -> bool:
        return False

    @classmethod
    def is_sleep_mode_available(cls) -> bool:
        # Both backends, through the "ascend" sleep-mode backend (worker/sleep_mode.py), which
        # check_and_update_config selects. The NPU path is untested (no NPU in CI).
        return True

    @classmethod
    def check_runner_kv_caches_multi_layer(cls) -> None:
        # A draft model (speculative_config method "draft_model") has layers with the same
        # layer index as the target's. The runner's list of KV caches only keeps them in
        # order (nothing here indexes it by layer number; each layer reads its own cache), so
        # two layers per index are fine, as on vLLM's CUDA and CPU platforms.
        return None

    # ---- configuration ---------------------------------------------------------------------
    @classmethod
    def pre_register_and_update(cls, parser=None) -> None:
        # Before any config exists: `--quantization ascend` must be a known method.
        from vllm_ascend import quantization

        quantization.register()

    @classmethod
    def apply_config_platform_defaults(cls, vllm_config: VllmConfig) -> None:
        # Runs before vLLM fills in its optimization-level defaults and capture sizes, so this
        # is where an unset cudagraph_mode (None) is told apart from the user's request.
        from vllm_ascend.quantization import config as quant_config

        quant_config.detect(vllm_config)  # an msModelSlim checkpoint selects `ascend`
        graph_modes.resolve_mode(vllm_config, _DEVICE.device_type)

    @classmethod
    def check_and_update_config(cls, vllm_config: VllmConfig) -> None:
        from vllm.config import CompilationMode

        parallel_config = vllm_config.parallel_config
        if parallel_config.worker_cls == "auto":
            parallel_config.worker_cls = WORKER_CLS

        # The plugin's runner subclasses vLLM's V1 GPUModelRunner. vLLM 0.32 picks its V2 runner
        # whenever Triton imports (triton-ascend may be present on an NPU host), and V2's input
        # preparation is Triton-only, so V1 is pinned for this process and its workers.
        if os.environ.get("VLLM_USE_V2_MODEL_RUNNER", "0").lower() in ("1", "true"):
            logger.warning("vllm-ascend: VLLM_USE_V2_MODEL_RUNNER=1 is not supported; using V1")
        os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"

        # NPU runtimes do not survive fork(); spawn on both backends keeps them identical.
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")

        get_ascend_config(vllm_config)  # additional_config checked before anything is built

        compilation_config = vllm_config.compilation_config
        # No torch.compile on either backend: vLLM's Inductor path and its fusion passes call
        # vllm._C / Triton kernels that do not exist here. Custom ops are all on so our
        # register_oot layers run. Graphs are captured without a compiler (graph_modes.py).
        if compilation_config.mode != CompilationMode.NONE:
            logger.info("vllm-ascend: compilation mode %s replaced by NONE (no torch.compile)",
                        compilation_config.mode)
        compilation_config.mode = CompilationMode.NONE
        if "all" not in compilation_config.custom_ops:
            if "none" in compilation_config.custom_ops:
                logger.warning("vllm-ascend: custom_ops 'none' replaced by 'all': the Ascend "
                               "kernels are custom ops; disable single ops with '-<name>'")
            compilation_config.custom_ops = [
                op for op in compilation_config.custom_ops if op != "none"
            ] + ["all"]

        # Async scheduling overlaps host scheduling with device execution through streams and
        # events; the CPU backend has neither, so it runs synchronously.
        if _DEVICE.device_type == "cpu":
            vllm_config.scheduler_config.async_scheduling = False

        # vLLM's default shutdown_timeout=0 force-kills the engine core on SIGTERM, racing its
        # own exit; NPU runtimes and HCCL need an orderly teardown to release devices.
        if vllm_config.shutdown_timeout == 0:
            vllm_config.shutdown_timeout = 5

        use_sleep_mode_backend(vllm_config)

        cache_config = vllm_config.cache_config
        if cache_config is not None and not cache_config.user_specified_block_size:
            cache_config.block_size = DEFAULT_BLOCK_SIZE
        check_attention_support(vllm_config)
        lora.check_lora_support(vllm_config)
        graph_modes.finalize_sizes(vllm_config)
        # Async scheduling with speculative decoding is accepted: the host sequence lengths
        # over-count rejected drafts there, so the attention metadata builder reads the exact
        # ones from the device (attention/drafting.py).


def use_sleep_mode_backend(vllm_config: VllmConfig) -> None:
    """With sleep mode on, vLLM's default sleep-mode backend ("cumem", CUDA's virtual-memory
    allocator) becomes the plugin's "ascend" backend; a backend named otherwise is kept (a
    third-party one registered through vLLM's registry)."""
    from vllm_ascend.worker.sleep_mode import BACKEND_NAME

    model_config = vllm_config.model_config
    if model_config is None or not model_config.enable_sleep_mode:
        return
    if model_config.sleep_mode_backend == "cumem":
        model_config.sleep_mode_backend = BACKEND_NAME
    if model_config.sleep_mode_offload_cudagraph:
        logger.warning("vllm-ascend: sleep_mode_offload_cudagraph is not supported and ignored "
                       "(graph memory stays resident while asleep)")


def check_attention_support(vllm_config: VllmConfig) -> None:
    """Refuse, before any weight loads, what the NPU attention kernel cannot run: the same rules
    on both backends, so a configuration that starts on the CPU backend starts on an NPU."""
    from vllm_ascend.attention.backend import SUPPORTED_BLOCK_SIZES, SUPPORTED_HEAD_SIZES

    cache_config = vllm_config.cache_config
    if cache_config is not None and cache_config.block_size not in SUPPORTED_BLOCK_SIZES:
        raise ValueError(
            f"block_size={cache_config.block_size} is not supported on Ascend: the paged fused "
            f"attention takes blocks of {', '.join(map(str, SUPPORTED_BLOCK_SIZES))} tokens "
            "(multiples of 128 up to 512); pass --block-size 128"
        )
    model_config = vllm_config.model_config
    if model_config is None or model_config.runner_type == "pooling":
        return
    dtype = model_config.dtype
    if isinstance(dtype, torch.dtype):
        NPUPlatform.check_if_supports_dtype(dtype)
    if model_config.use_mla:
        from vllm_ascend.attention.mla_backend import check_mla_model

        check_mla_model(model_config, cache_config)
        return
    head_size = model_config.get_head_size()
    if head_size not in SUPPORTED_HEAD_SIZES:
        raise ValueError(
            f"head size {head_size} of {model_config.model} is not supported on Ascend: the "
            "fused attention kernel (TND layout) takes head sizes "
            f"{', '.join(map(str, SUPPORTED_HEAD_SIZES))}"
        )
