// Vectorised CPU kernel of the MoE expert path (declared in cpu/fast_kernels.h): the weighted
// combine of npu_moe_token_unpermute. Compiled once per CPU_CAPABILITY like
// cpu/fast_kernels.cpp; fp32 arithmetic whatever the storage type, rounded to the output dtype
// once, as the Python reference in kernels/npu_ops/moe.py does.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <vector>

#include "cpu/fast_kernels.h"
#include "cpu/vec_io.h"

namespace vllm_ascend::cpu::CPU_CAPABILITY {

namespace {

using namespace vec_io;  // NOLINT(build/namespaces): fVec, kF, kChunk, IO

template <typename T, typename I>
void combine_impl(const T* rows, const I* idx, const float* probs, T* out, int64_t tokens,
                  int64_t topk, int64_t hidden) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, hidden * topk));
  at::parallel_for(0, tokens, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(hidden);
    for (int64_t t = begin; t < end; ++t) {
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t k = 0; k < topk; ++k) {
        const T* src = rows + static_cast<int64_t>(idx[t * topk + k]) * hidden;
        const float p = probs != nullptr ? probs[t * topk + k] : 1.f;
        const fVec vp(p);
        int64_t i = 0;
        for (; i + kChunk <= hidden; i += kChunk) {
          fVec a, b;
          IO<T>::load(src + i, a, b);
          at::vec::fmadd(a, vp, fVec::loadu(acc.data() + i)).store(acc.data() + i);
          at::vec::fmadd(b, vp, fVec::loadu(acc.data() + i + kF)).store(acc.data() + i + kF);
        }
        for (; i < hidden; ++i) acc[i] += p * static_cast<float>(src[i]);
      }
      T* o = out + t * hidden;
      int64_t i = 0;
      for (; i + kChunk <= hidden; i += kChunk) {
        IO<T>::store(o + i, fVec::loadu(acc.data() + i), fVec::loadu(acc.data() + i + kF));
      }
      for (; i < hidden; ++i) o[i] = static_cast<T>(acc[i]);
    }
  });
}

}  // namespace

void moe_combine_kernel(const at::Tensor& rows, const at::Tensor& idx, const float* probs,
                        int64_t topk, at::Tensor& out) {
  const int64_t tokens = out.size(0), hidden = out.size(1);
  if (tokens == 0 || hidden == 0) return;
  VA_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "moe_combine_fast", [&] {
    using T = scalar_t;
    AT_DISPATCH_INDEX_TYPES(idx.scalar_type(), "moe_combine_fast_idx", [&] {
      combine_impl<T, index_t>(rows.const_data_ptr<T>(), idx.const_data_ptr<index_t>(), probs,
                               out.data_ptr<T>(), tokens, topk, hidden);
    });
  });
}

}  // namespace vllm_ascend::cpu::CPU_CAPABILITY
