// Host-side tiling of the Ascend C kernels: what the NPU launchers (npu_ops.cpp) compute before a
// launch, in plain C++ with no torch / CANN dependency, so the host harness (tests/ascendc) runs
// every kernel with exactly the tiling a real launch would use.
#pragma once

#include <stdint.h>

#include <algorithm>
#include <cstring>

#include "tiling.h"

namespace vllm_ascend::ascend {

// ---- rotary_embedding ---------------------------------------------------------------------------
// Fills everything but the geometry the caller already knows; false when one head does not fit
// the UB budget.
inline bool make_rotary_tiling(int64_t num_tokens, int64_t num_q_heads, int64_t num_k_heads,
                               int64_t head_size, int64_t rot_dim, int64_t q_token_stride,
                               int64_t k_token_stride, int64_t cache_stride, int64_t elem_bytes,
                               int64_t max_cores, RotaryTiling* t) {
  // Fixed UB: staged positions, the cos|sin row (T and fp32).
  const int64_t fixed = 256 * 8 + align_up(rot_dim, 32) * (elem_bytes + 4) + 64;
  const int64_t max_elems = (kUbBudgetBytes - fixed) / rotary_bytes_per_elem(elem_bytes);
  if (max_elems < head_size) return false;
  const int64_t max_heads = std::max(num_q_heads, num_k_heads);
  const int64_t heads_per_tile =
      std::max<int64_t>(1, std::min(max_heads, max_elems / head_size));
  const TokenSplit split = split_tokens(num_tokens, max_cores);
  t->num_tokens = num_tokens;
  t->num_q_heads = num_q_heads;
  t->num_k_heads = num_k_heads;
  t->head_size = head_size;
  t->rot_dim = rot_dim;
  t->q_token_stride = q_token_stride;
  t->k_token_stride = num_k_heads > 0 ? k_token_stride : 0;
  t->cache_stride = cache_stride;
  t->heads_per_tile = heads_per_tile;
  t->tile_elems = align_up(heads_per_tile * head_size, 8);
  t->num_cores = split.num_cores;
  t->former_cores = split.former_cores;
  t->former_tokens = split.former_tokens;
  return true;
}

// The four index / sign tables of the rotary kernel (layout in tiling.h), kRotaryTables *
// tile_elems 32-bit words.
inline void build_rotary_tables(int64_t head_size, int64_t rot_dim, bool is_neox,
                                int64_t heads_per_tile, int64_t tile_elems, int32_t* out) {
  const int64_t e = tile_elems;
  const int64_t half = rot_dim / 2;
  for (int64_t i = 0; i < e; ++i) {
    const int64_t h = i / head_size;
    const int64_t j = i % head_size;
    int64_t cos_idx = rot_dim, sin_idx = rot_dim + 1, partner = i;  // pass-through defaults
    float sign = 0.f;
    if (h < heads_per_tile && j < rot_dim) {
      int64_t c, pj;
      if (is_neox) {
        c = j % half;
        pj = j < half ? j + half : j - half;
        sign = j < half ? -1.f : 1.f;
      } else {
        c = j / 2;
        pj = j ^ 1;
        sign = (j % 2 == 0) ? -1.f : 1.f;
      }
      cos_idx = c;
      sin_idx = half + c;
      partner = h * head_size + pj;
    }
    out[0 * e + i] = static_cast<int32_t>(cos_idx * sizeof(float));  // Gather: byte offsets
    out[1 * e + i] = static_cast<int32_t>(sin_idx * sizeof(float));
    out[2 * e + i] = static_cast<int32_t>(partner * sizeof(float));
    std::memcpy(&out[3 * e + i], &sign, sizeof(float));
  }
}

// ---- get_masked_input_and_mask ------------------------------------------------------------------
inline MaskTiling make_mask_tiling(int64_t num_ids, int64_t org_start, int64_t org_end,
                                   int64_t num_org_padding, int64_t added_start,
                                   int64_t added_end, int64_t max_cores) {
  // At least 32 ids per core; tiles of up to 4096 ids (int64 in + int64 out + mask, x2 buffers).
  const int64_t cores = std::min(max_cores, (num_ids + 31) / 32);
  const TokenSplit split = split_tokens(num_ids, cores);
  MaskTiling t{};
  t.num_ids = num_ids;
  t.org_start = org_start;
  t.org_end = org_end;
  t.added_start = added_start;
  t.added_end = added_end;
  t.added_offset = added_start - (org_end - org_start) - num_org_padding;
  t.ids_per_tile = align_up(std::min<int64_t>(split.former_tokens, 4096), 32);
  t.num_cores = split.num_cores;
  t.former_cores = split.former_cores;
  t.former_tokens = split.former_tokens;
  return t;
}

// ---- add_rms_norm_dynamic_quant -------------------------------------------------------------------
// UB per buffered row: x|residual in (2T), residual out (T), int8 out. Fixed: the fp32 weight
// row (read as fp32 straight into its compute buffer), two fp32 work rows, the reduce work
// area, the reduction results and the staged scales. False when a row does not fit.
inline int64_t add_rms_norm_quant_ub_bytes(int64_t hidden_aligned, int64_t elem_bytes,
                                           int64_t buffer_num) {
  const int64_t ha = hidden_aligned;
  const int64_t per_buffer = ha * (3 * elem_bytes + 1);
  const int64_t fixed =
      ha * 12 + add_rms_norm_work_floats(ha) * 4 + 32 + kAddRmsNormScaleBlock * 4;
  return fixed + buffer_num * per_buffer;
}

inline bool make_add_rms_norm_quant_tiling(int64_t rows, int64_t hidden, int64_t elem_bytes,
                                           float epsilon, int64_t max_cores,
                                           AddRmsNormQuantTiling* t) {
  const int64_t ha = align_up(hidden, 32);
  int64_t buffer_num = 2;
  if (add_rms_norm_quant_ub_bytes(ha, elem_bytes, 2) > kUbBudgetBytes) buffer_num = 1;
  if (add_rms_norm_quant_ub_bytes(ha, elem_bytes, buffer_num) > kUbBudgetBytes) return false;
  const TokenSplit split = split_tokens(rows, max_cores);
  t->num_rows = rows;
  t->hidden = hidden;
  t->hidden_aligned = ha;
  t->epsilon = epsilon;
  t->inv_hidden = 1.0f / static_cast<float>(hidden);
  t->buffer_num = buffer_num;
  t->num_cores = split.num_cores;
  t->former_cores = split.former_cores;
  t->former_tokens = split.former_tokens;
  return true;
}

}  // namespace vllm_ascend::ascend
