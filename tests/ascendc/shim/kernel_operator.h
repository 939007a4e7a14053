// Host stand-in for the subset of the Ascend C API that csrc/ascend/kernels use. Written for
// this project from the Ascend C documentation; it is not CANN's header.
//
// Two ways of compiling against it:
//   * host build (g++): the kernels run on host memory, one block index at a time. The shim
//     models the per-core Unified Buffer (UB) and enforces what the device toolchain and the
//     hardware enforce and a plain host build would miss: the UB capacity (sum of
//     TPipe::InitBuffer per core), the 32-byte rules of DataCopy and of UB operand addresses,
//     buffers that stay inside their allocation, queue discipline (Alloc/EnQue/DeQue/Free),
//     SetFlag/WaitFlag pairing, and global-memory accesses inside the tensors the harness handed
//     in. A violation throws va::ShimError, which the harness turns into a Python exception.
//   * device check (clang, CUDA device mode, -fsyntax-only; VA_SHIM_DEVICE_CHECK): __aicore__
//     maps to __device__, so kernel code that calls a function without the qualifier fails to
//     compile, as it does with bisheng. Everything the shim declares is __aicore__ as well; the
//     host-only pieces (error reporting, per-core state) are declared here and defined in
//     shim_runtime.cpp, which only the host build compiles.
#pragma once

#include <stdint.h>

#if defined(VA_SHIM_DEVICE_CHECK)
#define __aicore__ __attribute__((device))
#define __global__ __attribute__((global))
#else
#define __aicore__
#define __global__
#endif
#define __gm__
#define GM_ADDR uint8_t*

// ---- 16-bit float storage types ---------------------------------------------------------------
namespace va {
__aicore__ inline uint32_t f32_bits(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  return u;
}
__aicore__ inline float bits_f32(uint32_t u) {
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}
// IEEE binary16 <-> binary32, round to nearest even.
__aicore__ inline uint16_t f32_to_f16(float f) {
  const uint32_t x = f32_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return static_cast<uint16_t>(sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds past 65504
  if (ax < 0x38800000u) {  // subnormal half (or zero)
    const float a = bits_f32(ax);
    const float scaled = a * 16777216.0f;  // a / 2^-24, exact
    const float r = __builtin_rintf(scaled);
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(r));
  }
  uint32_t m = ax + 0xc8000fffu + ((ax >> 13) & 1u);  // rebias exponent, round to nearest even
  return static_cast<uint16_t>(sign | (m >> 13));
}
__aicore__ inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = (static_cast<uint32_t>(h) & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1f;
  const uint32_t m = h & 0x3ff;
  if (e == 0) {
    const float v = static_cast<float>(m) * (1.0f / 16777216.0f);
    return sign ? -v : v;
  }
  if (e == 31) return bits_f32(sign | 0x7f800000u | (m << 13));
  return bits_f32(sign | ((e + 112) << 23) | (m << 13));
}
__aicore__ inline uint16_t f32_to_bf16(float f) {
  const uint32_t x = f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40);
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}
__aicore__ inline float bf16_to_f32(uint16_t b) { return bits_f32(static_cast<uint32_t>(b) << 16); }
}  // namespace va

struct half {
  uint16_t bits;
  half() = default;
  __aicore__ half(float f) : bits(va::f32_to_f16(f)) {}
  __aicore__ operator float() const { return va::f16_to_f32(bits); }
};
struct bfloat16_t {
  uint16_t bits;
  bfloat16_t() = default;
  __aicore__ bfloat16_t(float f) : bits(va::f32_to_bf16(f)) {}
  __aicore__ operator float() const { return va::bf16_to_f32(bits); }
};

enum pipe_t { PIPE_S, PIPE_V, PIPE_M, PIPE_MTE1, PIPE_MTE2, PIPE_MTE3, PIPE_ALL };
enum event_t { EVENT_ID0, EVENT_ID1, EVENT_ID2, EVENT_ID3, EVENT_ID4, EVENT_ID5, EVENT_ID6,
               EVENT_ID7 };

namespace AscendC {
class TPipe;
}

