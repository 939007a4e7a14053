"""The examples run as a user would run them."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
from server import Server

pytestmark = pytest.mark.slow
EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def test_offline_inference_example(checkpoints):
    env = dict(os.environ, VLLM_ASCEND_DEVICE="cpu")
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "offline_inference.py"), "--model",
         str(checkpoints("llama")), "--max-tokens", "8", "--max-model-len", "256",
         "--dtype", "float32"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("'") and " -> " in line]
    assert len(lines) == 3 and lines[0].startswith("'The capital of France is'")


def test_online_chat_client_example(checkpoints):
    server = Server(checkpoints("qwen2"), "--max-model-len", "256",
                    "--kv-cache-memory-bytes", str(64 << 20))
    try:
        out = subprocess.run(
            [sys.executable, str(EXAMPLES / "openai_chat_client.py"), "--base-url",
             server.url + "/v1", "--max-tokens", "8"],
            capture_output=True, text=True, timeout=300,
        )
    finally:
        server.stop()
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.strip(), "the example printed no answer"
