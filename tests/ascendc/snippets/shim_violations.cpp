// Small kernels that each break one rule the device enforces; test_shim_enforcement.py expects
// the shim to stop every one of them (and to let the well-formed one through).
#include <cstring>

#include "kernel_operator.h"
#include "shim/shim_runtime.h"

namespace {

using namespace AscendC;

// 10 floats = 40 bytes with DataCopy: lengths must be whole 32-byte blocks.
__aicore__ void unaligned_datacopy_len(GM_ADDR gm) {
  TPipe pipe;
  TBuf<TPosition::VECCALC> buf;
  pipe.InitBuffer(buf, 64);
  GlobalTensor<float> g;
  g.SetGlobalBuffer((__gm__ float*)gm);
  DataCopy(buf.Get<float>(), g, 10);
}

// The same 10 floats with DataCopyPad: allowed.
__aicore__ void datacopypad_ok(GM_ADDR gm) {
  TPipe pipe;
  TBuf<TPosition::VECCALC> buf;
  pipe.InitBuffer(buf, 64);
  GlobalTensor<float> g;
  g.SetGlobalBuffer((__gm__ float*)gm);
  DataCopyExtParams p{1, 10 * sizeof(float), 0, 0, 0};
  DataCopyPadExtParams<float> pad{false, 0, 0, 0.f};
  DataCopyPad(buf.Get<float>(), g, p, pad);
  DataCopyPad(g[16], buf.Get<float>(), p);
}

// A vector operand 12 bytes into its buffer: UB operands must be 32-byte aligned.
__aicore__ void unaligned_ub_operand(GM_ADDR) {
  TPipe pipe;
  TBuf<TPosition::VECCALC> buf;
  pipe.InitBuffer(buf, 256);
  LocalTensor<float> t = buf.Get<float>();
  Adds(t[3], t[3], 1.0f, 8);
}

// DataCopy into a UB address that is not 32-byte aligned.
__aicore__ void unaligned_datacopy_addr(GM_ADDR gm) {
  TPipe pipe;
  TBuf<TPosition::VECCALC> buf;
  pipe.InitBuffer(buf, 256);
  GlobalTensor<float> g;
  g.SetGlobalBuffer((__gm__ float*)gm);
  DataCopy(buf.Get<float>()[4], g, 8);
}

// 200 KiB of buffers on one core: more than the 192 KiB Unified Buffer.
__aicore__ void ub_overflow(GM_ADDR) {
  TPipe pipe;
  TQue<TPosition::VECIN, 2> q;
  TBuf<TPosition::VECCALC> buf;
  pipe.InitBuffer(q, 2, 64 * 1024);
  pipe.InitBuffer(buf, 72 * 1024);
}

// Exactly 192 KiB: fits.
__aicore__ void ub_full(GM_ADDR) {
  TPipe pipe;
  TQue<TPosition::VECIN, 2> q;
  TBuf<TPosition::VECCALC> buf;
  pipe.InitBuffer(q, 2, 64 * 1024);
  pipe.InitBuffer(buf, 64 * 1024);
}

// DeQue with nothing queued: the core would wait forever.
__aicore__ void dequeue_empty(GM_ADDR) {
  TPipe pipe;
  TQue<TPosition::VECIN, 1> q;
  pipe.InitBuffer(q, 1, 64);
  LocalTensor<float> t = q.DeQue<float>();
  (void)t;
}

// Writing past the tensor the kernel was given.
__aicore__ void gm_out_of_bounds(GM_ADDR gm) {
  TPipe pipe;
  TBuf<TPosition::VECCALC> buf;
  pipe.InitBuffer(buf, 64);
  GlobalTensor<float> g;
  g.SetGlobalBuffer((__gm__ float*)gm);
  DataCopy(g[56], buf.Get<float>(), 16);  // the tensor holds 64 floats
}

}  // namespace

extern "C" int run_violation(const char* name, void* gm, uint64_t bytes, char* err, int n) {
  va::gm_reset();
  va::gm_add(gm, bytes);
  err[0] = 0;
  try {
    va::begin_launch(0);
    va::begin_block(0, 1);
    const std::string s = name;
    auto* g = static_cast<uint8_t*>(gm);
    if (s == "unaligned_datacopy_len") unaligned_datacopy_len(g);
    else if (s == "datacopypad_ok") datacopypad_ok(g);
    else if (s == "unaligned_ub_operand") unaligned_ub_operand(g);
    else if (s == "unaligned_datacopy_addr") unaligned_datacopy_addr(g);
    else if (s == "ub_overflow") ub_overflow(g);
    else if (s == "ub_full") ub_full(g);
    else if (s == "dequeue_empty") dequeue_empty(g);
    else if (s == "gm_out_of_bounds") gm_out_of_bounds(g);
    else return 2;
    va::end_block();
    return 0;
  } catch (const std::exception& e) {
    va::end_block();
    std::strncpy(err, e.what(), n - 1);
    err[n - 1] = 0;
    return 1;
  }
}
