// Boxed fast CPU kernels of the torch_npu MoE routing ops (the plumbing is in cpu/fast_serve.h):
// npu_moe_gating_top_k_softmax, npu_moe_init_routing_v2 (dropless, unquantized, no scale),
// npu_grouped_matmul (unquantized, one [E, K, N] weight, grouping along M) and
// npu_moe_token_unpermute. As in cpu/fast_ops.cpp, a kernel serves a call only when every
// constraint the Python reference (kernels/npu_ops/moe.py) enforces for it holds, and hands any
// other call to the reference, which raises naming the constraint or computes the call.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include "cpu/fast_kernels.h"
#include "cpu/fast_serve.h"
#include "cpu/isa.h"

namespace vllm_ascend::fast_cpu {

namespace {

// ---- npu_moe_gating_top_k_softmax --------------------------------------------------------------

// Top-k of each row of p (the softmax, [rows, experts] fp32) into y (x's dtype), ids, row_idx.
template <typename T>
void top_k_rows(const float* p, int64_t rows, int64_t experts, int64_t k, T* y, int32_t* ids,
                int32_t* row_idx) {
  at::parallel_for(0, rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, experts)),
                   [&](int64_t begin, int64_t end) {
    std::vector<int32_t> order(experts);
    for (int64_t r = begin; r < end; ++r) {
      const float* pr = p + r * experts;
      // Descending probability, equal ones by ascending expert id (the reference's stable sort).
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
        return pr[a] > pr[b] || (pr[a] == pr[b] && a < b);
      });
      for (int64_t j = 0; j < k; ++j) {
        y[r * k + j] = static_cast<T>(pr[order[j]]);
        ids[r * k + j] = order[j];
        row_idx[r * k + j] = static_cast<int32_t>(j * rows + r);
      }
    }
  });
}

enum GatingArg { kGX, kGFinished, kGK };
void gating_softmax_boxed(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  serve("npu_moe_gating_top_k_softmax", op, stack,
        [](const Args& a, std::vector<c10::IValue>& out) -> Decline {
    const at::Tensor& x = a.tensor(kGX);
    if (!a.none(kGFinished)) return "finished";
    if (x.dim() != 2 && x.dim() != 3) return "x rank";
    if (!float_dtype(x.scalar_type())) return "x dtype";
    if (!x.is_contiguous()) return "non-contiguous x";
    const int64_t experts = x.size(-1), k = a[kGK].toInt();
    if (k <= 0 || k > experts || k > 1024) return "k";
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
    shape.back() = k;
    at::Tensor y = at::empty(shape, x.options());
    at::Tensor ids = at::empty(shape, x.options().dtype(at::kInt));
    at::Tensor row_idx = at::empty(shape, x.options().dtype(at::kInt));
    const int64_t rows = x.numel() / experts;
    // ATen's softmax, as the reference computes it (bit-identical probabilities).
    const at::Tensor p = at::softmax(x.to(at::kFloat), -1).contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gating_fast", [&] {
      top_k_rows<scalar_t>(p.const_data_ptr<float>(), rows, experts, k, y.data_ptr<scalar_t>(),
                           ids.data_ptr<int32_t>(), row_idx.data_ptr<int32_t>());
    });
    out = {y, ids, row_idx};
    return std::nullopt;
  });
}

// ---- npu_moe_init_routing_v2 -------------------------------------------------------------------

enum RoutingArg { kRX, kRIdx, kRScale, kROffset, kRActiveNum, kRExpertNum, kRDropPad, kRCountType,
                  kRCountFlag, kRQuant, kRRange, kRRowIdxType, kRXDtype };