// ---- host-only runtime (shim_runtime.cpp) ------------------------------------------------------
namespace va {
constexpr uint32_t kUbBytes = 192 * 1024;  // Unified Buffer per AI core, Atlas A2 (910B)
constexpr uint32_t kBlock = 32;            // DataCopy / UB operand granularity
constexpr int kMaxBuffers = 64;

struct CoreState {
  int64_t block_idx;
  int64_t block_num;
  uint8_t* ub;            // kUbBytes of this core's UB (poisoned at the start of each block)
  uint32_t ub_used;       // bytes handed out by TPipe::InitBuffer on this core
  uint32_t ub_peak;       // max ub_used over the blocks of the last launch
  uint32_t ub_limit;      // kUbBytes unless a test lowers it
  AscendC::TPipe* pipe;
  int pending_flags[16][8];  // SetFlag count per (event kind, id) not yet waited on
};
// Fails the current kernel run with a printf-style message (%lld, up to three integers).
[[noreturn]] __aicore__ void fail(const char* fmt, int64_t a = 0, int64_t b = 0, int64_t c = 0);
// The same, prefixed with "<what>: ".
[[noreturn]] __aicore__ void fail_at(const char* what, const char* fmt, int64_t a = 0,
                                     int64_t b = 0, int64_t c = 0);
__aicore__ CoreState& state();
// The global-memory range [p, p + bytes) lies inside one tensor the harness registered.
__aicore__ void check_gm(const void* p, uint64_t bytes, const char* what);
}  // namespace va

namespace AscendC {

enum class TPosition { GM, VECIN, VECOUT, VECCALC, A1, A2, B1, B2, CO1, CO2 };
using QuePosition = TPosition;
enum class HardEvent { MTE2_V, V_MTE2, MTE3_V, V_MTE3, MTE2_MTE3, MTE3_MTE2, S_V, V_S, MTE2_S,
                       S_MTE2, MTE3_S, S_MTE3 };
enum class RoundMode { CAST_NONE, CAST_RINT, CAST_FLOOR, CAST_CEIL, CAST_ROUND, CAST_TRUNC,
                       CAST_ODD };

template <typename T, typename U>
struct IsSameType {
  static constexpr bool value = false;
};
template <typename T>
struct IsSameType<T, T> {
  static constexpr bool value = true;
};

__aicore__ inline int64_t GetBlockIdx() { return va::state().block_idx; }
__aicore__ inline int64_t GetBlockNum() { return va::state().block_num; }

// ---- LocalTensor: a typed window onto one UB buffer ---------------------------------------------
template <typename T>
class LocalTensor {
 public:
  __aicore__ LocalTensor() : buf_off_(0), buf_len_(0), off_(0) {}
  __aicore__ LocalTensor(uint32_t buf_off, uint32_t buf_len, uint32_t byte_off)
      : buf_off_(buf_off), buf_len_(buf_len), off_(byte_off) {}

  // Element offset; the result is a tensor starting there (same buffer).
  __aicore__ LocalTensor operator[](uint64_t offset) const {
    const uint64_t b = off_ + offset * sizeof(T);
    if (b > buf_len_) va::fail("LocalTensor[%lld] starts past the end of its %lld-byte buffer",
                               static_cast<int64_t>(offset), buf_len_);
    return LocalTensor(buf_off_, buf_len_, static_cast<uint32_t>(b));
  }
  template <typename U>
  __aicore__ LocalTensor<U> ReinterpretCast() const {
    return LocalTensor<U>(buf_off_, buf_len_, off_);
  }
  __aicore__ T GetValue(uint64_t i) const {
    T v;
    __builtin_memcpy(&v, ptr(i, 1, "GetValue"), sizeof(T));
    return v;
  }
  __aicore__ void SetValue(uint64_t i, T v) const {
    __builtin_memcpy(ptr(i, 1, "SetValue"), &v, sizeof(T));
  }
  __aicore__ uint32_t GetSize() const { return (buf_len_ - off_) / sizeof(T); }

  // --- shim internals ---
  // Address of elements [i, i + n), which must lie inside the buffer.
  __aicore__ T* ptr(uint64_t i, uint64_t n, const char* what) const {
    const uint64_t end = off_ + (i + n) * sizeof(T);
    if (end > buf_len_) {
      va::fail_at(what, "elements [%lld, %lld) lie outside the tensor's %lld elements",
                  static_cast<int64_t>(i), static_cast<int64_t>(i + n),
                  static_cast<int64_t>((buf_len_ - off_) / sizeof(T)));
    }
    return reinterpret_cast<T*>(va::state().ub + buf_off_ + off_ + i * sizeof(T));
  }
  // Byte address in UB of the first element.
  __aicore__ uint32_t ub_addr() const { return buf_off_ + off_; }
  __aicore__ uint32_t bytes_left() const { return buf_len_ - off_; }
  __aicore__ uint32_t buf_off() const { return buf_off_; }

