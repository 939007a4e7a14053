"""Tiny random-weight Hugging Face checkpoints for tests.

Every checkpoint is built locally (no network) from a fixed seed, saved with
``save_pretrained`` (safetensors, bfloat16) together with a byte-level BPE
tokenizer trained here on a small built-in English corpus, a chat template and
a ``generation_config.json``.

Checkpoints are cached on disk outside the git tree, keyed by a hash of
everything that determines their content::

    $VLLM_ASCEND_TEST_CACHE/checkpoints/<name>-<hash>
    (default: ~/.cache/vllm-ascend-tests/checkpoints/<name>-<hash>)

A build happens in a temporary directory that is renamed into place, so a
half-written checkpoint is never visible and concurrent builders (e.g. xdist
workers) are safe.

Public API::

    CHECKPOINT_NAMES            # llama, qwen2, qwen3, qwen3_moe, mixtral
    ALL_CHECKPOINT_NAMES        # + mistral_sw (sliding window 32), deepseek_v2, deepseek_v3 (MLA),
                                #   deepseek_v3_mtp (deepseek_v3 with a random MTP layer),
                                #   deepseek_v3_mtp_mirror (an MTP layer whose drafts agree)
    build_checkpoint(name)      # -> pathlib.Path of the checkpoint directory
    CHECKPOINT_SPECS[name]      # the spec (architecture, config overrides)
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any

# Bump when the build procedure changes in a way the spec hash can't see.
BUILDER_VERSION = 1

CACHE_ENV_VAR = "VLLM_ASCEND_TEST_CACHE"

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
# Unused, but transformers' Qwen2Tokenizer (what AutoTokenizer picks for
# model_type qwen2) adds it as its unk token when it is missing, which would
# make len(tokenizer) exceed the model's vocab size.
ENDOFTEXT_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN) + ROLE_TOKENS + (ENDOFTEXT_TOKEN,)
TOKENIZER_VOCAB_SIZE = 512

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# A small English corpus written for this module; only used to train the
# test tokenizer, so what matters is that it is varied, ordinary prose.
CORPUS = """\
The morning train left the station a few minutes late, and most of the
passengers did not seem to mind. A woman near the window read a thick book
about the history of bridges, while a boy beside her counted the cows in the
fields. The conductor walked slowly down the aisle, checking tickets and
answering questions about the next stop.

In the small town by the river there was a bakery that opened before sunrise.
The baker mixed flour, water, salt and yeast in a large wooden bowl, then left
the dough to rise while he lit the oven. By six o'clock the street smelled of
fresh bread, and a short line of neighbours waited at the door.

Computers follow instructions written by people. A program is a list of
steps, and each step tells the machine what to do with some piece of data.
When a program has a mistake, the computer does exactly what it was told,
which is not always what the programmer meant. Finding and fixing these
mistakes is called debugging, and it takes patience.

The weather report for the weekend promised clear skies on Saturday and light
rain on Sunday afternoon. Many families planned a picnic in the park, where
the old oak trees give shade and the children can play near the pond. Ducks
and geese gather there every spring.

Learning a new language is easier when you practise a little every day. Read
short stories, listen to songs, and try to speak with friends, even if you
make errors. Over time the words become familiar, the grammar starts to feel
natural, and you begin to think in the new language without translating.

What is the capital of France? The capital of France is Paris. What is the
largest planet in the solar system? It is Jupiter, a giant made mostly of
hydrogen and helium. How many days are there in a week? There are seven days
in a week: Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday.

The library on the hill keeps thousands of books, maps and old newspapers.
Students come in the evening to study at the long tables under warm yellow
lamps. The librarian knows where almost everything is, and she is always
happy to help someone find a rare volume or a forgotten letter.

Numbers appear everywhere: 1, 2, 3, 10, 42, 100, 2024 and 3.14159. A recipe
may ask for 250 grams of sugar, 3 eggs and 2 cups of milk. A runner may finish
a race in 45 minutes and 12 seconds. A city may have 1,500,000 people living in
it, with 20 bus lines and 4 train stations.

Good software is tested often. A test checks that a function returns the
expected result for a given input. When every test passes, the developers can
change the code with more confidence, because a broken feature will show up as
a failing test instead of a surprise for the users.

The ocean covers most of the surface of the Earth. Its waves are shaped by the
wind, and its tides are pulled by the moon. Fish, whales, turtles and tiny
plankton live in the water, and sailors have crossed it for thousands of years
using the stars, the sun and, later, careful maps and compasses.

