// CPU kernels of the _C_ascend ops. Compiled once per CPU_CAPABILITY (see CMakeLists.txt):
// the macro names both ATen's vector namespace and ours, so the variants never clash.
//
// All arithmetic is done in fp32 whatever the storage type; loads and stores convert.
// Every kernel is parallel over tokens (at::parallel_for -> OpenMP, the same runtime torch uses)
// and vectorised with at::vec::Vectorized<float> along the hidden / head dimension.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <type_traits>

#include "cpu/kernels.h"
#include "cpu/vec_io.h"

namespace vllm_ascend::cpu::CPU_CAPABILITY {

namespace {

using namespace vec_io;  // NOLINT(build/namespaces): fVec, kF, kChunk, IO

// ---------------------------------------------------------------------------------------------
// rotary_embedding
// ---------------------------------------------------------------------------------------------

// NeoX style: the rotated half-pairs are (x[i], x[i + half]).
template <typename T>
inline void rotate_neox(T* x, const float* cos, const float* sin, int64_t half) {
  T* x1 = x;
  T* x2 = x + half;
  int64_t i = 0;
  for (; i + kChunk <= half; i += kChunk) {
    fVec a0, a1, b0, b1;
    IO<T>::load(x1 + i, a0, a1);
    IO<T>::load(x2 + i, b0, b1);
    const fVec c0 = fVec::loadu(cos + i), c1 = fVec::loadu(cos + i + kF);
    const fVec s0 = fVec::loadu(sin + i), s1 = fVec::loadu(sin + i + kF);
    IO<T>::store(x1 + i, a0 * c0 - b0 * s0, a1 * c1 - b1 * s1);
    IO<T>::store(x2 + i, b0 * c0 + a0 * s0, b1 * c1 + a1 * s1);
  }
  for (; i < half; ++i) {
    const float a = static_cast<float>(x1[i]);
    const float b = static_cast<float>(x2[i]);
    x1[i] = static_cast<T>(a * cos[i] - b * sin[i]);
    x2[i] = static_cast<T>(b * cos[i] + a * sin[i]);
  }
}

// GPT-J style: the rotated pairs are adjacent, (x[2i], x[2i + 1]).
template <typename T>
inline void rotate_gptj(T* x, const float* cos, const float* sin, int64_t half) {
  int64_t i = 0;
  for (; i + kF <= half; i += kF) {
    fVec v0, v1;
    IO<T>::load(x + 2 * i, v0, v1);
    auto [even, odd] = at::vec::deinterleave2(v0, v1);
    const fVec c = fVec::loadu(cos + i), s = fVec::loadu(sin + i);
    auto [r0, r1] = at::vec::interleave2(even * c - odd * s, odd * c + even * s);
    IO<T>::store(x + 2 * i, r0, r1);
  }
  for (; i < half; ++i) {
    const float a = static_cast<float>(x[2 * i]);
    const float b = static_cast<float>(x[2 * i + 1]);
    x[2 * i] = static_cast<T>(a * cos[i] - b * sin[i]);
    x[2 * i + 1] = static_cast<T>(b * cos[i] + a * sin[i]);
  }
}

template <typename T, typename C, typename P>
void rotary_impl(const P* positions, T* q, T* k, const C* cache, const RotaryGeometry& g,
                 int64_t max_position, bool is_neox) {
  const int64_t half = g.rot_dim / 2;
  const int64_t work_per_token = (g.q.num_heads + g.k.num_heads) * g.rot_dim;
  // Keep each task at >= ~16K rotated elements so OpenMP's fork cost stays small at decode sizes.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, work_per_token));
  at::parallel_for(0, g.num_tokens, grain, [&](int64_t begin, int64_t end) {
    // cos | sin of the current token in fp32.
    std::unique_ptr<float[]> cs(new float[g.rot_dim]);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t pos = static_cast<int64_t>(positions[t]);
      TORCH_CHECK(pos >= 0 && pos < max_position, "rotary_embedding: position ", pos,
                  " of token ", t, " is outside cos_sin_cache [0, ", max_position, ")");
      const C* row = cache + pos * g.cache_stride;
      for (int64_t j = 0; j < g.rot_dim; ++j) cs[j] = static_cast<float>(row[j]);
      const float* cos = cs.get();
      const float* sin = cs.get() + half;
      T* qt = q + t * g.q.token_stride;
      for (int64_t h = 0; h < g.q.num_heads; ++h) {
        if (is_neox) {
          rotate_neox(qt + h * g.q.head_stride, cos, sin, half);
        } else {
          rotate_gptj(qt + h * g.q.head_stride, cos, sin, half);
        }
      }
      if (k != nullptr) {
        T* kt = k + t * g.k.token_stride;
        for (int64_t h = 0; h < g.k.num_heads; ++h) {
          if (is_neox) {
            rotate_neox(kt + h * g.k.head_stride, cos, sin, half);
          } else {
            rotate_gptj(kt + h * g.k.head_stride, cos, sin, half);
          }
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// add_rms_norm_dynamic_quant
// ---------------------------------------------------------------------------------------------

template <typename T>
void add_rms_norm_quant_impl(const T* x, const T* residual, const float* w, float eps,
                             int8_t* y, float* scale, T* residual_out, int64_t rows,
                             int64_t hidden) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, hidden));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    // One fp32 row: the sum, then the normed values, then the rounded quantised values.
    // It stays in L1/L2; nothing between the add, the norm and the quantisation touches DRAM.
    std::unique_ptr<float[]> buf(new float[hidden]);
    float* b = buf.get();
    alignas(64) float lanes[kF];
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * hidden;
      const T* rr = residual + r * hidden;
      T* ro = residual_out + r * hidden;
      // 1) residual add (fp32), write the new residual, accumulate the sum of squares.
      fVec acc0(0.f), acc1(0.f);
      int64_t i = 0;
      for (; i + kChunk <= hidden; i += kChunk) {
        fVec a0, a1, b0, b1;
        IO<T>::load(xr + i, a0, a1);
        IO<T>::load(rr + i, b0, b1);
        const fVec s0 = a0 + b0, s1 = a1 + b1;
        IO<T>::store(ro + i, s0, s1);
        s0.store(b + i);
        s1.store(b + i + kF);
        acc0 = at::vec::fmadd(s0, s0, acc0);
        acc1 = at::vec::fmadd(s1, s1, acc1);
      }
      float sumsq = hsum(acc0 + acc1);
      for (; i < hidden; ++i) {
        const float s = static_cast<float>(xr[i]) + static_cast<float>(rr[i]);
        ro[i] = static_cast<T>(s);
        b[i] = s;
        sumsq += s * s;
      }
      const float inv_rms = 1.f / std::sqrt(sumsq / static_cast<float>(hidden) + eps);

      // 2) y = sum * inv_rms * weight (kept in fp32), and its absolute maximum.
      const fVec vinv(inv_rms);
      fVec vmax(0.f);
      i = 0;
      for (; i + kF <= hidden; i += kF) {
        const fVec v = fVec::loadu(b + i) * vinv * fVec::loadu(w + i);
        v.store(b + i);
        vmax = at::vec::maximum(vmax, v.abs());
      }
      vmax.store(lanes);
      float absmax = 0.f;
      for (int64_t l = 0; l < kF; ++l) absmax = std::max(absmax, lanes[l]);
      for (; i < hidden; ++i) {
        const float v = b[i] * inv_rms * w[i];
        b[i] = v;
        absmax = std::max(absmax, std::fabs(v));
      }

      // 3) symmetric per-token int8: scale = absmax / 127, q = round_half_even(y / scale).
      int8_t* yr = y + r * hidden;
      if (!(absmax > 0.f)) {  // all-zero row (or NaN): scale 0, q 0
        scale[r] = absmax > 0.f ? absmax / 127.f : 0.f;
        std::fill(yr, yr + hidden, static_cast<int8_t>(0));
        continue;
      }
      scale[r] = absmax / 127.f;
      const float inv_scale = 127.f / absmax;
      const fVec vs(inv_scale), lo(-128.f), hi(127.f);
      i = 0;
      for (; i + kF <= hidden; i += kF) {
        at::vec::clamp(( fVec::loadu(b + i) * vs).round(), lo, hi).store(b + i);
      }
      for (; i < hidden; ++i) {
        b[i] = std::min(127.f, std::max(-128.f, std::nearbyint(b[i] * inv_scale)));
      }
      for (i = 0; i < hidden; ++i) yr[i] = static_cast<int8_t>(static_cast<int32_t>(b[i]));
    }
  });
}

}  // namespace

