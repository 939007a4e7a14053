// Boxed CPU kernels of torch_npu ops backed by cpu/fast_kernels.cpp (see cpu/fast_ops.h).
//
// Each kernel first decides whether it covers the call: every input constraint the Python
// reference enforces for that kind of call must hold (so a fast pass is as strict as a reference
// pass: legal on an NPU), and the call must be of the kinds the fast kernel implements. Anything
// else (an illegal call, a layout or mode the fast kernel lacks) goes, with its stack untouched,
// to the reference vllm_ascend_ref::<op>, which raises naming the violated constraint or computes
// the call; the reason is recorded for one log line per (op, reason) on the Python side.
#include "cpu/fast_ops.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <optional>

#include "cpu/fast_kernels.h"
#include "cpu/fast_serve.h"
#include "cpu/isa.h"

namespace vllm_ascend::fast_cpu {

namespace {

constexpr const char* kRefNamespace = "vllm_ascend_ref";
constexpr int64_t kIntMax = 2147483647;

struct OpState {
  std::atomic<int64_t> fast{0}, reference{0};
  std::mutex mu;
  std::vector<std::string> reasons;  // distinct decline reasons, in order seen
  size_t reported = 0;
  std::optional<c10::OperatorHandle> ref;
  std::vector<size_t> index;  // argument positions, by the op's own argument-name list
};

std::map<std::string, OpState>& states() {
  static std::map<std::string, OpState> s;
  return s;
}

std::atomic<bool> g_enabled{true};

}  // namespace

void serve(const char* name, const c10::OperatorHandle& op, torch::jit::Stack* stack, Plan plan) {
  OpState& st = states().at(name);
  if (!g_enabled.load(std::memory_order_relaxed)) {  // references selected at run time (tests)
    st.ref->callBoxed(stack);
    return;
  }
  const size_t n = op.schema().arguments().size();
  Args args(st.index, stack, n);
  std::vector<c10::IValue> outputs;
  const Decline why = plan(args, outputs);
  if (!why) {
    torch::jit::drop(*stack, n);
    for (auto& o : outputs) stack->push_back(std::move(o));
    st.fast.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  st.reference.fetch_add(1, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> g(st.mu);
    if (std::find(st.reasons.begin(), st.reasons.end(), *why) == st.reasons.end() &&
        st.reasons.size() < 64) {
      st.reasons.push_back(*why);
    }
  }
  st.ref->callBoxed(stack);
}

std::optional<std::vector<int64_t>> int_list(const c10::IValue& v) {
  if (v.isNone()) return std::nullopt;
  if (v.isIntList()) return v.toIntVector();
  std::vector<int64_t> out;
  for (const c10::SymInt& s : v.toSymIntVector()) out.push_back(s.guard_int(__FILE__, __LINE__));
  return out;
}

bool float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

namespace {

// ---- npu_rms_norm / npu_add_rms_norm ---------------------------------------------------------

std::vector<int64_t> rstd_shape(const at::Tensor& x) {
  std::vector<int64_t> s(x.sizes().begin(), x.sizes().end());
  s.back() = 1;
  return s;
}

Decline check_norm(const at::Tensor& x, const at::Tensor& gamma, int64_t min_dims) {
  if (!float_dtype(x.scalar_type())) return "x dtype";
  if (x.dim() < min_dims || x.dim() > 8) return "x rank";
  if (gamma.scalar_type() != x.scalar_type()) return "gamma dtype";
  if (gamma.dim() != 1) return "gamma of more than one dim";
  if (gamma.size(0) != x.size(-1)) return "gamma shape";
  if (!x.is_contiguous()) return "non-contiguous x";
  return std::nullopt;
}

enum RmsArg { kRmsX, kRmsGamma, kRmsEps };
void rms_norm_boxed(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  serve("npu_rms_norm", op, stack, [](const Args& a, std::vector<c10::IValue>& out) -> Decline {
    const at::Tensor& x = a.tensor(kRmsX);
    const at::Tensor& gamma = a.tensor(kRmsGamma);
    if (auto why = check_norm(x, gamma, 2)) return why;
    at::Tensor y = at::empty(x.sizes(), x.options());
    at::Tensor rstd = at::empty(rstd_shape(x), x.options().dtype(at::kFloat));
    VLLM_ASCEND_CPU_CALL(rms_norm_kernel, x, nullptr, gamma, a[kRmsEps].toDouble(), y, rstd,
                         nullptr);
    out = {y, rstd};
    return std::nullopt;
  });
}

enum AddRmsArg { kAddX1, kAddX2, kAddGamma, kAddEps };
void add_rms_norm_boxed(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  serve("npu_add_rms_norm", op, stack, [](const Args& a, std::vector<c10::IValue>& out) -> Decline {
    const at::Tensor& x1 = a.tensor(kAddX1);
    const at::Tensor& x2 = a.tensor(kAddX2);
    const at::Tensor& gamma = a.tensor(kAddGamma);
    if (auto why = check_norm(x1, gamma, 1)) return why;
    if (x2.sizes() != x1.sizes() || x2.scalar_type() != x1.scalar_type()) return "x2 shape/dtype";
    if (x1.numel() == 0) return "empty x1";
    if (!x2.is_contiguous()) return "non-contiguous x2";
    at::Tensor y = at::empty(x1.sizes(), x1.options());
    at::Tensor rstd = at::empty(rstd_shape(x1), x1.options().dtype(at::kFloat));
    at::Tensor sum = at::empty(x1.sizes(), x1.options());
    VLLM_ASCEND_CPU_CALL(rms_norm_kernel, x1, &x2, gamma, a[kAddEps].toDouble(), y, rstd, &sum);
    out = {y, rstd, sum};
    return std::nullopt;
  });
}

// ---- npu_swiglu --------------------------------------------------------------------------------

enum SwigluArg { kSwX, kSwDim };
void swiglu_boxed(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  serve("npu_swiglu", op, stack, [](const Args& a, std::vector<c10::IValue>& out) -> Decline {
    const at::Tensor& x = a.tensor(kSwX);
    if (!float_dtype(x.scalar_type())) return "x dtype";
    if (x.dim() < 1 || x.dim() > 8) return "x rank";
    const int64_t dim = a[kSwDim].toInt();
    if (dim != -1 && dim != x.dim() - 1) return "split along a dim other than the last";
    if (x.size(-1) % 2 != 0) return "odd size";
    if (!x.is_contiguous()) return "non-contiguous x";
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
    shape.back() /= 2;
    at::Tensor y = at::empty(shape, x.options());
    VLLM_ASCEND_CPU_CALL(swiglu_kernel, x, y);
    out = {y};
    return std::nullopt;
  });
}

// ---- npu_scatter_pa_kv_cache ("Norm" cache mode) -------------------------------------------------

bool cache_dtype(at::ScalarType t) {
  static const std::array<at::ScalarType, 11> ok = {
      at::kHalf,   at::kFloat,  at::kBFloat16, at::kChar,          at::kByte,          at::kShort,
      at::kUInt16, at::kInt,    at::kUInt32,   at::kFloat8_e5m2, at::kFloat8_e4m3fn};
  return std::find(ok.begin(), ok.end(), t) != ok.end();
}

enum ScatterArg { kScKey, kScValue, kScKeyCache, kScValueCache, kScSlots, kScCompressLens,
                  kScCompressOffsets, kScSeqLens, kScMode };
void scatter_boxed(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  serve("npu_scatter_pa_kv_cache", op, stack,
        [](const Args& a, std::vector<c10::IValue>&) -> Decline {
    if (!a.none(kScCompressLens) || !a.none(kScCompressOffsets) || !a.none(kScSeqLens)) {
      return "compress scenario";
    }
    if (!a.none(kScMode) && a[kScMode].toStringRef() != "Norm") return "cache_mode other than Norm";
    const at::Tensor& key = a.tensor(kScKey);
    const at::Tensor& value = a.tensor(kScValue);
    at::Tensor key_cache = a.tensor(kScKeyCache);
    at::Tensor value_cache = a.tensor(kScValueCache);
    const at::Tensor& slots = a.tensor(kScSlots);
    if (key.dim() != 3 || value.dim() != 3 || key_cache.dim() != 4 || value_cache.dim() != 4) {
      return "ranks";
    }
    if (key.size(0) != value.size(0) || key.size(1) != value.size(1)) return "key/value shapes";
    const auto dt = key.scalar_type();
    if (value.scalar_type() != dt || key_cache.scalar_type() != dt ||
        value_cache.scalar_type() != dt || !cache_dtype(dt)) {
      return "dtypes";
    }
    for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&key, &value, &key_cache, &value_cache, &slots}) {
      if (!t->is_contiguous()) return "non-contiguous input";
    }
    const int64_t nb = key_cache.size(0), bs = key_cache.size(1), tokens = key.size(0);
    if (value_cache.size(0) != nb || value_cache.size(1) != bs) return "cache shapes";
    if (slots.scalar_type() != at::kInt && slots.scalar_type() != at::kLong) return "slot dtype";
    if (slots.dim() != 1 || slots.numel() != tokens) return "slot shape";
    if (key.size(1) != key_cache.size(2) || key.size(2) != key_cache.size(3) ||
        value.size(1) != value_cache.size(2) || value.size(2) != value_cache.size(3)) {
      return "row shape differs from the cache's";
    }
    // Slots in range and distinct (the reference's rules), on a sorted copy.
    std::vector<int64_t> sorted(tokens);
    if (slots.scalar_type() == at::kInt) {
      const int32_t* s = slots.const_data_ptr<int32_t>();
      std::copy(s, s + tokens, sorted.begin());
    } else {
      const int64_t* s = slots.const_data_ptr<int64_t>();
      std::copy(s, s + tokens, sorted.begin());
    }
    std::sort(sorted.begin(), sorted.end());
    if (tokens > 0 && (sorted.front() < 0 || sorted.back() >= nb * bs)) return "slot out of range";
    if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) return "duplicate slots";
    VLLM_ASCEND_CPU_CALL(scatter_rows_kernel, key, key_cache, slots);
    VLLM_ASCEND_CPU_CALL(scatter_rows_kernel, value, value_cache, slots);
    return std::nullopt;
  });
}

