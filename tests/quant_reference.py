"""Float64 reference for quantized checkpoints (msModelSlim AscendV1 and compressed-tensors int8).

The base architecture is built with Hugging Face transformers from the checkpoint's config.json
(its ``quantization_config`` dropped), in float64 end to end (embeddings, norms, attention,
router), and loaded with the checkpoint's float tensors. Every quantized linear and every MoE
expert is replaced by plain-PyTorch float64 arithmetic of its scheme, reading the quantized
tensors from the checkpoint, so the only quantization effects are the scheme's own. Nothing of
vllm_ascend (or of the test-side generator) is imported: the layout is read from the files.

    quant_hf_greedy(path, prompts, max_new_tokens, ignore_eos=False) -> list[list[int]]
    quant_hf_logprobs(path, token_ids) -> float64 [len(token_ids), vocab]
    reference_linear(path, prefix) -> RefLinear (one linear's reference, for layer tests)
    load_quant_reference(path) -> (tokenizer, model), cached per path

A float checkpoint (no description file, no quantization_config) loads too, every linear FLOAT:
the float model run the same float64 way, for comparisons.

Formulas (x: float64 input row(s), w: the checkpoint's integer weight [n, k]; round = half to
even, torch.round; sat8 = clamp to [-128, 127]). Sources (see the quantization notes of issue 11):
MSV1 = msModelSlim ``save/ascendv1.py`` (AscendV1Saver), MSDOC-V1 = msModelSlim "AscendV1 格式说明",
OPS = CANN ops docs (AscendQuantV3, DynamicQuant, QuantMatmul, GroupedMatmul), CT =
compressed-tensors 0.17 (``quantization/utils/helpers.py``, ``lifecycle/forward_helpers.py``).

W8A8 (static; MSDOC-V1 "量化与反量化公式", MSV1 on_w8a8_static, OPS AscendQuantV3 + QuantMatmul
int32 bias)::

    x_q = sat8(round(x / input_scale + input_offset))
    y   = (x_q @ w^T + quant_bias) * deq_scale

  quant_bias = round(bias/deq_scale - input_offset * sum_k w) already holds the float bias and the
  offset correction, so ``P.bias`` (also written, tagged FLOAT) is NOT added again. deq_scale is
  float32, or int64 holding the float32 bits sign-extended from int32 (MSV1 deqscale2int64).

W8A8_DYNAMIC (MSDOC-V1, OPS DynamicQuant + QuantMatmul per-token, float bias added after)::

    s_x = max_k |x| / 127 per token;  x_q = sat8(round(x / s_x))
    y   = (x_q @ (w - weight_offset)^T) * s_x * weight_scale^T + bias

W8A16 (MSDOC-V1 ``deq_weight = (weight - weight_offset) * weight_scale``)::

    y = x @ ((w - weight_offset) * weight_scale)^T + bias

  Sign question: the NPU op computes (weight + antiquant_offset) * scale and MindIE negates the
  offset when loading; msModelSlim's documented dequant subtracts. This reference subtracts (the
  file format's meaning); vllm-ascend passes the offset un-negated, right only for zero offsets.

W4A8_DYNAMIC (MSV1 on_w4a8_dynamic / pack.py; OPS GroupedMatmul A8W4: "bias = 8 * weight * scale
summed over k, an auxiliary computed offline")::

    w4[2j] = low nibble of weight[j], w4[2j+1] = high nibble (signed int4; packed along n)
    W     = (w4 - weight_offset) * weight_scale
    s_x, x_q as W8A8_DYNAMIC
    y     = s_x * ((x_q - 8) @ W^T + sum_j scale_bias[:, j]) + bias

  i.e. the kernel contract in which scale_bias makes up for an activation operand shifted by -8
  (that shift is our reading of the A8W4 decomposition; the docs only fix the bias's value, and
  MSDOC-V1's "deq_weight = (weight - weight_offset) * weight_scale + scale_bias" cannot be read
  per element: scale_bias is a sum over k).
  With scale_bias = 8 * sum_k W, as msModelSlim writes it, this is s_x * (x_q @ W^T) + bias.

compressed-tensors int8 (CT calculate_qparams / _quantize; weights symmetric channel)::

    static:  x_q = round(clamp(x / input_scale + zp, -128, 127))          (zp = 0 if symmetric)
             y   = ((x_q - zp) @ w^T) * input_scale * weight_scale^T + bias
    dynamic: s_x = max_k |x| / 127 per token
             y   = (round(clamp(x / s_x, -128, 127)) @ w^T) * s_x * weight_scale^T + bias

  Dynamic activation scales are the serving runtime's choice, not the checkpoint's: vLLM's
  int8 quantizer (its CUDA and CPU kernels) and the NPU's npu_dynamic_quant divide by 127, so
  the reference does too (compressed-tensors' own fake-quantization divides by 127.5).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

_LEAVES = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "w1",
    "w2",
    "w3",
)
_LINEAR = re.compile(r"^(model\.layers\.\d+\..+\.(?:" + "|".join(_LEAVES) + r"))\.weight$")
_EXPERT = re.compile(r"^(model\.layers\.(\d+)\.(\w+))\.experts\.(\d+)\.(\w+)$")
# Mixtral's checkpoint names experts w1/w3/w2 under block_sparse_moe; transformers' module is mlp.
_EXPERT_ROLE = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}
CT_DYNAMIC_DIVISOR = 127.0
MODELSLIM_DYNAMIC_DIVISOR = 127.0


@contextlib.contextmanager
def one_thread():
    """Run torch on one thread: these models are tiny, and on a shared 2-core machine two
    OpenMP threads competing with other processes are several times slower than one."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _sat_round(v: torch.Tensor, lo: int = -128, hi: int = 127) -> torch.Tensor:
    return torch.round(v).clamp(lo, hi)


