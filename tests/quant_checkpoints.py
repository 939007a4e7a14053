"""Tiny quantized checkpoints for tests, made from the tiny float checkpoints of checkpoints.py.

Two on-disk layouts are written, each as its producer writes it (facts and sources in the
quantization notes of issue 11; "MSV1" = msModelSlim's AscendV1 saver, "CT" = compressed-tensors
0.17 as LLM-Compressor saves it):

msModelSlim "AscendV1" (use with ``--quantization ascend``)
    ``quant_model_description.json``   {tensor name: type} for every tensor, then the top-level
                                       keys version, model_quant_type, metadata, group_size,
                                       optional
    ``quant_model_weights.safetensors`` every tensor (quantized and FLOAT)
    ``config.json`` (no quantization_config), tokenizer, chat template, generation config

    Per quantized Linear ``P`` (weight [n, k]); ``P.bias`` float32 tagged FLOAT if it had one:

    ==============  ==============================================================================
    W8A8            P.weight int8 [n,k], P.quant_bias int32 [n], P.input_scale float32 [1],
                    P.input_offset float32 [1], P.deq_scale float32 [n] (int64 [n] = the float32
                    bits read as int32, with ``deq_scale_dtype="int64"``)
    W8A8_DYNAMIC    P.weight int8 [n,k], P.weight_scale float32 [n,1], P.weight_offset float32
                    [n,1] (zeros)
    W8A16           as W8A8_DYNAMIC (offsets zero unless ``w8a16_asymmetric``)
    W4A8_DYNAMIC    P.weight int8 [n/2,k] (two int4 per byte along n), P.weight_scale float32
                    [n,1], P.weight_offset float32 [n,1] (zeros), P.scale_bias float32 [n,1]
                    (q/k/v/gate/up) or [n,16] (o/down)
    FLOAT           the float checkpoint's tensors unchanged (bfloat16)
    ==============  ==============================================================================

compressed-tensors int8 (LLM-Compressor, format "int-quantized"; vLLM detects it from config.json)
    ``config.json`` with ``quantization_config``; ``model.safetensors`` holding, per quantized
    Linear, P.weight int8 [n,k], P.weight_scale bfloat16 [n,1] and (static only)
    P.input_scale bfloat16 [1]; biases and everything else as in the float checkpoint.
    ``ignore``: "lm_head", on MoE models the router ("re:.*mlp.gate$"), and FLOAT overrides.

Public API::

    build_quant_checkpoint(base, scheme)  # -> pathlib.Path (built once, cached like the others)
    quant_checkpoint_dir(base, scheme)    # where it is / will be
    QuantSpec(scheme, overrides={...})    # a scheme plus per-layer exceptions (mixed checkpoints)
    MODELSLIM_SCHEMES, CT_SCHEMES, LINEAR_TYPES

``scheme`` is a name or a ``QuantSpec``. msModelSlim names: "W8A8" (static; on a MoE model the
experts are W8A8_DYNAMIC, msModelSlim's usual mix), "W8A8_DYNAMIC", "W8A16" (per channel),
"W4A8_DYNAMIC" (MoE only: experts W4A8_DYNAMIC, the other linears W8A8_DYNAMIC).
compressed-tensors names: "ct_w8a8_static", "ct_w8a8_dynamic".

What is quantized: every decoder-layer linear (q/k/v/o, gate/up/down, every expert's
gate/up/down); embeddings, norms, lm_head and the MoE router ``mlp.gate`` stay float.

Choices the formats leave open (the values, never the names/dtypes/shapes):
  * weights are symmetric per output channel; every scale is rounded UP to a bfloat16 value
    (int8: max|w|/127, int4: max|w|/7, W8A16 asymmetric: (max-min)/255) so that an implementation
    holding scales in bfloat16 (as vllm-ascend does) computes with exactly the checkpoint's value;
    compressed-tensors uses its own rule, bfloat16(max|w|/127.5);
  * W8A8 static: one input_scale (a power of two >= range/255, so x/s == x*(1/s) exactly) and one
    integral input_offset (centring the range) per group of linears that read the same input
    (q/k/v; gate/up; each expert's gate/up), o_proj/down_proj their own, from the min/max of
    the float model's activations over CALIBRATION_PROMPTS random prompts (experts: the tokens
    routed to them). compressed-tensors static: bfloat16(max|x|/127.5) per group likewise;
  * int4 weights use [-8, 7]; scale_bias is split by role (q/k/v/gate/up/w1/w3 vs
    o/down/w2), where msModelSlim matches name substrings (which would miss Mixtral's w1/w2/w3);
  * a tied lm_head is written as lm_head.weight (FLOAT) in the msModelSlim layout (its saver
    visits the lm_head module) and left out in the compressed-tensors one (save_pretrained).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import pathlib
import re
import shutil
from collections.abc import Mapping
from typing import Any

from checkpoints import CHECKPOINT_SPECS, build_atomically, build_checkpoint, cache_root
from checkpoints import checkpoint_dir as _base_dir

# Bump when the build procedure changes in a way the spec hash can't see.
QUANT_BUILDER_VERSION = 1

MODELSLIM_SCHEMES = ("W8A8", "W8A8_DYNAMIC", "W8A16", "W4A8_DYNAMIC")
CT_SCHEMES = ("ct_w8a8_static", "ct_w8a8_dynamic")
MOE_ONLY_SCHEMES = ("W4A8_DYNAMIC",)
# Per-linear types this generator writes (msModelSlim description strings).
LINEAR_TYPES = ("FLOAT", "W8A8", "W8A8_DYNAMIC", "W8A16", "W4A8_DYNAMIC")

DESCRIPTION_FILE = "quant_model_description.json"
MODELSLIM_WEIGHTS_FILE = "quant_model_weights.safetensors"
CT_WEIGHTS_FILE = "model.safetensors"
# Top-level (non-tensor) keys of the description, in the order MSV1 post_run writes them.
DESCRIPTION_META_KEYS = ("version", "model_quant_type", "metadata", "group_size", "optional")
DESCRIPTION_VERSION = "1.0.0"
# MSV1 AscendV1Saver.QUANT_TYPE_PRIORITY (later = wins model_quant_type); W4A8_DYNAMIC is
# deliberately absent there, so it never becomes model_quant_type.
QUANT_TYPE_PRIORITY = (
    "FLOAT",
    "W16A16S",
    "W8A16",
    "W8A8_DYNAMIC",
    "W8A8_MIX",
    "W8A8",
    "WFP8AFP8_DYNAMIC",
    "W8A8_MXFP8",
    "W4A8_MXFP",
    "W4A4_DYNAMIC",
    "W4A4_MXFP4",
    "W4A4_MXFP4_DUALSCALE",
)
# compressed-tensors version written as quantization_config.version (the local package's).
CT_VERSION = "0.17.0"

# W4A8 scale_bias of row-parallel linears is split in this many chunks of k (MSV1 tp_num=16).
SCALE_BIAS_CHUNKS = 16

CALIBRATION_SEED = 4321
CALIBRATION_PROMPTS = 4
CALIBRATION_LEN = 32

# Linear leaves reading the block input (column parallel) and the rest (row parallel).
_COLUMN_LEAVES = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "w1", "w3")
_ROW_LEAVES = ("o_proj", "down_proj", "w2")
_LINEAR_RE = re.compile(
    r"^model\.layers\.\d+\..+\.(" + "|".join(_COLUMN_LEAVES + _ROW_LEAVES) + r")$"
)
# Files copied from the float checkpoint (MSV1 copy_files: *.json, *.py, *.txt, *.jinja except
# *index.json; the weights are written anew).
_COPIED_SUFFIXES = (".json", ".py", ".txt", ".jinja")


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """A scheme name plus exceptions.

    ``overrides``: ``{pattern: type}`` (or pairs), fnmatch patterns on the linear's name without
    ``.weight`` (e.g. ``"model.layers.1.*"``, ``"model.layers.0.self_attn.k_proj"``); the first
    matching pattern sets that linear's type, one of LINEAR_TYPES. For compressed-tensors only
    "FLOAT" is allowed (the linear goes to the ``ignore`` list).
    ``deq_scale_dtype``: "float32" (what msModelSlim writes for a bfloat16 model) or "int64"
    (its encoding for other models).
    ``w8a16_asymmetric``: W8A16 weights with non-zero integral offsets,
    ``w = (weight - weight_offset) * weight_scale``.
    """

    scheme: str
    overrides: Any = ()
    deq_scale_dtype: str = "float32"
    w8a16_asymmetric: bool = False

    def __post_init__(self):
        items = self.overrides.items() if isinstance(self.overrides, Mapping) else self.overrides
        pairs = tuple((str(p), str(t)) for p, t in items)
        object.__setattr__(self, "overrides", pairs)
        if self.scheme not in MODELSLIM_SCHEMES + CT_SCHEMES:
            raise ValueError(
                f"unknown scheme {self.scheme!r}; known: {MODELSLIM_SCHEMES + CT_SCHEMES}"
            )
        allowed = ("FLOAT",) if self.is_ct else LINEAR_TYPES
        for pattern, qtype in pairs:
            if qtype not in allowed:
                raise ValueError(f"override {pattern!r}: type {qtype!r} not in {allowed}")
        if self.deq_scale_dtype not in ("float32", "int64"):
            raise ValueError(f"deq_scale_dtype {self.deq_scale_dtype!r}: float32 or int64")

    @property
    def is_ct(self) -> bool:
        return self.scheme in CT_SCHEMES

    @property
    def is_default(self) -> bool:
        return self == QuantSpec(self.scheme)

    def linear_type(self, prefix: str) -> str:
        """Type of the linear ``prefix`` (CT: "FLOAT" or the scheme name)."""
        for pattern, qtype in self.overrides:
            if fnmatch.fnmatchcase(prefix, pattern):
                return qtype
        if self.is_ct:
            return self.scheme
        expert = is_expert(prefix)
        if self.scheme == "W8A8":
            return "W8A8_DYNAMIC" if expert else "W8A8"
        if self.scheme == "W4A8_DYNAMIC":
            return "W4A8_DYNAMIC" if expert else "W8A8_DYNAMIC"
        return self.scheme

    def to_json(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "overrides": [list(p) for p in self.overrides],
            "deq_scale_dtype": self.deq_scale_dtype,
            "w8a16_asymmetric": self.w8a16_asymmetric,
        }


def as_spec(scheme: str | QuantSpec) -> QuantSpec:
    return scheme if isinstance(scheme, QuantSpec) else QuantSpec(scheme)


def is_expert(prefix: str) -> bool:
    return ".experts." in prefix


def is_moe_base(base: str) -> bool:
    cfg = CHECKPOINT_SPECS[base]["config"]
    return "num_experts" in cfg or "num_local_experts" in cfg


def input_group(prefix: str) -> str:
    """Linears with the same group read the same input (q/k/v; gate/up; an expert's gate/up)."""
    parent, leaf = prefix.rsplit(".", 1)
    return f"{parent}:in" if leaf in _COLUMN_LEAVES else prefix


def is_row_parallel(prefix: str) -> bool:
    return prefix.rsplit(".", 1)[1] in _ROW_LEAVES


def decoder_linears(names) -> list[str]:
    """The quantizable linears (names without ``.weight``) among checkpoint tensor names."""
    out = []
    for name in names:
        if name.endswith(".weight") and _LINEAR_RE.match(name[: -len(".weight")]):
            out.append(name[: -len(".weight")])
    return sorted(out)


def _validate(base: str, spec: QuantSpec) -> None:
    if base not in CHECKPOINT_SPECS:
        raise ValueError(f"unknown base checkpoint {base!r}")
    if spec.scheme in MOE_ONLY_SCHEMES and not is_moe_base(base):
        raise ValueError(f"scheme {spec.scheme} quantizes MoE experts; {base!r} is a dense model")


def quant_checkpoint_dir(base: str, scheme: str | QuantSpec) -> pathlib.Path:
    spec = as_spec(scheme)
    _validate(base, spec)
    payload = {
        "builder": QUANT_BUILDER_VERSION,
        "base": _base_dir(base).name,
        "spec": spec.to_json(),
        "calibration": [CALIBRATION_SEED, CALIBRATION_PROMPTS, CALIBRATION_LEN],
        "ct_version": CT_VERSION if spec.is_ct else None,
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    tag = spec.scheme.lower() + ("" if spec.is_default else "-custom")
    return cache_root() / "checkpoints" / f"{base}-{tag}-{digest}"


def build_quant_checkpoint(base: str, scheme: str | QuantSpec) -> pathlib.Path:
    """Directory of ``base`` (a checkpoints.py name) quantized with ``scheme``, built if needed."""
    spec = as_spec(scheme)
    final = quant_checkpoint_dir(base, spec)
    if (final / "config.json").is_file():
        return final
    base_path = build_checkpoint(base)
    return build_atomically(final, lambda tmp: _build_into(base_path, spec, tmp))


# ---------------------------------------------------------------------------------------------
# Numerics (float64 masters; ties round half to even like torch.round)
# ---------------------------------------------------------------------------------------------


def _bf16_up(values):
    """Smallest bfloat16 value >= each (positive) float32 value, as float32."""
    import torch

    bits = values.to(torch.float32).view(torch.int32)
    up = (bits + 0xFFFF) & ~0xFFFF
    return up.view(torch.float32)


def _sym_scale(w, qmax: int):
    """Per-row symmetric scale, bf16-representable, >= max|w|/qmax (float32 [n])."""
    import torch

    absmax = w.abs().amax(dim=1)
    absmax = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    # (float32 rounding may put absmax/qmax a hair below the exact quotient; the quantizer
    # clamps, so at most one value per row lands on qmax instead of qmax + tiny.)
    return _bf16_up(absmax / qmax)


def _quantize_rows(w, scale, lo: int, hi: int, offset=None):
    import torch

    q = torch.round(w / scale.double()[:, None])
    if offset is not None:
        q = q + offset.double()[:, None]
    return q.clamp(lo, hi)


def pack_int4(w4):
    """MSV1 w4a8_pack_int4: along the output dim, byte j = (w[2j+1] << 4) | (w[2j] & 0xF)."""
    import torch

    w = w4.to(torch.int16)
    lo, hi = w[0::2], w[1::2]
    byte = ((hi << 4) | (lo & 0xF)) & 0xFF
    return byte.to(torch.uint8).view(torch.int8)


def _scale_bias(prefix: str, deq):
    """MSV1 process_scale: 8 * sum over k of the dequantized weight, [n,1] for column-parallel
    linears, [n,16] (sum per k/16 chunk) for row-parallel ones. By role, not by substring, so
    Mixtral's w1/w2/w3 are handled too."""
    n, k = deq.shape
    if is_row_parallel(prefix):
        if k % SCALE_BIAS_CHUNKS:
            raise ValueError(f"{prefix}: k={k} not a multiple of {SCALE_BIAS_CHUNKS}")
        return 8 * deq.reshape(n, SCALE_BIAS_CHUNKS, k // SCALE_BIAS_CHUNKS).sum(-1)
    return 8 * deq.sum(dim=1, keepdim=True)


def _f32_as_int64(t):
    """MSV1 deqscale2int64: the float32 bits read as int32, widened (sign-extended) to int64."""
    import torch

    return t.to(torch.float32).contiguous().view(torch.int32).to(torch.int64)


def _static_modelslim(rng: tuple[float, float]) -> tuple[float, float]:
    """(power-of-two scale >= range/255, integral offset centring the range)."""
    import math

    lo, hi = rng
    span = max(hi - lo, 2.0**-20)
    scale = 2.0 ** math.ceil(math.log2(span / 255))
    offset = float(min(max(round(-(hi + lo) / (2 * scale)), -128), 127))
    return scale, offset


def _static_ct(rng: tuple[float, float]) -> float:
    """compressed-tensors symmetric: bfloat16(max(|min|, |max|) / 127.5) (0 in range)."""
    import torch

    absmax = max(abs(rng[0]), abs(rng[1]), 2.0**-20)
    return float(torch.tensor(absmax / 127.5, dtype=torch.float64).to(torch.bfloat16))


# ---------------------------------------------------------------------------------------------
# Calibration: activation ranges of the float model
# ---------------------------------------------------------------------------------------------


def _calibrate(base_path: pathlib.Path, config: dict, tensors: dict, linears: list[str]):
    """{input group: (min, max)} of the float64 model's linear inputs over random prompts."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.activations import ACT2FN

    experts_by_block: dict[str, list[str]] = {}
    for p in linears:
        if is_expert(p):
            experts_by_block.setdefault(p.split(".experts.")[0], []).append(p)
    # transformers' default grouped-mm experts take no float64; the eager loop does.
    extra = {"experts_implementation": "eager"} if experts_by_block else {}
    model = AutoModelForCausalLM.from_pretrained(
        base_path, dtype=torch.float64, local_files_only=True, **extra
    )
    model.eval()
    ranges: dict[str, tuple[float, float]] = {}

    def note(key, x):
        lo, hi = float(x.min()), float(x.max())
        old = ranges.get(key)
        ranges[key] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))

    act = ACT2FN[config["hidden_act"]]
    top_k = config.get("num_experts_per_tok")
    modules = dict(model.named_modules())
    handles = []
    for p in linears:
        if not is_expert(p) and p in modules:
            key = input_group(p)
            handles.append(
                modules[p].register_forward_pre_hook(lambda m, args, key=key: note(key, args[0]))
            )

    def moe_hook(block: str):
        by_expert: dict[str, dict[str, str]] = {}
        for p in experts_by_block[block]:
            parent, leaf = p.rsplit(".", 1)
            role = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}.get(leaf, leaf)
            by_expert.setdefault(parent, {})[role] = p
        router = tensors[f"{block}.gate.weight"].double()

        def hook(module, args):
            h = args[0].reshape(-1, args[0].shape[-1])
            probs = torch.softmax(h @ router.T, dim=-1)
            idx = torch.topk(probs, top_k, dim=-1).indices
            # Each expert sees the tokens routed to it (all tokens if calibration routed none).
            for parent, roles in by_expert.items():
                rows = (idx == int(parent.rsplit(".", 1)[1])).any(dim=-1)
                x = h[rows] if bool(rows.any()) else h
                note(f"{parent}:in", x)
                gate = x @ tensors[roles["gate_proj"] + ".weight"].double().T
                up = x @ tensors[roles["up_proj"] + ".weight"].double().T
                note(roles["down_proj"], act(gate) * up)

        return hook

    for block in experts_by_block:
        layer = block.split(".")[2]
        module = modules[f"model.layers.{layer}.mlp"]
        handles.append(module.register_forward_pre_hook(moe_hook(block)))
    gen = torch.Generator().manual_seed(CALIBRATION_SEED)
    shape = (CALIBRATION_PROMPTS, CALIBRATION_LEN)
    ids = torch.randint(0, config["vocab_size"], shape, generator=gen)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model; faster than two threads on a busy 2-core machine
    try:
        with torch.inference_mode():
            model(input_ids=ids)
    finally:
        torch.set_num_threads(threads)
    for h in handles:
        h.remove()
    return ranges


# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------


def _modelslim_linear(prefix, qtype, weight, bias, spec: QuantSpec, static):
    """{tensor name: (tensor, description type)} for one linear, as MSV1's on_* writers."""
    import torch

    out: dict[str, tuple[Any, str]] = {}
    if qtype == "FLOAT":
        out[prefix + ".weight"] = (weight, "FLOAT")
        if bias is not None:
            out[prefix + ".bias"] = (bias, "FLOAT")
        return out
    w = weight.double()
    n = w.shape[0]
    if qtype == "W8A8":
        w_scale = _sym_scale(w, 127)
        w_q = _quantize_rows(w, w_scale, -128, 127)
        in_scale, in_offset = static
        deq = torch.tensor(in_scale, dtype=torch.float32) * w_scale  # float32 product, exact
        b = bias.double() if bias is not None else torch.zeros(n, dtype=torch.float64)
        quant_bias = torch.round(b / deq.double() - w_q.sum(dim=1) * in_offset)
        deq_out = deq if spec.deq_scale_dtype == "float32" else _f32_as_int64(deq)
        out[prefix + ".weight"] = (w_q.to(torch.int8), qtype)
        out[prefix + ".quant_bias"] = (quant_bias.to(torch.int32), qtype)
        out[prefix + ".input_scale"] = (torch.tensor([in_scale], dtype=torch.float32), qtype)
        out[prefix + ".input_offset"] = (torch.tensor([in_offset], dtype=torch.float32), qtype)
        out[prefix + ".deq_scale"] = (deq_out, qtype)
    elif qtype in ("W8A8_DYNAMIC", "W8A16"):
        offset = None
        if qtype == "W8A16" and spec.w8a16_asymmetric:
            lo, hi = w.amin(dim=1).clamp(max=0), w.amax(dim=1).clamp(min=0)
            w_scale = _bf16_up(torch.clamp((hi - lo) / 255, min=2.0**-20))
            offset = torch.clamp(torch.round(-128 - lo / w_scale.double()), -128, 127)
        else:
            w_scale = _sym_scale(w, 127)
        w_q = _quantize_rows(w, w_scale, -128, 127, offset)
        zeros = torch.zeros(n, 1, dtype=torch.float32)
        out[prefix + ".weight"] = (w_q.to(torch.int8), qtype)
        out[prefix + ".weight_scale"] = (w_scale[:, None].to(torch.float32), qtype)
        w_offset = zeros if offset is None else offset[:, None].to(torch.float32)
        out[prefix + ".weight_offset"] = (w_offset, qtype)
    elif qtype == "W4A8_DYNAMIC":
        if n % 2:
            raise ValueError(f"{prefix}: W4A8 packs pairs of output channels; n={n} is odd")
        w_scale = _sym_scale(w, 7)
        w4 = _quantize_rows(w, w_scale, -8, 7)
        deq = w4.to(torch.float32) * w_scale[:, None]
        out[prefix + ".weight"] = (pack_int4(w4.to(torch.int8)), qtype)
        out[prefix + ".weight_scale"] = (w_scale[:, None].to(torch.float32), qtype)
        out[prefix + ".weight_offset"] = (torch.zeros(n, 1, dtype=torch.float32), qtype)
        out[prefix + ".scale_bias"] = (_scale_bias(prefix, deq.double()).to(torch.float32), qtype)
    else:
        raise ValueError(f"{prefix}: unsupported type {qtype}")
    if bias is not None:
        out[prefix + ".bias"] = (bias.to(torch.float32), "FLOAT")
    return out


def model_quant_type(types) -> str:
    """MSV1 update_quant_type over the linears' types (starts from "Unknown")."""
    best = "Unknown"
    for t in types:
        if t in QUANT_TYPE_PRIORITY and (
            best not in QUANT_TYPE_PRIORITY
            or QUANT_TYPE_PRIORITY.index(t) > QUANT_TYPE_PRIORITY.index(best)
        ):
            best = t
    return best


def _ct_linear(prefix, weight, bias, static_scale):
    import torch

    w = weight.double()
    absmax = w.abs().amax(dim=1)
    absmax = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    w_scale = (absmax / 127.5).to(torch.bfloat16)
    w_q = torch.round(torch.clamp(w / w_scale.double()[:, None], -128, 127))
    out = {
        prefix + ".weight": w_q.to(torch.int8),
        prefix + ".weight_scale": w_scale[:, None].contiguous(),
    }
    if static_scale is not None:
        out[prefix + ".input_scale"] = torch.tensor([static_scale], dtype=torch.bfloat16)
    if bias is not None:
        out[prefix + ".bias"] = bias
    return out


def ct_quantization_config(static: bool, ignore: list[str]) -> dict[str, Any]:
    """``quantization_config`` as LLM-Compressor writes it (compressed-tensors 0.17
    ModelCompressor.update_config: version/quant_method/sparsity_config/transform_config plus
    QuantizationConfig.model_dump) for int8 weights (channel, symmetric) and int8 activations
    (static per-tensor symmetric, or dynamic per-token symmetric)."""

    def args(strategy: str, dynamic: bool, observer: str | None) -> dict[str, Any]:
        return {
            "num_bits": 8,
            "type": "int",
            "symmetric": True,
            "group_size": None,
            "strategy": strategy,
            "block_structure": None,
            "dynamic": dynamic,
            "actorder": None,
            "scale_dtype": None,
            "zp_dtype": None,
            "observer": observer,
            "observer_kwargs": {},
        }

    group = {
        "targets": ["Linear"],
        "weights": args("channel", False, "memoryless_minmax"),
        "input_activations": (
            args("tensor", False, "static_minmax") if static else args("token", True, None)
        ),
        "output_activations": None,
        "format": "int-quantized",
    }
    return {
        "config_groups": {"group_0": group},
        "format": "int-quantized",
        "global_compression_ratio": None,
        "ignore": list(ignore),
        "kv_cache_scheme": None,
        "quant_method": "compressed-tensors",
        "quantization_status": "compressed",
        "sparsity_config": {},
        "transform_config": {},
        "version": CT_VERSION,
    }


def _build_into(base_path: pathlib.Path, spec: QuantSpec, out_dir: pathlib.Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(base_path / "model.safetensors"), "pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    config = json.loads((base_path / "config.json").read_text())
    linears = decoder_linears(tensors)
    types = {p: spec.linear_type(p) for p in linears}
    static_type = "ct_w8a8_static" if spec.is_ct else "W8A8"
    needs_calibration = any(t == static_type for t in types.values())
    ranges = _calibrate(base_path, config, tensors, linears) if needs_calibration else {}

    done = set()
    for p in linears:
        done.add(p + ".weight")
        done.add(p + ".bias")
    others = {name: t for name, t in tensors.items() if name not in done}
    if spec.is_ct:
        out: dict[str, Any] = {}
        for p in linears:
            weight, bias = tensors[p + ".weight"], tensors.get(p + ".bias")
            if types[p] == "FLOAT":
                out[p + ".weight"] = weight
                if bias is not None:
                    out[p + ".bias"] = bias
                continue
            static = _static_ct(ranges[input_group(p)]) if types[p] == static_type else None
            out.update(_ct_linear(p, weight, bias, static))
        out.update(others)
        ignore = ["lm_head"]
        routers = sorted({n.split(".experts.")[0] for n in tensors if ".experts." in n})
        if routers:  # the router is a Linear LLM-Compressor must not touch
            leaf = routers[0].rsplit(".", 1)[1]
            ignore.append(f"re:.*{leaf}.gate$")
        ignore += [p for p in linears if types[p] == "FLOAT"]
        save_file(
            {k: v.contiguous() for k, v in out.items()},
            str(out_dir / CT_WEIGHTS_FILE),
            metadata={"format": "pt"},
        )
        _copy_aux(base_path, out_dir)
        config["quantization_config"] = ct_quantization_config(spec.scheme == static_type, ignore)
        (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        return

    entries: dict[str, tuple[Any, str]] = {}
    for p in linears:
        static = _static_modelslim(ranges[input_group(p)]) if types[p] == "W8A8" else None
        bias = tensors.get(p + ".bias")
        entries.update(_modelslim_linear(p, types[p], tensors[p + ".weight"], bias, spec, static))
    for name, t in others.items():
        entries[name] = (t, "FLOAT")
    if config.get("tie_word_embeddings") and "lm_head.weight" not in entries:
        entries["lm_head.weight"] = (tensors["model.embed_tokens.weight"].clone(), "FLOAT")
    names = sorted(entries)
    description: dict[str, Any] = {name: entries[name][1] for name in names}
    # lm_head (and the MoE router) are float nn.Linear modules: they count as "FLOAT".
    description["version"] = DESCRIPTION_VERSION
    description["model_quant_type"] = model_quant_type([*types.values(), "FLOAT"])
    description["metadata"] = {}
    description["group_size"] = 0
    description["optional"] = {}
    save_file(
        {n: entries[n][0].contiguous() for n in names},
        str(out_dir / MODELSLIM_WEIGHTS_FILE),
        metadata={"format": "pt"},
    )
    (out_dir / DESCRIPTION_FILE).write_text(json.dumps(description, indent=2) + "\n")
    _copy_aux(base_path, out_dir)
    config.pop("quantization_config", None)
    if isinstance(config.get("text_config"), dict):
        config["text_config"].pop("quantization_config", None)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _copy_aux(base_path: pathlib.Path, out_dir: pathlib.Path) -> None:
    for src in sorted(base_path.iterdir()):
        if src.name.endswith(_COPIED_SUFFIXES) and not src.name.endswith("index.json"):
            shutil.copyfile(src, out_dir / src.name)


def _main(argv: list[str] | None = None) -> None:
    import argparse
    import time

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("schemes", nargs="+")
    args = parser.parse_args(argv)
    for scheme in args.schemes:
        start = time.perf_counter()
        path = build_quant_checkpoint(args.base, scheme)
        print(f"{args.base} {scheme}: {path} ({time.perf_counter() - start:.2f}s)")


if __name__ == "__main__":
    _main()