 private:
  uint32_t buf_off_;  // start of the buffer in UB
  uint32_t buf_len_;  // bytes of the buffer
  uint32_t off_;      // start of this view within the buffer
};

// ---- GlobalTensor ------------------------------------------------------------------------------
template <typename T>
class GlobalTensor {
 public:
  __aicore__ GlobalTensor() : p_(nullptr), size_(0) {}
  __aicore__ void SetGlobalBuffer(__gm__ T* p, uint64_t size = 0) {
    p_ = p;
    size_ = size;
  }
  __aicore__ GlobalTensor operator[](uint64_t offset) const {
    GlobalTensor g;
    g.p_ = p_ + offset;
    g.size_ = size_ > offset ? size_ - offset : 0;
    return g;
  }
  __aicore__ T GetValue(uint64_t i) const {
    va::check_gm(p_ + i, sizeof(T), "GlobalTensor::GetValue");
    return p_[i];
  }
  __aicore__ void SetValue(uint64_t i, T v) const {
    va::check_gm(p_ + i, sizeof(T), "GlobalTensor::SetValue");
    p_[i] = v;
  }
  __aicore__ T* GetPhyAddr() const { return p_; }

 private:
  T* p_;
  uint64_t size_;
};

// ---- TPipe / TQue / TBuf -----------------------------------------------------------------------
class TQueBase {
 public:
  __aicore__ TQueBase() : num_(0), len_(0), depth_(0), queued_(0), head_(0) {}
  uint32_t base_[va::kMaxBuffers];
  bool in_use_[va::kMaxBuffers];
  uint32_t fifo_[va::kMaxBuffers];
  int num_;
  uint32_t len_;
  int depth_;
  int queued_;
  int head_;
};

template <TPosition pos, int32_t depth>
class TQue : public TQueBase {
 public:
  __aicore__ TQue() { depth_ = depth; }
  template <typename T>
  __aicore__ LocalTensor<T> AllocTensor() {
    if (num_ == 0) va::fail("TQue::AllocTensor on a queue that has no buffers (InitBuffer)");
    for (int i = 0; i < num_; ++i) {
      if (!in_use_[i]) {
        in_use_[i] = true;
        return LocalTensor<T>(base_[i], len_, 0);
      }
    }
    va::fail("TQue::AllocTensor: all %lld buffers of the queue are in use (FreeTensor missing); "
             "on the device this blocks forever", num_);
  }
  template <typename T>
  __aicore__ void EnQue(const LocalTensor<T>& t) {
    const int i = index_of(t.buf_off(), "EnQue");
    if (queued_ >= depth_) va::fail("TQue::EnQue: the queue already holds its depth of %lld", depth_);
    fifo_[(head_ + queued_) % va::kMaxBuffers] = static_cast<uint32_t>(i);
    ++queued_;
  }
  template <typename T>
  __aicore__ LocalTensor<T> DeQue() {
    if (queued_ == 0) va::fail("TQue::DeQue on an empty queue; on the device this blocks forever");
    const uint32_t i = fifo_[head_];
    head_ = (head_ + 1) % va::kMaxBuffers;
    --queued_;
    return LocalTensor<T>(base_[i], len_, 0);
  }
  template <typename T>
  __aicore__ void FreeTensor(const LocalTensor<T>& t) {
    const int i = index_of(t.buf_off(), "FreeTensor");
    if (!in_use_[i]) va::fail("TQue::FreeTensor of a buffer that is not allocated");
    in_use_[i] = false;
  }

