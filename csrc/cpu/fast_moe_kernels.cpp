// Fast CPU kernels of the MoE expert path (declared in cpu/fast_kernels.h): the grouped matmul
// of the expert MLP and the weighted combine of npu_moe_token_unpermute. Compiled once per
// CPU_CAPABILITY like cpu/fast_kernels.cpp; fp32 arithmetic whatever the storage type, rounded
// to the output dtype once, as the Python references in kernels/npu_ops/moe.py do.
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

// Output columns one task of the small-group matmul computes: 4 chunks, 8 fp32 accumulators.
constexpr int64_t kPanel = 4 * kChunk;
// Groups of at most this many rows take the streaming kernel below; larger groups convert the
// expert's weight to fp32 once and use ATen's GEMM.
constexpr int64_t kSmallRows = 16;

// y[r, n0:n0+width] = x[r, :] @ w[:, n0:n0+width] (+ bias) for one row; w is [K, N] row-major.
// width is kPanel, or any smaller count at the right edge.
template <typename T>
void row_panel(const float* xr, const T* w, const float* bias, T* yr, int64_t k_dim,
               int64_t n_dim, int64_t n0, int64_t width) {
  if (width == kPanel) {
    fVec acc[8];
    for (auto& a : acc) a = fVec(0.f);
    for (int64_t k = 0; k < k_dim; ++k) {
      const fVec xv(xr[k]);
      const T* wk = w + k * n_dim + n0;
      for (int64_t c = 0; c < 4; ++c) {
        fVec lo, hi;
        IO<T>::load(wk + c * kChunk, lo, hi);
        acc[2 * c] = at::vec::fmadd(xv, lo, acc[2 * c]);
        acc[2 * c + 1] = at::vec::fmadd(xv, hi, acc[2 * c + 1]);
      }
    }
    for (int64_t c = 0; c < 4; ++c) {
      fVec lo = acc[2 * c], hi = acc[2 * c + 1];
      if (bias != nullptr) {
        lo = lo + fVec::loadu(bias + n0 + c * kChunk);
        hi = hi + fVec::loadu(bias + n0 + c * kChunk + kF);
      }
      IO<T>::store(yr + n0 + c * kChunk, lo, hi);
    }
    return;
  }
  std::vector<float> acc(width, 0.f);
  for (int64_t k = 0; k < k_dim; ++k) {
    const float xv = xr[k];
    const T* wk = w + k * n_dim + n0;
    for (int64_t j = 0; j < width; ++j) acc[j] += xv * static_cast<float>(wk[j]);
  }
  for (int64_t j = 0; j < width; ++j) {
    yr[n0 + j] = static_cast<T>(bias != nullptr ? acc[j] + bias[n0 + j] : acc[j]);
  }
}

template <typename T>
void grouped_matmul_impl(const at::Tensor& x, const at::Tensor& w, const float* bias,
                         const std::vector<int64_t>& ends, at::Tensor& y) {
  const int64_t k_dim = x.size(1), n_dim = y.size(1);
  const T* wp = w.const_data_ptr<T>();
  T* yp = y.data_ptr<T>();
  // Small groups: one task per (group, row, column panel); each streams its expert's weight.
  struct Task { int64_t group, row, n0; };
  std::vector<Task> tasks;
  int64_t begin = 0;
  for (int64_t g = 0; g < static_cast<int64_t>(ends.size()); ++g) {
    const int64_t end = ends[g];
    if (end > begin && end - begin <= kSmallRows) {
      for (int64_t r = begin; r < end; ++r) {
        for (int64_t n0 = 0; n0 < n_dim; n0 += kPanel) tasks.push_back({g, r, n0});
      }
    } else if (end > begin) {
      at::Tensor acc = at::mm(x.slice(0, begin, end).to(at::kFloat), w[g].to(at::kFloat));
      if (bias != nullptr) {
        acc.add_(at::from_blob(const_cast<float*>(bias) + g * n_dim, {n_dim}, at::kFloat));
      }
      y.slice(0, begin, end).copy_(acc);
    }
    begin = end;
  }
  if (tasks.empty()) return;
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  const float* xp = xf.const_data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(1, k_dim * kPanel));
  at::parallel_for(0, static_cast<int64_t>(tasks.size()), grain, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const Task& t = tasks[i];
      row_panel<T>(xp + t.row * k_dim, wp + t.group * k_dim * n_dim,
                   bias != nullptr ? bias + t.group * n_dim : nullptr, yp + t.row * n_dim,
                   k_dim, n_dim, t.n0, std::min(kPanel, n_dim - t.n0));
    }
  });
}

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

void grouped_matmul_kernel(const at::Tensor& x, const at::Tensor& w, const float* bias,
                           const std::vector<int64_t>& ends, at::Tensor& y) {
  if (y.numel() == 0) return;
  VA_DISPATCH_FLOATING_TYPES(x.scalar_type(), "grouped_matmul_fast",
                             [&] { grouped_matmul_impl<scalar_t>(x, w, bias, ends, y); });
}

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
