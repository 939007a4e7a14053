#!/usr/bin/env python
"""Where the plugin's host time per engine step goes: py-spy samples the plugin's offline engine
(tiny 1-layer model, decode-only batch of 64, 296 decode steps x 3) and the samples inside
EngineCore.step are summarised by function (inclusive and self time, as % of the step).

Writes benchmarks/results/profile_plugin_b64.json (summary) and keeps py-spy's collapsed
stacks in benchmarks/results/logs/profile_plugin_b64.collapsed (open with any flame-graph tool,
or rerun with --speedscope for a speedscope file).

    .venv/bin/python benchmarks/profile_host.py [--batch 64] [--speedscope]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
import _common as C  # noqa: E402

ANCHOR = "EngineCore.step "


def _key(frame: str) -> str:
    return re.sub(r":\d+\)$", ")", frame)


def summarize(collapsed: str, top: int = 60) -> dict:
    incl, self_, children, lines = (collections.Counter() for _ in range(4))
    total = 0
    with open(collapsed) as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not n.isdigit():
                continue
            frames = stack.split(";")
            idx = next((i for i, fr in enumerate(frames) if fr.startswith(ANCHOR)), None)
            if idx is None:
                continue
            n = int(n)
            total += n
            sub = frames[idx:]
            for k in {_key(fr) for fr in sub}:
                incl[k] += n
            self_[_key(sub[-1])] += n
            if len(sub) > 1:
                children[_key(sub[1])] += n
            plugin_frames = [fr for fr in sub if "vllm_ascend/" in fr]
            if plugin_frames:
                lines[plugin_frames[-1]] += n

    def pct(counter):
        return [{"frame": k, "pct": 100.0 * v / total} for k, v in counter.most_common(top)]

    return {"step_samples": total, "inclusive": pct(incl), "self": pct(self_),
            "step_children": pct(children), "deepest_plugin_line": pct(lines)}


def run(batch: int = 64, speedscope: bool = False) -> dict:
    pyspy = C.engines()[0].venv / "bin" / "py-spy"
    if not pyspy.exists():
        raise SystemExit(f"py-spy not found at {pyspy}")
    plugin = C.engines()[0]
    model = C.build_tiny_checkpoint()
    spec = dict(task="decode_steps", model=str(model), dtype="bfloat16", enforce_eager=False,
                kv_cache_memory_bytes=512 * 2**20, max_model_len=512, max_num_seqs=256,
                block_size=128, batch_sizes=[batch], prompt_len=8, short_len=4, long_len=300,
                repeats=3, seed=0, expect_platform=plugin.expect_platform)
    C.LOG_DIR.mkdir(parents=True, exist_ok=True)
    collapsed = C.LOG_DIR / f"profile_plugin_b{batch}.collapsed"
    with tempfile.TemporaryDirectory(prefix="vllm-prof-") as tmp:
        spec_path = os.path.join(tmp, "spec.json")
        out_path = os.path.join(tmp, "out.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        fmt, dest = ("speedscope", C.RESULTS_DIR / f"profile_plugin_b{batch}.speedscope.json") \
            if speedscope else ("raw", collapsed)
        cmd = [str(pyspy), "record", "--subprocesses", "--rate", "200", "--format", fmt,
               "-o", str(dest), "--", str(plugin.python), str(C.WORKER), spec_path, out_path]
        with open(C.log_path(f"profile_plugin_b{batch}"), "w") as logf:
            subprocess.run(cmd, env=plugin.environ(), stdout=logf, stderr=subprocess.STDOUT,
                           check=True, timeout=900, cwd=tmp)
        worker = json.load(open(out_path))
    reps = worker["decode_steps"][0]["repeats"]
    res = {"batch": batch, "ms_per_step_under_profiler": C.stats(r["ms_per_step"] for r in reps),
           "sampler": "py-spy record --subprocesses --rate 200"}
    if speedscope:
        res["speedscope"] = str(dest)
    else:
        res.update(summarize(str(collapsed)))
        res["collapsed"] = str(collapsed)
    return res


def render(res: dict, n: int = 12) -> str:
    if "inclusive" not in res:
        return f"profile written to {res.get('speedscope')}"
    out = [f"py-spy profile of the plugin's engine step, decode batch {res['batch']} "
           f"({res['step_samples']} samples in EngineCore.step; "
           f"{res['ms_per_step_under_profiler']['median']:.2f} ms/step under the profiler)"]
    sections = (
        ("phases of EngineCore.step", res["step_children"][:6]),
        ("inclusive, vllm_ascend frames",
         [r for r in res["inclusive"] if "vllm_ascend/" in r["frame"]][:8]),
        ("self (native time lands on the calling Python frame)", res["self"][:n]),
        ("deepest vllm_ascend line", res["deepest_plugin_line"][:8]),
    )
    for title, rows in sections:
        out.append(f"  {title}, % of step:")
        out += [f"    {r['pct']:5.1f}%  {r['frame']}" for r in rows]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--speedscope", action="store_true")
    args = ap.parse_args()
    if shutil.which("py-spy") is None and not (C.ROOT / ".venv/bin/py-spy").exists():
        raise SystemExit("py-spy is not installed")
    res = run(args.batch, args.speedscope)
    print(render(res))
    print("wrote", C.write_json(f"profile_plugin_b{args.batch}.json", res))


if __name__ == "__main__":
    main()
