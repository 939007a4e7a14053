// Tiling descriptions shared by the NPU host launchers (ascend/host/npu_ops.cpp) and the Ascend C
// kernels (ascend/kernels/*.cpp). Plain integers only, so the same header compiles for the host
// (g++) and the AI core (bisheng). The host fills a struct, passes its fields to the kernel as
// scalar launch arguments, and each kernel rebuilds the struct on the core.
//
// Every function that kernel code calls carries __aicore__: bisheng rejects a call from an
// __aicore__ function to a host-only one, and constexpr functions are qualified too rather than
// relying on a compiler treating them as callable from both sides. Host compiles that see no
// Ascend C header (g++ building ascend/host/npu_ops.cpp) get an empty definition of the
// qualifier. The host harness (tests/ascendc) checks this with a device-mode compile of each
// kernel, in which a missing qualifier is an error.
#pragma once

#include <stdint.h>

#if !defined(__aicore__) && !defined(__CCE_AICORE__) && !defined(__CCE_KT_TEST__)
#define __aicore__
#endif

namespace vllm_ascend::ascend {

constexpr int32_t kBufferNum = 2;         // double buffering of every in/out queue
constexpr int32_t kBlockBytes = 32;       // DataCopy / vector operands: 32-byte granularity
constexpr int64_t kUbBudgetBytes = 160 * 1024;  // of the 192 KiB UB on Atlas A2; rest is headroom

__aicore__ inline constexpr int64_t align_up(int64_t v, int64_t a) { return (v + a - 1) / a * a; }

// Token split across AI cores: the first `former_cores` cores take `former_tokens` tokens each,
// the rest `former_tokens - 1` (so every core gets a contiguous range, sizes differ by <= 1).
struct TokenSplit {
  int64_t num_cores;
  int64_t former_cores;
  int64_t former_tokens;

  __aicore__ inline void range(int64_t core, int64_t& start, int64_t& count) const {
    if (core < former_cores) {
      start = core * former_tokens;
      count = former_tokens;
    } else {
      start = former_cores * former_tokens + (core - former_cores) * (former_tokens - 1);
      count = former_tokens - 1;
    }
  }
};

// Host only (the launchers call it).
inline TokenSplit split_tokens(int64_t num_tokens, int64_t max_cores) {
  TokenSplit s{};
  s.num_cores = num_tokens < max_cores ? num_tokens : max_cores;
  if (s.num_cores <= 0) {
    s.num_cores = 0;
    return s;
  }
  s.former_tokens = (num_tokens + s.num_cores - 1) / s.num_cores;
  s.former_cores = num_tokens - (s.former_tokens - 1) * s.num_cores;
  return s;
}

// ---- rotary_embedding --------------------------------------------------------------------------
// Per token: one cos|sin row is expanded (with Gather) to a [heads_per_tile, head_size] fp32
// pattern, then each tile of heads is x * cos_full + gather(x, perm) * sign * sin_full. Dims past
// rot_dim have cos 1, sin 0 and sign 0 and pass through unchanged. The four index/sign tables
// (tile_elems uint32 each) depend only on head_size, rot_dim, style and tile size; the host builds
// them once and caches them on the device.
struct RotaryTiling {
  int64_t num_tokens;
  int64_t num_q_heads;
  int64_t num_k_heads;  // 0: no key
  int64_t head_size;
  int64_t rot_dim;
  int64_t q_token_stride;  // elements; heads of one token are dense (head stride == head_size)
  int64_t k_token_stride;
  int64_t cache_stride;
  int64_t heads_per_tile;
  int64_t tile_elems;      // heads_per_tile * head_size, rounded up to 8 (32 bytes of fp32)
  int64_t num_cores;
  int64_t former_cores;
  int64_t former_tokens;
};

// Table layout in the device buffer, each block tile_elems uint32 long:
//   [0] byte offset into the fp32 cos|sin|1|0 row of each element's cos  (Gather offsets)
//   [1] byte offset of each element's sin
//   [2] byte offset of each element's rotation partner within the tile
//   [3] the sign of the partner term as fp32 bits (-1, +1 or 0)
constexpr int64_t kRotaryTables = 4;

// UB bytes per tile element: in/out queues of T (double buffered) + 5 fp32 work rows
// (x, partner, cos_full, sin_full, sign) + 3 uint32 tables.
inline int64_t rotary_bytes_per_elem(int64_t elem_bytes) {
  return 2 * kBufferNum * elem_bytes + 5 * 4 + 3 * 4;
}

// ---- get_masked_input_and_mask -------------------------------------------------------------------
struct MaskTiling {
  int64_t num_ids;
  int64_t org_start;
  int64_t org_end;
  int64_t added_start;
  int64_t added_end;
  int64_t added_offset;  // added_start - (org_end - org_start) - num_org_padding
  int64_t ids_per_tile;  // multiple of 32
  int64_t num_cores;
  int64_t former_cores;
  int64_t former_tokens;
};

// ---- add_rms_norm_dynamic_quant -------------------------------------------------------------------
// The weight is passed as fp32 whatever the activation dtype (as the CPU kernel reads it), so a
// fp32 weight with bf16 activations is not rounded to bf16 on the way.
constexpr int64_t kAddRmsNormScaleBlock = 512;  // per-row scales staged in UB per copy out

// fp32 work area of ReduceSum / ReduceMax over a row of hidden_aligned floats: the device keeps
// one partial (ReduceMax: a value and an index) per 256-byte repeat, then reduces those again;
// four words per repeat plus two spare blocks cover every level.
__aicore__ inline constexpr int64_t add_rms_norm_work_floats(int64_t hidden_aligned) {
  return align_up(4 * ((hidden_aligned + 63) / 64) + 64, 8);
}

struct AddRmsNormQuantTiling {
  int64_t num_rows;
  int64_t hidden;
  int64_t hidden_aligned;  // hidden rounded up to 32 elements (covers int8 / 16-bit / fp32 rows)
  float epsilon;
  float inv_hidden;
  int64_t buffer_num;      // 2 when two rows of every queue fit in UB, else 1
  int64_t num_cores;
  int64_t former_cores;
  int64_t former_tokens;
};

}  // namespace vllm_ascend::ascend
