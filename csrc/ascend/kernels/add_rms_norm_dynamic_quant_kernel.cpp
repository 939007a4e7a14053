// Ascend C kernel: residual add + RMSNorm + dynamic per-token symmetric int8 quantisation.
// NOT compiled or run in this repository's CI (no CANN there); built only where CANN is found.
//
// Why fused (W8A8 decode): unfused, the norm writes its bf16 output to HBM and the quantiser
// reads it back (plus a second launch). Here each row goes GM -> UB once (x and residual), and
// only the products leave: the new residual (T), the int8 row and one fp32 scale.
//
// The weight arrives in fp32 (the launcher converts it), loaded once per core.
// Rows are split across AI cores (TokenSplit); per row:
//   s = float(x) + float(residual)            -> residual_out = T(s)
//   y = s * rsqrt(mean(s^2) + eps) * weight   (fp32 throughout)
//   scale = max|y| / 127;  q = rint(y * 127 / max|y|)  (0 for an all-zero row)
// The float -> int8 conversion goes float -(RINT)-> int32 -> float -> half -> int8; every step
// after the first is exact for integers in [-128, 127].
#include "kernel_operator.h"

#include "tiling.h"

using vllm_ascend::ascend::AddRmsNormQuantTiling;
using vllm_ascend::ascend::kBufferNum;
using vllm_ascend::ascend::TokenSplit;

namespace {

constexpr int64_t kScaleBlock = vllm_ascend::ascend::kAddRmsNormScaleBlock;

template <typename T>
class AddRmsNormQuantKernel {
 public:
  __aicore__ inline AddRmsNormQuantKernel() {}

  __aicore__ inline void Init(GM_ADDR x, GM_ADDR residual, GM_ADDR weight, GM_ADDR y,
                              GM_ADDR scale, GM_ADDR residual_out,
                              const AddRmsNormQuantTiling& tiling) {
    t_ = tiling;
    TokenSplit split{t_.num_cores, t_.former_cores, t_.former_tokens};
    split.range(AscendC::GetBlockIdx(), row_start_, row_count_);
    const int64_t h = t_.hidden;
    x_gm_.SetGlobalBuffer((__gm__ T*)x + row_start_ * h);
    res_gm_.SetGlobalBuffer((__gm__ T*)residual + row_start_ * h);
    w_gm_.SetGlobalBuffer((__gm__ float*)weight, h);
    y_gm_.SetGlobalBuffer((__gm__ int8_t*)y + row_start_ * h);
    scale_gm_.SetGlobalBuffer((__gm__ float*)scale + row_start_);
    res_out_gm_.SetGlobalBuffer((__gm__ T*)residual_out + row_start_ * h);

    const int64_t ha = t_.hidden_aligned;
    const int32_t nbuf = static_cast<int32_t>(t_.buffer_num);
    pipe_.InitBuffer(in_q_, nbuf, 2 * ha * sizeof(T));  // x row | residual row
    pipe_.InitBuffer(res_out_q_, nbuf, ha * sizeof(T));
    pipe_.InitBuffer(y_q_, nbuf, ha * sizeof(int8_t));
    pipe_.InitBuffer(sum_buf_, ha * sizeof(float));
    pipe_.InitBuffer(tmp_buf_, ha * sizeof(float));
    pipe_.InitBuffer(w_buf_, ha * sizeof(float));
    pipe_.InitBuffer(work_buf_,
                     vllm_ascend::ascend::add_rms_norm_work_floats(ha) * sizeof(float));
    pipe_.InitBuffer(red_buf_, 8 * sizeof(float));
    pipe_.InitBuffer(scale_buf_, kScaleBlock * sizeof(float));
  }

  __aicore__ inline void Process() {
    if (row_count_ <= 0) return;
    LoadWeight();
    for (int64_t base = 0; base < row_count_; base += kScaleBlock) {
      const int64_t n = row_count_ - base < kScaleBlock ? row_count_ - base : kScaleBlock;
      for (int64_t i = 0; i < n; ++i) {
        const int64_t row = base + i;
        CopyIn(row);
        Compute(i);
        CopyOut(row);
      }
      // One copy of this block's scales (the scalar unit wrote them).
      Sync<AscendC::HardEvent::S_MTE3>();
      AscendC::DataCopyExtParams params{1, static_cast<uint32_t>(n * sizeof(float)), 0, 0, 0};
      AscendC::DataCopyPad(scale_gm_[base], scale_buf_.Get<float>(), params);
      Sync<AscendC::HardEvent::MTE3_S>();  // before the next block overwrites the staging row
    }
  }

