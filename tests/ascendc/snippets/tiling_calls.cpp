// Positive device-check case: kernel code calling every tiling.h helper the kernels use.
#include "kernel_operator.h"

#include "tiling.h"

extern "C" __global__ __aicore__ void tiling_calls(GM_ADDR out) {
  vllm_ascend::ascend::TokenSplit s{4, 1, 3};
  int64_t start = 0, count = 0;
  s.range(AscendC::GetBlockIdx(), start, count);
  AscendC::GlobalTensor<int64_t> g;
  g.SetGlobalBuffer((__gm__ int64_t*)out);
  g.SetValue(0, vllm_ascend::ascend::align_up(start + count, 32));
}
