// Ascend C kernel: in-place rotary position embedding of query and key.
// NOT compiled or run in this repository's CI (no CANN there); built by CMake's ascendc_library
// only on hosts where CANN is found. See tiling.h for the algorithm and the tables.
//
// Work split: tokens over AI cores (contiguous ranges, TokenSplit). Per token on a core:
//   1. cos|sin row of the token's position -> UB (DataCopyPad), cast to fp32 into cs[0:rot_dim];
//      cs[rot_dim] = 1, cs[rot_dim + 1] = 0 feed the pass-through dims.
//   2. Gather cs into cos_full / sin_full, [heads_per_tile * head_size] fp32, once per token.
//   3. For each tile of query heads, then key heads: GM -> UB (double-buffered VECIN queue),
//      x = cast(x); p = gather(x, partner) * sign; x = x * cos_full + p * sin_full;
//      cast back (round to nearest even) -> VECOUT queue -> GM at the same address.
#include "kernel_operator.h"

#include "tiling.h"

using vllm_ascend::ascend::kBufferNum;
using vllm_ascend::ascend::RotaryTiling;
using vllm_ascend::ascend::TokenSplit;

namespace {

constexpr int64_t kPosBlock = 256;  // positions staged in UB per DataCopy

template <typename T>
class RotaryKernel {
 public:
  __aicore__ inline RotaryKernel() {}

  __aicore__ inline void Init(GM_ADDR positions, GM_ADDR query, GM_ADDR key, GM_ADDR cache,
                              GM_ADDR tables, const RotaryTiling& tiling) {
    t_ = tiling;
    TokenSplit split{t_.num_cores, t_.former_cores, t_.former_tokens};
    split.range(AscendC::GetBlockIdx(), tok_start_, tok_count_);

    pos_gm_.SetGlobalBuffer((__gm__ int64_t*)positions, t_.num_tokens);
    q_gm_.SetGlobalBuffer((__gm__ T*)query);
    if (t_.num_k_heads > 0) k_gm_.SetGlobalBuffer((__gm__ T*)key);
    cache_gm_.SetGlobalBuffer((__gm__ T*)cache);
    tables_gm_.SetGlobalBuffer((__gm__ uint32_t*)tables,
                               vllm_ascend::ascend::kRotaryTables * t_.tile_elems);

    const int64_t e = t_.tile_elems;
    const int64_t rot_aligned = vllm_ascend::ascend::align_up(t_.rot_dim, 32);
    pipe_.InitBuffer(in_q_, kBufferNum, e * sizeof(T));
    pipe_.InitBuffer(out_q_, kBufferNum, e * sizeof(T));
    pipe_.InitBuffer(cs_in_q_, 1, rot_aligned * sizeof(T));
    pipe_.InitBuffer(pos_buf_, kPosBlock * sizeof(int64_t));
    pipe_.InitBuffer(cs_buf_, (rot_aligned + 8) * sizeof(float));
    pipe_.InitBuffer(x_buf_, e * sizeof(float));
    pipe_.InitBuffer(p_buf_, e * sizeof(float));
    pipe_.InitBuffer(cos_buf_, e * sizeof(float));
    pipe_.InitBuffer(sin_buf_, e * sizeof(float));
    pipe_.InitBuffer(sign_buf_, e * sizeof(float));
    pipe_.InitBuffer(idx_buf_, 3 * e * sizeof(uint32_t));
  }

  __aicore__ inline void Process() {
    if (tok_count_ <= 0) return;
    LoadTables();
    for (int64_t base = 0; base < tok_count_; base += kPosBlock) {
      const int64_t n = tok_count_ - base < kPosBlock ? tok_count_ - base : kPosBlock;
      LoadPositions(tok_start_ + base, n);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t tok = tok_start_ + base + i;
        const int64_t pos = pos_buf_.Get<int64_t>().GetValue(i);
        ExpandCosSin(pos);
        RotateHeads(q_gm_, tok * t_.q_token_stride, t_.num_q_heads);
        if (t_.num_k_heads > 0) RotateHeads(k_gm_, tok * t_.k_token_stride, t_.num_k_heads);
      }
    }
  }

