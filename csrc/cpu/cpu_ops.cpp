// CPU entry points: validate, allocate outputs, then run the kernel variant for this CPU.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Version.h>

#include <cstring>

#include "cpu/isa.h"
#include "cpu/kernels.h"
#include "ops.h"

namespace vllm_ascend {

namespace {

void check_cpu(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ", t.device());
}

}  // namespace

namespace cpu {

Isa isa() {
  static const Isa selected = [] {
#if defined(VLLM_ASCEND_HAVE_AVX2_KERNELS)
    const std::string cap = at::get_cpu_capability();
    if (cap == "AVX2" || cap == "AVX512") return Isa::kAvx2;
#endif
    return Isa::kDefault;
  }();
  return selected;
}

}  // namespace cpu

const char* cpu_kernel_isa() { return cpu::isa() == cpu::Isa::kAvx2 ? "AVX2" : "DEFAULT"; }

void rotary_embedding_cpu(const at::Tensor& positions, at::Tensor& query,
                          const std::optional<at::Tensor>& key, int64_t head_size,
                          const at::Tensor& cos_sin_cache, bool is_neox) {
  check_cpu(query, "rotary_embedding", "query");
  const RotaryGeometry g = check_rotary_args(positions, query, key, head_size, cos_sin_cache);
  // positions and the cache are read-only: a contiguous copy is harmless. query/key are
  // rotated in place through their own strides.
  const at::Tensor pos = positions.contiguous();
  VLLM_ASCEND_CPU_CALL(rotary_embedding_kernel, pos, query, key, g, cos_sin_cache, is_neox);
}

std::tuple<at::Tensor, at::Tensor> get_masked_input_and_mask_cpu(
    const at::Tensor& input, int64_t org_vocab_start_index, int64_t org_vocab_end_index,
    int64_t num_org_vocab_padding, int64_t added_vocab_start_index,
    int64_t added_vocab_end_index) {
  check_cpu(input, "get_masked_input_and_mask", "input");
  TORCH_CHECK(input.scalar_type() == at::kLong || input.scalar_type() == at::kInt,
              "get_masked_input_and_mask: input ids must be int64 or int32, got ",
              input.scalar_type());
  const at::Tensor in = input.contiguous();
  // int64 whatever the input width: vLLM's python version promotes to int64 too.
  at::Tensor masked = at::empty(input.sizes(), input.options().dtype(at::kLong));
  at::Tensor mask = at::empty(input.sizes(), input.options().dtype(at::kBool));
  VLLM_ASCEND_CPU_CALL(masked_input_kernel, in, masked, mask, org_vocab_start_index,
                       org_vocab_end_index, num_org_vocab_padding, added_vocab_start_index,
                       added_vocab_end_index);
  return {masked, mask};
}

void check_add_rms_norm_quant_args(const at::Tensor& x, const at::Tensor& residual,
                                   const at::Tensor& weight) {
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
              "add_rms_norm_dynamic_quant: x must be float32, float16 or bfloat16, got ", dt);
  TORCH_CHECK(x.dim() >= 1, "add_rms_norm_dynamic_quant: x must have a hidden dim");
  TORCH_CHECK(residual.sizes() == x.sizes() && residual.scalar_type() == dt,
              "add_rms_norm_dynamic_quant: residual ", residual.sizes(), " ",
              residual.scalar_type(), " must match x ", x.sizes(), " ", dt);
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(-1),
              "add_rms_norm_dynamic_quant: weight must be [", x.size(-1), "], got ",
              weight.sizes());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> add_rms_norm_dynamic_quant_cpu(
    const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight, double epsilon) {
  check_cpu(x, "add_rms_norm_dynamic_quant", "x");
  check_add_rms_norm_quant_args(x, residual, weight);
  const at::Tensor xc = x.contiguous();
  const at::Tensor rc = residual.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options().dtype(at::kChar));
  at::Tensor scale = at::empty(x.sizes().slice(0, x.dim() - 1), x.options().dtype(at::kFloat));
  at::Tensor residual_out = at::empty(x.sizes(), x.options());
  VLLM_ASCEND_CPU_CALL(add_rms_norm_dynamic_quant_kernel, xc, rc, weight, epsilon, y, scale,
                       residual_out);
  return {y, scale, residual_out};
}

}  // namespace vllm_ascend