void init_routing_boxed(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  serve("npu_moe_init_routing_v2", op, stack,
        [](const Args& a, std::vector<c10::IValue>& out) -> Decline {
    if (!a.none(kRScale)) return "scale";
    if (!a.none(kROffset) || !a.none(kRXDtype)) return "offset / x_dtype";
    if (a[kRDropPad].toInt() != 0 || a[kRQuant].toInt() != -1) return "drop_pad_mode / quant_mode";
    if (!a[kRCountFlag].toBool()) return "expert_tokens_num_flag";
    const int64_t count_type = a[kRCountType].toInt();
    if (count_type != 1 && count_type != 2) return "expert_tokens_num_type";
    const int64_t row_idx_type = a[kRRowIdxType].toInt();
    if (row_idx_type != 0 && row_idx_type != 1) return "row_idx_type";
    const at::Tensor& x = a.tensor(kRX);
    const at::Tensor& idx = a.tensor(kRIdx);
    if (x.dim() != 2 || idx.dim() != 2 || x.size(0) != idx.size(0)) return "shapes";
    if (idx.scalar_type() != at::kInt) return "expert_idx dtype";
    if (!float_dtype(x.scalar_type()) && x.scalar_type() != at::kChar) return "x dtype";
    if (!x.is_contiguous() || !idx.is_contiguous()) return "non-contiguous input";
    const int64_t expert_num = a[kRExpertNum].toInt(), active_num = a[kRActiveNum].toInt();
    if (expert_num <= 0 || expert_num > (count_type == 2 ? 5120 : 10240)) return "expert_num";
    if (active_num < -1) return "active_num";
    const std::vector<int64_t> range = a[kRRange].toIntVector();
    int64_t start = 0, end = expert_num;
    if (!range.empty()) {
      if (range.size() != 2) return "active_expert_range";
      start = range[0];
      end = range[1];
      if (!(0 <= start && start < end && end <= expert_num)) return "active_expert_range";
    }
    const int64_t total = idx.numel(), k = idx.size(1), hidden = x.size(1);
    const int64_t rows = active_num <= 0 ? total : std::min(active_num, total);
    const int32_t* ids = idx.const_data_ptr<int32_t>();
    // Counting sort by expert id: rows of one expert stay in source order (the reference's
    // stable sort); only experts in [start, end) are emitted, at most `rows` of them.
    std::vector<int64_t> counts(end - start, 0);
    for (int64_t s = 0; s < total; ++s) {
      if (ids[s] < 0 || ids[s] >= expert_num) return "expert id out of range";
      if (ids[s] >= start && ids[s] < end) ++counts[ids[s] - start];
    }
    std::vector<int64_t> next(end - start, 0);
    for (int64_t e = 1; e < end - start; ++e) next[e] = next[e - 1] + counts[e - 1];
    at::Tensor expanded_x = at::zeros({rows, hidden}, x.options());
    at::Tensor row_idx = at::full({total}, -1, idx.options());
    at::Tensor scale_out = at::zeros({rows}, x.options().dtype(at::kFloat));
    int32_t* ri = row_idx.data_ptr<int32_t>();
    std::vector<int64_t> dst_src(rows, -1);  // dst row -> source position
    for (int64_t s = 0; s < total; ++s) {
      if (ids[s] < start || ids[s] >= end) continue;
      const int64_t dst = next[ids[s] - start]++;
      if (dst < rows) dst_src[dst] = s;
    }
    std::fill(counts.begin(), counts.end(), 0);
    int64_t emitted = 0;
    for (int64_t dst = 0; dst < rows && dst_src[dst] >= 0; ++dst, ++emitted) {
      const int64_t s = dst_src[dst];
      ++counts[ids[s] - start];
      if (row_idx_type == 0) {
        ri[s] = static_cast<int32_t>(dst);
      } else {
        ri[dst] = static_cast<int32_t>(s);
      }
    }
    const int64_t row_bytes = hidden * x.element_size();
    const char* xs = static_cast<const char*>(x.const_data_ptr());
    char* xd = static_cast<char*>(expanded_x.data_ptr());
    at::parallel_for(0, emitted, std::max<int64_t>(1, (1 << 18) / std::max<int64_t>(1, row_bytes)),
                     [&](int64_t lo, int64_t hi) {
      for (int64_t dst = lo; dst < hi; ++dst) {
        std::memcpy(xd + dst * row_bytes, xs + (dst_src[dst] / k) * row_bytes, row_bytes);
      }
    });
    at::Tensor tokens;
    if (count_type == 1) {
      tokens = at::tensor(counts, x.options().dtype(at::kLong));
    } else {  // (expert_id, count) of non-empty experts, then a (0, 0) terminator
      tokens = at::zeros({expert_num, 2}, x.options().dtype(at::kLong));
      int64_t* kv = tokens.data_ptr<int64_t>();
      int64_t n = 0;
      for (int64_t e = 0; e < end - start; ++e) {
        if (counts[e] == 0) continue;
        kv[2 * n] = e + start;
        kv[2 * n + 1] = counts[e];
        ++n;
      }
    }
    out = {expanded_x, row_idx, tokens, scale_out};
    return std::nullopt;
  });
}

// ---- npu_grouped_matmul ------------------------------------------------------------------------

