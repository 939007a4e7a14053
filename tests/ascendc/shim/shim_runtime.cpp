// Host-only half of the Ascend C shim: per-core state, the global-memory map and error reporting.
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernel_operator.h"
#include "shim_runtime.h"

namespace va {

namespace {
thread_local CoreState g_state{};
thread_local std::vector<uint8_t> g_ub;
thread_local std::vector<std::pair<const uint8_t*, uint64_t>> g_gm;

std::string format(const char* fmt, int64_t a, int64_t b, int64_t c) {
  char buf[512];
  std::snprintf(buf, sizeof(buf), fmt, static_cast<long long>(a), static_cast<long long>(b),
                static_cast<long long>(c));
  return buf;
}
}  // namespace

void fail(const char* fmt, int64_t a, int64_t b, int64_t c) {
  throw ShimError("block " + std::to_string(g_state.block_idx) + ": " + format(fmt, a, b, c));
}

void fail_at(const char* what, const char* fmt, int64_t a, int64_t b, int64_t c) {
  throw ShimError("block " + std::to_string(g_state.block_idx) + ": " + what + ": " +
                  format(fmt, a, b, c));
}

CoreState& state() { return g_state; }

void check_gm(const void* p, uint64_t bytes, const char* what) {
  const uint8_t* b = static_cast<const uint8_t*>(p);
  for (const auto& [base, len] : g_gm) {
    if (b >= base && b + bytes <= base + len) return;
  }
  fail_at(what, "global-memory access of %lld bytes at %#llx lies outside every tensor passed "
          "to the kernel", static_cast<int64_t>(bytes), static_cast<int64_t>(
              reinterpret_cast<uintptr_t>(p)));
}

void gm_reset() { g_gm.clear(); }
void gm_add(const void* p, uint64_t bytes) {
  if (p != nullptr && bytes > 0) g_gm.emplace_back(static_cast<const uint8_t*>(p), bytes);
}

void begin_launch(uint32_t ub_limit) {
  g_state.ub_peak = 0;
  g_state.ub_limit = ub_limit == 0 ? kUbBytes : ub_limit;
  if (g_ub.size() < kUbBytes) g_ub.resize(kUbBytes);
}

void begin_block(int64_t idx, int64_t num) {
  g_state.block_idx = idx;
  g_state.block_num = num;
  g_state.ub = g_ub.data();
  g_state.ub_used = 0;
  g_state.pipe = nullptr;
  std::memset(g_state.pending_flags, 0, sizeof(g_state.pending_flags));
  std::memset(g_ub.data(), 0xff, g_ub.size());  // UB holds garbage when a kernel starts
}

void end_block() { g_state.pipe = nullptr; }

uint32_t ub_peak() { return g_state.ub_peak; }

}  // namespace va
