// Meta (shape-only) functions, used by FakeTensor tracing (torch.compile, opcheck).
// Written against SymInt sizes so dynamic-shape tracing does not specialise the token count.
#include <ATen/ATen.h>

#include "ops.h"

namespace vllm_ascend {

void rotary_embedding_meta(const at::Tensor& positions, at::Tensor& query,
                           const std::optional<at::Tensor>& key, int64_t head_size,
                           const at::Tensor& cos_sin_cache, bool is_neox) {
  // In place: nothing to allocate. Check what can be checked without concrete sizes.
  TORCH_CHECK(positions.scalar_type() == at::kLong || positions.scalar_type() == at::kInt,
              "rotary_embedding: positions must be int64 or int32");
  TORCH_CHECK(head_size > 0, "rotary_embedding: head_size must be positive");
  TORCH_CHECK(cos_sin_cache.dim() == 2, "rotary_embedding: cos_sin_cache must be 2-D");
  TORCH_CHECK(query.dim() == positions.dim() + 1 || query.dim() == positions.dim() + 2,
              "rotary_embedding: query rank does not match positions");
  if (key.has_value()) {
    TORCH_CHECK(key->scalar_type() == query.scalar_type(),
                "rotary_embedding: key dtype != query dtype");
  }
}

std::tuple<at::Tensor, at::Tensor> get_masked_input_and_mask_meta(
    const at::Tensor& input, int64_t, int64_t, int64_t, int64_t, int64_t) {
  TORCH_CHECK(input.scalar_type() == at::kLong || input.scalar_type() == at::kInt,
              "get_masked_input_and_mask: input ids must be int64 or int32");
  return {at::empty_symint(input.sym_sizes(), input.options().dtype(at::kLong)),
          at::empty_symint(input.sym_sizes(), input.options().dtype(at::kBool))};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> add_rms_norm_dynamic_quant_meta(
    const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight, double) {
  TORCH_CHECK(x.dim() >= 1, "add_rms_norm_dynamic_quant: x must have a hidden dim");
  TORCH_CHECK(residual.scalar_type() == x.scalar_type() && residual.dim() == x.dim(),
              "add_rms_norm_dynamic_quant: residual must match x");
  TORCH_CHECK(weight.dim() == 1, "add_rms_norm_dynamic_quant: weight must be 1-D");
  const auto sizes = x.sym_sizes();
  return {at::empty_symint(sizes, x.options().dtype(at::kChar)),
          at::empty_symint(sizes.slice(0, x.dim() - 1), x.options().dtype(at::kFloat)),
          at::empty_symint(sizes, x.options())};
}

}  // namespace vllm_ascend
