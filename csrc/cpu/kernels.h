// The CPU kernels proper. cpu/kernels.cpp is compiled once per instruction-set variant, each copy
// inside its own namespace (DEFAULT everywhere; AVX2 as well on x86-64), and cpu/cpu_ops.cpp picks
// one at load time. The tensors handed in have been validated and allocated by the caller.
#pragma once

#include <ATen/core/Tensor.h>

#include "ops.h"

#define VLLM_ASCEND_CPU_KERNEL_DECLS                                                         \
  void rotary_embedding_kernel(const at::Tensor& positions, at::Tensor& query,               \
                               const std::optional<at::Tensor>& key,                         \
                               const ::vllm_ascend::RotaryGeometry& g,                       \
                               const at::Tensor& cos_sin_cache, bool is_neox);               \
  void masked_input_kernel(const at::Tensor& input, at::Tensor& masked, at::Tensor& mask,    \
                           int64_t org_start, int64_t org_end, int64_t num_org_padding,      \
                           int64_t added_start, int64_t added_end);                          \
  void add_rms_norm_dynamic_quant_kernel(const at::Tensor& x, const at::Tensor& residual,    \
                                         const at::Tensor& weight, double epsilon,           \
                                         at::Tensor& y, at::Tensor& scale,                   \
                                         at::Tensor& residual_out);

namespace vllm_ascend::cpu {
namespace DEFAULT {
VLLM_ASCEND_CPU_KERNEL_DECLS
}
namespace AVX2 {
VLLM_ASCEND_CPU_KERNEL_DECLS
}
}  // namespace vllm_ascend::cpu
