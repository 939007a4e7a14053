// CPU kernel of vLLM's _C::weak_ref_tensor (schema defined by vllm_ascend/kernels/vllm_ops.py when
// the installed vLLM build lacks it). vLLM's graph replay takes a weak reference of every tensor
// handed between captured pieces, per layer and step, so it is on the host's hot path: in C++ it
// is one dispatch instead of four Python-level torch calls.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <memory>
#include <mutex>

#include "cpu/fast_ops.h"

namespace vllm_ascend {

namespace {

// A tensor over t's memory (same storage pointer, offset, sizes and strides) whose storage
// neither owns nor frees it; the caller keeps the memory alive (a graph's pool or the CPU tape's
// buffers).
at::Tensor weak_ref_tensor_cpu(const at::Tensor& t) {
  const c10::Storage& owner = t.storage();
  c10::Storage borrowed(c10::Storage::use_byte_size_t(), owner.nbytes(),
                        c10::DataPtr(owner.mutable_data(), t.device()), /*allocator=*/nullptr,
                        /*resizable=*/false);
  return at::empty({0}, t.options()).set_(borrowed, t.storage_offset(), t.sizes(), t.strides());
}

}  // namespace

void install_weak_ref_tensor_cpu() {
  static std::once_flag once;
  static std::unique_ptr<torch::Library> lib;
  std::call_once(once, [] {
    lib = std::make_unique<torch::Library>(torch::Library::IMPL, "_C", c10::DispatchKey::CPU,
                                           __FILE__, __LINE__);
    lib->impl("weak_ref_tensor", &weak_ref_tensor_cpu);
  });
}

}  // namespace vllm_ascend
