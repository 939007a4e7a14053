"""Self-check: every NPU op the engine calls, then a tiny end-to-end greedy run.

On an Ascend host each case (``cases.CASES``) runs on the NPU and is compared with its CPU golden
reference (the CPU kernel on the same inputs) and with its float64 reference; the tiny model then
generates greedily on the NPU and on the CPU backend, token for token equal. On any other host
each case runs its CPU kernel against the float64 reference, and the tiny model runs on the CPU
backend against Hugging Face transformers; what needs an NPU is reported as skipped, with why.

``python -m vllm_ascend.doctor --selfcheck`` runs this; ``tests/npu/`` parametrizes over the same
cases.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from vllm_ascend.selfcheck.cases import CASES, Case, Outputs, compare_outputs

SEED = 20240613


@dataclass
class Result:
    name: str
    status: str  # "pass", "fail" or "skip"
    detail: str = ""
    seconds: float = 0.0


def _finite(case: Case, outputs: Outputs, where: str) -> None:
    for key, value in outputs.items():
        if not value.is_floating_point():
            continue
        if bool(torch.isnan(value).any()):
            raise AssertionError(f"{key} ({where}) has NaN values")
        if case.finite and not bool(torch.isfinite(value).all()):
            raise AssertionError(f"{key} ({where}) has infinite values")


def check_on_cpu(case: Case) -> None:
    """The CPU kernel on the case's inputs: finite and equal to the float64 reference."""
    inputs = case.build(torch.Generator().manual_seed(SEED))
    out = case.run(inputs, "cpu")
    _finite(case, out, "CPU")
    case.verify(inputs, out)


def check_on_npu(case: Case, device: str = "npu") -> None:
    """The NPU kernel on the case's inputs: equal to the CPU golden reference and to the float64
    reference."""
    inputs = case.build(torch.Generator().manual_seed(SEED))
    npu = case.run(inputs, device)
    cpu = case.run(inputs, "cpu")
    _finite(case, npu, "NPU")
    compare_outputs(case, npu, cpu, inputs)
    case.verify(inputs, npu)


def run_cases(device: str, report: Callable[[Result], None] = lambda r: None) -> list[Result]:
    """Run every case on ``device`` ("npu" or "cpu"); never raises for a failing case."""
    from vllm_ascend import kernels

    kernels.load()
    results = []
    for case in CASES:
        start = time.perf_counter()
        try:
            (check_on_npu if device == "npu" else check_on_cpu)(case)
            result = Result(case.name, "pass")
        except Exception as exc:  # a failing kernel may raise anything; report it
            result = Result(case.name, "fail", f"{type(exc).__name__}: {exc}")
        result.seconds = time.perf_counter() - start
        report(result)
        results.append(result)
    return results