enum GmmArg { kMX, kMW, kMBias, kMGroupList, kMSplit, kMGroupType, kMListType, kMActType,
              kMOutDtype, kMFirstUnsupported };
const std::vector<const char*>& gmm_arg_names() {
  static const std::vector<const char*> names = {
      "x", "weight", "bias", "group_list", "split_item", "group_type", "group_list_type",
      "act_type", "output_dtype",
      // Arguments the fast kernel does not take: any of them set means a decline.
      "scale", "offset", "antiquant_scale", "antiquant_offset", "per_token_scale",
      "activation_input", "activation_quant_scale", "activation_quant_offset", "x_dtype",
      "weight_dtype", "scale_dtype", "per_token_scale_dtype"};
  return names;
}

constexpr int64_t kInnerLimit = 65536;

// Each group's rows times its expert's weight, converted to fp32 once per call (a bf16 GEMM
// runs about ten times slower than an fp32 one on a host without AVX-512 BF16), through ATen's
// GEMM; the fp32 result (+ bias) is rounded once into y. No vector code of its own, so it is
// compiled once, not per CPU_CAPABILITY. A streaming bf16 kernel for small groups was tried and
// measured slower than this at 1 and 16 tokens (E=64, top-8, H=1024).
void grouped_matmul(const at::Tensor& x, const at::Tensor& w, const float* bias,
                    const std::vector<int64_t>& ends, at::Tensor& y) {
  const int64_t n_dim = y.size(1);
  int64_t begin = 0;
  for (int64_t g = 0; g < static_cast<int64_t>(ends.size()); ++g) {
    const int64_t end = ends[g];
    if (end > begin) {
      at::Tensor acc = at::mm(x.slice(0, begin, end).to(at::kFloat), w[g].to(at::kFloat));
      if (bias != nullptr) {
        acc.add_(at::from_blob(const_cast<float*>(bias) + g * n_dim, {n_dim}, at::kFloat));
      }
      y.slice(0, begin, end).copy_(acc);
    }
    begin = end;
  }
}

void grouped_matmul_boxed(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  serve("npu_grouped_matmul", op, stack,
        [](const Args& a, std::vector<c10::IValue>& out) -> Decline {
    for (size_t i = kMFirstUnsupported; i < gmm_arg_names().size(); ++i) {
      if (!a.none(i)) return std::string("argument ") + gmm_arg_names()[i];
    }
    if (!a.none(kMOutDtype)) return "output_dtype";
    if (!a.none(kMActType) && a[kMActType].toInt() != 0) return "act_type";
    if (a.none(kMSplit) || (a[kMSplit].toInt() != 2 && a[kMSplit].toInt() != 3)) {
      return "split_item";
    }
    if (a.none(kMGroupType) || a[kMGroupType].toInt() != 0) return "group_type";
    if (a.none(kMGroupList)) return "no group_list";
    const int64_t list_type = a.none(kMListType) ? 0 : a[kMListType].toInt();
    if (list_type != 0 && list_type != 1) return "group_list_type";
    const auto xs = a[kMX].toTensorList();
    const auto ws = a[kMW].toTensorList();
    if (xs.size() != 1 || ws.size() != 1) return "tensor lists";
    const at::Tensor x = xs.get(0), w = ws.get(0);
    if (x.dim() != 2 || w.dim() != 3) return "ranks";
    if (!float_dtype(x.scalar_type()) || w.scalar_type() != x.scalar_type()) return "dtypes";
    if (!x.is_contiguous() || !w.is_contiguous()) return "non-contiguous x or weight";
    const at::Tensor& gl = a.tensor(kMGroupList);
    if (gl.dim() != 1 || gl.scalar_type() != at::kLong || !gl.is_contiguous()) return "group_list";
    const int64_t groups = gl.size(0), m = x.size(0), kd = x.size(1), n = w.size(2);
    if (groups > 1024 || w.size(0) != groups || w.size(1) != kd) return "group shapes";
    if (list_type == 1 && groups == 1) return "one count";
    if (kd >= kInnerLimit || n >= kInnerLimit) return "inner dim";
    at::Tensor bias;
    if (!a.none(kMBias)) {
      const auto bs = a[kMBias].toTensorList();
      if (bs.size() != 1) return "bias list";
      bias = bs.get(0);
      const auto want = x.scalar_type() == at::kHalf ? at::kHalf : at::kFloat;
      if (bias.scalar_type() != want || bias.dim() != 2 || bias.size(0) != groups ||
          bias.size(1) != n) {
        return "bias";
      }
      bias = bias.to(at::kFloat).contiguous();
    }
    const int64_t* g = gl.const_data_ptr<int64_t>();
    std::vector<int64_t> ends(groups);
    int64_t prev = 0;
    for (int64_t i = 0; i < groups; ++i) {
      if (g[i] < 0) return "negative group_list entry";
      ends[i] = list_type == 0 ? g[i] : prev + g[i];
      if (ends[i] < prev) return "group_list not non-decreasing";
      prev = ends[i];
    }
    if (prev != m) return "groups do not cover x";
    at::Tensor y = at::empty({m, n}, x.options());
    if (y.numel() > 0) {
      grouped_matmul(x, w, bias.defined() ? bias.const_data_ptr<float>() : nullptr, ends, y);
    }
    out = {c10::IValue(std::vector<at::Tensor>{y})};
    return std::nullopt;
  });
}

