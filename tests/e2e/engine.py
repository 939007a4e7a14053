"""Running vLLM engines through the plugin inside the test process."""

from __future__ import annotations

import contextlib
import gc
import os

import torch

os.environ.setdefault("VLLM_ASCEND_DEVICE", "cpu")
# One engine at a time, in this process: faster start-up than a spawned engine core on 2 cores.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


@contextlib.contextmanager
def engine(model, **kwargs):
    from vllm import LLM
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    defaults = dict(
        dtype="float32",
        max_model_len=512,
        kv_cache_memory_bytes=64 << 20,
        seed=0,
        disable_log_stats=False,  # the tests read prefix-cache and preemption counters
    )
    defaults.update(kwargs)
    llm = None
    try:
        # Inside the try: an engine that fails to start leaves parallel state behind too.
        llm = LLM(model=str(model), **defaults)
        yield llm
    finally:
        del llm
        gc.collect()
        cleanup_dist_env_and_memory()


def greedy(llm, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    from vllm import SamplingParams, TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                        use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def counter(llm, name: str) -> float:
    return sum(m.value for m in llm.get_metrics() if m.name == name)


def random_prompts(lengths: list[int], vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    # Skip the first ids (special tokens of the test tokenizer).
    return [torch.randint(8, vocab, (n,), generator=g).tolist() for n in lengths]


def generate_once(model, prompts: list[list[int]], max_tokens: int, **kwargs) -> list[list[int]]:
    """Start an engine, generate greedily, shut it down. No reference to the engine outlives
    this call (a stale LLM collected later would tear down the next engine's process groups)."""
    with engine(model, **kwargs) as llm:
        return greedy(llm, prompts, max_tokens)


def graph_replays(llm, every_rank: bool = False):
    """Replays per captured size of the (first) worker's graph wrappers: "full" (whole decode
    graphs, keyed by decode batch size) and "piecewise" (keyed by token count). every_rank:
    a list with one such dict per worker."""

    def read(worker):
        from vllm_ascend.worker.breakable_graph import AscendBreakableGraphWrapper
        from vllm_ascend.worker.graph_wrapper import AscendGraphWrapper

        found, model = {}, worker.model_runner.model
        while isinstance(model, (AscendGraphWrapper, AscendBreakableGraphWrapper)):
            if isinstance(model, AscendGraphWrapper):
                found["full"] = {desc.num_tokens: entry.cudagraph.num_replays
                                 for desc, entry in model.concrete_cudagraph_entries.items()}
            else:
                found["piecewise"] = dict(model.replays)
            model = model.runnable
        return found

    per_rank = llm.collective_rpc(read)
    return per_rank if every_rank else per_rank[0]


def total_replays(llm) -> int:
    return sum(sum(sizes.values()) for sizes in graph_replays(llm).values())


def layer_methods(llm) -> dict[str, int]:
    """How many of the model's layers use each quant method class (linear, LM head, MoE, ...)."""
    from collections import Counter

    def count(worker):
        return dict(Counter(type(m.quant_method).__name__
                            for m in worker.model_runner.get_model().modules()
                            if getattr(m, "quant_method", None) is not None))

    return llm.collective_rpc(count)[0]