// ---- npu_fused_infer_attention_score (layout TND) --------------------------------------------

constexpr int64_t kMaskSize = 2048;

// The compressed mask of sparse modes 2-4 must be the triangular template; checked once per mask
// tensor and version (inference tensors, which have no version counter, on every call).
bool is_mask_template(const at::Tensor& m) {
  static std::mutex mu;
  static std::vector<std::pair<c10::weak_intrusive_ptr<c10::TensorImpl>, uint32_t>> verified;
  const bool versioned = !m.is_inference();
  const uint32_t version = versioned ? m._version() : 0;
  if (versioned) {
    std::lock_guard<std::mutex> g(mu);
    for (auto& [w, v] : verified) {
      if (v == version && w.lock().get() == m.unsafeGetTensorImpl()) return true;
    }
  }
  const auto* d = static_cast<const uint8_t*>(m.const_data_ptr());
  for (int64_t i = 0; i < kMaskSize; ++i) {
    for (int64_t j = 0; j < kMaskSize; ++j) {
      if ((d[i * kMaskSize + j] != 0) != (j > i)) return false;
    }
  }
  if (versioned) {
    std::lock_guard<std::mutex> g(mu);
    verified.emplace_back(c10::weak_intrusive_ptr<c10::TensorImpl>(m.getIntrusivePtr()), version);
    if (verified.size() > 8) verified.erase(verified.begin());
  }
  return true;
}

