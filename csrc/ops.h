// Declarations shared by the op registrations (torch_binding.cpp), the CPU entry points
// (cpu/cpu_ops.cpp), the meta functions (meta.cpp) and, when built with CANN, the NPU host
// launchers (ascend/host/npu_ops.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <tuple>

namespace vllm_ascend {

// ---- rotary_embedding -----------------------------------------------------------------------
// Where the rows of one tensor (query or key) live, once the token dimension(s) are flattened.
struct RotaryOperand {
  int64_t num_heads = 0;
  int64_t token_stride = 0;  // elements between token t and t + 1
  int64_t head_stride = 0;   // elements between head h and h + 1 (within a token)
};

struct RotaryGeometry {
  int64_t num_tokens = 0;
  int64_t head_size = 0;
  int64_t rot_dim = 0;  // cos_sin_cache.size(1); the first rot_dim dims of each head rotate
  int64_t cache_stride = 0;
  RotaryOperand q;
  RotaryOperand k;  // num_heads == 0 when key is absent
};

// Validates the arguments (dims, dtypes, strides, devices) and returns the flattened geometry.
RotaryGeometry check_rotary_args(const at::Tensor& positions, const at::Tensor& query,
                                 const std::optional<at::Tensor>& key, int64_t head_size,
                                 const at::Tensor& cos_sin_cache);

// Validates x / residual / weight of add_rms_norm_dynamic_quant (concrete shapes).
void check_add_rms_norm_quant_args(const at::Tensor& x, const at::Tensor& residual,
                                   const at::Tensor& weight);

// ---- CPU kernels (cpu/cpu_ops.cpp) ----------------------------------------------------------
void rotary_embedding_cpu(const at::Tensor& positions, at::Tensor& query,
                          const std::optional<at::Tensor>& key, int64_t head_size,
                          const at::Tensor& cos_sin_cache, bool is_neox);

std::tuple<at::Tensor, at::Tensor> get_masked_input_and_mask_cpu(
    const at::Tensor& input, int64_t org_vocab_start_index, int64_t org_vocab_end_index,
    int64_t num_org_vocab_padding, int64_t added_vocab_start_index,
    int64_t added_vocab_end_index);

std::tuple<at::Tensor, at::Tensor, at::Tensor> add_rms_norm_dynamic_quant_cpu(
    const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight, double epsilon);

// Name of the CPU kernel variant selected at load time ("DEFAULT" or "AVX2").
const char* cpu_kernel_isa();

// ---- Meta functions (meta.cpp) --------------------------------------------------------------
void rotary_embedding_meta(const at::Tensor& positions, at::Tensor& query,
                           const std::optional<at::Tensor>& key, int64_t head_size,
                           const at::Tensor& cos_sin_cache, bool is_neox);

std::tuple<at::Tensor, at::Tensor> get_masked_input_and_mask_meta(
    const at::Tensor& input, int64_t org_vocab_start_index, int64_t org_vocab_end_index,
    int64_t num_org_vocab_padding, int64_t added_vocab_start_index,
    int64_t added_vocab_end_index);

std::tuple<at::Tensor, at::Tensor, at::Tensor> add_rms_norm_dynamic_quant_meta(
    const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight, double epsilon);

#ifdef VLLM_ASCEND_WITH_CANN
// ---- NPU host launchers (ascend/host/npu_ops.cpp), PrivateUse1 --------------------------------
void rotary_embedding_npu(const at::Tensor& positions, at::Tensor& query,
                          const std::optional<at::Tensor>& key, int64_t head_size,
                          const at::Tensor& cos_sin_cache, bool is_neox);

std::tuple<at::Tensor, at::Tensor> get_masked_input_and_mask_npu(
    const at::Tensor& input, int64_t org_vocab_start_index, int64_t org_vocab_end_index,
    int64_t num_org_vocab_padding, int64_t added_vocab_start_index,
    int64_t added_vocab_end_index);

std::tuple<at::Tensor, at::Tensor, at::Tensor> add_rms_norm_dynamic_quant_npu(
    const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight, double epsilon);
#endif

}  // namespace vllm_ascend