def _per_token_scale(x: torch.Tensor, divisor: float) -> torch.Tensor:
    absmax = x.abs().amax(dim=-1, keepdim=True)
    return torch.where(absmax > 0, absmax / divisor, torch.ones_like(absmax))


def decode_deq_scale(t: torch.Tensor) -> torch.Tensor:
    """float64 value of a W8A8 deq_scale (float32, or int64 = float32 bits as a signed int32)."""
    if t.dtype == torch.int64:
        return t.to(torch.int32).view(torch.float32).double()
    return t.double()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """[n/2, k] int8 (two signed int4 per byte, pairs of output channels) -> [n, k] int64."""
    b = packed.to(torch.int64) & 0xFF
    lo, hi = b & 0xF, b >> 4
    lo, hi = torch.where(lo > 7, lo - 16, lo), torch.where(hi > 7, hi - 16, hi)
    return torch.stack([lo, hi], dim=1).reshape(2 * packed.shape[0], packed.shape[1])


class RefLinear(nn.Module):
    """One linear of a quantized checkpoint, in float64 (see the module docstring)."""

    def __init__(self, prefix: str, kind: str, tensors: dict[str, torch.Tensor], ct=None):
        super().__init__()
        self.prefix, self.kind, self.ct = prefix, kind, ct

        def get(name, required=True):
            t = tensors.get(f"{prefix}.{name}")
            if t is None and required:
                raise ValueError(f"{kind} linear {prefix} has no {name}")
            return t

        def buf(name, value):
            if value is not None:
                self.register_buffer(name, value.double(), persistent=False)
            else:
                setattr(self, name, None)

        weight = get("weight")
        buf("bias", get("bias", False) if kind != "W8A8" else None)
        if kind == "W4A8_DYNAMIC":
            weight = unpack_int4(weight)
        buf("weight", weight)
        if kind == "W8A8":
            buf("input_scale", get("input_scale").reshape(()))
            buf("input_offset", get("input_offset").reshape(()))
            buf("quant_bias", get("quant_bias"))
            self.register_buffer("deq_scale", decode_deq_scale(get("deq_scale")), persistent=False)
        elif kind in ("W8A8_DYNAMIC", "W8A16", "W4A8_DYNAMIC"):
            buf("weight_scale", get("weight_scale").reshape(-1))
            buf("weight_offset", get("weight_offset").reshape(-1))
            buf("scale_bias", get("scale_bias", kind == "W4A8_DYNAMIC"))
        elif kind == "CT":
            buf("weight_scale", get("weight_scale").reshape(-1))
            buf("input_scale", get("input_scale", not ct["dynamic"]))
            buf("input_zero_point", get("input_zero_point", False))
            buf("weight_zero_point", get("weight_zero_point", False))
        elif kind != "FLOAT":
            raise NotImplementedError(f"{prefix}: no reference for type {kind!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1]).double()
        y = getattr(self, "_" + self.kind.lower())(x)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], y.shape[-1])

    def _float(self, x):
        return x @ self.weight.T

    def _w8a8(self, x):
        x_q = _sat_round(x / self.input_scale + self.input_offset)
        return (x_q @ self.weight.T + self.quant_bias) * self.deq_scale

    def _w8a8_dynamic(self, x):
        s_x = _per_token_scale(x, MODELSLIM_DYNAMIC_DIVISOR)
        x_q = _sat_round(x / s_x)
        w = self.weight - self.weight_offset[:, None]
        return (x_q @ w.T) * s_x * self.weight_scale

    def _w8a16(self, x):
        return x @ ((self.weight - self.weight_offset[:, None]) * self.weight_scale[:, None]).T

    def _w4a8_dynamic(self, x):
        s_x = _per_token_scale(x, MODELSLIM_DYNAMIC_DIVISOR)
        x_q = _sat_round(x / s_x)
        w = (self.weight - self.weight_offset[:, None]) * self.weight_scale[:, None]
        return s_x * ((x_q - 8) @ w.T + self.scale_bias.sum(dim=-1))

    def _ct(self, x):
        w = self.weight
        if self.weight_zero_point is not None:
            w = w - self.weight_zero_point.reshape(-1, 1)
        if self.ct["dynamic"]:
            s_x = _per_token_scale(x, CT_DYNAMIC_DIVISOR)
            x_q = torch.round(torch.clamp(x / s_x, -128, 127))
            return (x_q @ w.T) * s_x * self.weight_scale
        zp = self.input_zero_point if self.input_zero_point is not None else 0.0
        x_q = torch.round(torch.clamp(x / self.input_scale + zp, -128, 127))
        return ((x_q - zp) @ w.T) * self.input_scale * self.weight_scale

    def extra_repr(self) -> str:
        return f"{self.prefix}, {self.kind}"


