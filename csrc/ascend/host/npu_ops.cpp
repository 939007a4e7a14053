// PrivateUse1 (NPU) host launchers for the Ascend C kernels. Compiled only when CANN is found
// (VLLM_ASCEND_WITH_CANN); NOT compiled in this repository's CI.
//
// Each launcher validates the arguments (same checks as the CPU path), computes the tiling on the
// host (tiling.h), allocates outputs, and launches through torch_npu's OpCommand custom handler,
// so the kernel is ordered with the other ops in torch_npu's task queue on the current stream.
// The kernels are launched with the aclrtlaunch_<kernel>() functions that ascendc_library
// generates for every kernel entry point.
#include <ATen/ATen.h>
#include <acl/acl.h>

#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "ops.h"
#include "tiling_host.h"
#include "tiling.h"
#include "torch_npu/csrc/core/npu/NPUStream.h"
#include "torch_npu/csrc/framework/OpCommand.h"

#include "aclrtlaunch_vllm_ascend_add_rms_norm_dynamic_quant_bf16.h"
#include "aclrtlaunch_vllm_ascend_add_rms_norm_dynamic_quant_f16.h"
#include "aclrtlaunch_vllm_ascend_add_rms_norm_dynamic_quant_f32.h"
#include "aclrtlaunch_vllm_ascend_masked_input_i32.h"
#include "aclrtlaunch_vllm_ascend_masked_input_i64.h"
#include "aclrtlaunch_vllm_ascend_rotary_embedding_bf16.h"
#include "aclrtlaunch_vllm_ascend_rotary_embedding_f16.h"
#include "aclrtlaunch_vllm_ascend_rotary_embedding_f32.h"

