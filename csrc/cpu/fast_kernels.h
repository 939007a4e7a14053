// Fast CPU kernels of the torch_npu ops on the engine's hot path (cpu/fast_ops.cpp decides when
// one may serve a call; the Python references in vllm_ascend/kernels/npu_ops stay the golden
// references). Like cpu/kernels.cpp, cpu/fast_kernels.cpp is compiled once per instruction-set
// variant. The caller has validated every argument and allocated the outputs.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace vllm_ascend {

// One call of the fused attention in layout TND, as the fast kernel computes it: per sequence b,
// query rows [q_start[b], q_start[b] + q_len[b]) attend to kv positions [0, kv_len[b]); kv position
// j of sequence b, kv head h, is the row
//   paged: block_table[b][j / block_size] * block_size + j % block_size of the cache,
//   dense: kv_start[b] + j,
// and its D elements start at row * kv_heads * D + h * D.
struct AttentionProblem {
  enum class Mask { kNone, kCausal, kBand };  // causal and band count from the bottom right
  const at::Tensor* query = nullptr;  // [T, N, D]
  const at::Tensor* key = nullptr;    // cache [blocks, block_size, KV_N*D] or rows [T_kv, KV_N, D]
  const at::Tensor* value = nullptr;  // same with Dv
  at::Tensor* out = nullptr;          // [T, N, Dv], the query's dtype
  float* lse = nullptr;               // [T, N] float32, or null
  int64_t num_heads = 0, kv_heads = 0, head_dim = 0, v_head_dim = 0;
  float scale = 1.f;
  Mask mask = Mask::kNone;
  int64_t pre_tokens = 0, next_tokens = 0;  // kBand
  std::vector<int64_t> q_start, q_len, kv_len;
  const int32_t* block_table = nullptr;  // paged: [B, block_table_stride]
  int64_t block_table_stride = 0, block_size = 0;
  std::vector<int64_t> kv_start;  // dense
};

}  // namespace vllm_ascend

#define VLLM_ASCEND_FAST_KERNEL_DECLS                                                         \
  void attention_kernel(const ::vllm_ascend::AttentionProblem& p);                            \
  void rms_norm_kernel(const at::Tensor& x, const at::Tensor* x2, const at::Tensor& gamma,    \
                       double epsilon, at::Tensor& y, at::Tensor& rstd, at::Tensor* x_sum);   \
  void swiglu_kernel(const at::Tensor& x, at::Tensor& y);                                     \
  void scatter_rows_kernel(const at::Tensor& src, at::Tensor& cache, const at::Tensor& slots); \
  /* cpu/fast_moe_kernels.cpp: out[t] = sum_k probs[t, k] * rows[idx[t * topk + k]] */       \
  /* (probs null: weight 1) */                                                                \
  void moe_combine_kernel(const at::Tensor& rows, const at::Tensor& idx, const float* probs, \
                          int64_t topk, at::Tensor& out);

namespace vllm_ascend::cpu {
namespace DEFAULT {
VLLM_ASCEND_FAST_KERNEL_DECLS
}
namespace AVX2 {
VLLM_ASCEND_FAST_KERNEL_DECLS
}
}  // namespace vllm_ascend::cpu