class RefRouter(nn.Module):
    """Top-k softmax router in float64 (the transformers routers softmax in float32)."""

    def __init__(self, weight: torch.Tensor, top_k: int, normalize: bool):
        super().__init__()
        self.register_buffer("weight", weight.double(), persistent=False)
        self.top_k, self.normalize = top_k, normalize

    def forward(self, hidden_states):
        h = hidden_states.reshape(-1, self.weight.shape[1])
        logits = h @ self.weight.T
        probs = torch.softmax(logits, dim=-1)
        top, idx = torch.topk(probs, self.top_k, dim=-1)
        if self.normalize:
            top = top / top.sum(dim=-1, keepdim=True)
        return logits, top, idx


class RefExperts(nn.Module):
    """Experts with the transformers Experts call signature; each expert's gate/up/down is a
    RefLinear: y = sum over the token's experts of weight * down(act(gate(x)) * up(x))."""

    def __init__(self, experts: list[dict[str, RefLinear]], act):
        super().__init__()
        self.experts = nn.ModuleList(nn.ModuleDict(e) for e in experts)
        self.act = act

    def forward(self, hidden_states, top_k_index, top_k_weights):
        out = torch.zeros_like(hidden_states)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(top_k_index == e)
            if token.numel() == 0:
                continue
            x = hidden_states[token]
            y = expert["down_proj"](self.act(expert["gate_proj"](x)) * expert["up_proj"](x))
            out.index_add_(0, token, y * top_k_weights[token, slot, None])
        return out


