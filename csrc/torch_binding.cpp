// Registers the _C_ascend operator library with the PyTorch dispatcher and provides the Python
// module init, so the shared library is importable as vllm_ascend._C_ascend.
//
// Dispatch keys:
//   CPU          csrc/cpu/           always built
//   Meta         csrc/meta.cpp       always built (shape functions for FakeTensor / compile)
//   PrivateUse1  csrc/ascend/        only when CANN was found at build time (torch_npu's key)
#include <Python.h>

#include <torch/library.h>

#include "cpu/fast_ops.h"
#include "ops.h"

#if defined(VLLM_ASCEND_WITH_CANN) && defined(VLLM_ASCEND_ASCENDC_OPT_OUT)
#error "VLLM_ASCEND_ASCENDC_OPT_OUT (a CPU-only build by choice) contradicts VLLM_ASCEND_WITH_CANN"
#endif

// Schemas. Keep in sync with vllm_ascend/kernels/extension.py (EXPECTED_SCHEMAS): the Python side
// refuses to use an extension whose registered schemas differ (a stale build).
TORCH_LIBRARY(_C_ascend, m) {
  // Rotates query (and key, if given) in place. positions: [T] or [B, S] (int64/int32);
  // query/key: [T, heads * head_size] or [T, heads, head_size] (or with [B, S] leading),
  // any token stride (views into a fused qkv are fine); cos_sin_cache: [max_position, rot_dim],
  // cos in the first rot_dim/2 columns, sin in the rest. Dims >= rot_dim of each head are
  // left untouched (partial rotary).
  m.def(
      "rotary_embedding(Tensor positions, Tensor(a!) query, Tensor(b!)? key, int head_size, "
      "Tensor cos_sin_cache, bool is_neox) -> ()");
  // Vocab-parallel embedding input masking. Returns (masked ids int64, mask bool) where mask is
  // True for ids that this shard does not own.
  m.def(
      "get_masked_input_and_mask(Tensor input, int org_vocab_start_index, "
      "int org_vocab_end_index, int num_org_vocab_padding, int added_vocab_start_index, "
      "int added_vocab_end_index) -> (Tensor, Tensor)");
  // Decode-path fusion for W8A8 models: residual add + RMSNorm + per-token symmetric int8
  // quantisation. Unfused, the normed activations are written to memory in bf16 by the norm
  // and read back by the quantiser (2 x T x hidden x 2 bytes of traffic per layer, plus a launch);
  // fused, each row stays on-chip (UB on the NPU, L1/L2 on the CPU) between the three steps.
  // Returns (y int8 [..., hidden], scale float32 [...], residual_out [..., hidden]) with
  // x + residual = residual_out and y * scale ~= rms_norm(residual_out) * weight.
  m.def(
      "add_rms_norm_dynamic_quant(Tensor x, Tensor residual, Tensor weight, float epsilon) "
      "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(_C_ascend, CPU, m) {
  m.impl("rotary_embedding", &vllm_ascend::rotary_embedding_cpu);
  m.impl("get_masked_input_and_mask", &vllm_ascend::get_masked_input_and_mask_cpu);
  m.impl("add_rms_norm_dynamic_quant", &vllm_ascend::add_rms_norm_dynamic_quant_cpu);
}

TORCH_LIBRARY_IMPL(_C_ascend, Meta, m) {
  m.impl("rotary_embedding", &vllm_ascend::rotary_embedding_meta);
  m.impl("get_masked_input_and_mask", &vllm_ascend::get_masked_input_and_mask_meta);
  m.impl("add_rms_norm_dynamic_quant", &vllm_ascend::add_rms_norm_dynamic_quant_meta);
}

#ifdef VLLM_ASCEND_WITH_CANN
TORCH_LIBRARY_IMPL(_C_ascend, PrivateUse1, m) {
  m.impl("rotary_embedding", &vllm_ascend::rotary_embedding_npu);
  m.impl("get_masked_input_and_mask", &vllm_ascend::get_masked_input_and_mask_npu);
  m.impl("add_rms_norm_dynamic_quant", &vllm_ascend::add_rms_norm_dynamic_quant_npu);
}
#endif

// ---- Python module ------------------------------------------------------------------------------
// The ops live in the dispatcher (torch.ops._C_ascend.*); importing the module only has to run the
// static registrations above. The attributes describe the build for the Python-side checks.
// The fast CPU kernels of torch_npu ops (cpu/fast_ops.h), driven by vllm_ascend/kernels/fast_cpu.py.
namespace {

template <typename Fn>
PyObject* guarded(Fn&& fn) {
  try {
    return fn();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
}

PyObject* fast_cpu_op_names(PyObject*, PyObject*) {
  return guarded([] {
    const auto names = vllm_ascend::fast_cpu::op_names();
    PyObject* out = PyTuple_New(static_cast<Py_ssize_t>(names.size()));
    for (size_t i = 0; i < names.size(); ++i) {
      PyTuple_SET_ITEM(out, i, PyUnicode_FromString(names[i].c_str()));
    }
    return out;
  });
}

PyObject* fast_cpu_install(PyObject*, PyObject* arg) {
  const char* name = PyUnicode_AsUTF8(arg);
  if (name == nullptr) return nullptr;
  return guarded([&] {
    vllm_ascend::fast_cpu::install(name);
    Py_RETURN_NONE;
  });
}

PyObject* fast_cpu_set_enabled(PyObject*, PyObject* arg) {
  const int enabled = PyObject_IsTrue(arg);
  if (enabled < 0) return nullptr;
  return guarded([&] {
    vllm_ascend::fast_cpu::set_enabled(enabled != 0);
    Py_RETURN_NONE;
  });
}

PyObject* install_weak_ref_tensor_cpu(PyObject*, PyObject*) {
  return guarded([] {
    vllm_ascend::install_weak_ref_tensor_cpu();
    Py_RETURN_NONE;
  });
}

PyObject* fast_cpu_counters(PyObject*, PyObject*) {
  return guarded([] {
    PyObject* out = PyDict_New();
    for (const auto& c : vllm_ascend::fast_cpu::counters()) {
      PyObject* v = Py_BuildValue("(LL)", static_cast<long long>(c.fast),
                                  static_cast<long long>(c.reference));
      PyDict_SetItemString(out, c.name.c_str(), v);
      Py_DECREF(v);
    }
    return out;
  });
}

PyObject* fast_cpu_take_new_declines(PyObject*, PyObject*) {
  return guarded([] {
    const auto declines = vllm_ascend::fast_cpu::take_new_declines();
    PyObject* out = PyList_New(static_cast<Py_ssize_t>(declines.size()));
    for (size_t i = 0; i < declines.size(); ++i) {
      PyList_SET_ITEM(out, i,
                      Py_BuildValue("(ss)", declines[i].first.c_str(), declines[i].second.c_str()));
    }
    return out;
  });
}

PyMethodDef module_methods[] = {
    {"fast_cpu_op_names", fast_cpu_op_names, METH_NOARGS,
     "torch_npu ops with a fast CPU kernel in this build."},
    {"fast_cpu_install", fast_cpu_install, METH_O,
     "Make the fast kernel the CPU kernel of npu::<name> (reference: vllm_ascend_ref::<name>)."},
    {"fast_cpu_set_enabled", fast_cpu_set_enabled, METH_O,
     "False: the installed fast kernels hand every call to their references."},
    {"fast_cpu_counters", fast_cpu_counters, METH_NOARGS,
     "op -> (calls served fast, calls handed to the reference)."},
    {"fast_cpu_take_new_declines", fast_cpu_take_new_declines, METH_NOARGS,
     "(op, reason) of calls handed to the reference, each pair returned once."},
    {"install_weak_ref_tensor_cpu", install_weak_ref_tensor_cpu, METH_NOARGS,
     "Register the C++ CPU kernel of vLLM's _C::weak_ref_tensor (schema defined first)."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

static struct PyModuleDef vllm_ascend_module = {
    PyModuleDef_HEAD_INIT, "_C_ascend",
    "vLLM Ascend native ops; use them through torch.ops._C_ascend.", -1, module_methods,
};

PyMODINIT_FUNC PyInit__C_ascend(void) {
  PyObject* mod = PyModule_Create(&vllm_ascend_module);
  if (mod == nullptr) return nullptr;
#ifdef VLLM_ASCEND_WITH_CANN
  const long with_cann = 1;
#else
  const long with_cann = 0;
#endif
  // Built CPU-only on purpose (setup.py, VLLM_ASCEND_BUILD_ASCENDC=0): on an NPU the Python side
  // then serves the ops through torch compositions instead of refusing the build as incomplete.
#ifdef VLLM_ASCEND_ASCENDC_OPT_OUT
  const long ascendc_opt_out = 1;
#else
  const long ascendc_opt_out = 0;
#endif
  if (PyModule_AddObject(mod, "WITH_CANN", PyBool_FromLong(with_cann)) < 0 ||
      PyModule_AddObject(mod, "ASCENDC_OPT_OUT", PyBool_FromLong(ascendc_opt_out)) < 0 ||
      PyModule_AddStringConstant(mod, "CPU_KERNEL_ISA", vllm_ascend::cpu_kernel_isa()) < 0 ||
      PyModule_AddStringConstant(mod, "SOC_VERSION", VLLM_ASCEND_SOC_VERSION) < 0) {
    Py_DECREF(mod);
    return nullptr;
  }
  return mod;
}
