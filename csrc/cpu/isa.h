// Which per-ISA variant of the CPU kernels runs (picked once per process, in cpu/cpu_ops.cpp),
// and the macro that calls a kernel of that variant.
#pragma once

namespace vllm_ascend::cpu {

enum class Isa { kDefault, kAvx2 };

// The variant for this CPU; at::get_cpu_capability() (ATEN_CPU_CAPABILITY) pins torch and us.
Isa isa();

}  // namespace vllm_ascend::cpu

#if defined(VLLM_ASCEND_HAVE_AVX2_KERNELS)
#define VLLM_ASCEND_CPU_CALL(fn, ...)                            \
  do {                                                           \
    if (::vllm_ascend::cpu::isa() == ::vllm_ascend::cpu::Isa::kAvx2) { \
      ::vllm_ascend::cpu::AVX2::fn(__VA_ARGS__);                 \
    } else {                                                     \
      ::vllm_ascend::cpu::DEFAULT::fn(__VA_ARGS__);              \
    }                                                            \
  } while (0)
#else
#define VLLM_ASCEND_CPU_CALL(fn, ...) ::vllm_ascend::cpu::DEFAULT::fn(__VA_ARGS__)
#endif