# ---------------------------------------------------------------------------------------------
# Reading a checkpoint
# ---------------------------------------------------------------------------------------------


def _read_tensors(path: pathlib.Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {path}")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), "pt") as f:
            for name in f.keys():
                if name in tensors:
                    raise ValueError(f"{name} is in more than one safetensors file")
                tensors[name] = f.get_tensor(name)
    return tensors


def _ct_matches(name: str, patterns: Sequence[str]) -> bool:
    for pattern in patterns:
        if pattern.startswith("re:"):
            if re.match(pattern[3:], name):
                return True
        elif pattern == name:
            return True
    return False


def _ct_args(qcfg: dict[str, Any]) -> dict[str, Any]:
    groups = list(qcfg["config_groups"].values())
    if len(groups) != 1 or groups[0]["targets"] != ["Linear"]:
        raise NotImplementedError("the reference takes one config group targeting Linear")
    weights, inputs = groups[0]["weights"], groups[0]["input_activations"]
    if weights["num_bits"] != 8 or weights["type"] != "int" or inputs is None:
        raise NotImplementedError(f"not an int8 W8A8 scheme: {groups[0]}")
    if weights["strategy"] not in ("channel", "tensor") or inputs["num_bits"] != 8:
        raise NotImplementedError(f"unsupported strategies: {groups[0]}")
    if inputs["dynamic"] and (inputs["strategy"] != "token" or not inputs["symmetric"]):
        raise NotImplementedError(f"dynamic input must be symmetric per token: {inputs}")
    return {"dynamic": bool(inputs["dynamic"])}


def linear_kinds(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, torch.Tensor], Any]:
    """({linear prefix: kind}, tensors, CT args or None). Kinds: the msModelSlim type strings,
    or "CT"/"FLOAT" for compressed-tensors; a float checkpoint (no description, no
    quantization_config) gives all "FLOAT", i.e. the float model run the same way."""
    path = pathlib.Path(path)
    tensors = _read_tensors(path)
    prefixes = sorted(m.group(1) for n in tensors if (m := _LINEAR.match(n)))
    description = path / "quant_model_description.json"
    if description.is_file():
        desc = json.loads(description.read_text())
        kinds = {p: desc[p + ".weight"] for p in prefixes}
        for name in tensors:
            if name not in desc:
                raise ValueError(f"{name} has no entry in quant_model_description.json")
        return kinds, tensors, None
    config = json.loads((path / "config.json").read_text())
    qcfg = config.get("quantization_config")
    if not qcfg:  # a float checkpoint: the same float64 model, every linear FLOAT
        return dict.fromkeys(prefixes, "FLOAT"), tensors, None
    if qcfg.get("quant_method") != "compressed-tensors":
        raise ValueError(f"{path}: quant_method {qcfg.get('quant_method')!r} not supported")
    ct = _ct_args(qcfg)
    ignore = qcfg.get("ignore") or []
    kinds = {}
    for p in prefixes:
        kinds[p] = "FLOAT" if _ct_matches(p, ignore) else "CT"
        if (tensors[p + ".weight"].dtype == torch.int8) != (kinds[p] == "CT"):
            raise ValueError(f"{p}: weight dtype {tensors[p + '.weight'].dtype} vs config")
    return kinds, tensors, ct


def reference_linear(path: str | os.PathLike, prefix: str) -> RefLinear:
    kinds, tensors, ct = linear_kinds(path)
    return RefLinear(prefix, kinds[prefix], tensors, ct)


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent), leaf, module)