 private:
  __aicore__ int index_of(uint32_t off, const char* what) const {
    for (int i = 0; i < num_; ++i) {
      if (base_[i] == off) return i;
    }
    va::fail("TQue: tensor passed to EnQue/FreeTensor does not belong to this queue");
  }
};

template <TPosition pos>
class TBuf {
 public:
  __aicore__ TBuf() : base_(0), len_(0), init_(false) {}
  template <typename T>
  __aicore__ LocalTensor<T> Get() const {
    if (!init_) va::fail("TBuf::Get before TPipe::InitBuffer");
    return LocalTensor<T>(base_, len_, 0);
  }
  template <typename T>
  __aicore__ LocalTensor<T> Get(uint32_t count) const {
    if (!init_) va::fail("TBuf::Get before TPipe::InitBuffer");
    if (count * sizeof(T) > len_) va::fail("TBuf::Get(%lld) exceeds the %lld-byte buffer", count, len_);
    return LocalTensor<T>(base_, len_, 0);
  }
  uint32_t base_;
  uint32_t len_;
  bool init_;
};

class TPipe {
 public:
  __aicore__ TPipe() : next_event_(0) {
    if (va::state().pipe != nullptr) va::fail("a second TPipe is alive on this core");
    va::state().pipe = this;
  }
  __aicore__ ~TPipe() { va::state().pipe = nullptr; }

  // Buffer lengths are rounded up to 32 bytes, as the device allocator does.
  template <TPosition pos, int32_t depth>
  __aicore__ void InitBuffer(TQue<pos, depth>& q, int32_t num, uint32_t len) {
    if (num < 1 || num > va::kMaxBuffers) va::fail("TPipe::InitBuffer: %lld buffers", num);
    if (q.num_ != 0) va::fail("TPipe::InitBuffer called twice for one queue");
    const uint32_t l = round(len);
    q.num_ = num;
    q.len_ = l;
    for (int i = 0; i < num; ++i) {
      q.base_[i] = take(l);
      q.in_use_[i] = false;
    }
  }
  template <TPosition pos>
  __aicore__ void InitBuffer(TBuf<pos>& b, uint32_t len) {
    if (b.init_) va::fail("TPipe::InitBuffer called twice for one TBuf");
    b.len_ = round(len);
    b.base_ = take(b.len_);
    b.init_ = true;
  }
  __aicore__ int FetchEventID(HardEvent) { return next_event_++ % 8; }