 private:
  // The fp32 weight row goes straight into its compute buffer; the vector unit reads it only
  // after the copy has landed.
  __aicore__ inline void LoadWeight() {
    AscendC::DataCopyExtParams params{1, static_cast<uint32_t>(t_.hidden * sizeof(float)), 0, 0,
                                      0};
    AscendC::DataCopyPadExtParams<float> pad{false, 0, 0, 0};
    AscendC::DataCopyPad(w_buf_.Get<float>(), w_gm_, params, pad);
    Sync<AscendC::HardEvent::MTE2_V>();
  }

  __aicore__ inline void CopyIn(int64_t row) {
    AscendC::LocalTensor<T> in = in_q_.AllocTensor<T>();
    AscendC::DataCopyExtParams params{1, static_cast<uint32_t>(t_.hidden * sizeof(T)), 0, 0, 0};
    AscendC::DataCopyPadExtParams<T> pad{false, 0, 0, 0};
    AscendC::DataCopyPad(in, x_gm_[row * t_.hidden], params, pad);
    AscendC::DataCopyPad(in[t_.hidden_aligned], res_gm_[row * t_.hidden], params, pad);
    in_q_.EnQue(in);
  }

  __aicore__ inline void Compute(int64_t slot) {
    const uint32_t h = static_cast<uint32_t>(t_.hidden);
    AscendC::LocalTensor<T> in = in_q_.DeQue<T>();
    AscendC::LocalTensor<float> s = sum_buf_.Get<float>();
    AscendC::LocalTensor<float> tmp = tmp_buf_.Get<float>();
    AscendC::LocalTensor<float> red = red_buf_.Get<float>();
    AscendC::LocalTensor<float> work = work_buf_.Get<float>();

    // 1) residual add in fp32; the new residual leaves in T.
    ToFloat(s, in, h);
    ToFloat(tmp, in[t_.hidden_aligned], h);
    AscendC::PipeBarrier<PIPE_V>();
    in_q_.FreeTensor(in);
    AscendC::Add(s, s, tmp, h);
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::LocalTensor<T> res_out = res_out_q_.AllocTensor<T>();
    FromFloat(res_out, s, h);
    res_out_q_.EnQue(res_out);

    // 2) rms: sqrt(mean(s^2) + eps) on the vector unit, the reciprocal on the scalar unit.
    AscendC::Mul(tmp, s, s, h);
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::ReduceSum(red, tmp, work, h);
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::Muls(red, red, t_.inv_hidden, 1);
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::Adds(red, red, t_.epsilon, 1);
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::Sqrt(red, red, 1);
    Sync<AscendC::HardEvent::V_S>();
    const float inv_rms = 1.0f / red.GetValue(0);
    Sync<AscendC::HardEvent::S_V>();

    // 3) y = s * inv_rms * weight, then max|y|.
    AscendC::Muls(s, s, inv_rms, h);
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::Mul(s, s, w_buf_.Get<float>(), h);
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::Abs(tmp, s, h);
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::ReduceMax(red, tmp, work, h, false);
    Sync<AscendC::HardEvent::V_S>();
    const float absmax = red.GetValue(0);
    const float inv_scale = absmax > 0.0f ? 127.0f / absmax : 0.0f;
    scale_buf_.Get<float>().SetValue(slot, absmax > 0.0f ? absmax / 127.0f : 0.0f);
    Sync<AscendC::HardEvent::S_V>();

    // 4) q = rint(y * inv_scale) as int8.
    AscendC::Muls(s, s, inv_scale, h);
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::LocalTensor<int32_t> qi = tmp.ReinterpretCast<int32_t>();
    AscendC::Cast(qi, s, AscendC::RoundMode::CAST_RINT, h);
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::Cast(s, qi, AscendC::RoundMode::CAST_NONE, h);
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::LocalTensor<half> qh = tmp.ReinterpretCast<half>();
    AscendC::Cast(qh, s, AscendC::RoundMode::CAST_NONE, h);
    AscendC::PipeBarrier<PIPE_V>();
    AscendC::LocalTensor<int8_t> q = y_q_.AllocTensor<int8_t>();
    AscendC::Cast(q, qh, AscendC::RoundMode::CAST_NONE, h);
    y_q_.EnQue(q);
  }

