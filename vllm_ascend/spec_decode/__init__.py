"""Speculative decoding on Ascend: vLLM's V1 spec-decode path (rejection sampler, EAGLE /
MTP / draft-model input preparation) runs Triton kernels, which do not exist on the NPU or the
CPU backend. Plain tensor programs with the kernels' exact semantics replace them through
``Platform.register_triton_kernel_overrides`` (vllm/triton_utils/dispatcher.py).

Why here and not in ``kernels/``: ``kernels/`` holds dispatcher ops with torch_npu schemas and
Meta functions; these are Python-level stand-ins for vLLM's own Triton launches, addressed
by vLLM's kernel names and living as long as vLLM's spec-decode code keeps them (like
``worker/slot_mapping.py`` for the block table's kernel).
"""

from __future__ import annotations

from collections.abc import Callable

from vllm_ascend.spec_decode import eagle_inputs, rejection

_REJECTION = "vllm.v1.sample.rejection_sampler."
_SPEC_UTILS = "vllm.v1.spec_decode.utils."

# vLLM kernel name -> replacement. DFlash's input kernel (copy_and_expand_dflash_inputs_kernel)
# is not covered: DFlash drafters need their own model class and no test checkpoint exists.
TRITON_OVERRIDES: dict[str, Callable[..., None]] = {
    _REJECTION + "rejection_greedy_sample_kernel": rejection.rejection_greedy_sample_kernel,
    _REJECTION + "rejection_random_sample_kernel": rejection.rejection_random_sample_kernel,
    _REJECTION + "expand_kernel": rejection.expand_kernel,
    _REJECTION + "sample_recovered_tokens_kernel": rejection.sample_recovered_tokens_kernel,
    _SPEC_UTILS + "eagle_step_slot_mapping_metadata_kernel":
        eagle_inputs.eagle_step_slot_mapping_metadata_kernel,
    _SPEC_UTILS + "eagle_prepare_inputs_padded_kernel":
        eagle_inputs.eagle_prepare_inputs_padded_kernel,
    _SPEC_UTILS + "eagle_prepare_next_token_padded_kernel":
        eagle_inputs.eagle_prepare_next_token_padded_kernel,
    _SPEC_UTILS + "copy_and_expand_eagle_inputs_kernel":
        eagle_inputs.copy_and_expand_eagle_inputs_kernel,
}