Decline check_compressed_mask(const c10::IValue& v) {
  if (v.isNone()) return "no compressed mask";
  const at::Tensor& m = v.toTensor();
  const auto s = m.sizes();
  const bool shape_ok = (s.size() == 2 && s[0] == kMaskSize && s[1] == kMaskSize) ||
                        (s.size() == 3 && s[0] == 1 && s[1] == kMaskSize && s[2] == kMaskSize) ||
                        (s.size() == 4 && s[0] == 1 && s[1] == 1 && s[2] == kMaskSize &&
                         s[3] == kMaskSize);
  if (!shape_ok) return "mask shape";
  const auto dt = m.scalar_type();
  if (dt != at::kBool && dt != at::kChar && dt != at::kByte) return "mask dtype";
  if (!m.is_contiguous()) return "non-contiguous mask";
  if (!is_mask_template(m)) return "mask contents";
  return std::nullopt;
}

// Cumulative lengths -> (starts, lengths); the last entry must equal `total`.
Decline cumulative(const std::optional<std::vector<int64_t>>& ends, int64_t total,
                   std::vector<int64_t>& starts, std::vector<int64_t>& lens) {
  if (!ends || ends->empty()) return "missing or empty cumulative lengths";
  int64_t prev = 0;
  for (int64_t e : *ends) {
    if (e < prev) return "lengths not non-decreasing";
    starts.push_back(prev);
    lens.push_back(e - prev);
    prev = e;
  }
  if (prev != total) return "last cumulative length differs from the token count";
  return std::nullopt;
}

