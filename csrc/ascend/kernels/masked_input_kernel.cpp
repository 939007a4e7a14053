// Ascend C kernel: vocab-parallel embedding input masking (get_masked_input_and_mask).
// NOT compiled or run in this repository's CI (no CANN there); built only where CANN is found.
//
// Ids are split across AI cores in contiguous ranges; each core streams tiles of ids_per_tile
// ids GM -> UB (double-buffered VECIN queue), maps them, and streams the int64 ids and the
// bool (uint8) mask back (two VECOUT queues). The per-id map is a handful of compares on
// 64-bit integers, which the vector unit does not do natively; it runs on the scalar unit
// over data already in UB. Ids per call are O(batch tokens), so this is not the bottleneck of
// an embedding lookup, and it keeps the arithmetic bit-identical to vLLM's.
#include "kernel_operator.h"

#include "tiling.h"

using vllm_ascend::ascend::kBufferNum;
using vllm_ascend::ascend::MaskTiling;
using vllm_ascend::ascend::TokenSplit;

namespace {

template <typename IdT>
class MaskedInputKernel {
 public:
  __aicore__ inline MaskedInputKernel() {}

  __aicore__ inline void Init(GM_ADDR input, GM_ADDR masked, GM_ADDR mask,
                              const MaskTiling& tiling) {
    t_ = tiling;
    TokenSplit split{t_.num_cores, t_.former_cores, t_.former_tokens};
    split.range(AscendC::GetBlockIdx(), start_, count_);
    in_gm_.SetGlobalBuffer((__gm__ IdT*)input + start_, count_);
    out_gm_.SetGlobalBuffer((__gm__ int64_t*)masked + start_, count_);
    mask_gm_.SetGlobalBuffer((__gm__ uint8_t*)mask + start_, count_);
    // ids_per_tile is a multiple of 32, so every buffer is a whole number of 32-byte blocks.
    pipe_.InitBuffer(in_q_, kBufferNum, t_.ids_per_tile * sizeof(IdT));
    pipe_.InitBuffer(out_q_, kBufferNum, t_.ids_per_tile * sizeof(int64_t));
    pipe_.InitBuffer(mask_q_, kBufferNum, t_.ids_per_tile * sizeof(uint8_t));
  }

  __aicore__ inline void Process() {
    for (int64_t base = 0; base < count_; base += t_.ids_per_tile) {
      const int64_t n = count_ - base < t_.ids_per_tile ? count_ - base : t_.ids_per_tile;
      CopyIn(base, n);
      Compute(n);
      CopyOut(base, n);
    }
  }

 private:
  __aicore__ inline void CopyIn(int64_t base, int64_t n) {
    AscendC::LocalTensor<IdT> ids = in_q_.AllocTensor<IdT>();
    AscendC::DataCopyExtParams params{1, static_cast<uint32_t>(n * sizeof(IdT)), 0, 0, 0};
    AscendC::DataCopyPadExtParams<IdT> pad{false, 0, 0, 0};
    AscendC::DataCopyPad(ids, in_gm_[base], params, pad);
    in_q_.EnQue(ids);
  }

  __aicore__ inline void Compute(int64_t n) {
    AscendC::LocalTensor<IdT> ids = in_q_.DeQue<IdT>();
    AscendC::LocalTensor<int64_t> out = out_q_.AllocTensor<int64_t>();
    AscendC::LocalTensor<uint8_t> mask = mask_q_.AllocTensor<uint8_t>();
    Sync<AscendC::HardEvent::MTE2_S>();  // scalar reads of data the MTE2 just wrote
    for (int64_t i = 0; i < n; ++i) {
      const int64_t v = static_cast<int64_t>(ids.GetValue(i));
      const bool in_org = v >= t_.org_start && v < t_.org_end;
      const bool in_added = v >= t_.added_start && v < t_.added_end;
      const int64_t offset = (in_org ? t_.org_start : 0) + (in_added ? t_.added_offset : 0);
      const bool valid = in_org || in_added;
      out.SetValue(i, valid ? v - offset : 0);
      mask.SetValue(i, static_cast<uint8_t>(valid ? 0 : 1));
    }
    Sync<AscendC::HardEvent::S_MTE3>();  // MTE3 copies out what the scalar unit wrote
    in_q_.FreeTensor(ids);
    out_q_.EnQue(out);
    mask_q_.EnQue(mask);
  }

  __aicore__ inline void CopyOut(int64_t base, int64_t n) {
    AscendC::LocalTensor<int64_t> out = out_q_.DeQue<int64_t>();
    AscendC::LocalTensor<uint8_t> mask = mask_q_.DeQue<uint8_t>();
    AscendC::DataCopyExtParams out_params{1, static_cast<uint32_t>(n * sizeof(int64_t)), 0, 0, 0};
    AscendC::DataCopyExtParams mask_params{1, static_cast<uint32_t>(n), 0, 0, 0};
    AscendC::DataCopyPad(out_gm_[base], out, out_params);
    AscendC::DataCopyPad(mask_gm_[base], mask, mask_params);
    out_q_.FreeTensor(out);
    mask_q_.FreeTensor(mask);
  }

  template <AscendC::HardEvent E>
  __aicore__ inline void Sync() {
    const event_t ev = static_cast<event_t>(GetTPipePtr()->FetchEventID(E));
    AscendC::SetFlag<E>(ev);
    AscendC::WaitFlag<E>(ev);
  }

  MaskTiling t_;
  int64_t start_ = 0;
  int64_t count_ = 0;
  AscendC::TPipe pipe_;
  AscendC::TQue<AscendC::QuePosition::VECIN, kBufferNum> in_q_;
  AscendC::TQue<AscendC::QuePosition::VECOUT, kBufferNum> out_q_;
  AscendC::TQue<AscendC::QuePosition::VECOUT, kBufferNum> mask_q_;
  AscendC::GlobalTensor<IdT> in_gm_;
  AscendC::GlobalTensor<int64_t> out_gm_;
  AscendC::GlobalTensor<uint8_t> mask_gm_;
};

}  // namespace

#define VLLM_ASCEND_MASK_KERNEL(NAME, IdT)                                                      \
  extern "C" __global__ __aicore__ void NAME(                                                  \
      GM_ADDR input, GM_ADDR masked, GM_ADDR mask, int64_t num_ids, int64_t org_start,         \
      int64_t org_end, int64_t added_start, int64_t added_end, int64_t added_offset,           \
      int64_t ids_per_tile, int64_t num_cores, int64_t former_cores, int64_t former_tokens) {  \
    MaskTiling t{num_ids,      org_start,    org_end,   added_start,  added_end,               \
                 added_offset, ids_per_tile, num_cores, former_cores, former_tokens};          \
    MaskedInputKernel<IdT> op;                                                                 \
    op.Init(input, masked, mask, t);                                                           \
    op.Process();                                                                              \
  }

VLLM_ASCEND_MASK_KERNEL(vllm_ascend_masked_input_i64, int64_t)
VLLM_ASCEND_MASK_KERNEL(vllm_ascend_masked_input_i32, int32_t)
