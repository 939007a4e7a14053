"""On an Ascend host: every NPU op call the engine makes equals its CPU golden reference (and the
float64 reference), over the self-check's shared case list, and a tiny model generates the same
greedy tokens on the NPU as on the CPU backend. ``python -m vllm_ascend.doctor --selfcheck`` runs
the same cases (vllm_ascend/selfcheck/cases.py). Skipped without an NPU (marker ``npu``)."""

from __future__ import annotations

import pytest

from vllm_ascend.selfcheck import check_on_npu, e2e
from vllm_ascend.selfcheck.cases import CASES

pytestmark = pytest.mark.npu


@pytest.fixture(scope="module", autouse=True)
def _loaded():
    import vllm_ascend.kernels as kernels

    kernels.load()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_npu_kernel_matches_cpu_golden_reference(case):
    check_on_npu(case)


@pytest.mark.parametrize("mode", e2e.NPU_GRAPH_MODES)
def test_e2e_greedy_npu_equals_cpu_backend(tmp_path, mode):
    model = e2e.build_tiny_llama(tmp_path / "tiny-llama")
    cpu = e2e.generate_in_subprocess(model, "cpu", "bfloat16", "NONE")
    npu = e2e.generate_in_subprocess(model, "npu", "bfloat16", mode)
    assert all(len(t) == e2e.MAX_TOKENS for t in cpu)
    assert npu == cpu