// The schema's arguments this kernel reads, in this order (see install()).
const std::vector<const char*>& fia_arg_names() {
  static const std::vector<const char*> names = {
      "query", "key", "value", "atten_mask", "actual_seq_lengths", "actual_seq_lengths_kv",
      "block_table", "num_heads", "scale", "pre_tokens", "next_tokens", "input_layout",
      "num_key_value_heads", "sparse_mode", "inner_precise", "block_size", "softmax_lse_flag",
      "antiquant_mode", "key_antiquant_mode", "value_antiquant_mode",
      // Tensor arguments the fast kernel does not take: any of them set means a decline.
      "pse_shift", "dequant_scale1", "quant_scale1", "dequant_scale2", "quant_scale2",
      "quant_offset2", "antiquant_scale", "antiquant_offset", "key_antiquant_scale",
      "key_antiquant_offset", "value_antiquant_scale", "value_antiquant_offset",
      "query_padding_size", "kv_padding_size", "key_shared_prefix", "value_shared_prefix",
      "actual_shared_prefix_len", "query_rope", "key_rope", "key_rope_antiquant_scale"};
  return names;
}
enum FiaArg { kQ, kK, kV, kMask, kSeq, kSeqKv, kBlockTable, kHeads, kScale, kPre, kNext, kLayout,
              kKvHeads, kSparse, kPrecise, kBlockSize, kLse, kAqMode, kKAqMode, kVAqMode,
              kFirstUnsupported };

// (query/key head dim, value head dim) pairs layout TND takes (CANN's TND tiling check).
bool tnd_head_dims(int64_t d, int64_t dv) {
  return (d == 64 && dv == 64) || (d == 128 && dv == 128) || (d == 192 && dv == 192) ||
         (d == 192 && dv == 128);
}

