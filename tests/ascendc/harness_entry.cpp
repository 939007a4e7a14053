// C entry points of the host harness (loaded with ctypes by harness.py): the launchers' tiling
// (csrc/ascend/host/tiling_host.h, the same code npu_ops.cpp runs) and one launch per kernel that
// runs every block index in turn on host memory through the Ascend C shim.
#include <cstring>
#include <exception>
#include <string>

#include "shim/shim_runtime.h"
#include "tiling.h"
#include "tiling_host.h"

using uint8_ptr = uint8_t*;

#define ROTARY_ARGS                                                                          \
  uint8_ptr, uint8_ptr, uint8_ptr, uint8_ptr, uint8_ptr, int64_t, int64_t, int64_t, int64_t, \
      int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t
#define MASK_ARGS                                                                             \
  uint8_ptr, uint8_ptr, uint8_ptr, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,      \
      int64_t, int64_t, int64_t, int64_t
#define NORM_ARGS                                                                             \
  uint8_ptr, uint8_ptr, uint8_ptr, uint8_ptr, uint8_ptr, uint8_ptr, int64_t, int64_t, int64_t, \
      float, float, int64_t, int64_t, int64_t, int64_t

extern "C" {
void vllm_ascend_rotary_embedding_f32(ROTARY_ARGS);
void vllm_ascend_rotary_embedding_f16(ROTARY_ARGS);
void vllm_ascend_rotary_embedding_bf16(ROTARY_ARGS);
void vllm_ascend_masked_input_i64(MASK_ARGS);
void vllm_ascend_masked_input_i32(MASK_ARGS);
void vllm_ascend_add_rms_norm_dynamic_quant_f32(NORM_ARGS);
void vllm_ascend_add_rms_norm_dynamic_quant_f16(NORM_ARGS);
void vllm_ascend_add_rms_norm_dynamic_quant_bf16(NORM_ARGS);
}

namespace asc = vllm_ascend::ascend;

namespace {
thread_local std::string g_error;

// Runs body(block) for every block index; 0 on success, 1 with the message kept for va_error.
template <typename F>
int launch(int64_t num_cores, uint32_t ub_limit, F&& body) {
  g_error.clear();
  try {
    va::begin_launch(ub_limit);
    for (int64_t b = 0; b < num_cores; ++b) {
      va::begin_block(b, num_cores);
      body();
      va::end_block();
    }
    return 0;
  } catch (const std::exception& e) {
    va::end_block();
    g_error = e.what();
    return 1;
  }
}
}  // namespace

