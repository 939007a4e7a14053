// Negative device-check case: kernel code calls an inline helper that lacks __aicore__, the
// mistake tiling.h's TokenSplit::range() used to have. bisheng rejects it; so must the check.
#include "kernel_operator.h"

struct Split {
  int64_t per_core;
  inline int64_t start(int64_t core) const { return core * per_core; }  // no __aicore__
};

extern "C" __global__ __aicore__ void plain_inline_call(GM_ADDR out) {
  Split s{4};
  AscendC::GlobalTensor<int64_t> g;
  g.SetGlobalBuffer((__gm__ int64_t*)out);
  g.SetValue(0, s.start(AscendC::GetBlockIdx()));
}
