"""A drain with a deadline for the engine core's SIGTERM shutdown (registered in patches.py).

vLLM 0.32's engine core drains in-flight requests on SIGTERM for as long as they take; only the
API server's process manager enforces ``shutdown_timeout``, by SIGKILL. A kill with requests in
flight loses their last outputs, and the API server then tears its engine client down before
its output handler has told the open streams (vLLM's AsyncLLM.shutdown cancels the handler right
after closing the client): the streams never end and uvicorn waits for
their connections forever, after the server has logged its shutdown. The same holds for vLLM's
own abort mode (``shutdown_timeout=0``), which kills the engine at once.

Here the engine core keeps the drain within the first half of ``shutdown_timeout``, then aborts
what is still running (its clients get ``finish_reason="abort"``), and before it starts its
teardown waits (bounded) until its output thread has sent everything queued. Every stream has
then ended before the process manager's deadline; the second half of the window is left for the
teardown (full garbage collections over the whole heap, which take seconds on a busy host).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from vllm_ascend.logger import init_logger

logger = init_logger(__name__)

# Share of shutdown_timeout given to the drain; the rest is the teardown's.
DRAIN_SHARE = 0.5
# Longest wait for the output thread to send the last outputs before the teardown starts.
OUTPUT_FLUSH_SECONDS = 1.0


def bounded_drain(original: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """Wrap ``EngineCoreProc._handle_shutdown`` (called before every busy-loop iteration;
    returns False to leave the loop)."""
    from vllm.v1.engine.core import EngineShutdownState
    from vllm.v1.request import RequestStatus

    def _handle_shutdown(self) -> bool:
        state = self.shutdown_state
        if state == EngineShutdownState.RUNNING:
            return original(self)
        timeout = self.vllm_config.shutdown_timeout
        if state == EngineShutdownState.REQUESTED:
            self._ascend_drain_deadline = time.monotonic() + timeout * DRAIN_SHARE
        elif (timeout > 0 and time.monotonic() >= getattr(self, "_ascend_drain_deadline", 0.0)
              and self.scheduler.get_num_unfinished_requests() > 0):
            aborted = self.scheduler.finish_requests(None, RequestStatus.FINISHED_ABORTED)
            logger.info("[shutdown] vllm-ascend: drain window (%.1f s of shutdown_timeout=%d s) "
                        "over; aborting %d in-flight request(s)", timeout * DRAIN_SHARE,
                        timeout, len(aborted))
            self._send_abort_outputs(aborted)
        keep_running = original(self)
        if not keep_running:
            _flush_outputs(self)
        return keep_running

    _handle_shutdown.__wrapped__ = original  # type: ignore[attr-defined]
    return _handle_shutdown


def _flush_outputs(engine_core: Any) -> None:
    """Give the output thread the GIL until it has taken every queued output (the teardown's
    garbage collections would otherwise hold the GIL for seconds while the last outputs wait)."""
    queue = getattr(engine_core, "output_queue", None)
    if queue is None:
        return
    deadline = time.monotonic() + OUTPUT_FLUSH_SECONDS
    while not queue.empty() and time.monotonic() < deadline:
        time.sleep(0.005)
    # The thread takes an output off the queue before sending it.
    time.sleep(0.02)
