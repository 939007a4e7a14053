"""Graph capture for a parallel group, on the device layer's streams.

vLLM's ``GroupCoordinator.graph_capture`` (entered for the TP, PP and DP groups around every
capture) asserts that a group of more than one rank has a CUDA or XPU communicator, to enter
their custom all-reduce capture modes. Ascend's collectives (HCCL on the NPU, gloo on the CPU
backend) need no capture mode: they are captured as the ops they are (the CPU tape records the
c10d op and waits on its work at replay). What is left is the stream discipline: capture on the
context's side stream, after the current stream's pending work.
"""

from __future__ import annotations

import contextlib

from vllm.distributed.parallel_state import GraphCaptureContext

from vllm_ascend import device


@contextlib.contextmanager
def group_graph_capture(group, graph_capture_context: GraphCaptureContext | None = None):
    """Replacement for ``GroupCoordinator.graph_capture`` (``group`` is the coordinator)."""
    dev = device.current()
    if graph_capture_context is None:
        graph_capture_context = GraphCaptureContext(dev.Stream())
    stream = graph_capture_context.stream
    current = dev.current_stream()
    if current != stream:
        stream.wait_stream(current)
    with dev.stream(stream):
        yield graph_capture_context
