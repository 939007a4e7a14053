"""A real `vllm serve` process on 127.0.0.1 with the plugin's CPU backend."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: pathlib.Path, *args: str, timeout: float = 300.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        vllm_cli = pathlib.Path(sys.executable).with_name("vllm")
        env = dict(os.environ, VLLM_ASCEND_DEVICE="cpu")
        env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
        self.log = open(pathlib.Path(os.environ.get("TMPDIR", "/tmp")) /
                        f"vllm-serve-{self.port}.log", "w+")
        self.proc = subprocess.Popen(
            [str(vllm_cli), "serve", str(model), "--host", "127.0.0.1", "--port",
             str(self.port), "--served-model-name", "test", *args],
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited early:\n{self.output()}")
            if self.healthy():
                return
            time.sleep(1)
        self.stop()
        raise TimeoutError(f"vllm serve not healthy after {timeout}s:\n{self.output()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def output(self, tail: int | None = 6000) -> str:
        """The server's log (stdout and stderr), its last ``tail`` characters by default."""
        self.log.flush()
        self.log.seek(0)
        text = self.log.read()
        return text if tail is None else text[-tail:]

    def engine_core_pid(self) -> int:
        """The pid of the server's engine core process (its log names it)."""
        found = re.findall(r"\(EngineCore pid=(\d+)\)", self.output(tail=None))
        if not found:
            raise RuntimeError("the server's log names no EngineCore pid")
        return int(found[0])

    def metric(self, name: str) -> float:
        """The value of one unlabelled-by-request Prometheus sample from /metrics."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        found = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)
        if found is None:
            raise KeyError(f"{name} not in /metrics")
        return float(found.group(1))

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode
