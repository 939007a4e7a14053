"""Reference greedy generation with plain transformers (no vLLM), offline.

``hf_greedy(model_path, prompts, max_new_tokens)`` returns, for each prompt,
only the newly generated token ids.  Prompts are run one at a time, so there is
no padding and no attention-mask subtlety; text prompts are tokenized the way
vLLM tokenizes a completion prompt (``add_special_tokens=True``).
"""

from __future__ import annotations

import functools
import os
import pathlib
from collections.abc import Sequence

import torch


@functools.lru_cache(maxsize=4)
def _load(model_path: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, local_files_only=True)
    model.eval()
    return tokenizer, model


def load_hf(model_path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """(tokenizer, model) for a local checkpoint, cached per (path, dtype)."""
    return _load(str(pathlib.Path(model_path).resolve()), dtype)


def hf_greedy(
    model_path: str | os.PathLike,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    max_new_tokens: int,
    dtype: torch.dtype = torch.float32,
    ignore_eos: bool = False,
) -> list[list[int]]:
    """Greedy-decode each prompt with transformers; return generated ids only.

    Generation stops at the checkpoint's EOS token(s) (the EOS id is included
    in the output, as vLLM does) unless ``ignore_eos`` is true, in which case
    exactly ``max_new_tokens`` tokens are produced.
    """
    tokenizer, model = load_hf(model_path, dtype)
    gen_config = model.generation_config.__class__.from_dict(model.generation_config.to_dict())
    gen_config.do_sample = False
    gen_config.num_beams = 1
    gen_config.temperature = None
    gen_config.top_p = None
    gen_config.top_k = None
    gen_config.max_new_tokens = max_new_tokens
    gen_config.max_length = None
    gen_config.min_new_tokens = None
    gen_config.repetition_penalty = None
    if gen_config.pad_token_id is None:
        gen_config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    if ignore_eos:
        gen_config.eos_token_id = None
    elif gen_config.eos_token_id is None:
        gen_config.eos_token_id = tokenizer.eos_token_id

    results: list[list[int]] = []
    for prompt in prompts:
        if isinstance(prompt, str):
            ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        else:
            ids = [int(t) for t in prompt]
        if not ids:
            raise ValueError("empty prompt")
        input_ids = torch.tensor([ids], dtype=torch.long)
        if ignore_eos:
            # transformers fills an unset eos_token_id from the model's generation config, so
            # generation past EOS is done with an explicit argmax loop over the KV cache.
            results.append(_greedy_loop(model, input_ids, max_new_tokens))
            continue
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=gen_config,
            )
        results.append(out[0, len(ids) :].tolist())
    return results


def _greedy_loop(model, input_ids: torch.Tensor, max_new_tokens: int) -> list[int]:
    generated: list[int] = []
    with torch.inference_mode():
        out = model(input_ids=input_ids, use_cache=True)
        for _ in range(max_new_tokens):
            token = int(out.logits[0, -1].argmax())
            generated.append(token)
            out = model(
                input_ids=torch.tensor([[token]]),
                past_key_values=out.past_key_values,
                use_cache=True,
            )
    return generated


def hf_logprobs(
    model_path: str | os.PathLike, token_ids: Sequence[int], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Teacher-forced log-probabilities: row i is log p(next token | token_ids[: i + 1]), as a
    float64 [len(token_ids), vocab] tensor."""
    _, model = load_hf(model_path, dtype)
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([list(token_ids)])).logits[0]
    return torch.log_softmax(logits.double(), dim=-1)