 private:
  // Tables: three uint32 offset rows plus the sign row (stored as fp32 bits). One DataCopy each;
  // tile_elems is a multiple of 8, so every row is a whole number of 32-byte blocks.
  __aicore__ inline void LoadTables() {
    const int64_t e = t_.tile_elems;
    AscendC::LocalTensor<uint32_t> idx = idx_buf_.Get<uint32_t>();
    AscendC::LocalTensor<uint32_t> sign_bits = sign_buf_.Get<uint32_t>();
    AscendC::DataCopy(idx, tables_gm_, static_cast<uint32_t>(3 * e));
    AscendC::DataCopy(sign_bits, tables_gm_[3 * e], static_cast<uint32_t>(e));
    // The constant tail of the cos|sin row: cos = 1, sin = 0 for pass-through dims.
    AscendC::LocalTensor<float> cs = cs_buf_.Get<float>();
    cs.SetValue(t_.rot_dim, 1.0f);
    cs.SetValue(t_.rot_dim + 1, 0.0f);
    Sync<AscendC::HardEvent::MTE2_V>();
    Sync<AscendC::HardEvent::S_V>();
  }

  __aicore__ inline void LoadPositions(int64_t first, int64_t n) {
    AscendC::LocalTensor<int64_t> pos = pos_buf_.Get<int64_t>();
    AscendC::DataCopyExtParams params{1, static_cast<uint32_t>(n * sizeof(int64_t)), 0, 0, 0};
    AscendC::DataCopyPadExtParams<int64_t> pad{false, 0, 0, 0};
    AscendC::DataCopyPad(pos, pos_gm_[first], params, pad);
    Sync<AscendC::HardEvent::MTE2_S>();  // the scalar unit reads the positions next
  }

  __aicore__ inline void ExpandCosSin(int64_t pos) {
    const int64_t e = t_.tile_elems;
    AscendC::LocalTensor<T> row = cs_in_q_.AllocTensor<T>();
    AscendC::DataCopyExtParams params{1, static_cast<uint32_t>(t_.rot_dim * sizeof(T)), 0, 0, 0};
    AscendC::DataCopyPadExtParams<T> pad{false, 0, 0, 0};
    AscendC::DataCopyPad(row, cache_gm_[pos * t_.cache_stride], params, pad);
    cs_in_q_.EnQue(row);
    row = cs_in_q_.DeQue<T>();
    AscendC::LocalTensor<float> cs = cs_buf_.Get<float>();
    ToFloat(cs, row, t_.rot_dim);
    cs_in_q_.FreeTensor(row);
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::LocalTensor<uint32_t> idx = idx_buf_.Get<uint32_t>();
    AscendC::Gather(cos_buf_.Get<float>(), cs, idx, 0u, static_cast<uint32_t>(e));
    AscendC::Gather(sin_buf_.Get<float>(), cs, idx[e], 0u, static_cast<uint32_t>(e));
    AscendC::PipeBarrier<PIPE_V>();
  }

  __aicore__ inline void RotateHeads(AscendC::GlobalTensor<T>& gm, int64_t token_offset,
                                     int64_t num_heads) {
    for (int64_t h0 = 0; h0 < num_heads; h0 += t_.heads_per_tile) {
      const int64_t nh = num_heads - h0 < t_.heads_per_tile ? num_heads - h0 : t_.heads_per_tile;
      const int64_t offset = token_offset + h0 * t_.head_size;
      const int64_t n = nh * t_.head_size;
      CopyIn(gm, offset, n);
      Compute(n);
      CopyOut(gm, offset, n);
    }
  }

  __aicore__ inline void CopyIn(AscendC::GlobalTensor<T>& gm, int64_t offset, int64_t n) {
    AscendC::LocalTensor<T> x = in_q_.AllocTensor<T>();
    const uint32_t bytes = static_cast<uint32_t>(n * sizeof(T));
    if (bytes % vllm_ascend::ascend::kBlockBytes == 0) {
      AscendC::DataCopy(x, gm[offset], static_cast<uint32_t>(n));
    } else {
      AscendC::DataCopyExtParams params{1, bytes, 0, 0, 0};
      AscendC::DataCopyPadExtParams<T> pad{false, 0, 0, 0};
      AscendC::DataCopyPad(x, gm[offset], params, pad);
    }
    in_q_.EnQue(x);
  }

  __aicore__ inline void Compute(int64_t n) {
    const uint32_t cnt = static_cast<uint32_t>(n);
    const int64_t e = t_.tile_elems;
    AscendC::LocalTensor<T> x_in = in_q_.DeQue<T>();
    AscendC::LocalTensor<float> x = x_buf_.Get<float>();
    AscendC::LocalTensor<float> p = p_buf_.Get<float>();
    AscendC::LocalTensor<uint32_t> idx = idx_buf_.Get<uint32_t>();
    ToFloat(x, x_in, n);
    in_q_.FreeTensor(x_in);
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::Gather(p, x, idx[2 * e], 0u, cnt);  // rotation partner of every element
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::Mul(p, p, sign_buf_.Get<float>(), cnt);
    AscendC::Mul(x, x, cos_buf_.Get<float>(), cnt);
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::Mul(p, p, sin_buf_.Get<float>(), cnt);
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::Add(x, x, p, cnt);
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::LocalTensor<T> y = out_q_.AllocTensor<T>();
    FromFloat(y, x, n);
    out_q_.EnQue(y);
  }

