// The boxed-kernel plumbing the fast CPU kernels share (cpu/fast_ops.cpp defines it, and the
// attention, norm, SwiGLU and KV-scatter kernels; cpu/fast_moe_ops.cpp the MoE routing kernels).
// A kernel's plan either computes the call (pushing its outputs) or returns why it declines; a
// declined call goes, with its stack untouched, to the op's reference vllm_ascend_ref::<op>.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/stack.h>
#include <c10/util/FunctionRef.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace vllm_ascend::fast_cpu {

using Decline = std::optional<std::string>;

// Arguments of a boxed call by position; `index` maps the kernel's own argument order (the
// names in its Entry) to positions in the op's schema.
class Args {
 public:
  Args(const std::vector<size_t>& index, torch::jit::Stack* stack, size_t n)
      : index_(index), stack_(stack), base_(stack->size() - n) {}
  const c10::IValue& operator[](size_t i) const { return (*stack_)[base_ + index_[i]]; }
  const at::Tensor& tensor(size_t i) const { return (*this)[i].toTensor(); }
  bool none(size_t i) const { return (*this)[i].isNone(); }

 private:
  const std::vector<size_t>& index_;
  torch::jit::Stack* stack_;
  size_t base_;
};

using Plan = c10::function_ref<Decline(const Args&, std::vector<c10::IValue>&)>;

// Runs `plan` for a call of npu::<name>; on a decline, counts it and calls the reference.
void serve(const char* name, const c10::OperatorHandle& op, torch::jit::Stack* stack, Plan plan);

// A SymInt[]? / int[] argument as concrete integers (nullopt for None).
std::optional<std::vector<int64_t>> int_list(const c10::IValue& v);

bool float_dtype(at::ScalarType t);

// One op with a fast kernel: its name, the boxed kernel, and the argument names it reads.
struct Entry {
  const char* name;
  torch::CppFunction (*make)();
  std::vector<const char*> args;  // in the order the kernel's argument enum uses
};

// The MoE routing kernels (cpu/fast_moe_ops.cpp).
const std::vector<Entry>& moe_entries();

}  // namespace vllm_ascend::fast_cpu