void rotary_embedding_kernel(const at::Tensor& positions, at::Tensor& query,
                             const std::optional<at::Tensor>& key, const RotaryGeometry& g,
                             const at::Tensor& cos_sin_cache, bool is_neox) {
  if (g.num_tokens == 0) return;
  const bool cache_is_float = cos_sin_cache.scalar_type() == at::kFloat;
  VA_DISPATCH_FLOATING_TYPES(query.scalar_type(), "rotary_embedding", [&] {
    using T = scalar_t;
    T* q = query.data_ptr<T>();
    T* k = key.has_value() ? key->data_ptr<T>() : nullptr;
    AT_DISPATCH_INDEX_TYPES(positions.scalar_type(), "rotary_embedding_pos", [&] {
      const index_t* pos = positions.data_ptr<index_t>();
      if (cache_is_float || std::is_same_v<T, float>) {
        rotary_impl<T, float, index_t>(pos, q, k, cos_sin_cache.data_ptr<float>(), g,
                                       cos_sin_cache.size(0), is_neox);
      } else {
        rotary_impl<T, T, index_t>(pos, q, k, cos_sin_cache.data_ptr<T>(), g,
                                   cos_sin_cache.size(0), is_neox);
      }
    });
  });
}

void masked_input_kernel(const at::Tensor& input, at::Tensor& masked, at::Tensor& mask,
                         int64_t org_start, int64_t org_end, int64_t num_org_padding,
                         int64_t added_start, int64_t added_end) {
  const int64_t n = input.numel();
  if (n == 0) return;
  // Same arithmetic as vLLM's python version: an id in the original range is shifted by
  // org_start, one in the added range by added_offset (both shifts apply if the ranges overlap);
  // ids in neither range become 0 and are flagged in the mask.
  const int64_t added_offset = added_start - (org_end - org_start) - num_org_padding;
  int64_t* out = masked.data_ptr<int64_t>();
  bool* m = mask.data_ptr<bool>();
  AT_DISPATCH_INDEX_TYPES(input.scalar_type(), "get_masked_input_and_mask", [&] {
    const index_t* in = input.data_ptr<index_t>();
    at::parallel_for(0, n, 32768, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t v = static_cast<int64_t>(in[i]);
        const bool in_org = v >= org_start && v < org_end;
        const bool in_added = v >= added_start && v < added_end;
        const int64_t offset = (in_org ? org_start : 0) + (in_added ? added_offset : 0);
        const bool valid = in_org || in_added;
        out[i] = valid ? v - offset : 0;
        m[i] = !valid;
      }
    });
  });
}

void add_rms_norm_dynamic_quant_kernel(const at::Tensor& x, const at::Tensor& residual,
                                       const at::Tensor& weight, double epsilon, at::Tensor& y,
                                       at::Tensor& scale, at::Tensor& residual_out) {
  const int64_t hidden = x.size(-1);
  const int64_t rows = hidden == 0 ? 0 : x.numel() / hidden;
  if (rows == 0) return;
  const at::Tensor w = weight.to(at::kFloat).contiguous();
  VA_DISPATCH_FLOATING_TYPES(x.scalar_type(), "add_rms_norm_dynamic_quant", [&] {
    add_rms_norm_quant_impl<scalar_t>(
        x.data_ptr<scalar_t>(), residual.data_ptr<scalar_t>(), w.data_ptr<float>(),
        static_cast<float>(epsilon), y.data_ptr<int8_t>(), scale.data_ptr<float>(),
        residual_out.data_ptr<scalar_t>(), rows, hidden);
  });
}

}  // namespace vllm_ascend::cpu::CPU_CAPABILITY