namespace vllm_ascend {

namespace {

namespace asc = ::vllm_ascend::ascend;

int64_t vector_core_count(c10::DeviceIndex device) {
  static std::mutex mu;
  static std::map<c10::DeviceIndex, int64_t> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(device);
  if (it != cache.end()) return it->second;
  int64_t n = 0;
  const aclError rc =
      aclrtGetDeviceInfo(static_cast<uint32_t>(device), ACL_DEV_ATTR_VECTOR_CORE_NUM, &n);
  TORCH_CHECK(rc == ACL_SUCCESS && n > 0, "vllm-ascend: aclrtGetDeviceInfo(VECTOR_CORE_NUM) "
              "failed with ", rc, " on device ", device);
  cache.emplace(device, n);
  return n;
}

void check_launch(uint32_t rc, const char* kernel) {
  TORCH_CHECK(rc == 0, "vllm-ascend: launching Ascend C kernel ", kernel, " failed with ", rc);
}

void* ptr(const at::Tensor& t) { return const_cast<void*>(t.data_ptr()); }

// ---- rotary -------------------------------------------------------------------------------------

// Index / sign tables of the rotary kernel (see tiling.h), built once per shape and kept on the
// device.
at::Tensor rotary_tables(const at::Device& device, int64_t head_size, int64_t rot_dim,
                         bool is_neox, int64_t heads_per_tile, int64_t tile_elems) {
  static std::mutex mu;
  static std::map<std::tuple<int, int64_t, int64_t, bool, int64_t>, at::Tensor> cache;
  const auto key = std::make_tuple(static_cast<int>(device.index()), head_size, rot_dim, is_neox,
                                   heads_per_tile);
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;

  const int64_t e = tile_elems;
  std::vector<int32_t> host(asc::kRotaryTables * e);
  asc::build_rotary_tables(head_size, rot_dim, is_neox, heads_per_tile, tile_elems, host.data());
  at::Tensor cpu = at::from_blob(host.data(), {asc::kRotaryTables * e}, at::kInt).clone();
  at::Tensor dev = cpu.to(device);
  cache.emplace(key, dev);
  return dev;
}

void rotary_dense(const at::Tensor& positions, at::Tensor& query,
                  const std::optional<at::Tensor>& key, const RotaryGeometry& g,
                  const at::Tensor& cache, bool is_neox) {
  asc::RotaryTiling t{};
  TORCH_CHECK(asc::make_rotary_tiling(g.num_tokens, g.q.num_heads, g.k.num_heads, g.head_size,
                                      g.rot_dim, g.q.token_stride, g.k.token_stride,
                                      g.cache_stride, query.element_size(),
                                      vector_core_count(query.device().index()), &t),
              "rotary_embedding (NPU): head_size ", g.head_size,
              " does not fit the on-chip buffer");
  const at::Tensor tables =
      rotary_tables(query.device(), g.head_size, g.rot_dim, is_neox, t.heads_per_tile,
                    t.tile_elems);

  at::Tensor q = query;
  at::Tensor k = key.has_value() ? *key : at::Tensor();
  const int64_t nk = t.num_k_heads;
  const auto dtype = query.scalar_type();
  at::Tensor pos = positions;
  at::Tensor cs = cache;
  aclrtStream stream = c10_npu::getCurrentNPUStream().stream();
  at_npu::native::OpCommand cmd;
  cmd.Name("vllm_ascend_rotary_embedding");
  cmd.SetCustomHandler([=]() -> int {
    void* kp = nk > 0 ? ptr(k) : nullptr;
    const auto launch = [&](auto fn, const char* name) {
      check_launch(fn(static_cast<uint32_t>(t.num_cores), stream, ptr(pos), ptr(q), kp,
                      ptr(cs), ptr(tables), t.num_tokens, t.num_q_heads, t.num_k_heads,
                      t.head_size, t.rot_dim, t.q_token_stride, t.k_token_stride,
                      t.cache_stride, t.heads_per_tile, t.tile_elems, t.num_cores,
                      t.former_cores, t.former_tokens),
                   name);
    };
    if (dtype == at::kBFloat16) {
      launch(aclrtlaunch_vllm_ascend_rotary_embedding_bf16, "rotary_embedding_bf16");
    } else if (dtype == at::kHalf) {
      launch(aclrtlaunch_vllm_ascend_rotary_embedding_f16, "rotary_embedding_f16");
    } else {
      launch(aclrtlaunch_vllm_ascend_rotary_embedding_f32, "rotary_embedding_f32");
    }
    return 0;
  });
  cmd.Run();
}

}  // namespace

void rotary_embedding_npu(const at::Tensor& positions, at::Tensor& query,
                          const std::optional<at::Tensor>& key, int64_t head_size,
                          const at::Tensor& cos_sin_cache, bool is_neox) {
  const RotaryGeometry g = check_rotary_args(positions, query, key, head_size, cos_sin_cache);
  if (g.num_tokens == 0) return;
  // The kernel reads positions as int64 and the cache in the query dtype.
  const at::Tensor pos = positions.to(at::kLong).contiguous();
  const at::Tensor cache = cos_sin_cache.to(query.scalar_type()).contiguous();
  const bool q_dense = g.q.head_stride == head_size;
  const bool k_dense = !key.has_value() || g.k.head_stride == head_size;
  if (q_dense && k_dense) {
    RotaryGeometry gc = g;
    gc.cache_stride = cache.stride(0);
    rotary_dense(pos, query, key, gc, cache, is_neox);
    return;
  }
  // Heads not adjacent within a token (rare): rotate packed copies, then write them back.
  at::Tensor qc = query.contiguous();
  std::optional<at::Tensor> kc;
  if (key.has_value()) kc = key->contiguous();
  rotary_embedding_npu(pos, qc, kc, head_size, cache, is_neox);
  if (!qc.is_same(query)) query.copy_(qc);
  if (key.has_value() && !kc->is_same(*key)) const_cast<at::Tensor&>(*key).copy_(*kc);
}

// ---- get_masked_input_and_mask ------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> get_masked_input_and_mask_npu(
    const at::Tensor& input, int64_t org_vocab_start_index, int64_t org_vocab_end_index,
    int64_t num_org_vocab_padding, int64_t added_vocab_start_index,
    int64_t added_vocab_end_index) {
  TORCH_CHECK(input.scalar_type() == at::kLong || input.scalar_type() == at::kInt,
              "get_masked_input_and_mask: input ids must be int64 or int32, got ",
              input.scalar_type());
  const at::Tensor in = input.contiguous();
  at::Tensor masked = at::empty(input.sizes(), input.options().dtype(at::kLong));
  at::Tensor mask = at::empty(input.sizes(), input.options().dtype(at::kBool));
  const int64_t n = in.numel();
  if (n == 0) return {masked, mask};
  const asc::MaskTiling t = asc::make_mask_tiling(
      n, org_vocab_start_index, org_vocab_end_index, num_org_vocab_padding,
      added_vocab_start_index, added_vocab_end_index, vector_core_count(input.device().index()));
  const bool is_i64 = in.scalar_type() == at::kLong;
  aclrtStream stream = c10_npu::getCurrentNPUStream().stream();
  at_npu::native::OpCommand cmd;
  cmd.Name("vllm_ascend_get_masked_input_and_mask");
  cmd.SetCustomHandler([=]() -> int {
    const auto launch = [&](auto fn, const char* name) {
      check_launch(fn(static_cast<uint32_t>(t.num_cores), stream, ptr(in), ptr(masked),
                      ptr(mask), t.num_ids, t.org_start, t.org_end, t.added_start, t.added_end,
                      t.added_offset, t.ids_per_tile, t.num_cores, t.former_cores,
                      t.former_tokens),
                   name);
    };
    if (is_i64) {
      launch(aclrtlaunch_vllm_ascend_masked_input_i64, "masked_input_i64");
    } else {
      launch(aclrtlaunch_vllm_ascend_masked_input_i32, "masked_input_i32");
    }
    return 0;
  });
  cmd.Run();
  return {masked, mask};
}