  __aicore__ inline void CopyOut(int64_t row) {
    AscendC::LocalTensor<T> res_out = res_out_q_.DeQue<T>();
    AscendC::DataCopyExtParams params{1, static_cast<uint32_t>(t_.hidden * sizeof(T)), 0, 0, 0};
    AscendC::DataCopyPad(res_out_gm_[row * t_.hidden], res_out, params);
    res_out_q_.FreeTensor(res_out);
    AscendC::LocalTensor<int8_t> q = y_q_.DeQue<int8_t>();
    AscendC::DataCopyExtParams qparams{1, static_cast<uint32_t>(t_.hidden), 0, 0, 0};
    AscendC::DataCopyPad(y_gm_[row * t_.hidden], q, qparams);
    y_q_.FreeTensor(q);
  }

  // fp32 "casts" multiply by 1 (adding 0 would turn -0.0 into +0.0).
  __aicore__ inline void ToFloat(const AscendC::LocalTensor<float>& dst,
                                 const AscendC::LocalTensor<T>& src, uint32_t n) {
    if constexpr (AscendC::IsSameType<T, float>::value) {
      AscendC::Muls(dst, src, 1.0f, n);
    } else {
      AscendC::Cast(dst, src, AscendC::RoundMode::CAST_NONE, n);
    }
  }

  __aicore__ inline void FromFloat(const AscendC::LocalTensor<T>& dst,
                                   const AscendC::LocalTensor<float>& src, uint32_t n) {
    if constexpr (AscendC::IsSameType<T, float>::value) {
      AscendC::Muls(dst, src, 1.0f, n);
    } else {
      AscendC::Cast(dst, src, AscendC::RoundMode::CAST_RINT, n);
    }
  }

  template <AscendC::HardEvent E>
  __aicore__ inline void Sync() {
    const event_t ev = static_cast<event_t>(GetTPipePtr()->FetchEventID(E));
    AscendC::SetFlag<E>(ev);
    AscendC::WaitFlag<E>(ev);
  }

  AddRmsNormQuantTiling t_;
  int64_t row_start_ = 0;
  int64_t row_count_ = 0;
  AscendC::TPipe pipe_;
  AscendC::TQue<AscendC::QuePosition::VECIN, kBufferNum> in_q_;
  AscendC::TQue<AscendC::QuePosition::VECOUT, kBufferNum> res_out_q_;
  AscendC::TQue<AscendC::QuePosition::VECOUT, kBufferNum> y_q_;
  AscendC::TBuf<AscendC::TPosition::VECCALC> sum_buf_, tmp_buf_, w_buf_, work_buf_, red_buf_,
      scale_buf_;
  AscendC::GlobalTensor<T> x_gm_, res_gm_, res_out_gm_;
  AscendC::GlobalTensor<float> w_gm_;
  AscendC::GlobalTensor<int8_t> y_gm_;
  AscendC::GlobalTensor<float> scale_gm_;
};

}  // namespace

#define VLLM_ASCEND_ADD_RMS_NORM_QUANT_KERNEL(NAME, T)                                          \
  extern "C" __global__ __aicore__ void NAME(                                                  \
      GM_ADDR x, GM_ADDR residual, GM_ADDR weight, GM_ADDR y, GM_ADDR scale,                   \
      GM_ADDR residual_out, int64_t num_rows, int64_t hidden, int64_t hidden_aligned,          \
      float epsilon, float inv_hidden, int64_t buffer_num, int64_t num_cores,                  \
      int64_t former_cores, int64_t former_tokens) {                                           \
    AddRmsNormQuantTiling t{num_rows,   hidden,    hidden_aligned, epsilon,      inv_hidden,   \
                            buffer_num, num_cores, former_cores,   former_tokens};             \
    AddRmsNormQuantKernel<T> op;                                                               \
    op.Init(x, residual, weight, y, scale, residual_out, t);                                   \
    op.Process();                                                                              \
  }

VLLM_ASCEND_ADD_RMS_NORM_QUANT_KERNEL(vllm_ascend_add_rms_norm_dynamic_quant_f32, float)
VLLM_ASCEND_ADD_RMS_NORM_QUANT_KERNEL(vllm_ascend_add_rms_norm_dynamic_quant_f16, half)
VLLM_ASCEND_ADD_RMS_NORM_QUANT_KERNEL(vllm_ascend_add_rms_norm_dynamic_quant_bf16, bfloat16_t)
