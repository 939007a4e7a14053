// Argument validation shared by the CPU, Meta-free and NPU paths of rotary_embedding.
#include <ATen/ATen.h>

#include "ops.h"

namespace vllm_ascend {

namespace {

RotaryOperand describe_operand(const at::Tensor& t, const at::Tensor& positions,
                               int64_t head_size, const char* name) {
  const int64_t pd = positions.dim();
  TORCH_CHECK(t.dim() == pd + 1 || t.dim() == pd + 2, "rotary_embedding: ", name,
              " must have ", pd + 1, " dims ([tokens..., heads*head_size]) or ", pd + 2,
              " dims ([tokens..., heads, head_size]) to match positions of shape ",
              positions.sizes(), ", got ", t.sizes());
  for (int64_t i = 0; i < pd; ++i) {
    TORCH_CHECK(t.size(i) == positions.size(i), "rotary_embedding: ", name,
                " token dims ", t.sizes(), " do not match positions ", positions.sizes());
  }
  // Token dims must flatten into one strided dim (e.g. a [B, S, ...] view of contiguous rows).
  if (pd == 2 && t.size(0) > 1 && t.size(1) > 1) {
    TORCH_CHECK(t.stride(0) == t.stride(1) * t.size(1), "rotary_embedding: ", name,
                " token dims of strides ", t.strides(), " cannot be flattened");
  }
  RotaryOperand op;
  op.token_stride = t.size(pd - 1) == 1 && pd == 2 ? t.stride(0) : t.stride(pd - 1);
  if (t.dim() == pd + 1) {
    const int64_t inner = t.size(pd);
    TORCH_CHECK(inner % head_size == 0, "rotary_embedding: ", name, " last dim ", inner,
                " is not a multiple of head_size ", head_size);
    TORCH_CHECK(t.stride(pd) == 1 || inner == 1, "rotary_embedding: ", name,
                " last dim must be contiguous, strides ", t.strides());
    op.num_heads = inner / head_size;
    op.head_stride = head_size;
  } else {
    TORCH_CHECK(t.size(pd + 1) == head_size, "rotary_embedding: ", name, " last dim ",
                t.size(pd + 1), " != head_size ", head_size);
    TORCH_CHECK(t.stride(pd + 1) == 1, "rotary_embedding: ", name,
                " last dim must be contiguous, strides ", t.strides());
    op.num_heads = t.size(pd);
    op.head_stride = t.stride(pd);
  }
  return op;
}

}  // namespace

RotaryGeometry check_rotary_args(const at::Tensor& positions, const at::Tensor& query,
                                 const std::optional<at::Tensor>& key, int64_t head_size,
                                 const at::Tensor& cos_sin_cache) {
  TORCH_CHECK(positions.dim() == 1 || positions.dim() == 2,
              "rotary_embedding: positions must be [num_tokens] or [batch, seq], got ",
              positions.sizes());
  TORCH_CHECK(positions.scalar_type() == at::kLong || positions.scalar_type() == at::kInt,
              "rotary_embedding: positions must be int64 or int32, got ",
              positions.scalar_type());
  TORCH_CHECK(head_size > 0, "rotary_embedding: head_size must be positive, got ", head_size);
  const auto dt = query.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16,
              "rotary_embedding: query must be float32, float16 or bfloat16, got ", dt);
  TORCH_CHECK(cos_sin_cache.dim() == 2,
              "rotary_embedding: cos_sin_cache must be [max_position, rot_dim], got ",
              cos_sin_cache.sizes());
  TORCH_CHECK(cos_sin_cache.scalar_type() == dt || cos_sin_cache.scalar_type() == at::kFloat,
              "rotary_embedding: cos_sin_cache dtype ", cos_sin_cache.scalar_type(),
              " must equal the query dtype ", dt, " or be float32");
  TORCH_CHECK(cos_sin_cache.stride(1) == 1 || cos_sin_cache.size(1) <= 1,
              "rotary_embedding: cos_sin_cache rows must be contiguous");
  const int64_t rot_dim = cos_sin_cache.size(1);
  TORCH_CHECK(rot_dim > 0 && rot_dim % 2 == 0 && rot_dim <= head_size,
              "rotary_embedding: rot_dim (cos_sin_cache.size(1) = ", rot_dim,
              ") must be even, positive and <= head_size ", head_size);
  TORCH_CHECK(query.device() == positions.device() && query.device() == cos_sin_cache.device(),
              "rotary_embedding: positions, query and cos_sin_cache must be on one device");

  RotaryGeometry g;
  g.num_tokens = positions.numel();
  g.head_size = head_size;
  g.rot_dim = rot_dim;
  g.cache_stride = cos_sin_cache.stride(0);
  g.q = describe_operand(query, positions, head_size, "query");
  if (key.has_value()) {
    const at::Tensor& k = *key;
    TORCH_CHECK(k.scalar_type() == dt, "rotary_embedding: key dtype ", k.scalar_type(),
                " != query dtype ", dt);
    TORCH_CHECK(k.device() == query.device(), "rotary_embedding: key and query devices differ");
    g.k = describe_operand(k, positions, head_size, "key");
  }
  return g;
}

}  // namespace vllm_ascend
