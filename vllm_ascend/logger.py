"""Loggers for the plugin, placed under vLLM's ``vllm.`` logger so its handlers print them."""

from vllm.logger import init_logger as _vllm_init_logger


def init_logger(name: str):
    return _vllm_init_logger(f"vllm.{name}")
