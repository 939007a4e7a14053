"""Vision-language models through the plugin: tiny random Qwen2.5-VL and Qwen2-VL checkpoints
(tests/vl_checkpoint.py) with one and two images, greedy, token for token against Hugging Face
``generate`` in float32; the offline API with the processor's prompt and with chat messages
carrying base64 data URLs; ``vllm serve`` answering a chat request with an image.

The vision tower runs the plugin's layers (fused attention in TND, npu_rotary_mul) and the
language model npu_mrope; tests/e2e/test_layer_coverage.py-style accounting is asserted here for
those classes.
"""

from __future__ import annotations

import base64
import functools
import io

import numpy as np
import pytest
import torch
from engine import engine
from server import Server
from test_layer_coverage import coverage_problems, layer_inventory
from vl_checkpoint import build_vl_checkpoint

MAX_TOKENS = 10


def _image(height: int, width: int, seed: int):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# 112x168: 8x12 patches, two 112-px windows down the height (Qwen2.5-VL's windowed block);
# 84x56: 6x4 patches. Both within the processor's pixel bounds, so not resized.
IMAGES = [_image(112, 168, 0), _image(84, 56, 1)]
CASES = {
    "one_image": (IMAGES[:1], "What is in the picture?"),
    "two_images": (IMAGES, "Compare the two pictures."),
}


def _data_url(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _messages(images, text: str, *, urls: bool) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": _data_url(im)}} if urls
             else {"type": "image"} for im in images]
    return [{"role": "user", "content": parts + [{"type": "text", "text": text}]}]


@functools.cache
def _hf_reference(path) -> dict[str, tuple[list[int], list[int], str]]:
    """case -> (prompt ids, greedy continuation, prompt text) from transformers in float32."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    out = {}
    for case, (images, text) in CASES.items():
        prompt = processor.apply_chat_template(_messages(images, text, urls=False),
                                               add_generation_prompt=True)
        inputs = processor(text=[prompt], images=images, return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
        n = inputs["input_ids"].shape[1]
        out[case] = (inputs["input_ids"][0].tolist(), ids[0, n:].tolist(), prompt)
    return out


def _params():
    from vllm import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen2_vl"])
def vl(request):
    path = build_vl_checkpoint(request.param)
    reference = _hf_reference(path)
    with engine(path, limit_mm_per_prompt={"image": 2, "video": 0},
                max_num_batched_tokens=512) as llm:
        yield request.param, path, llm, reference


def test_offline_prompts_equal_hf(vl):
    name, _, llm, reference = vl
    prompts = [{"prompt": reference[c][2], "multi_modal_data": {"image": CASES[c][0]}}
               for c in CASES]
    outs = llm.generate(prompts, _params(), use_tqdm=False)
    for case, out in zip(CASES, outs, strict=True):
        hf_prompt, hf_tokens, _ = reference[case]
        # the image placeholders expand as the HF processor expands them
        assert out.prompt_token_ids == hf_prompt, f"{name} {case}"
        assert list(out.outputs[0].token_ids) == hf_tokens, f"{name} {case}"


def test_chat_with_data_urls_equals_hf(vl):
    name, _, llm, reference = vl
    for case, (images, text) in CASES.items():
        out = llm.chat(_messages(images, text, urls=True), _params(), use_tqdm=False)[0]
        assert list(out.outputs[0].token_ids) == reference[case][1], f"{name} {case}"


def test_vision_layers_are_the_plugins(vl):
    """Every layer is accounted for by the plugin's table; the vision tower's attention and
    rotary and the text model's mrope are the plugin's."""
    name, _, llm, _ = vl
    inventory = llm.apply_model(layer_inventory)[0]
    assert coverage_problems(inventory) == [], name
    plugin = {layer["registered_as"] for layer in inventory
              if layer["module"].startswith("vllm_ascend.")}
    assert {"MMEncoderAttention", "ApplyRotaryEmb", "MRotaryEmbedding"} <= plugin, name


def test_serve_chat_with_image():
    """The real server: a chat request with a base64 image answers what the engine answers."""
    import openai

    path = build_vl_checkpoint("qwen2_5_vl")
    hf_prompt, hf_tokens, _ = _hf_reference(path)["one_image"]
    images, text = CASES["one_image"]
    srv = Server(path, "--max-model-len", "512", "--dtype", "float32",
                 "--limit-mm-per-prompt", '{"image": 2, "video": 0}')
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        resp = client.chat.completions.create(
            model="test", messages=_messages(images, text, urls=True), temperature=0.0,
            max_tokens=MAX_TOKENS, extra_body={"return_token_ids": True})
    finally:
        srv.stop()
    choice = resp.choices[0]
    assert resp.usage.prompt_tokens == len(hf_prompt)
    assert choice.model_extra["token_ids"] == hf_tokens
    assert choice.message.content  # detokenized text came back too
