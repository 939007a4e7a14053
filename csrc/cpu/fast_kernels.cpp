// Fast CPU kernels of hot torch_npu ops (declared in cpu/fast_kernels.h). Compiled once per
// CPU_CAPABILITY, like cpu/kernels.cpp. Arithmetic in fp32 whatever the storage type, rounded to
// the output dtype once, as the Python references do; parallel with at::parallel_for (OpenMP) and
// vectorised with at::vec::Vectorized<float>.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/fast_kernels.h"
#include "cpu/vec_io.h"

namespace vllm_ascend::cpu::CPU_CAPABILITY {

namespace {

using namespace vec_io;  // NOLINT(build/namespaces): fVec, kF, kChunk, IO, hsum

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

template <typename T>
inline void to_float(const T* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + kChunk <= n; i += kChunk) {
    fVec a, b;
    IO<T>::load(src + i, a, b);
    a.store(dst + i);
    b.store(dst + i + kF);
  }
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

// dst = src * mul, rounded to T.
template <typename T>
inline void store_scaled(const float* src, float mul, T* dst, int64_t n) {
  const fVec vm(mul);
  int64_t i = 0;
  for (; i + kChunk <= n; i += kChunk) {
    IO<T>::store(dst + i, fVec::loadu(src + i) * vm, fVec::loadu(src + i + kF) * vm);
  }
  for (; i < n; ++i) dst[i] = static_cast<T>(src[i] * mul);
}

inline float dot(const float* a, const float* b, int64_t n) {
  fVec s0(0.f), s1(0.f);
  int64_t i = 0;
  for (; i + kChunk <= n; i += kChunk) {
    s0 = at::vec::fmadd(fVec::loadu(a + i), fVec::loadu(b + i), s0);
    s1 = at::vec::fmadd(fVec::loadu(a + i + kF), fVec::loadu(b + i + kF), s1);
  }
  float s = hsum(s0 + s1);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// y = y * alpha (alpha != 1 only when the running maximum moved)
inline void scale_inplace(float* y, float alpha, int64_t n) {
  const fVec va(alpha);
  int64_t i = 0;
  for (; i + kF <= n; i += kF) (fVec::loadu(y + i) * va).store(y + i);
  for (; i < n; ++i) y[i] *= alpha;
}

// y += p * x
inline void axpy(float* y, float p, const float* x, int64_t n) {
  const fVec vp(p);
  int64_t i = 0;
  for (; i + kF <= n; i += kF) at::vec::fmadd(vp, fVec::loadu(x + i), fVec::loadu(y + i)).store(y + i);
  for (; i < n; ++i) y[i] += p * x[i];
}

// s[i] = exp(s[i] - m); returns the sum.
inline float exp_shifted(float* s, float m, int64_t n) {
  const fVec vm(m);
  fVec acc(0.f);
  int64_t i = 0;
  for (; i + kF <= n; i += kF) {
    const fVec e = (fVec::loadu(s + i) - vm).exp_u20();
    e.store(s + i);
    acc = acc + e;
  }
  float sum = hsum(acc);
  for (; i < n; ++i) {
    s[i] = std::exp(s[i] - m);
    sum += s[i];
  }
  return sum;
}

// ---------------------------------------------------------------------------------------------
// fused attention, layout TND (flash-style: online softmax over chunks of kv positions)
// ---------------------------------------------------------------------------------------------

constexpr int64_t kKvChunk = 64;
// Query vectors (rows x heads sharing one kv head) per work item: each chunk of keys and values
// is converted to fp32 once and used by all of them.
constexpr int64_t kQueryVectors = 32;

struct Item {
  int64_t b, h, r0, r1;
};

template <typename T>
void attention_impl(const AttentionProblem& p) {
  using Mask = AttentionProblem::Mask;
  const T* q = p.query->data_ptr<T>();
  const T* k = p.key->data_ptr<T>();
  const T* v = p.value->data_ptr<T>();
  T* out = p.out->data_ptr<T>();
  const int64_t N = p.num_heads, KVN = p.kv_heads, D = p.head_dim, DV = p.v_head_dim;
  const int64_t G = N / KVN;
  const int64_t rows_per_item = std::max<int64_t>(1, kQueryVectors / G);
  const bool paged = p.block_table != nullptr;

  std::vector<Item> items;
  const int64_t batch = static_cast<int64_t>(p.q_len.size());
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t ql = p.q_len[b];
    if (ql == 0) continue;
    if (p.kv_len[b] == 0) {  // nothing to attend: output 0, LSE -inf (the reference's reading)
      T* dst = out + p.q_start[b] * N * DV;
      std::fill(dst, dst + ql * N * DV, static_cast<T>(0.f));
      if (p.lse != nullptr) std::fill(p.lse + p.q_start[b] * N, p.lse + (p.q_start[b] + ql) * N, kNegInf);
      continue;
    }
    for (int64_t h = 0; h < KVN; ++h) {
      for (int64_t r0 = 0; r0 < ql; r0 += rows_per_item) {
        items.push_back({b, h, r0, std::min(ql, r0 + rows_per_item)});
      }
    }
  }

  // Work of one item in multiply-adds; small calls (a decode step of a small model) run inline,
  // so no thread team wakes up (and spins afterwards) for microseconds of arithmetic.
  int64_t total_kv = 0;
  for (const Item& w : items) total_kv += p.kv_len[w.b];
  const int64_t item_work = items.empty() ? 1
      : std::max<int64_t>(1, rows_per_item * G * (D + DV) * total_kv /
                                 static_cast<int64_t>(items.size()));
  const int64_t grain = std::max<int64_t>(1, (1 << 18) / item_work);
  at::parallel_for(0, static_cast<int64_t>(items.size()), grain, [&](int64_t begin, int64_t end) {
    const int64_t max_vectors = rows_per_item * G;
    std::vector<float> qbuf(max_vectors * D), acc(max_vectors * DV), m(max_vectors),
        l(max_vectors), kbuf(kKvChunk * D), vbuf(kKvChunk * DV), sc(kKvChunk);
    std::vector<int64_t> lo(rows_per_item), hi(rows_per_item);
    for (int64_t it = begin; it < end; ++it) {
      const Item& w = items[it];
      const int64_t b = w.b, h = w.h, nr = w.r1 - w.r0;
      const int64_t ql = p.q_len[b], kvl = p.kv_len[b], offset = kvl - ql;
      const int64_t row0 = p.q_start[b] + w.r0;
      for (int64_t r = 0; r < nr; ++r) {
        for (int64_t g = 0; g < G; ++g) {
          float* dst = qbuf.data() + (r * G + g) * D;
          to_float(q + ((row0 + r) * N + h * G + g) * D, dst, D);
          scale_inplace(dst, p.scale, D);
        }
      }
      // Allowed kv positions [lo, hi) of each query row (right-down: row i sits at kv_len-q_len+i).
      int64_t tile_lo = kvl, tile_hi = 0;
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t pos = w.r0 + r + offset;
        int64_t a = 0, z = kvl;
        if (p.mask == Mask::kCausal) {
          z = std::min(kvl, pos + 1);
        } else if (p.mask == Mask::kBand) {
          a = std::max<int64_t>(0, pos - p.pre_tokens);
          z = std::min(kvl, pos + p.next_tokens + 1);
        }
        z = std::max(a, z);
        lo[r] = a;
        hi[r] = z;
        if (a < z) {
          tile_lo = std::min(tile_lo, a);
          tile_hi = std::max(tile_hi, z);
        }
      }
      std::fill(m.begin(), m.end(), kNegInf);
      std::fill(l.begin(), l.end(), 0.f);
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t c0 = tile_lo; c0 < tile_hi; c0 += kKvChunk) {
        const int64_t c1 = std::min(c0 + kKvChunk, tile_hi);
        for (int64_t j = c0; j < c1; ++j) {
          const int64_t row =
              paged ? static_cast<int64_t>(p.block_table[b * p.block_table_stride + j / p.block_size]) *
                              p.block_size +
                          j % p.block_size
                    : p.kv_start[b] + j;
          to_float(k + (row * KVN + h) * D, kbuf.data() + (j - c0) * D, D);
          to_float(v + (row * KVN + h) * DV, vbuf.data() + (j - c0) * DV, DV);
        }
        for (int64_t r = 0; r < nr; ++r) {
          const int64_t jlo = std::max(lo[r], c0), jhi = std::min(hi[r], c1);
          if (jlo >= jhi) continue;
          const int64_t n = jhi - jlo;
          for (int64_t g = 0; g < G; ++g) {
            const int64_t rg = r * G + g;
            const float* qv = qbuf.data() + rg * D;
            float mx = kNegInf;
            for (int64_t j = 0; j < n; ++j) {
              sc[j] = dot(qv, kbuf.data() + (jlo - c0 + j) * D, D);
              mx = std::max(mx, sc[j]);
            }
            const float m_new = std::max(m[rg], mx);
            float* a = acc.data() + rg * DV;
            if (m[rg] != m_new) {
              const float alpha = m[rg] == kNegInf ? 0.f : std::exp(m[rg] - m_new);
              scale_inplace(a, alpha, DV);
              l[rg] *= alpha;
            }
            l[rg] += exp_shifted(sc.data(), m_new, n);
            m[rg] = m_new;
            for (int64_t j = 0; j < n; ++j) axpy(a, sc[j], vbuf.data() + (jlo - c0 + j) * DV, DV);
          }
        }
      }
      for (int64_t r = 0; r < nr; ++r) {
        for (int64_t g = 0; g < G; ++g) {
          const int64_t rg = r * G + g, head = h * G + g;
          T* dst = out + ((row0 + r) * N + head) * DV;
          const bool any = l[rg] > 0.f;
          store_scaled(acc.data() + rg * DV, any ? 1.f / l[rg] : 0.f, dst, DV);
          if (p.lse != nullptr) p.lse[(row0 + r) * N + head] = any ? m[rg] + std::log(l[rg]) : kNegInf;
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// RMSNorm, optionally after a residual add
// ---------------------------------------------------------------------------------------------

template <typename T>
void rms_norm_impl(const T* x, const T* x2, const float* w, float eps, T* y, float* rstd, T* xs,
                   int64_t rows, int64_t hidden) {
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, hidden));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(hidden);
    float* s = buf.data();
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * hidden;
      fVec acc0(0.f), acc1(0.f);
      int64_t i = 0;
      for (; i + kChunk <= hidden; i += kChunk) {
        fVec a0, a1;
        IO<T>::load(xr + i, a0, a1);
        if (x2 != nullptr) {
          fVec b0, b1;
          IO<T>::load(x2 + r * hidden + i, b0, b1);
          a0 = a0 + b0;
          a1 = a1 + b1;
          IO<T>::store(xs + r * hidden + i, a0, a1);
        }
        a0.store(s + i);
        a1.store(s + i + kF);
        acc0 = at::vec::fmadd(a0, a0, acc0);
        acc1 = at::vec::fmadd(a1, a1, acc1);
      }
      float sumsq = hsum(acc0 + acc1);
      for (; i < hidden; ++i) {
        float a = static_cast<float>(xr[i]);
        if (x2 != nullptr) {
          a += static_cast<float>(x2[r * hidden + i]);
          xs[r * hidden + i] = static_cast<T>(a);
        }
        s[i] = a;
        sumsq += a * a;
      }
      const float inv = 1.f / std::sqrt(sumsq / static_cast<float>(hidden) + eps);
      rstd[r] = inv;
      const fVec vinv(inv);
      T* yr = y + r * hidden;
      i = 0;
      for (; i + kChunk <= hidden; i += kChunk) {
        IO<T>::store(yr + i, fVec::loadu(s + i) * vinv * fVec::loadu(w + i),
                     fVec::loadu(s + i + kF) * vinv * fVec::loadu(w + i + kF));
      }
      for (; i < hidden; ++i) yr[i] = static_cast<T>(s[i] * inv * w[i]);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// SwiGLU over the last dim: y = silu(first half) * second half
// ---------------------------------------------------------------------------------------------

template <typename T>
void swiglu_impl(const T* x, T* y, int64_t rows, int64_t half) {
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, half));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    const fVec one(1.f);
    for (int64_t r = begin; r < end; ++r) {
      const T* a = x + r * 2 * half;
      const T* b = a + half;
      T* yr = y + r * half;
      int64_t i = 0;
      for (; i + kChunk <= half; i += kChunk) {
        fVec a0, a1, b0, b1;
        IO<T>::load(a + i, a0, a1);
        IO<T>::load(b + i, b0, b1);
        const fVec s0 = a0 / (one + a0.neg().exp_u20());
        const fVec s1 = a1 / (one + a1.neg().exp_u20());
        IO<T>::store(yr + i, s0 * b0, s1 * b1);
      }
      for (; i < half; ++i) {
        const float av = static_cast<float>(a[i]);
        yr[i] = static_cast<T>(av / (1.f + std::exp(-av)) * static_cast<float>(b[i]));
      }
    }
  });
}

}  // namespace