Hello! How are you today? I am fine, thank you. Could you please tell me the
way to the museum? Go straight ahead, turn left at the second street, and you
will see a large white building with tall columns. It opens at nine and closes
at five, except on Mondays.

Once upon a time a curious fox lived at the edge of a forest. Every evening it
watched the lights of the farmhouse and wondered what the people inside were
doing. One night it crept close to the window and saw a family sharing dinner,
laughing and telling stories, and the fox decided that it liked stories too.
"""


def _llama_spec() -> dict[str, Any]:
    return {
        "model_type": "llama",
        "config": dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=64,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
            tie_word_embeddings=False,
        ),
    }


def _qwen2_spec() -> dict[str, Any]:
    # Qwen2 attention has a bias on q/k/v (not on o); small Qwen2 models tie
    # the input embeddings and the LM head.
    return {
        "model_type": "qwen2",
        "config": dict(
            # Qwen2's head size is hidden_size / heads: 128 / 2 = 64, a size the NPU's fused
            # attention takes.
            hidden_size=128,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=4096,
            rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            tie_word_embeddings=True,
            use_sliding_window=False,
        ),
    }


def _qwen3_spec() -> dict[str, Any]:
    # Qwen3: q/k RMSNorm per head, head_dim decoupled from hidden/heads.
    return {
        "model_type": "qwen3",
        "config": dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=128,
            max_position_embeddings=4096,
            rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            tie_word_embeddings=False,
            attention_bias=False,
            use_sliding_window=False,
        ),
    }


def _qwen3_moe_spec() -> dict[str, Any]:
    return {
        "model_type": "qwen3_moe",
        "config": dict(
            hidden_size=64,
            intermediate_size=128,
            moe_intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=64,
            num_experts=8,
            num_experts_per_tok=2,
            norm_topk_prob=True,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            max_position_embeddings=4096,
            rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            tie_word_embeddings=False,
            attention_bias=False,
            use_sliding_window=False,
        ),
    }


def _mixtral_spec() -> dict[str, Any]:
    return {
        "model_type": "mixtral",
        "config": dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=64,
            num_local_experts=4,
            num_experts_per_tok=2,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            tie_word_embeddings=False,
            sliding_window=None,
        ),
    }


def _mistral_sw_spec() -> dict[str, Any]:
    # Mistral-style sliding-window attention with a tiny window so that a
    # prompt of a few dozen tokens already exercises it.
    return {
        "model_type": "mistral",
        "config": dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=64,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            tie_word_embeddings=False,
            sliding_window=32,
        ),
    }


def _llama_wide_spec() -> dict[str, Any]:
    # Wide enough that its weights (30M parameters) stand out from a process's memory noise:
    # for memory-accounting tests (quantized weights leave more room for the KV cache).
    spec = _llama_spec()
    spec["config"].update(hidden_size=1024, intermediate_size=4096, num_attention_heads=8,
                          num_key_value_heads=2, head_dim=128)
    return spec


def _llama_long_spec() -> dict[str, Any]:
    # The llama above with room for 8192 positions: long-context tests run prompts past the
    # fused attention's 2048x2048 compressed causal mask up to max_model_len 8192.
    spec = _llama_spec()
    spec["config"].update(max_position_embeddings=8192)
    return spec


def _mla_attention() -> dict[str, Any]:
    # Multi-head Latent Attention at the sizes the NPU's MLA decode kernel takes: a latent of
    # 512 and a rope part of 64 (npu_fused_infer_attention_score with query_rope/key_rope).
    # The per-head no-rope and value dims stay tiny (prefill pads them to the fused attention's
    # TND head dims: q/k 32 + 64 -> 128, v 32 -> 128).
    return dict(
        kv_lora_rank=512,
        qk_rope_head_dim=64,
        qk_nope_head_dim=32,
        v_head_dim=32,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
        attention_bias=False,
    )


def _deepseek_v2_spec() -> dict[str, Any]:
    # DeepSeek-V2-Lite-like: no q LoRA (q_proj straight to the heads), 4 heads (the MLA decode
    # pads them to the kernel's 32), one dense layer then a softmax-routed MoE layer with a
    # shared expert.
    return {
        "model_type": "deepseek_v2",
        "config": dict(
            hidden_size=64,
            intermediate_size=128,
            moe_intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            q_lora_rank=None,
            first_k_dense_replace=1,
            n_routed_experts=4,
            num_experts_per_tok=2,
            n_shared_experts=1,
            topk_method="greedy",
            # One group: vLLM routes every DeepSeek MoE through grouped top-k (n_group groups).
            n_group=1,
            topk_group=1,
            norm_topk_prob=False,
            routed_scaling_factor=1.0,
            **_mla_attention(),
        ),
    }


def _deepseek_v3_spec() -> dict[str, Any]:
    # DeepSeek-V3-shaped: q LoRA, 32 heads (a head count the MLA decode kernel takes as is), one
    # dense layer then MoE layers with sigmoid scoring, a nonzero e_score_correction_bias (set in
    # _build_into), grouped top-k (4 groups, best 2), routed_scaling_factor and a shared expert.
    return {
        "model_type": "deepseek_v3",
        "config": dict(
            hidden_size=64,
            intermediate_size=128,
            moe_intermediate_size=32,
            num_hidden_layers=3,
            num_attention_heads=32,
            num_key_value_heads=32,
            q_lora_rank=48,
            first_k_dense_replace=1,
            n_routed_experts=16,
            num_experts_per_tok=4,
            n_shared_experts=1,
            n_group=4,
            topk_group=2,
            # What DeepSeek-V3's own config.json says (vLLM reads them; transformers implies them).
            topk_method="noaux_tc",
            scoring_func="sigmoid",
            norm_topk_prob=True,
            routed_scaling_factor=2.5,
            rope_interleave=True,
            **_mla_attention(),
        ),
    }


def _deepseek_v3_mtp_spec() -> dict[str, Any]:
    # deepseek_v3's main model, weight for weight (same seed), plus one Multi-Token Prediction
    # layer (num_nextn_predict_layers=1) with random weights: transformers builds no MTP
    # weights, so _add_mtp_layers writes the ones vLLM's deepseek_mtp.py loads into a second
    # safetensors file (Hugging Face loads model.safetensors only and ignores it). Its drafts
    # are noise: almost all rejected.
    spec = _deepseek_v3_spec()
    spec["config"]["num_nextn_predict_layers"] = 1
    spec["weights_of"] = "deepseek_v3"
    spec["mtp"] = "random"
    return spec


def _deepseek_v3_mtp_mirror_spec() -> dict[str, Any]:
    # An MTP layer built to agree with its main model, so drafts are mostly accepted: a
    # one-layer DeepSeek-V3 (MoE from layer 0) with unit-RMS embedding rows, whose MTP layer is
    # that layer again (see _add_mtp_layers, "mirror"). At position p the MTP layer reads token
    # p+1 through the same layer over its own latent cache of the tokens before, i.e. it
    # recomputes the main model's next-token distribution one token ahead: a draft differs
    # from the main model's choice only by what the MTP layer cannot see (the first two tokens
    # of the sequence, and bf16 rounding of the normalised embedding).
    spec = _deepseek_v3_spec()
    spec["config"].update(num_hidden_layers=1, first_k_dense_replace=0,
                          num_nextn_predict_layers=1)
    spec["mtp"] = "mirror"
    return spec


CHECKPOINT_SPECS: dict[str, dict[str, Any]] = {
    "llama": _llama_spec(),
    "qwen2": _qwen2_spec(),
    "qwen3": _qwen3_spec(),
    "qwen3_moe": _qwen3_moe_spec(),
    "mixtral": _mixtral_spec(),
    "mistral_sw": _mistral_sw_spec(),
    "llama_wide": _llama_wide_spec(),
    "llama_long": _llama_long_spec(),
    "deepseek_v2": _deepseek_v2_spec(),
    "deepseek_v3": _deepseek_v3_spec(),
    "deepseek_v3_mtp": _deepseek_v3_mtp_spec(),
    "deepseek_v3_mtp_mirror": _deepseek_v3_mtp_mirror_spec(),
}

CHECKPOINT_NAMES = ("llama", "qwen2", "qwen3", "qwen3_moe", "mixtral")
# Extra checkpoints that build_checkpoint also accepts.
EXTRA_CHECKPOINT_NAMES = ("mistral_sw", "deepseek_v2", "deepseek_v3", "deepseek_v3_mtp",
                          "deepseek_v3_mtp_mirror")
ALL_CHECKPOINT_NAMES = CHECKPOINT_NAMES + EXTRA_CHECKPOINT_NAMES

# Weight initialisation (see _init_weights).  With hidden size 64 these make
# the transformer blocks dominate the residual stream (with a smaller
# WEIGHT_STD the tied-embedding qwen2 just repeats its input token) and give
# logits with a std of ~4, so greedy decoding yields varied tokens.
SEED = 1234
WEIGHT_STD = 0.2
EMBED_STD = 0.5
NORM_JITTER = 0.1
BIAS_STD = 0.1


def cache_root() -> pathlib.Path:
    """Root of the test cache (checkpoints live in ``<root>/checkpoints``)."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "vllm-ascend-tests"