  __aicore__ inline void CopyOut(AscendC::GlobalTensor<T>& gm, int64_t offset, int64_t n) {
    AscendC::LocalTensor<T> y = out_q_.DeQue<T>();
    // Exactly n elements go back: the neighbours (the rest of a fused qkv row) stay untouched.
    AscendC::DataCopyExtParams params{1, static_cast<uint32_t>(n * sizeof(T)), 0, 0, 0};
    AscendC::DataCopyPad(gm[offset], y, params);
    out_q_.FreeTensor(y);
  }

  // fp32 "casts" multiply by 1 (adding 0 would turn -0.0 into +0.0).
  __aicore__ inline void ToFloat(const AscendC::LocalTensor<float>& dst,
                                 const AscendC::LocalTensor<T>& src, int64_t n) {
    if constexpr (AscendC::IsSameType<T, float>::value) {
      AscendC::Muls(dst, src, 1.0f, static_cast<uint32_t>(n));
    } else {
      AscendC::Cast(dst, src, AscendC::RoundMode::CAST_NONE, static_cast<uint32_t>(n));
    }
  }

  __aicore__ inline void FromFloat(const AscendC::LocalTensor<T>& dst,
                                   const AscendC::LocalTensor<float>& src, int64_t n) {
    if constexpr (AscendC::IsSameType<T, float>::value) {
      AscendC::Muls(dst, src, 1.0f, static_cast<uint32_t>(n));
    } else {
      AscendC::Cast(dst, src, AscendC::RoundMode::CAST_RINT, static_cast<uint32_t>(n));
    }
  }

  template <AscendC::HardEvent E>
  __aicore__ inline void Sync() {
    const event_t ev = static_cast<event_t>(GetTPipePtr()->FetchEventID(E));
    AscendC::SetFlag<E>(ev);
    AscendC::WaitFlag<E>(ev);
  }

  RotaryTiling t_;
  int64_t tok_start_ = 0;
  int64_t tok_count_ = 0;
  AscendC::TPipe pipe_;
  AscendC::TQue<AscendC::QuePosition::VECIN, kBufferNum> in_q_;
  AscendC::TQue<AscendC::QuePosition::VECOUT, kBufferNum> out_q_;
  AscendC::TQue<AscendC::QuePosition::VECIN, 1> cs_in_q_;
  AscendC::TBuf<AscendC::TPosition::VECCALC> pos_buf_, cs_buf_, x_buf_, p_buf_, cos_buf_,
      sin_buf_, sign_buf_, idx_buf_;
  AscendC::GlobalTensor<int64_t> pos_gm_;
  AscendC::GlobalTensor<T> q_gm_, k_gm_, cache_gm_;
  AscendC::GlobalTensor<uint32_t> tables_gm_;
};

}  // namespace

// One entry point per dtype (kernel entry points cannot be templates). Scalars rather than a
// struct so the generated aclrtlaunch_* signatures stay plain.
#define VLLM_ASCEND_ROTARY_KERNEL(NAME, T)                                                      \
  extern "C" __global__ __aicore__ void NAME(                                                  \
      GM_ADDR positions, GM_ADDR query, GM_ADDR key, GM_ADDR cache, GM_ADDR tables,            \
      int64_t num_tokens, int64_t num_q_heads, int64_t num_k_heads, int64_t head_size,         \
      int64_t rot_dim, int64_t q_token_stride, int64_t k_token_stride, int64_t cache_stride,   \
      int64_t heads_per_tile, int64_t tile_elems, int64_t num_cores, int64_t former_cores,     \
      int64_t former_tokens) {                                                                 \
    RotaryTiling t{num_tokens,     num_q_heads,    num_k_heads,  head_size,                    \
                   rot_dim,        q_token_stride, k_token_stride, cache_stride,               \
                   heads_per_tile, tile_elems,     num_cores,    former_cores,                 \
                   former_tokens};                                                             \
    RotaryKernel<T> op;                                                                        \
    op.Init(positions, query, key, cache, tables, t);                                          \
    op.Process();                                                                              \
  }

VLLM_ASCEND_ROTARY_KERNEL(vllm_ascend_rotary_embedding_f32, float)
VLLM_ASCEND_ROTARY_KERNEL(vllm_ascend_rotary_embedding_f16, half)
VLLM_ASCEND_ROTARY_KERNEL(vllm_ascend_rotary_embedding_bf16, bfloat16_t)