Decline plan_attention(const Args& a, std::vector<c10::IValue>& outputs) {
  for (size_t i = kFirstUnsupported; i < fia_arg_names().size(); ++i) {
    if (!a.none(i)) return std::string("argument ") + fia_arg_names()[i];
  }
  if (a[kAqMode].toInt() != 0 || a[kKAqMode].toInt() != 0 || a[kVAqMode].toInt() != 0) {
    return "antiquant modes";
  }
  const int64_t precise = a[kPrecise].toInt();
  if (precise < 0 || precise > 3) return "inner_precise";
  if (a[kLayout].toStringRef() != "TND") return "layout " + a[kLayout].toStringRef();
  const at::Tensor& q = a.tensor(kQ);
  const at::Tensor& k = a.tensor(kK);
  const at::Tensor& v = a.tensor(kV);
  const auto dt = q.scalar_type();
  if (!float_dtype(dt) || k.scalar_type() != dt || v.scalar_type() != dt) return "dtypes";
  if (!q.is_contiguous() || !k.is_contiguous() || !v.is_contiguous()) return "non-contiguous";
  const double scale = a[kScale].toDouble();
  if (!(std::isfinite(scale) && scale > 0)) return "scale";
  const int64_t heads = a[kHeads].toInt(), kv_heads_arg = a[kKvHeads].toInt();
  if (heads <= 0 || kv_heads_arg < 0 || heads > 256) return "num_heads";
  const int64_t kv_heads = kv_heads_arg == 0 ? heads : kv_heads_arg;
  if (heads % kv_heads != 0 || heads / kv_heads > 64) return "num_key_value_heads";
  if (q.dim() != 3 || q.size(1) != heads) return "query shape";
  const int64_t tokens = q.size(0), d = q.size(2);
  if (d > 512) return "head dim";

  AttentionProblem p;
  if (auto why = cumulative(int_list(a[kSeq]), tokens, p.q_start, p.q_len)) return why;
  const int64_t batch = static_cast<int64_t>(p.q_len.size());
  if (batch > 65536) return "batch";
  const auto kv_list = int_list(a[kSeqKv]);
  int64_t dv = 0;
  if (!a.none(kBlockTable)) {
    const at::Tensor& bt = a.tensor(kBlockTable);
    if (bt.scalar_type() != at::kInt || bt.dim() != 2 || bt.size(0) != batch) return "block_table";
    if (!bt.is_contiguous()) return "non-contiguous block_table";
    if (k.sizes() != v.sizes()) return "paged key/value shapes";
    if (k.dim() != 3) return "paged cache layout other than [blocks, block_size, H]";
    if (k.numel() > kIntMax) return "cache size";
    const int64_t nb = k.size(0), bs = k.size(1), h = k.size(2);
    if (h % kv_heads != 0 || h > 65535) return "cache hidden size";
    if (a[kBlockSize].toInt() != bs) return "block_size";
    if (bs % 128 != 0 || bs < 128 || bs > 512) return "block size";
    if (!kv_list || static_cast<int64_t>(kv_list->size()) != batch) return "actual_seq_lengths_kv";
    const int32_t* table = bt.const_data_ptr<int32_t>();
    const int64_t max_blocks = bt.size(1);
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t n = (*kv_list)[b];
      if (n < 0) return "negative kv length";
      const int64_t need = (n + bs - 1) / bs;
      if (need > max_blocks) return "block_table too narrow";
      for (int64_t i = 0; i < need; ++i) {
        const int32_t id = table[b * max_blocks + i];
        if (id < 0 || id >= nb) return "block id out of range";
      }
    }
    p.kv_len = *kv_list;
    p.block_table = table;
    p.block_table_stride = max_blocks;
    p.block_size = bs;
    if (h / kv_heads != d) return "key head dim";
    dv = h / kv_heads;
  } else {
    if (k.dim() != 3 || v.dim() != 3 || k.size(1) != kv_heads || v.size(1) != kv_heads ||
        k.size(0) != v.size(0)) {
      return "dense key/value shapes";
    }
    if (auto why = cumulative(kv_list, k.size(0), p.kv_start, p.kv_len)) return why;
    if (static_cast<int64_t>(p.kv_len.size()) != batch) return "actual_seq_lengths_kv";
    if (k.size(2) != d) return "key head dim";
    dv = v.size(2);
  }
  if (!tnd_head_dims(d, dv)) return "head dims";

  int64_t max_len = 0, min_q = kIntMax, min_kv = kIntMax;
  for (int64_t b = 0; b < batch; ++b) {
    max_len = std::max({max_len, p.q_len[b], p.kv_len[b]});
    min_q = std::min(min_q, p.q_len[b]);
    min_kv = std::min(min_kv, p.kv_len[b]);
  }
  const int64_t sparse = a[kSparse].toInt(), pre = a[kPre].toInt(), next = a[kNext].toInt();
  if (sparse == 0) {
    if (!a.none(kMask)) return "full mask";
    if (pre < max_len - 1 || next < max_len - 1) return "window with sparse_mode 0";
    p.mask = AttentionProblem::Mask::kNone;
  } else if (sparse == 3 || sparse == 4) {
    if (auto why = check_compressed_mask(a[kMask])) return why;
    if (sparse == 3) {
      p.mask = AttentionProblem::Mask::kCausal;
    } else {
      if (pre + next < 0 || pre < -min_q || next < -min_kv) return "band limits";
      p.mask = AttentionProblem::Mask::kBand;
      p.pre_tokens = pre;
      p.next_tokens = next;
    }
  } else {
    return "sparse_mode " + std::to_string(sparse);
  }

  at::Tensor out = at::empty({tokens, heads, dv}, q.options());
  const bool want_lse = a[kLse].toBool();
  at::Tensor lse = want_lse ? at::empty({tokens, heads, 1}, q.options().dtype(at::kFloat))
                            : at::empty({0}, q.options().dtype(at::kFloat));
  p.query = &q;
  p.key = &k;
  p.value = &v;
  p.out = &out;
  p.lse = want_lse ? lse.data_ptr<float>() : nullptr;
  p.num_heads = heads;
  p.kv_heads = kv_heads;
  p.head_dim = d;
  p.v_head_dim = dv;
  p.scale = static_cast<float>(scale);
  VLLM_ASCEND_CPU_CALL(attention_kernel, p);
  outputs = {out, lse};
  return std::nullopt;
}

