"""What serves the _C_ascend ops on an NPU host (kernels/extension.py): the Ascend C kernels, the
torch compositions for a build that opted out of them (VLLM_ASCEND_BUILD_ASCENDC=0), or an error
for a CPU-only build that was not an explicit opt-out."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from vllm_ascend.kernels import extension


def test_decision_table():
    src = extension.npu_kernel_source
    assert src(need_npu=False, with_cann=False, ascendc_opt_out=False) == extension.NOT_NEEDED
    assert src(need_npu=False, with_cann=True, ascendc_opt_out=False) == extension.NOT_NEEDED
    assert src(need_npu=True, with_cann=True, ascendc_opt_out=False) == extension.ASCENDC
    assert src(need_npu=True, with_cann=False, ascendc_opt_out=True) == extension.COMPOSED


def test_accidental_cpu_only_build_on_npu_host_is_an_error():
    with pytest.raises(extension.ExtensionError) as err:
        extension.npu_kernel_source(need_npu=True, with_cann=False, ascendc_opt_out=False)
    msg = str(err.value)
    assert "without CANN" in msg
    assert str(extension.build_log_path()) in msg  # the build log
    assert extension.REBUILD_COMMAND in msg  # the rebuild
    assert "VLLM_ASCEND_BUILD_ASCENDC=0" in msg  # and the deliberate alternative


def test_this_build_records_no_opt_out(C):
    """The module carries the build record the runtime reads (False for `make install`)."""
    import vllm_ascend._C_ascend as built

    assert built.ASCENDC_OPT_OUT is False and built.WITH_CANN is False
    info = extension.build_info()
    assert info["ascendc_opt_out"] is False and info["npu_ops_composed"] is False


def test_load_refuses_it_and_registers_nothing(C, monkeypatch):
    monkeypatch.setattr(extension, "_module", None)
    with pytest.raises(extension.ExtensionError, match="VLLM_ASCEND_BUILD_ASCENDC=0"):
        extension.load(require_npu_kernels=True)
    for name in extension.EXPECTED_SCHEMAS:  # no silent fallback behind the error
        assert not torch._C._dispatch_has_kernel_for_dispatch_key(f"_C_ascend::{name}",
                                                                  "PrivateUse1")


# A fresh process (extension loading and dispatcher registrations are process-global): the
# loaded module is given the record a VLLM_ASCEND_BUILD_ASCENDC=0 build carries, then the plugin's
# own load() runs as on an NPU host. Calls go through the real dispatcher with the NPU's key set.
_OPT_OUT_SCRIPT = textwrap.dedent(
    """
    import json, logging, threading
    import torch
    import vllm_ascend._C_ascend as built
    from vllm_ascend.kernels import extension

    warnings = []

    class Collect(logging.Handler):
        def emit(self, record):
            if record.levelno == logging.WARNING:
                warnings.append(record.getMessage())

    logging.getLogger("vllm.vllm_ascend.kernels.extension").addHandler(Collect())
    names = sorted(extension.EXPECTED_SCHEMAS)

    def npu_kernels():
        return [torch._C._dispatch_has_kernel_for_dispatch_key(f"_C_ascend::{n}", "PrivateUse1")
                for n in names]

    npu = torch._C.DispatchKeySet(torch._C.DispatchKey.PrivateUse1)
    ids = torch.tensor([-1, 0, 5, 511, 512, 1009, 1010, 1020, 1030])
    op = torch.ops._C_ascend.get_masked_input_and_mask.default
    try:
        op.redispatch(npu, ids, 0, 512, 0, 1010, 1026)
        before_error = None
    except NotImplementedError as exc:
        before_error = str(exc).splitlines()[0]
    before = npu_kernels()

    built.ASCENDC_OPT_OUT = True
    threads = [threading.Thread(target=extension.load, args=(True,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    extension.load(require_npu_kernels=True)

    masked, mask = op.redispatch(npu, ids, 0, 512, 0, 1010, 1026)
    cpu_masked, cpu_mask = torch.ops._C_ascend.get_masked_input_and_mask(
        ids, 0, 512, 0, 1010, 1026)

    torch.manual_seed(0)
    qkv = torch.randn(6, 4 * 64)
    qkv0 = qkv.clone()
    q, k = qkv[:, :128], qkv[:, 128:192]  # strided views into the fused buffer
    q_cpu, k_cpu = q.clone(), k.clone()
    pos, cache = torch.arange(6), torch.randn(16, 64)
    torch.ops._C_ascend.rotary_embedding.default.redispatch(npu, pos, q, k, 64, cache, True)
    torch.ops._C_ascend.rotary_embedding(pos, q_cpu, k_cpu, 64, cache, True)

    x = torch.randn(3, 96)
    y, scale, res = torch.ops._C_ascend.add_rms_norm_dynamic_quant.default.redispatch(
        npu, x, x, torch.ones(96), 1e-6)
    y_cpu, scale_cpu, res_cpu = torch.ops._C_ascend.add_rms_norm_dynamic_quant(
        x, x, torch.ones(96), 1e-6)

    print(json.dumps({
        "before_error": before_error,
        "before": before,
        "after": npu_kernels(),
        "cpu_kernels_kept": [torch._C._dispatch_has_kernel_for_dispatch_key(
            f"_C_ascend::{n}", "CPU") for n in names],
        "masked_equal": bool(torch.equal(masked, cpu_masked) and torch.equal(mask, cpu_mask)),
        "rotary_diff": float(max((q - q_cpu).abs().max(), (k - k_cpu).abs().max())),
        "rotary_in_place": bool((qkv[:, :192] != qkv0[:, :192]).any()),
        "v_untouched": bool(torch.equal(qkv[:, 192:], qkv0[:, 192:])),
        "quant_equal": bool(torch.equal(res, res_cpu)
                            and (y.int() - y_cpu.int()).abs().max() <= 1),
        "scale_diff": float((scale - scale_cpu).abs().max()),
        "warnings": warnings,
        "info": extension.build_info(),
    }))
    """
)


def test_opt_out_build_serves_compositions_under_privateuse1_and_warns_once():
    env = dict(os.environ, VLLM_ASCEND_DEVICE="cpu")
    proc = subprocess.run([sys.executable, "-c", _OPT_OUT_SCRIPT], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    assert "PrivateUse1" in out["before_error"]  # nothing served the NPU key before load()
    assert out["before"] == [False, False, False]
    assert out["after"] == [True, True, True]
    assert out["cpu_kernels_kept"] == [True, True, True]
    assert out["masked_equal"]
    assert out["rotary_in_place"] and out["v_untouched"] and out["rotary_diff"] < 1e-5
    assert out["quant_equal"] and out["scale_diff"] < 1e-6
    assert out["info"]["ascendc_opt_out"] is True and out["info"]["npu_ops_composed"] is True

    assert len(out["warnings"]) == 1, out["warnings"]  # five load() calls, one announcement
    warning = out["warnings"][0]
    assert "VLLM_ASCEND_BUILD_ASCENDC=0" in warning
    assert "slower" in warning and "compositions" in warning
