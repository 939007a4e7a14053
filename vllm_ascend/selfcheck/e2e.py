"""The self-check's end-to-end run: a tiny random Llama, built here, generated greedily by vLLM.

The model (2 layers, head_dim 64, vocab 256, random weights from a fixed seed) is written with
``save_pretrained`` into a temporary directory: no download, no tokenizer (the engine runs with
``skip_tokenizer_init=True`` on prompt token ids). Each engine runs in its own subprocess
(``python -m vllm_ascend.selfcheck.e2e``) so that importing vLLM's platform never touches the
calling process, and the backend is chosen by ``VLLM_ASCEND_DEVICE`` as a user would.

Checks: on the CPU backend, the greedy tokens (default graph mode) equal a greedy loop of Hugging
Face transformers on the same weights (float32); on an Ascend host, the NPU tokens in each graph
mode (eager, PIECEWISE, FULL_DECODE_ONLY) equal the CPU backend's eager tokens, token for token
(bfloat16 on both, the NPU attention kernels not taking float32).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

SEED = 4321
MAX_TOKENS = 8
# Prompt lengths cover one partial block, a prompt longer than a 128-token block, and a batch
# mixing them (prefill and decode in one step).
PROMPT_LENGTHS = (5, 37, 150)
VOCAB = 256
# Graph modes the NPU run is checked in; capture sizes cover the decode batches (3 requests).
NPU_GRAPH_MODES = ("NONE", "PIECEWISE", "FULL_DECODE_ONLY")
CAPTURE_SIZES = [1, 2, 4]
RESULT_PREFIX = "SELFCHECK_TOKENS "
TIMEOUT_S = 300


def prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(SEED)
    return [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in PROMPT_LENGTHS]


def build_tiny_llama(out_dir: Path) -> Path:
    """Write the tiny random Llama checkpoint into ``out_dir`` and return it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=512,
        rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if param.dim() == 1:  # norm weights
                values = 1.0 + 0.1 * torch.randn(param.shape, generator=g)
            elif "embed_tokens" in name or "lm_head" in name:
                values = 0.5 * torch.randn(param.shape, generator=g)
            else:  # large enough that greedy decoding has clear logit margins
                values = 0.2 * torch.randn(param.shape, generator=g)
            param.copy_(values)
    model.save_pretrained(out_dir)
    return out_dir


def hf_greedy(model_dir: Path, token_prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    """Greedy continuation by transformers in float32 (the reference on the CPU backend)."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    outs = []
    with torch.no_grad():
        for prompt in token_prompts:
            ids = torch.tensor([prompt])
            for _ in range(max_tokens):
                nxt = model(ids).logits[0, -1].argmax()
                ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
            outs.append(ids[0, len(prompt):].tolist())
    return outs


def generate_in_subprocess(model_dir: Path, device: str, dtype: str,
                           graph_mode: str | None = None) -> list[list[int]]:
    """Greedy tokens from vLLM's LLM in a fresh interpreter with VLLM_ASCEND_DEVICE=device, in
    ``graph_mode`` (a cudagraph_mode name; None: the platform default)."""
    env = dict(os.environ, VLLM_ASCEND_DEVICE=device, VLLM_ENABLE_V1_MULTIPROCESSING="0")
    cmd = [sys.executable, "-m", "vllm_ascend.selfcheck.e2e", "--model", str(model_dir),
           "--dtype", dtype] + (["--graph-mode", graph_mode] if graph_mode else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
    raise RuntimeError(f"the {device} engine run failed (exit {proc.returncode}):\n{tail}")


def _engine_run(model_dir: str, dtype: str, graph_mode: str | None) -> list[list[int]]:
    from vllm import LLM, SamplingParams, TokensPrompt

    graphs = {} if graph_mode is None else {"compilation_config": {
        "cudagraph_mode": graph_mode,
        "cudagraph_capture_sizes": CAPTURE_SIZES if graph_mode != "NONE" else []}}
    llm = LLM(model=model_dir, skip_tokenizer_init=True, dtype=dtype, max_model_len=256,
              max_num_seqs=4, kv_cache_memory_bytes=32 << 20, seed=0, **graphs)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True,
                            detokenize=False)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts()], params,
                        use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one greedy run of the self-check's tiny model")
    parser.add_argument("--model", required=True)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--graph-mode", default=None, help="cudagraph_mode (default: the "
                        "platform's)")
    args = parser.parse_args(argv)
    tokens = _engine_run(args.model, args.dtype, args.graph_mode)
    print(RESULT_PREFIX + json.dumps(tokens), flush=True)


if __name__ == "__main__":
    main()