 private:
  __aicore__ static uint32_t round(uint32_t len) {
    if (len == 0) va::fail("TPipe::InitBuffer with length 0");
    return (len + va::kBlock - 1) / va::kBlock * va::kBlock;
  }
  __aicore__ uint32_t take(uint32_t len) {
    va::CoreState& s = va::state();
    const uint64_t end = static_cast<uint64_t>(s.ub_used) + len;
    if (end > s.ub_limit) {
      va::fail("UB overflow: TPipe::InitBuffer of %lld bytes brings this core's buffers to %lld "
               "bytes, over the %lld-byte Unified Buffer", len, static_cast<int64_t>(end),
               s.ub_limit);
    }
    const uint32_t at = s.ub_used;
    s.ub_used = static_cast<uint32_t>(end);
    if (s.ub_used > s.ub_peak) s.ub_peak = s.ub_used;
    return at;
  }
  int next_event_;
};

// ---- synchronisation -----------------------------------------------------------------------------
template <HardEvent E>
__aicore__ inline void SetFlag(int ev) {
  if (ev < 0 || ev > 7) va::fail("SetFlag: event id %lld outside 0..7", ev);
  va::state().pending_flags[static_cast<int>(E)][ev]++;
}
template <HardEvent E>
__aicore__ inline void WaitFlag(int ev) {
  if (ev < 0 || ev > 7) va::fail("WaitFlag: event id %lld outside 0..7", ev);
  int& n = va::state().pending_flags[static_cast<int>(E)][ev];
  if (n == 0) {
    va::fail("WaitFlag (event kind %lld, id %lld) without a matching SetFlag: the core would "
             "wait forever", static_cast<int64_t>(E), ev);
  }
  --n;
}
template <pipe_t P>
__aicore__ inline void PipeBarrier() {}

// ---- data movement ------------------------------------------------------------------------------
namespace detail {
template <typename T>
__aicore__ inline void check_ub_aligned(const LocalTensor<T>& t, const char* op) {
  if (t.ub_addr() % va::kBlock != 0) {
    va::fail(op, static_cast<int64_t>(t.ub_addr()));
  }
}
__aicore__ inline void poison(uint8_t* p, uint64_t n) {
  for (uint64_t i = 0; i < n; ++i) p[i] = 0xff;  // NaN as fp32/fp16/bf16, -1 as integers
}
}  // namespace detail

// DataCopy: whole 32-byte blocks only (unaligned lengths need DataCopyPad).
template <typename T>
__aicore__ inline void DataCopy(const LocalTensor<T>& dst, const GlobalTensor<T>& src,
                                uint32_t count) {
  const uint64_t bytes = static_cast<uint64_t>(count) * sizeof(T);
  if (bytes % va::kBlock != 0) {
    va::fail("DataCopy GM->UB of %lld elements = %lld bytes: not a multiple of 32 bytes "
             "(use DataCopyPad)", count, static_cast<int64_t>(bytes));
  }
  detail::check_ub_aligned(dst, "DataCopy GM->UB: UB address %lld is not 32-byte aligned");
  T* d = dst.ptr(0, count, "DataCopy GM->UB");
  va::check_gm(src.GetPhyAddr(), bytes, "DataCopy GM->UB source");
  __builtin_memcpy(d, src.GetPhyAddr(), bytes);
}
template <typename T>
__aicore__ inline void DataCopy(const GlobalTensor<T>& dst, const LocalTensor<T>& src,
                                uint32_t count) {
  const uint64_t bytes = static_cast<uint64_t>(count) * sizeof(T);
  if (bytes % va::kBlock != 0) {
    va::fail("DataCopy UB->GM of %lld elements = %lld bytes: not a multiple of 32 bytes "
             "(use DataCopyPad)", count, static_cast<int64_t>(bytes));
  }
  detail::check_ub_aligned(src, "DataCopy UB->GM: UB address %lld is not 32-byte aligned");
  const T* s = src.ptr(0, count, "DataCopy UB->GM");
  va::check_gm(dst.GetPhyAddr(), bytes, "DataCopy UB->GM destination");
  __builtin_memcpy(dst.GetPhyAddr(), s, bytes);
}

struct DataCopyExtParams {
  uint16_t blockCount;
  uint32_t blockLen;   // bytes
  uint32_t srcStride;  // GM source: bytes; UB source: 32-byte blocks
  uint32_t dstStride;  // GM destination: bytes; UB destination: 32-byte blocks
  uint32_t rsv;
};
template <typename T>
struct DataCopyPadExtParams {
  bool isPad;
  uint8_t leftPadding;
  uint8_t rightPadding;
  T paddingValue;
};

namespace detail {
__aicore__ inline void check_pad_params(const DataCopyExtParams& p, const char* op) {
  if (p.blockCount < 1 || p.blockCount > 4095) {
    va::fail_at(op, "blockCount %lld outside [1, 4095]", p.blockCount);
  }
  if (p.blockLen < 1 || p.blockLen >= (1u << 21)) {
    va::fail_at(op, "blockLen %lld bytes outside [1, 2^21)", p.blockLen);
  }
}
}  // namespace detail

// GM -> UB, any byte length. Each block lands at a 32-byte boundary and occupies whole 32-byte
// blocks of UB; without isPad the bytes past blockLen up to the boundary are undefined (the shim
// writes NaN / -1 there so a kernel that reads them shows it).
template <typename T>
__aicore__ inline void DataCopyPad(const LocalTensor<T>& dst, const GlobalTensor<T>& src,
                                   const DataCopyExtParams& p, const DataCopyPadExtParams<T>& pad) {
  detail::check_pad_params(p, "DataCopyPad GM->UB");
  detail::check_ub_aligned(dst, "DataCopyPad GM->UB: UB address %lld is not 32-byte aligned");
  if (p.blockLen % sizeof(T) != 0) va::fail("DataCopyPad: blockLen %lld not a whole element", p.blockLen);
  const uint64_t padded = (static_cast<uint64_t>(pad.isPad ? pad.leftPadding + pad.rightPadding : 0) *
                           sizeof(T) + p.blockLen + va::kBlock - 1) / va::kBlock * va::kBlock;
  const uint64_t ub_stride = padded + static_cast<uint64_t>(p.dstStride) * va::kBlock;
  const uint64_t total = ub_stride * (p.blockCount - 1) + padded;
  if (total > dst.bytes_left()) {
    va::fail("DataCopyPad GM->UB fills %lld bytes of UB (blocks rounded up to 32) but the "
             "destination buffer has %lld", static_cast<int64_t>(total), dst.bytes_left());
  }
  uint8_t* d = reinterpret_cast<uint8_t*>(dst.ptr(0, 0, "DataCopyPad"));
  const uint8_t* s = reinterpret_cast<const uint8_t*>(src.GetPhyAddr());
  for (uint32_t b = 0; b < p.blockCount; ++b) {
    const uint8_t* sb = s + static_cast<uint64_t>(b) * (p.blockLen + p.srcStride);
    uint8_t* db = d + b * ub_stride;
    va::check_gm(sb, p.blockLen, "DataCopyPad GM->UB source");
    detail::poison(db, padded);
    uint64_t at = 0;
    if (pad.isPad) {
      for (int i = 0; i < pad.leftPadding; ++i, at += sizeof(T)) {
        __builtin_memcpy(db + at, &pad.paddingValue, sizeof(T));
      }
    }
    __builtin_memcpy(db + at, sb, p.blockLen);
    at += p.blockLen;
    if (pad.isPad) {
      for (int i = 0; i < pad.rightPadding; ++i, at += sizeof(T)) {
        __builtin_memcpy(db + at, &pad.paddingValue, sizeof(T));
      }
    }
  }
}

// UB -> GM, any byte length: exactly blockLen bytes per block reach GM.
template <typename T>
__aicore__ inline void DataCopyPad(const GlobalTensor<T>& dst, const LocalTensor<T>& src,
                                   const DataCopyExtParams& p) {
  detail::check_pad_params(p, "DataCopyPad UB->GM");
  detail::check_ub_aligned(src, "DataCopyPad UB->GM: UB address %lld is not 32-byte aligned");
  const uint64_t rounded = (static_cast<uint64_t>(p.blockLen) + va::kBlock - 1) / va::kBlock * va::kBlock;
  const uint64_t ub_stride = rounded + static_cast<uint64_t>(p.srcStride) * va::kBlock;
  const uint64_t total = ub_stride * (p.blockCount - 1) + p.blockLen;
  if (total > src.bytes_left()) {
    va::fail("DataCopyPad UB->GM reads %lld bytes but the source buffer has %lld",
             static_cast<int64_t>(total), src.bytes_left());
  }
  const uint8_t* s = reinterpret_cast<const uint8_t*>(src.ptr(0, 0, "DataCopyPad"));
  uint8_t* d = reinterpret_cast<uint8_t*>(dst.GetPhyAddr());
  for (uint32_t b = 0; b < p.blockCount; ++b) {
    uint8_t* db = d + static_cast<uint64_t>(b) * (p.blockLen + p.dstStride);
    va::check_gm(db, p.blockLen, "DataCopyPad UB->GM destination");
    __builtin_memcpy(db, s + b * ub_stride, p.blockLen);
  }
}

// ---- vector unit --------------------------------------------------------------------------------
// Operands live in UB at 32-byte aligned addresses; count elements from each.
namespace detail {
template <typename T>
__aicore__ inline T* vec_operand(const LocalTensor<T>& t, uint32_t count, const char* op) {
  if (t.ub_addr() % va::kBlock != 0) {
    va::fail_at(op, "operand at UB address %lld is not 32-byte aligned", t.ub_addr());
  }
  return t.ptr(0, count, op);
}
}  // namespace detail

#define VA_BINARY(NAME, EXPR)                                                                   \
  template <typename T>                                                                         \
  __aicore__ inline void NAME(const LocalTensor<T>& dst, const LocalTensor<T>& a,               \
                              const LocalTensor<T>& b, uint32_t count) {                        \
    T* d = detail::vec_operand(dst, count, #NAME);                                              \
    const T* x = detail::vec_operand(a, count, #NAME);                                          \
    const T* y = detail::vec_operand(b, count, #NAME);                                          \
    for (uint32_t i = 0; i < count; ++i) d[i] = static_cast<T>(EXPR);                           \
  }
VA_BINARY(Add, static_cast<float>(x[i]) + static_cast<float>(y[i]))
VA_BINARY(Mul, static_cast<float>(x[i]) * static_cast<float>(y[i]))
VA_BINARY(Sub, static_cast<float>(x[i]) - static_cast<float>(y[i]))
#undef VA_BINARY

#define VA_SCALAR(NAME, EXPR)                                                                   \
  template <typename T, typename U>                                                             \
  __aicore__ inline void NAME(const LocalTensor<T>& dst, const LocalTensor<T>& src, U scalar,  \
                              uint32_t count) {                                                 \
    T* d = detail::vec_operand(dst, count, #NAME);                                              \
    const T* x = detail::vec_operand(src, count, #NAME);                                        \
    const float s = static_cast<float>(scalar);                                                 \
    for (uint32_t i = 0; i < count; ++i) d[i] = static_cast<T>(EXPR);                           \
  }
VA_SCALAR(Adds, static_cast<float>(x[i]) + s)
VA_SCALAR(Muls, static_cast<float>(x[i]) * s)
#undef VA_SCALAR

#define VA_UNARY(NAME, EXPR)                                                                    \
  template <typename T>                                                                         \
  __aicore__ inline void NAME(const LocalTensor<T>& dst, const LocalTensor<T>& src,             \
                              uint32_t count) {                                                 \
    T* d = detail::vec_operand(dst, count, #NAME);                                              \
    const T* x = detail::vec_operand(src, count, #NAME);                                        \
    for (uint32_t i = 0; i < count; ++i) d[i] = static_cast<T>(EXPR);                           \
  }
VA_UNARY(Abs, __builtin_fabsf(static_cast<float>(x[i])))
VA_UNARY(Sqrt, __builtin_sqrtf(static_cast<float>(x[i])))
VA_UNARY(Exp, __builtin_expf(static_cast<float>(x[i])))
#undef VA_UNARY

// Sum / max of count elements into dst[0]. The work tensor must hold the intermediate results
// the device writes: one value per 256-byte repeat, rounded up to a 32-byte block (the max
// keeps a value and an index per repeat).
namespace detail {
template <typename T>
__aicore__ inline void check_reduce_work(const LocalTensor<T>& work, uint32_t count, int per_repeat,
                                         const char* op) {
  const uint32_t per_rep_elems = 256 / sizeof(T);
  const uint32_t repeats = (count + per_rep_elems - 1) / per_rep_elems;
  const uint32_t need = (repeats * per_repeat * sizeof(T) + 31) / 32 * 32 / sizeof(T);
  vec_operand(work, need, op);
}
}  // namespace detail

template <typename T>
__aicore__ inline void ReduceSum(const LocalTensor<T>& dst, const LocalTensor<T>& src,
                                 const LocalTensor<T>& work, uint32_t count) {
  T* d = detail::vec_operand(dst, 1, "ReduceSum");
  const T* x = detail::vec_operand(src, count, "ReduceSum");
  detail::check_reduce_work(work, count, 1, "ReduceSum");
  // Per 64-lane repeat, then across the repeat sums (the device's order, not a serial sum).
  const uint32_t lanes = 256 / sizeof(T);
  float total = 0.f;
  for (uint32_t r = 0; r < count; r += lanes) {
    float part = 0.f;
    for (uint32_t i = r; i < count && i < r + lanes; ++i) part += static_cast<float>(x[i]);
    total += part;
  }
  d[0] = static_cast<T>(total);
}

template <typename T>
__aicore__ inline void ReduceMax(const LocalTensor<T>& dst, const LocalTensor<T>& src,
                                 const LocalTensor<T>& work, uint32_t count, bool calIndex = false) {
  T* d = detail::vec_operand(dst, calIndex ? 2 : 1, "ReduceMax");
  const T* x = detail::vec_operand(src, count, "ReduceMax");
  detail::check_reduce_work(work, count, 2, "ReduceMax");
  if (count == 0) va::fail("ReduceMax of 0 elements");
  float m = static_cast<float>(x[0]);
  uint32_t at = 0;
  for (uint32_t i = 1; i < count; ++i) {
    const float v = static_cast<float>(x[i]);
    if (v > m || v != v) {
      m = v;
      at = i;
    }
  }
  d[0] = static_cast<T>(m);
  if (calIndex) {
    const uint32_t idx = at;
    __builtin_memcpy(&d[1], &idx, sizeof(T) < 4 ? sizeof(T) : 4);
  }
}

// dst[i] = *(src + srcBase + offsets[i]), offsets in bytes.
template <typename T>
__aicore__ inline void Gather(const LocalTensor<T>& dst, const LocalTensor<T>& src,
                              const LocalTensor<uint32_t>& offsets, uint32_t srcBase,
                              uint32_t count) {
  T* d = detail::vec_operand(dst, count, "Gather");
  const uint32_t* o = detail::vec_operand(offsets, count, "Gather");
  detail::vec_operand(src, 0, "Gather");
  const uint8_t* s = reinterpret_cast<const uint8_t*>(src.ptr(0, 0, "Gather"));
  for (uint32_t i = 0; i < count; ++i) {
    const uint64_t at = static_cast<uint64_t>(srcBase) + o[i];
    if (at % sizeof(T) != 0) va::fail("Gather: offset %lld is not a multiple of the element size", at);
    if (at + sizeof(T) > src.bytes_left()) {
      va::fail("Gather: element %lld reads byte offset %lld, past the %lld-byte source buffer", i,
               static_cast<int64_t>(at), src.bytes_left());
    }
    __builtin_memcpy(&d[i], s + at, sizeof(T));
  }
}

// ---- Cast --------------------------------------------------------------------------------------
namespace detail {
__aicore__ inline double round_mode(double v, RoundMode m) {
  switch (m) {
    case RoundMode::CAST_RINT:
    case RoundMode::CAST_NONE:
      return __builtin_rint(v);
    case RoundMode::CAST_FLOOR:
      return __builtin_floor(v);
    case RoundMode::CAST_CEIL:
      return __builtin_ceil(v);
    case RoundMode::CAST_ROUND:
      return __builtin_round(v);
    case RoundMode::CAST_TRUNC:
      return __builtin_trunc(v);
    default:
      va::fail("Cast: round mode %lld not modelled by the shim", static_cast<int64_t>(m));
  }
}
template <typename T>
struct Kind {
  static constexpr int value = 0;  // 0 float-like, 1 integer
};
template <> struct Kind<int8_t> { static constexpr int value = 1; };
template <> struct Kind<uint8_t> { static constexpr int value = 1; };
template <> struct Kind<int16_t> { static constexpr int value = 1; };
template <> struct Kind<int32_t> { static constexpr int value = 1; };
template <> struct Kind<int64_t> { static constexpr int value = 1; };

template <typename D, typename S>
__aicore__ inline D convert(S s, RoundMode m) {
  if constexpr (Kind<D>::value == 1) {
    if (m == RoundMode::CAST_NONE && Kind<S>::value == 0 && !IsSameType<S, half>::value) {
      va::fail("Cast float -> integer needs an explicit round mode (CAST_RINT, ...)");
    }
    const double r = round_mode(static_cast<double>(static_cast<float>(s)), m);
    const double lo = static_cast<double>(static_cast<D>(sizeof(D) == 1 ? -128 : -2147483647 - 1));
    const double hi = sizeof(D) == 1 ? 127.0 : 2147483647.0;
    return static_cast<D>(r < lo ? lo : (r > hi ? hi : r));  // saturating
  } else if constexpr (Kind<S>::value == 1) {
    return static_cast<D>(static_cast<float>(s));
  } else {
    // float <-> 16-bit float: the 16-bit constructors round to nearest even (RINT / NONE).
    if (m != RoundMode::CAST_RINT && m != RoundMode::CAST_NONE) {
      va::fail("Cast between float types: round mode %lld not modelled", static_cast<int64_t>(m));
    }
    return static_cast<D>(static_cast<float>(s));
  }
}
}  // namespace detail

template <typename D, typename S>
__aicore__ inline void Cast(const LocalTensor<D>& dst, const LocalTensor<S>& src, RoundMode mode,
                            uint32_t count) {
  D* d = detail::vec_operand(dst, count, "Cast");
  const S* s = detail::vec_operand(src, count, "Cast");
  // In-place casts between widths are not element-wise safe; buffers must not partially overlap.
  const uint32_t d0 = dst.ub_addr(), d1 = d0 + count * sizeof(D);
  const uint32_t s0 = src.ub_addr(), s1 = s0 + count * sizeof(S);
  if (d0 < s1 && s0 < d1 && !(d0 == s0 && sizeof(D) == sizeof(S))) {
    va::fail("Cast: source [%lld, %lld) and destination overlap", s0, s1);
  }
  for (uint32_t i = 0; i < count; ++i) d[i] = detail::convert<D, S>(s[i], mode);
}

}  // namespace AscendC

__aicore__ inline AscendC::TPipe* GetTPipePtr() {
  AscendC::TPipe* p = va::state().pipe;
  if (p == nullptr) va::fail("GetTPipePtr() with no TPipe alive on this core");
  return p;
}
