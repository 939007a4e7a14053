"""Tiny random-weight Qwen2-VL / Qwen2.5-VL checkpoints with a working processor, built offline.

Each checkpoint is a Hugging Face directory: random weights (fixed seed, bfloat16), a byte-level
BPE tokenizer trained here on ``checkpoints.CORPUS`` carrying Qwen's chat and vision special
tokens, a Qwen-style chat template that places ``<|vision_start|><|image_pad|><|vision_end|>`` for
each image, and an image processor whose pixel bounds keep images to a few dozen patches.

Shapes are tiny but legal for the Ascend kernels: the text model's head size is 64 (the fused
attention takes 64/128/192) with an ``mrope_section`` summing to 32 = head_dim / 2 and a rotary
dim that is a multiple of 32 (``npu_mrope``); the vision tower has two blocks of head size 32
(padded to 64 for the fused attention), patch 14, merge 2; Qwen2.5-VL's first block uses window
attention (window 112 px) and its second full attention.

Cached like the other test checkpoints, keyed by a hash of everything that sets their content::

    <cache root>/checkpoints/<name>-<hash>
"""

from __future__ import annotations

import hashlib
import json
import pathlib

import checkpoints as ckpt

SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
           "<|image_pad|>", "<|video_pad|>")
VOCAB_SIZE = 512
MIN_PIXELS = 28 * 28 * 4       # at least 4 merged tokens
MAX_PIXELS = 28 * 28 * 36      # at most 36 merged tokens per image

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or part['type'] == 'image_url' %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

TEXT = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=2048, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                             "mrope_section": [8, 12, 12]})
VISION = {
    "qwen2_5_vl": dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2,
                       out_hidden_size=128, patch_size=14, spatial_merge_size=2,
                       temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1]),
    "qwen2_vl": dict(depth=2, embed_dim=64, hidden_size=128, mlp_ratio=2, num_heads=2,
                     patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
}
NAMES = tuple(VISION)


def checkpoint_dir(name: str) -> pathlib.Path:
    import transformers

    payload = dict(name=name, text=TEXT, vision=VISION[name], special=SPECIAL, vocab=VOCAB_SIZE,
                   pixels=[MIN_PIXELS, MAX_PIXELS], template=CHAT_TEMPLATE, seed=ckpt.SEED,
                   corpus=hashlib.sha256(ckpt.CORPUS.encode()).hexdigest(),
                   transformers=transformers.__version__, builder=1)
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    return ckpt.cache_root() / "checkpoints" / f"{name}-{digest}"


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(ckpt.CORPUS.split("\n\n"), trainer=trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, min_frequency=2, special_tokens=list(SPECIAL),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL[1:]), clean_up_tokenization_spaces=False,
        model_max_length=2048)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _build_into(name: str, out: pathlib.Path) -> None:
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForImageTextToText,
        GenerationConfig,
        Qwen2_5_VLProcessor,
        Qwen2VLProcessor,
    )
    from transformers.models.qwen2_vl import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    tokenizer = build_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL}
    token_ids = dict(eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                     bos_token_id=ids["<|endoftext|>"])
    config = AutoConfig.for_model(
        name, text_config=dict(TEXT, vocab_size=len(tokenizer), **token_ids),
        vision_config=dict(VISION[name]), image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False, **token_ids)
    seed = ckpt._name_seed(name)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    ckpt._init_weights(model, seed)
    model = model.to(torch.bfloat16)
    model.generation_config = GenerationConfig(**token_ids)
    model.save_pretrained(out)
    pixels = dict(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS,
                  size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS})

    cls = Qwen2_5_VLProcessor if name == "qwen2_5_vl" else Qwen2VLProcessor
    processor = cls(image_processor=Qwen2VLImageProcessor(**pixels), tokenizer=tokenizer,
                    video_processor=Qwen2VLVideoProcessor(**pixels), chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(out)


def build_vl_checkpoint(name: str) -> pathlib.Path:
    if name not in VISION:
        raise ValueError(f"unknown vision-language checkpoint {name!r}; known: {NAMES}")
    return ckpt.build_atomically(checkpoint_dir(name), lambda tmp: _build_into(name, tmp))