extern "C" {

int va_error(char* buf, int n) {
  std::strncpy(buf, g_error.c_str(), n - 1);
  buf[n - 1] = 0;
  return static_cast<int>(g_error.size());
}
void va_gm_reset() { va::gm_reset(); }
void va_gm_add(void* p, uint64_t bytes) { va::gm_add(p, bytes); }
uint32_t va_ub_peak() { return va::ub_peak(); }
int64_t va_ub_budget() { return asc::kUbBudgetBytes; }

// ---- tiling (what the launchers compute) -----------------------------------------------------
int va_rotary_tiling(int64_t num_tokens, int64_t nq, int64_t nk, int64_t head_size,
                     int64_t rot_dim, int64_t q_stride, int64_t k_stride, int64_t cache_stride,
                     int64_t elem_bytes, int64_t max_cores, int64_t* out) {
  asc::RotaryTiling t{};
  if (!asc::make_rotary_tiling(num_tokens, nq, nk, head_size, rot_dim, q_stride, k_stride,
                               cache_stride, elem_bytes, max_cores, &t)) {
    return 1;
  }
  const int64_t v[] = {t.num_tokens,   t.num_q_heads,    t.num_k_heads,    t.head_size,
                       t.rot_dim,      t.q_token_stride, t.k_token_stride, t.cache_stride,
                       t.heads_per_tile, t.tile_elems,   t.num_cores,      t.former_cores,
                       t.former_tokens};
  std::memcpy(out, v, sizeof(v));
  return 0;
}

void va_rotary_tables(int64_t head_size, int64_t rot_dim, int is_neox, int64_t heads_per_tile,
                      int64_t tile_elems, int32_t* out) {
  asc::build_rotary_tables(head_size, rot_dim, is_neox != 0, heads_per_tile, tile_elems, out);
}

void va_mask_tiling(int64_t n, int64_t org_start, int64_t org_end, int64_t pad,
                    int64_t added_start, int64_t added_end, int64_t max_cores, int64_t* out) {
  const asc::MaskTiling t =
      asc::make_mask_tiling(n, org_start, org_end, pad, added_start, added_end, max_cores);
  const int64_t v[] = {t.num_ids,      t.org_start,    t.org_end,   t.added_start,
                       t.added_end,    t.added_offset, t.ids_per_tile, t.num_cores,
                       t.former_cores, t.former_tokens};
  std::memcpy(out, v, sizeof(v));
}

int va_add_rms_norm_tiling(int64_t rows, int64_t hidden, int64_t elem_bytes, float eps,
                           int64_t max_cores, int64_t* out, float* out_f) {
  asc::AddRmsNormQuantTiling t{};
  if (!asc::make_add_rms_norm_quant_tiling(rows, hidden, elem_bytes, eps, max_cores, &t)) {
    return 1;
  }
  const int64_t v[] = {t.num_rows,  t.hidden,       t.hidden_aligned, t.buffer_num,
                       t.num_cores, t.former_cores, t.former_tokens};
  std::memcpy(out, v, sizeof(v));
  out_f[0] = t.epsilon;
  out_f[1] = t.inv_hidden;
  return 0;
}

// ---- launches (dtype: 0 fp32, 1 fp16, 2 bf16) -----------------------------------------------
int va_launch_rotary(int dtype, void* pos, void* q, void* k, void* cache, void* tables,
                     const int64_t* t, uint32_t ub_limit) {
  auto fn = dtype == 0 ? vllm_ascend_rotary_embedding_f32
            : dtype == 1 ? vllm_ascend_rotary_embedding_f16 : vllm_ascend_rotary_embedding_bf16;
  return launch(t[10], ub_limit, [&] {
    fn((uint8_ptr)pos, (uint8_ptr)q, (uint8_ptr)k, (uint8_ptr)cache, (uint8_ptr)tables, t[0],
       t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[9], t[10], t[11], t[12]);
  });
}

int va_launch_mask(int is_i64, void* in, void* masked, void* mask, const int64_t* t,
                   uint32_t ub_limit) {
  auto fn = is_i64 ? vllm_ascend_masked_input_i64 : vllm_ascend_masked_input_i32;
  return launch(t[7], ub_limit, [&] {
    fn((uint8_ptr)in, (uint8_ptr)masked, (uint8_ptr)mask, t[0], t[1], t[2], t[3], t[4], t[5],
       t[6], t[7], t[8], t[9]);
  });
}

int va_launch_add_rms_norm(int dtype, void* x, void* r, void* w, void* y, void* scale,
                           void* r_out, const int64_t* t, const float* tf, uint32_t ub_limit) {
  auto fn = dtype == 0   ? vllm_ascend_add_rms_norm_dynamic_quant_f32
            : dtype == 1 ? vllm_ascend_add_rms_norm_dynamic_quant_f16
                         : vllm_ascend_add_rms_norm_dynamic_quant_bf16;
  return launch(t[4], ub_limit, [&] {
    fn((uint8_ptr)x, (uint8_ptr)r, (uint8_ptr)w, (uint8_ptr)y, (uint8_ptr)scale,
       (uint8_ptr)r_out, t[0], t[1], t[2], tf[0], tf[1], t[3], t[4], t[5], t[6]);
  });
}

}  // extern "C"