@functools.lru_cache(maxsize=4)
def _load(path_str: str):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.activations import ACT2FN

    path = pathlib.Path(path_str)
    kinds, tensors, ct = linear_kinds(path)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(
        config, dtype=torch.float64, attn_implementation="eager"
    )
    model.eval()
    act = ACT2FN[config.hidden_act]

    consumed: set[str] = set()
    experts: dict[str, dict[int, dict[str, RefLinear]]] = {}
    for prefix, kind in kinds.items():
        consumed.update(n for n in tensors if n.startswith(prefix + "."))
        ref = RefLinear(prefix, kind, tensors, ct)
        m = _EXPERT.match(prefix)
        if m:
            block, index, leaf = m.group(1), int(m.group(4)), m.group(5)
            experts.setdefault(block, {}).setdefault(index, {})[_EXPERT_ROLE.get(leaf, leaf)] = ref
        else:
            _set_module(model, prefix, ref)
    for block, by_index in experts.items():
        module_name = re.sub(r"\.block_sparse_moe$", ".mlp", block)
        moe = model.get_submodule(module_name)
        if sorted(by_index) != list(range(len(by_index))):
            raise ValueError(f"{block}: experts {sorted(by_index)}")
        moe.experts = RefExperts([by_index[i] for i in range(len(by_index))], act)
        router = moe.gate
        moe.gate = RefRouter(
            tensors[f"{block}.gate.weight"], router.top_k, getattr(router, "norm_topk_prob", True)
        )
        consumed.add(f"{block}.gate.weight")

    params = dict(model.named_parameters())
    tied = bool(getattr(config, "tie_word_embeddings", False))
    loaded = set()
    with torch.no_grad():
        for name, t in tensors.items():
            if name in consumed or (tied and name == "lm_head.weight"):
                continue
            target = re.sub(r"\.block_sparse_moe\.", ".mlp.", name)
            if target not in params:
                raise ValueError(f"checkpoint tensor {name} matches no parameter")
            params[target].copy_(t.double())
            loaded.add(target)
    missing = set(params) - loaded - ({"lm_head.weight"} if tied else set())
    if missing:
        raise ValueError(f"parameters not in the checkpoint: {sorted(missing)}")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return tokenizer, model


def load_quant_reference(path: str | os.PathLike):
    """(tokenizer, float64 reference model) for a quantized checkpoint, cached per path."""
    with one_thread():
        return _load(str(pathlib.Path(path).resolve()))


def _eos_ids(path: pathlib.Path, tokenizer) -> set[int]:
    gen = path / "generation_config.json"
    eos = json.loads(gen.read_text()).get("eos_token_id") if gen.is_file() else None
    if eos is None:
        eos = tokenizer.eos_token_id
    return set(eos) if isinstance(eos, list) else {eos}


def quant_hf_greedy(
    path: str | os.PathLike,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    max_new_tokens: int,
    ignore_eos: bool = False,
) -> list[list[int]]:
    """Greedy decoding with the reference; the new token ids of each prompt (like hf_greedy:
    text prompts tokenized with special tokens, EOS included and stopping unless ignore_eos)."""
    tokenizer, model = load_quant_reference(path)
    eos = _eos_ids(pathlib.Path(path), tokenizer)
    results = []
    for prompt in prompts:
        # Text is tokenized as vLLM tokenizes a completion prompt (with special tokens).
        text = isinstance(prompt, str)
        ids = tokenizer(prompt)["input_ids"] if text else [int(t) for t in prompt]
        if not ids:
            raise ValueError("empty prompt")
        generated: list[int] = []
        with torch.inference_mode(), one_thread():
            out = model(input_ids=torch.tensor([ids]), use_cache=True)
            while len(generated) < max_new_tokens:
                token = int(out.logits[0, -1].argmax())
                generated.append(token)
                if (token in eos and not ignore_eos) or len(generated) == max_new_tokens:
                    break
                out = model(
                    input_ids=torch.tensor([[token]]),
                    past_key_values=out.past_key_values,
                    use_cache=True,
                )
        results.append(generated)
    return results


def quant_hf_logprobs(path: str | os.PathLike, token_ids: Sequence[int]) -> torch.Tensor:
    """Teacher-forced log-probabilities of the reference: row i is log p(. | token_ids[: i + 1]),
    float64 [len(token_ids), vocab]."""
    _, model = load_quant_reference(path)
    with torch.inference_mode(), one_thread():
        logits = model(input_ids=torch.tensor([list(token_ids)])).logits[0]
    return torch.log_softmax(logits.double(), dim=-1)
