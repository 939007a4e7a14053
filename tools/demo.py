"""`make demo`: show the resolved platform and its adapted config, then serve SmolLM2-135M-Instruct
with the real `vllm serve` on the CPU backend and print its answer to a chat question."""

from __future__ import annotations

import os
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tools"), str(REPO / "tests" / "e2e")]
os.environ.setdefault("VLLM_ASCEND_DEVICE", "cpu")


def show_platform(model: pathlib.Path) -> None:
    from vllm.engine.arg_utils import EngineArgs
    from vllm.platforms import current_platform as p

    print(f"platform: {type(p).__name__} device_type={p.device_type} "
          f"dist_backend={p.dist_backend} device={p.get_device_name()}")
    cfg = EngineArgs(model=str(model), max_model_len=2048).create_engine_config()
    print("adapted config:")
    print(f"  worker_cls            {cfg.parallel_config.worker_cls}")
    print(f"  compilation mode      {cfg.compilation_config.mode.name}")
    print(f"  cudagraph mode        {cfg.compilation_config.cudagraph_mode.name}")
    print(f"  custom_ops            {cfg.compilation_config.custom_ops}")
    print(f"  async scheduling      {cfg.scheduler_config.async_scheduling}")
    print(f"  block size            {cfg.cache_config.block_size}")
    print(f"  pin memory            {p.is_pin_memory_available()}")


def main() -> None:
    import openai
    from fetch_smollm2 import fetch_smollm2
    from server import Server

    model = fetch_smollm2()
    show_platform(model)
    print("starting vllm serve (CPU backend)...", flush=True)
    server = Server(model, "--max-model-len", "2048", "--dtype", "bfloat16")
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="EMPTY")
        question = "What is the capital of France? Answer in one sentence."
        reply = client.chat.completions.create(
            model="test", messages=[{"role": "user", "content": question}],
            max_tokens=48, temperature=0,
        )
        print(f"Q: {question}\nA: {reply.choices[0].message.content}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