def _content_hash(name: str) -> str:
    import transformers

    payload = {
        "builder": BUILDER_VERSION,
        "name": name,
        "spec": CHECKPOINT_SPECS[name],
        "seed": SEED,
        "std": [WEIGHT_STD, EMBED_STD, NORM_JITTER, BIAS_STD],
        "corpus": hashlib.sha256(CORPUS.encode()).hexdigest(),
        "tokenizer": [SPECIAL_TOKENS, TOKENIZER_VOCAB_SIZE, CHAT_TEMPLATE],
        "transformers": transformers.__version__,
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def checkpoint_dir(name: str) -> pathlib.Path:
    """Where ``build_checkpoint(name)`` puts (or finds) the checkpoint."""
    _check_name(name)
    return cache_root() / "checkpoints" / f"{name}-{_content_hash(name)}"


def _check_name(name: str) -> None:
    if name not in CHECKPOINT_SPECS:
        raise ValueError(f"unknown checkpoint {name!r}; known: {ALL_CHECKPOINT_NAMES}")


def build_tokenizer():
    """Train the shared byte-level BPE tokenizer; returns a
    ``PreTrainedTokenizerFast`` with bos/eos/pad and the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Paragraph-sized chunks keep training deterministic and fast.
    tok.train_from_iterator(CORPUS.split("\n\n"), trainer=trainer)
    bos_id = tok.token_to_id(BOS_TOKEN)
    # Like Llama: encoding a text prepends <s>; the chat template writes its
    # own <s> and is tokenized without special tokens.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=list(ROLE_TOKENS),
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _init_weights(model, seed: int) -> None:
    """Deterministic init with std large enough that greedy decoding of the
    random model produces varied tokens with clear logit margins."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, param in sorted(model.named_parameters()):
            # (tied lm_head/embeddings appear once in named_parameters)
            shape = param.shape
            if pname.endswith("bias"):
                values = torch.randn(shape, generator=gen) * BIAS_STD
            elif param.dim() == 1:  # RMSNorm weights (incl. q/k norm)
                values = 1.0 + torch.randn(shape, generator=gen) * NORM_JITTER
            elif "embed_tokens" in pname or "lm_head" in pname:
                values = torch.randn(shape, generator=gen) * EMBED_STD
            else:
                values = torch.randn(shape, generator=gen) * WEIGHT_STD
            param.copy_(values.to(param.dtype))


def _init_router_biases(model, seed: int) -> None:
    """DeepSeek-V3's e_score_correction_bias (a buffer in transformers, so _init_weights does not
    see it) set nonzero, on the scale of the sigmoid scores it shifts."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, buf in sorted(model.named_buffers()):
            if name.endswith("e_score_correction_bias"):
                buf.copy_(torch.rand(buf.shape, generator=gen) * 0.2)


def _name_seed(name: str) -> int:
    return SEED + int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 100000


def _build_into(name: str, out_dir: pathlib.Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    spec = CHECKPOINT_SPECS[name]
    tokenizer = build_tokenizer()
    vocab_size = len(tokenizer)
    token_ids = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = AutoConfig.for_model(
        spec["model_type"],
        vocab_size=vocab_size,
        initializer_range=WEIGHT_STD,
        **token_ids,
        **copy.deepcopy(spec["config"]),
    )
    # A variant may take another checkpoint's main weights ("weights_of"), e.g. to add layers.
    seed = _name_seed(spec.get("weights_of", name))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _init_weights(model, seed)
    _init_router_biases(model, seed)
    if spec.get("mtp") == "mirror":
        _unit_rms_rows(model.get_input_embeddings().weight)
    if config.tie_word_embeddings:
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    model = model.to(torch.bfloat16)
    model.generation_config = GenerationConfig(**token_ids)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if spec.get("mtp"):
        _add_mtp_layers(out_dir, config, spec["mtp"], _name_seed(name))


def _unit_rms_rows(weight) -> None:
    import torch

    with torch.no_grad():
        weight.div_(weight.pow(2).mean(dim=-1, keepdim=True).sqrt())


def _add_mtp_layers(out_dir: pathlib.Path, config, mode: str, seed: int) -> None:
    """DeepSeek Multi-Token Prediction layers (indices num_hidden_layers, ...) in
    ``mtp.safetensors`` beside the main weights, under the names vLLM's deepseek_mtp.py loads:
    ``enorm``, ``hnorm``, ``eh_proj`` (hidden*2 -> hidden over [enorm(embedding),
    hnorm(previous hidden)]), ``shared_head.norm``, ``shared_head.head`` (vLLM replaces it
    with the main model's lm_head) and a full decoder layer shaped like the main model's last
    one. The embedding is the main model's (vLLM's drafter shares it).

    mode "random": every weight random, initialised like the main model's.
    mode "mirror": the decoder layer is a copy of the main model's last layer, enorm and
    hnorm are ones, eh_proj passes the embedding half through (identity) and drops the
    hidden half, shared_head is the main model's final norm and lm_head. With unit-RMS
    embedding rows, enorm(embedding) is the embedding itself, so the layer sees exactly
    what the main model's layer sees (for a one-layer main model)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    template = f"model.layers.{config.num_hidden_layers - 1}."
    with safe_open(str(out_dir / "model.safetensors"), "pt") as f:
        main = {k: f.get_tensor(k) for k in f.keys()}
    layer = {k[len(template):]: v for k, v in main.items() if k.startswith(template)}
    hidden, vocab = config.hidden_size, config.vocab_size
    gen = torch.Generator().manual_seed(seed + 2)
    tensors = {}
    for i in range(config.num_nextn_predict_layers):
        prefix = f"model.layers.{config.num_hidden_layers + i}."
        if mode == "mirror":
            ones = torch.ones(hidden)
            params = dict(layer)
            params.update({
                "enorm.weight": ones, "hnorm.weight": ones,
                "eh_proj.weight": torch.cat([torch.eye(hidden), torch.zeros(hidden, hidden)],
                                            dim=1),
                "shared_head.norm.weight": main["model.norm.weight"],
                "shared_head.head.weight": main["lm_head.weight"],
            })
        elif mode == "random":
            shapes = {name: list(t.shape) for name, t in layer.items()}
            shapes.update({"enorm.weight": [hidden], "hnorm.weight": [hidden],
                           "eh_proj.weight": [hidden, 2 * hidden],
                           "shared_head.norm.weight": [hidden],
                           "shared_head.head.weight": [vocab, hidden]})
            params = {}
            for name in sorted(shapes):
                shape = shapes[name]
                if name.endswith("e_score_correction_bias"):
                    params[name] = torch.rand(shape, generator=gen) * 0.2
                elif len(shape) == 1:  # RMSNorm weights
                    params[name] = 1.0 + torch.randn(shape, generator=gen) * NORM_JITTER
                elif name == "shared_head.head.weight":
                    params[name] = torch.randn(shape, generator=gen) * EMBED_STD
                else:
                    params[name] = torch.randn(shape, generator=gen) * WEIGHT_STD
        else:
            raise ValueError(f"unknown MTP mode {mode!r}")
        for name, value in params.items():
            dtype = main[template + name].dtype if template + name in main else torch.bfloat16
            tensors[prefix + name] = value.to(dtype).contiguous()
    save_file(tensors, str(out_dir / "mtp.safetensors"), metadata={"format": "pt"})


def build_atomically(final: pathlib.Path, build) -> pathlib.Path:
    """Return ``final``, first running ``build(tmp_dir)`` and renaming the result into place if
    it has no config.json yet. Concurrent builders are safe: the first rename wins."""
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        build(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        try:
            os.rename(tmp, final)
        except OSError:
            # Someone else finished first (target exists and is non-empty).
            if not (final / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def build_checkpoint(name: str) -> pathlib.Path:
    """Return the directory of checkpoint ``name``, building it if needed."""
    return build_atomically(checkpoint_dir(name), lambda tmp: _build_into(name, tmp))


def _main(argv: list[str] | None = None) -> None:
    import argparse
    import time

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="default: all checkpoints")
    args = parser.parse_args(argv)
    for name in args.names or ALL_CHECKPOINT_NAMES:
        start = time.perf_counter()
        path = build_checkpoint(name)
        print(f"{name}: {path} ({time.perf_counter() - start:.2f}s)")


if __name__ == "__main__":
    _main()
