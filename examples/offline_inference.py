"""Offline batched generation with vLLM; on an Ascend host the plugin is picked up by itself.

    python examples/offline_inference.py --model Qwen/Qwen2.5-7B-Instruct
    VLLM_ASCEND_DEVICE=cpu python examples/offline_inference.py --model <local checkpoint>
"""

import argparse

from vllm import LLM, SamplingParams


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-model-len", type=int, default=2048)
    args = parser.parse_args()

    prompts = [
        "The capital of France is",
        "Write one sentence about the sea:",
        "def fibonacci(n):",
    ]
    llm = LLM(model=args.model, dtype=args.dtype, max_model_len=args.max_model_len)
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    for out in llm.generate(prompts, params):
        print(f"{out.prompt!r} -> {out.outputs[0].text!r}")


if __name__ == "__main__":
    main()