void attention_boxed(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  serve("npu_fused_infer_attention_score", op, stack, plan_attention);
}

// ---- table -------------------------------------------------------------------------------------

const std::vector<Entry>& table() {
  static const std::vector<Entry> t = [] {
    std::vector<Entry> own = {
      {"npu_rms_norm", [] { return torch::CppFunction::makeFromBoxedFunction<&rms_norm_boxed>(); },
       {"self", "gamma", "epsilon"}},
      {"npu_add_rms_norm",
       [] { return torch::CppFunction::makeFromBoxedFunction<&add_rms_norm_boxed>(); },
       {"x1", "x2", "gamma", "epsilon"}},
      {"npu_swiglu", [] { return torch::CppFunction::makeFromBoxedFunction<&swiglu_boxed>(); },
       {"self", "dim"}},
      {"npu_scatter_pa_kv_cache",
       [] { return torch::CppFunction::makeFromBoxedFunction<&scatter_boxed>(); },
       {"key", "value", "key_cache", "value_cache", "slot_mapping", "compress_lens",
        "compress_seq_offsets", "seq_lens", "cache_mode"}},
      {"npu_fused_infer_attention_score",
       [] { return torch::CppFunction::makeFromBoxedFunction<&attention_boxed>(); },
       fia_arg_names()},
    };
    own.insert(own.end(), moe_entries().begin(), moe_entries().end());
    return own;
  }();
  return t;
}

std::mutex& install_mutex() {
  static std::mutex mu;
  return mu;
}

}  // namespace

std::vector<std::string> op_names() {
  std::vector<std::string> out;
  for (const Entry& e : table()) out.emplace_back(e.name);
  return out;
}

void install(const std::string& name) {
  std::lock_guard<std::mutex> g(install_mutex());
  const auto it = std::find_if(table().begin(), table().end(),
                               [&](const Entry& e) { return name == e.name; });
  TORCH_CHECK(it != table().end(), "vllm-ascend: no fast CPU kernel for npu::", name);
  OpState& st = states()[name];
  if (st.ref) return;  // installed already
  auto& dispatcher = c10::Dispatcher::singleton();
  const auto npu_op = dispatcher.findSchema({"npu::" + name, ""});
  const auto ref_op = dispatcher.findSchema({std::string(kRefNamespace) + "::" + name, ""});
  TORCH_CHECK(npu_op.has_value() && ref_op.has_value(), "vllm-ascend: install the fast CPU kernel",
              " of npu::", name, " after its schema and its reference ", kRefNamespace, "::",
              name, " are registered");
  TORCH_CHECK(npu_op->schema().arguments().size() == ref_op->schema().arguments().size(),
              "vllm-ascend: npu::", name, " and its reference have different schemas");
  for (const char* arg : it->args) {
    const auto idx = npu_op->schema().argumentIndexWithName(arg);
    TORCH_CHECK(idx.has_value(), "vllm-ascend: npu::", name, " has no argument ", arg);
    st.index.push_back(*idx);
  }
  // Lives for the process: the registration is dropped when its Library is destroyed.
  static std::vector<std::unique_ptr<torch::Library>> libs;
  libs.push_back(std::make_unique<torch::Library>(torch::Library::IMPL, "npu",
                                                  c10::DispatchKey::CPU, __FILE__, __LINE__));
  libs.back()->impl(name.c_str(), it->make());
  st.ref = *ref_op;
}

void set_enabled(bool enabled) { g_enabled = enabled; }

std::vector<Counters> counters() {
  std::vector<Counters> out;
  for (auto& [name, st] : states()) {
    out.push_back({name, st.fast.load(), st.reference.load()});
  }
  return out;
}

std::vector<std::pair<std::string, std::string>> take_new_declines() {
  std::vector<std::pair<std::string, std::string>> out;
  for (auto& [name, st] : states()) {
    std::lock_guard<std::mutex> g(st.mu);
    for (; st.reported < st.reasons.size(); ++st.reported) {
      out.emplace_back(name, st.reasons[st.reported]);
    }
  }
  return out;
}

}  // namespace vllm_ascend::fast_cpu
