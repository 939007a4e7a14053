"""The real `vllm serve` with the plugin on the CPU backend, driven by the openai client."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from server import Server

pytestmark = pytest.mark.slow
MAX_MODEL_LEN = 512


@pytest.fixture(scope="module")
def server(checkpoints):
    srv = Server(checkpoints("qwen3"), "--max-model-len", str(MAX_MODEL_LEN),
                 "--kv-cache-memory-bytes", str(128 << 20), "--dtype", "float32")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_default_serve_captures_graphs_and_logs_it(client, server):
    """No graph flag: the server captures PIECEWISE graphs at start-up and logs time and memory
    (a request first, so start-up is surely over)."""
    client.completions.create(model="test", prompt="a", max_tokens=1, temperature=0.0)
    log = server.output(tail=None)
    assert re.search(r"Graph capture \(PIECEWISE, sizes \[1, 2, 4, 8, 16\]\): [0-9.]+ s; "
                     r"memory in use grew by -?[0-9.]+ MiB", log), log[-3000:]


def test_completion(client):
    out = client.completions.create(model="test", prompt="The quick brown fox", max_tokens=8,
                                     temperature=0)
    assert out.choices[0].text
    assert out.usage.completion_tokens == 8


def test_completion_is_deterministic_under_greedy(client):
    a = client.completions.create(model="test", prompt="hello world", max_tokens=10,
                                  temperature=0)
    b = client.completions.create(model="test", prompt="hello world", max_tokens=10,
                                  temperature=0)
    assert a.choices[0].text == b.choices[0].text


def test_chat_completion(client):
    out = client.chat.completions.create(
        model="test", messages=[{"role": "user", "content": "What is two plus two?"}],
        max_tokens=8, temperature=0,
    )
    assert out.choices[0].message.content
    assert out.usage.prompt_tokens > 5


def test_streaming_equals_non_streaming(client):
    full = client.completions.create(model="test", prompt="Once upon a time", max_tokens=12,
                                     temperature=0)
    chunks = client.completions.create(model="test", prompt="Once upon a time", max_tokens=12,
                                       temperature=0, stream=True)
    streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    assert streamed == full.choices[0].text


def test_sixteen_concurrent_requests(client):
    def ask(i):
        return client.completions.create(model="test", prompt=f"Request number {i} says",
                                         max_tokens=16, temperature=0, seed=i)

    with ThreadPoolExecutor(16) as pool:
        outs = list(pool.map(ask, range(16)))
    assert all(o.usage.completion_tokens == 16 for o in outs)
    # Concurrency must not mix up requests: a request repeated alone gives the same text.
    again = ask(7)
    assert again.choices[0].text == outs[7].choices[0].text


def test_over_long_prompt_is_a_400_naming_the_limit(client, server):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="test", prompt="word " * (MAX_MODEL_LEN + 100),
                                  max_tokens=4)
    assert err.value.status_code == 400
    assert str(MAX_MODEL_LEN) in str(err.value)
    assert server.healthy()
    ok = client.completions.create(model="test", prompt="still alive", max_tokens=2)
    assert ok.usage.completion_tokens == 2


# vLLM 0.32's own shutdown race (vllm-project/vllm#48745, fix proposed in #49000): AsyncLLM tears
# the engine client down before cancelling its output handler, so the handler sometimes logs the
# client's EngineDeadError poison pill with a traceback after a clean shutdown. Only that exact
# block, after the client reported its shutdown complete, is tolerated; any other traceback fails.
_VLLM_SHUTDOWN_RACE = re.compile(
    r"\[shutdown\] MPClient: complete\n"
    r"(?:.*\[async_llm\.py:\d+\] AsyncLLM output_handler failed\.\n)"
    r"(?:.*\[async_llm\.py:\d+\] .*\n)*?"
    r".*\[async_llm\.py:\d+\] vllm\.v1\.engine\.exceptions\.EngineDeadError: .*\n"
)


def test_zz_clean_shutdown_on_sigterm(server):
    # Defined last: pytest runs a module's tests in definition order.
    assert server.stop() == 0, server.output()
    output = server.output()
    assert "[shutdown] EngineCore: exiting busy loop" in output, output
    assert "Traceback" not in _VLLM_SHUTDOWN_RACE.sub("[shutdown] MPClient: complete\n", output)