// ---- npu_moe_token_unpermute -------------------------------------------------------------------

enum UnpermuteArg { kUTokens, kUIdx, kUProbs, kUPadded, kURestore };
void token_unpermute_boxed(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  serve("npu_moe_token_unpermute", op, stack,
        [](const Args& a, std::vector<c10::IValue>& out) -> Decline {
    if (a[kUPadded].toBool() || !a.none(kURestore)) return "padded_mode / restore_shape";
    const at::Tensor& rows = a.tensor(kUTokens);
    const at::Tensor& idx = a.tensor(kUIdx);
    if (rows.dim() != 2 || !float_dtype(rows.scalar_type())) return "permuted_tokens";
    if (idx.dim() != 1 || (idx.scalar_type() != at::kInt && idx.scalar_type() != at::kLong)) {
      return "sorted_indices";
    }
    if (!rows.is_contiguous() || !idx.is_contiguous()) return "non-contiguous input";
    const int64_t total = idx.size(0);
    if (rows.size(0) != total) return "row count";
    int64_t topk = 1;
    at::Tensor probs;
    if (!a.none(kUProbs)) {
      probs = a.tensor(kUProbs);
      if (probs.dim() != 2 || !float_dtype(probs.scalar_type())) return "probs";
      topk = probs.size(1);
      if (topk > 512 || probs.size(0) * topk != total) return "probs shape";
      probs = probs.to(at::kFloat).contiguous();
    }
    if (topk == 0 || total % topk != 0) return "topK";
    // In range and no index twice (the reference's rules).
    std::vector<char> seen(total, 0);
    const at::Tensor idx64 = idx.to(at::kLong);
    const int64_t* ip = idx64.const_data_ptr<int64_t>();
    for (int64_t i = 0; i < total; ++i) {
      if (ip[i] < 0 || ip[i] >= total) return "index out of range";
      if (seen[ip[i]]++) return "duplicate index";
    }
    at::Tensor y = at::empty({total / topk, rows.size(1)}, rows.options());
    VLLM_ASCEND_CPU_CALL(moe_combine_kernel, rows, idx,
                         probs.defined() ? probs.const_data_ptr<float>() : nullptr, topk, y);
    out = {y};
    return std::nullopt;
  });
}

}  // namespace

const std::vector<Entry>& moe_entries() {
  static const std::vector<Entry> t = {
      {"npu_moe_gating_top_k_softmax",
       [] { return torch::CppFunction::makeFromBoxedFunction<&gating_softmax_boxed>(); },
       {"x", "finished", "k"}},
      {"npu_moe_init_routing_v2",
       [] { return torch::CppFunction::makeFromBoxedFunction<&init_routing_boxed>(); },
       {"x", "expert_idx", "scale", "offset", "active_num", "expert_num", "drop_pad_mode",
        "expert_tokens_num_type", "expert_tokens_num_flag", "quant_mode", "active_expert_range",
        "row_idx_type", "x_dtype"}},
      {"npu_grouped_matmul",
       [] { return torch::CppFunction::makeFromBoxedFunction<&grouped_matmul_boxed>(); },
       gmm_arg_names()},
      {"npu_moe_token_unpermute",
       [] { return torch::CppFunction::makeFromBoxedFunction<&token_unpermute_boxed>(); },
       {"permuted_tokens", "sorted_indices", "probs", "padded_mode", "restore_shape"}},
  };
  return t;
}

}  // namespace vllm_ascend::fast_cpu
