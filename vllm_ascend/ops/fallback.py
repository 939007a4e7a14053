"""One log line per fallback from a fused kernel to a slower path (DESIGN.md §4)."""

from __future__ import annotations

import functools

from vllm_ascend import envs
from vllm_ascend.logger import init_logger

logger = init_logger(__name__)


@functools.cache
def log_fallback_once(layer: str, reason: str) -> None:
    if envs.VLLM_ASCEND_LOG_FALLBACKS:
        logger.warning("vllm-ascend: %s falls back to its PyTorch path: %s", layer, reason)
