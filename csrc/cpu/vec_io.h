// Vector helpers shared by the per-ISA CPU kernel files (cpu/kernels.cpp, cpu/fast_kernels.cpp).
// Include after <ATen/cpu/vec/vec.h>, in a translation unit compiled with CPU_CAPABILITY set: the
// helpers live in vllm_ascend::cpu::CPU_CAPABILITY, so the variants never clash at link time.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/cpu/vec/vec.h>

#include <tuple>

#ifndef CPU_CAPABILITY
#error "CPU_CAPABILITY must be defined (DEFAULT or AVX2) when compiling the CPU kernels"
#endif

// float32 / float16 / bfloat16 only (no double: the fp32 compute path is the point).
#define VA_DISPATCH_FLOATING_TYPES(TYPE, NAME, ...)            \
  AT_DISPATCH_SWITCH(TYPE, NAME,                               \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

namespace vllm_ascend::cpu::CPU_CAPABILITY::vec_io {

using fVec = at::vec::Vectorized<float>;
constexpr int64_t kF = fVec::size();
// Elements handled per vector step: one Vectorized<T> of a 16-bit type holds two fp32 vectors.
constexpr int64_t kChunk = 2 * kF;

// Load / store kChunk elements of T as two fp32 vectors.
template <typename T>
struct IO {
  static inline void load(const T* p, fVec& a, fVec& b) {
    auto v = at::vec::Vectorized<T>::loadu(p);
    std::tie(a, b) = at::vec::convert_to_float<T>(v);
  }
  static inline void store(T* p, const fVec& a, const fVec& b) {
    at::vec::convert_from_float<T>(a, b).store(p);
  }
};
template <>
struct IO<float> {
  static inline void load(const float* p, fVec& a, fVec& b) {
    a = fVec::loadu(p);
    b = fVec::loadu(p + kF);
  }
  static inline void store(float* p, const fVec& a, const fVec& b) {
    a.store(p);
    b.store(p + kF);
  }
};
static_assert(at::vec::Vectorized<at::BFloat16>::size() == kChunk, "unexpected vector width");
static_assert(at::vec::Vectorized<at::Half>::size() == kChunk, "unexpected vector width");

// Sum of the lanes of v.
inline float hsum(const fVec& v) {
  alignas(64) float lanes[kF];
  v.store(lanes);
  float s = 0.f;
  for (int64_t l = 0; l < kF; ++l) s += lanes[l];
  return s;
}

}  // namespace vllm_ascend::cpu::CPU_CAPABILITY::vec_io
