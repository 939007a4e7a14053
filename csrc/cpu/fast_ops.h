// The fast CPU kernels as CPU kernels of torch_npu ops (cpu/fast_ops.cpp). Each is a boxed kernel
// that serves the calls it covers and hands every other call, untouched, to the op's Python
// reference, registered under the mirror namespace vllm_ascend_ref with the same schema (it raises
// for an illegal call, or computes a legal one the fast kernel does not cover). The Python side
// (vllm_ascend/kernels/fast_cpu.py) installs them unless the references are selected.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace vllm_ascend::fast_cpu {

// The torch_npu ops (names without namespace) that have a fast kernel.
std::vector<std::string> op_names();

// Registers the fast kernel of `name` as the CPU kernel of npu::<name>. Its Python reference must
// already be registered as vllm_ascend_ref::<name>. Throws for an unknown name.
void install(const std::string& name);

// false: every installed kernel hands all calls to its reference (tests run both on one process).
void set_enabled(bool enabled);

struct Counters {
  std::string name;
  int64_t fast = 0;       // calls the fast kernel served
  int64_t reference = 0;  // calls handed to the reference
};
std::vector<Counters> counters();

// (op, reason) pairs of calls handed to the reference, each returned once (for a log line).
std::vector<std::pair<std::string, std::string>> take_new_declines();

}  // namespace vllm_ascend::fast_cpu

namespace vllm_ascend {
// The CPU kernel of vLLM's _C::weak_ref_tensor (cpu/vllm_ops.cpp); its schema must be defined.
void install_weak_ref_tensor_cpu();
}  // namespace vllm_ascend