void attention_kernel(const AttentionProblem& p) {
  VA_DISPATCH_FLOATING_TYPES(p.query->scalar_type(), "fused_attention_fast",
                             [&] { attention_impl<scalar_t>(p); });
}

void rms_norm_kernel(const at::Tensor& x, const at::Tensor* x2, const at::Tensor& gamma,
                     double epsilon, at::Tensor& y, at::Tensor& rstd, at::Tensor* x_sum) {
  const int64_t hidden = gamma.numel();
  const int64_t rows = hidden == 0 ? 0 : x.numel() / hidden;
  if (rows == 0) return;
  const at::Tensor w = gamma.to(at::kFloat).contiguous();
  VA_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rms_norm_fast", [&] {
    rms_norm_impl<scalar_t>(x.data_ptr<scalar_t>(),
                            x2 != nullptr ? x2->data_ptr<scalar_t>() : nullptr,
                            w.data_ptr<float>(), static_cast<float>(epsilon),
                            y.data_ptr<scalar_t>(), rstd.data_ptr<float>(),
                            x_sum != nullptr ? x_sum->data_ptr<scalar_t>() : nullptr, rows,
                            hidden);
  });
}

void swiglu_kernel(const at::Tensor& x, at::Tensor& y) {
  const int64_t half = y.size(-1);
  const int64_t rows = half == 0 ? 0 : y.numel() / half;
  if (rows == 0) return;
  VA_DISPATCH_FLOATING_TYPES(x.scalar_type(), "swiglu_fast", [&] {
    swiglu_impl<scalar_t>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), rows, half);
  });
}

void scatter_rows_kernel(const at::Tensor& src, at::Tensor& cache, const at::Tensor& slots) {
  const int64_t tokens = src.size(0);
  if (tokens == 0) return;
  const int64_t row_bytes = src.numel() / tokens * src.element_size();
  const char* s = static_cast<const char*>(src.const_data_ptr());
  char* c = static_cast<char*>(cache.data_ptr());
  AT_DISPATCH_INDEX_TYPES(slots.scalar_type(), "scatter_rows_fast", [&] {
    const index_t* sl = slots.const_data_ptr<index_t>();
    const int64_t grain = std::max<int64_t>(1, (1 << 20) / std::max<int64_t>(1, row_bytes));
    at::parallel_for(0, tokens, grain, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        std::memcpy(c + static_cast<int64_t>(sl[t]) * row_bytes, s + t * row_bytes, row_bytes);
      }
    });
  });
}

}  // namespace vllm_ascend::cpu::CPU_CAPABILITY
