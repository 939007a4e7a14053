"""Vocab-parallel embedding whose shard masking runs as one _C_ascend kernel.

In vLLM 0.32 ``VocabParallelEmbedding`` is a ``PluggableLayer`` (not a CustomOp): there is no
``forward_oot``; an out-of-tree class replaces the whole layer, registered with
``PluggableLayer.register_oot(name="VocabParallelEmbedding")``. ``ParallelLMHead`` (a subclass,
replaced only under its own name) is unaffected, and its forward is never called anyway.

``AscendVocabParallelEmbedding.forward`` is vLLM's forward with the masking step —
``get_masked_input_and_mask``, a torch.compile'd chain of pointwise ops upstream — replaced by
``torch.ops._C_ascend.get_masked_input_and_mask`` (same arithmetic; int64 ids, bool mask True for
ids outside this shard). CUDA's fused gather path (``use_fused_embedding``) does not exist here.
"""

from __future__ import annotations

import torch
from vllm.model_executor.layers.quantization.utils.fp8_utils import is_fp8
from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

from vllm_ascend.kernels.extension import ops as _ascend_ops


class AscendVocabParallelEmbedding(VocabParallelEmbedding):
    def forward(self, input_: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return self.quant_method.embedding(self, input_.long())

        s = self.shard_indices
        masked_input, input_mask = _ascend_ops().get_masked_input_and_mask(
            input_,
            s.org_vocab_start_index,
            s.org_vocab_end_index,
            s.num_org_vocab_padding,
            s.added_vocab_start_index,
            s.added_vocab_end_index,
        )
        output_parallel = self.quant_method.embedding(self, masked_input)

        output_dtype = output_parallel.dtype
        if is_fp8(output_dtype):
            # Each id has exactly one owning shard, so fp8 bytes can be summed as int8.
            output_parallel = output_parallel.view(torch.int8)
        output_parallel.masked_fill_(input_mask.unsqueeze(-1), 0)
        if self.reduce_results:
            if self.parallel_group is not None:
                output_parallel = self.parallel_group.all_reduce(output_parallel)
            else:
                from vllm.distributed import tensor_model_parallel_all_reduce

                output_parallel = tensor_model_parallel_all_reduce(output_parallel)
        return output_parallel.view(output_dtype)
