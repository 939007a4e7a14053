// Host-side control of the shim, used by the harness entry points (not by kernels).
#pragma once

#include <stdint.h>

#include <stdexcept>
#include <string>

namespace va {

struct ShimError : std::runtime_error {
  explicit ShimError(const std::string& what) : std::runtime_error(what) {}
};

void gm_reset();                               // forget the registered tensors
void gm_add(const void* p, uint64_t bytes);    // a tensor the kernel may touch
void begin_launch(uint32_t ub_limit);          // 0: the real 192 KiB
void begin_block(int64_t idx, int64_t num);    // fresh UB and state for one AI core
void end_block();
uint32_t ub_peak();                            // max UB bytes one core allocated

}  // namespace va