// ---- add_rms_norm_dynamic_quant -----------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor, at::Tensor> add_rms_norm_dynamic_quant_npu(
    const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight, double epsilon) {
  check_add_rms_norm_quant_args(x, residual, weight);
  const at::Tensor xc = x.contiguous();
  const at::Tensor rc = residual.contiguous();
  const at::Tensor wc = weight.to(at::kFloat).contiguous();  // the kernel reads fp32 weights
  at::Tensor y = at::empty(x.sizes(), x.options().dtype(at::kChar));
  at::Tensor scale = at::empty(x.sizes().slice(0, x.dim() - 1), x.options().dtype(at::kFloat));
  at::Tensor residual_out = at::empty(x.sizes(), x.options());
  const int64_t hidden = x.size(-1);
  const int64_t rows = hidden == 0 ? 0 : x.numel() / hidden;
  if (rows == 0) return {y, scale, residual_out};

  asc::AddRmsNormQuantTiling t{};
  TORCH_CHECK(asc::make_add_rms_norm_quant_tiling(rows, hidden, x.element_size(),
                                                  static_cast<float>(epsilon),
                                                  vector_core_count(x.device().index()), &t),
              "add_rms_norm_dynamic_quant (NPU): hidden size ", hidden,
              " does not fit the on-chip buffer; use the unfused RMSNorm + quantisation path");
  const auto dtype = x.scalar_type();
  aclrtStream stream = c10_npu::getCurrentNPUStream().stream();
  at_npu::native::OpCommand cmd;
  cmd.Name("vllm_ascend_add_rms_norm_dynamic_quant");
  cmd.SetCustomHandler([=]() -> int {
    const auto launch = [&](auto fn, const char* name) {
      check_launch(fn(static_cast<uint32_t>(t.num_cores), stream, ptr(xc), ptr(rc), ptr(wc),
                      ptr(y), ptr(scale), ptr(residual_out), t.num_rows, t.hidden,
                      t.hidden_aligned, t.epsilon, t.inv_hidden, t.buffer_num, t.num_cores,
                      t.former_cores, t.former_tokens),
                   name);
    };
    if (dtype == at::kBFloat16) {
      launch(aclrtlaunch_vllm_ascend_add_rms_norm_dynamic_quant_bf16, "add_rms_norm_quant_bf16");
    } else if (dtype == at::kHalf) {
      launch(aclrtlaunch_vllm_ascend_add_rms_norm_dynamic_quant_f16, "add_rms_norm_quant_f16");
    } else {
      launch(aclrtlaunch_vllm_ascend_add_rms_norm_dynamic_quant_f32, "add_rms_norm_quant_f32");
    }
    return 0;
  });
  cmd.Run();
  return {y, scale, residual_out};
}

}  // namespace vllm_ascend
