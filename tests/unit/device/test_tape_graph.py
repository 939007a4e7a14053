"""The CPU backend's op-tape graph behaves like a device graph: replay re-runs the captured ops on
the captured buffers with no Python model code, host values stay as captured unless update()
replaces them (in torch_npu's format), and a stale buffer gives the old result."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vllm_ascend import kernels
from vllm_ascend.attention.impl import AscendAttentionImpl
from vllm_ascend.attention.metadata import AscendAttentionMetadata, compressed_causal_mask
from vllm_ascend.device import tape_graph
from vllm_ascend.device.cpu import CpuDevice
from vllm_ascend.device.tape_graph import GraphCaptureError, TapeGraph

N, KVH, D, BS = 4, 2, 64, 128  # query heads, kv heads, head dim, block size
NUM_BLOCKS = 6
# A normal tensor (not an inference tensor), as the metadata builder makes it at start-up: the
# kernel's mask check reads the version counter, which inference tensors do not have.
MASK = compressed_causal_mask(torch.device("cpu")).clone()


@pytest.fixture(autouse=True, scope="module")
def _ops():
    kernels.load()


class SmallMlp(torch.nn.Module):
    """linear -> npu_rms_norm -> gate/up linear -> npu_swiglu -> linear."""

    def __init__(self, hidden=32, inter=48) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.w_in = torch.randn(hidden, hidden, generator=g) / hidden**0.5
        self.gamma = torch.rand(hidden, generator=g) + 0.5
        self.w_gate_up = torch.randn(2 * inter, hidden, generator=g) / hidden**0.5
        self.w_out = torch.randn(hidden, inter, generator=g) / inter**0.5
        self.calls = 0
        self.rstd = None

    def forward(self, x):
        self.calls += 1
        h = F.linear(x, self.w_in)
        h, self.rstd = torch.ops.npu.npu_rms_norm(h, self.gamma, 1e-6)
        return F.linear(torch.ops.npu.npu_swiglu(F.linear(h, self.w_gate_up)), self.w_out)


def capture(fn, *, auto_dispatch_capture=False):
    g = CpuDevice.Graph()
    with torch.inference_mode(), CpuDevice.graph(
        g, pool=CpuDevice.graph_pool_handle(), stream=CpuDevice.current_stream(),
        auto_dispatch_capture=auto_dispatch_capture,
    ):
        out = fn()
    return g, out


def test_device_layer_exposes_the_tape():
    assert CpuDevice.Graph is TapeGraph and CpuDevice.graph is tape_graph.graph
    p1, p2 = CpuDevice.graph_pool_handle(), CpuDevice.graph_pool_handle()
    assert p1 != p2
    g = CpuDevice.Graph()
    assert not CpuDevice.is_current_stream_capturing()
    with CpuDevice.graph(g, pool=p1):
        assert CpuDevice.is_current_stream_capturing()
        torch.ones(2).add(1)
    assert not CpuDevice.is_current_stream_capturing()
    assert g.pool() == p1


def test_model_replay_matches_eager_without_running_python():
    model = SmallMlp()
    x = torch.randn(5, 32)
    g, out = capture(lambda: model(x))
    rstd = model.rstd
    assert model.calls == 1
    # linear, rms_norm, linear, swiglu, linear (no Python-level op escapes the tape)
    assert g.num_ops >= 5 and g.num_replay_ops >= 5
    gen = torch.Generator().manual_seed(7)
    for _ in range(4):
        x.copy_(torch.randn(5, 32, generator=gen))
        g.replay()
        with torch.inference_mode():
            expect = model(x)
        expect_rstd = model.rstd
        model.calls -= 1  # the eager reference call
        torch.testing.assert_close(out, expect, rtol=0, atol=0)
        torch.testing.assert_close(rstd, expect_rstd, rtol=0, atol=0)  # second tuple output
    assert model.calls == 1  # replays ran no forward code
    assert g.num_replays == 4


def test_stale_buffer_gives_the_old_output():
    model = SmallMlp()
    x = torch.randn(3, 32)
    g, out = capture(lambda: model(x))
    old = out.clone()
    fresh = torch.randn(3, 32)  # a new tensor instead of the captured buffer
    g.replay()
    torch.testing.assert_close(out, old, rtol=0, atol=0)
    with torch.inference_mode():
        assert not torch.allclose(model(fresh), old)
    x.copy_(fresh)  # written into the captured buffer, the next replay sees it
    g.replay()
    with torch.inference_mode():
        torch.testing.assert_close(out, model(fresh), rtol=0, atol=0)


def test_out_kwarg_inplace_views_and_host_scalars():
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    buf = torch.empty(4, 6)
    acc = torch.zeros(4, 6)

    def step():
        torch.add(a, b, alpha=2, out=buf)  # out= writes into a captured tensor
        acc[1:3].add_(buf[1:3])  # in place through a view
        return buf.sum(dim=0) * 3.0  # host float frozen in the tape

    g, out = capture(step)
    assert torch.equal(acc[0], torch.zeros(6))
    a.copy_(torch.ones(4, 6))
    b.zero_()
    g.replay()
    assert torch.equal(buf, torch.full((4, 6), 1.0))
    torch.testing.assert_close(out, torch.full((6,), 12.0))
    first = acc.clone()
    g.replay()  # the in-place accumulation really runs again
    torch.testing.assert_close(acc[1:3], first[1:3] + 1.0)
    assert torch.equal(acc[0], torch.zeros(6)) and torch.equal(acc[3], torch.zeros(6))


def test_may_alias_ops_that_copied_at_capture_copy_on_replay():
    """contiguous/reshape are schema "may alias" ops: a copy at capture is a copy on replay."""
    x = torch.randn(6, 4)

    def step():
        return x.t().contiguous(), x.t().reshape(-1), x.reshape(24)

    g, (c, r, v) = capture(step)
    assert v.data_ptr() == x.data_ptr() and c.data_ptr() != x.data_ptr()
    x.copy_(torch.randn(6, 4))
    g.replay()
    assert torch.equal(c, x.t()) and torch.equal(r, x.t().reshape(-1))
    assert torch.equal(v, x.reshape(24))


def test_tuple_outputs_are_static_buffers():
    x = torch.randn(3, 10)
    g, (vals, idx) = capture(lambda: torch.topk(x * 1.0, 2, dim=-1))
    x.copy_(torch.arange(30.0).view(3, 10).flip(-1))
    g.replay()
    assert torch.equal(idx, torch.tensor([[0, 1]] * 3))
    assert torch.equal(vals[:, 0], torch.tensor([9.0, 19.0, 29.0]))


def test_random_ops_draw_per_replay_and_follow_the_seed():
    g, out = capture(lambda: torch.rand(16) + 0.0)
    torch.manual_seed(3)
    g.replay()
    first = out.clone()
    g.replay()
    assert not torch.equal(out, first)  # fresh numbers each replay
    torch.manual_seed(3)
    g.replay()
    assert torch.equal(out, first)  # reproducible from the generator state


def test_host_sync_inside_capture_raises_and_leaves_no_mode_behind():
    x = torch.randn(4)
    g = TapeGraph()
    with pytest.raises(GraphCaptureError, match="synchronisation"):
        with CpuDevice.graph(g):
            y = x * 2
            if y.sum().item() > 0:  # data-dependent host control flow
                y = y + 1
    assert not CpuDevice.is_current_stream_capturing()
    with pytest.raises(RuntimeError, match="failed"):
        g.replay()
    g.reset()
    with CpuDevice.graph(g):
        y = x * 2
    g.replay()
    assert g.num_ops == 1


def test_reset_and_counters():
    before = dict(tape_graph.COUNTERS)
    x = torch.randn(4)
    g, out = capture(lambda: (x + 1).relu())
    g.replay()
    g.replay()
    assert g.num_ops == 2 and g.num_replays == 2
    assert tape_graph.COUNTERS["captures"] == before.get("captures", 0) + 1
    assert tape_graph.COUNTERS["replays"] == before.get("replays", 0) + 2
    assert tape_graph.COUNTERS["replayed_ops"] == before.get("replayed_ops", 0) + 4
    with pytest.raises(RuntimeError, match="already holds"):
        g.capture_begin()
    g.reset()
    assert g.num_ops == 0 and g.num_replays == 0
    with pytest.raises(RuntimeError, match="empty"):
        g.replay()
    with CpuDevice.graph(g):
        out2 = x - 1
    g.replay()
    torch.testing.assert_close(out2, x - 1)


# ------------------------------------------------------------------ paged attention


def paged_cache(gen, dtype=torch.float32):
    k = torch.randn(NUM_BLOCKS, BS, KVH * D, generator=gen).to(dtype)
    v = torch.randn(NUM_BLOCKS, BS, KVH * D, generator=gen).to(dtype)
    return k, v


def reference(q, k_cache, v_cache, block_table, q_lens, kv_lens):
    """float64 causal GQA attention over a paged cache; queries are each sequence's last tokens."""
    k_all = k_cache.double().view(NUM_BLOCKS * BS, KVH, D)
    v_all = v_cache.double().view(NUM_BLOCKS * BS, KVH, D)
    out, qs = [], 0
    for r, (ql, kl) in enumerate(zip(q_lens, kv_lens, strict=True)):
        pos = torch.arange(kl)
        slots = block_table[r].long()[pos // BS] * BS + pos % BS
        k = k_all[slots].repeat_interleave(N // KVH, dim=1)
        v = v_all[slots].repeat_interleave(N // KVH, dim=1)
        for i in range(ql):
            p = kl - ql + i
            s = torch.einsum("nd,knd->nk", q[qs + i].double(), k[: p + 1]) / math.sqrt(D)
            out.append(torch.einsum("nk,knd->nd", s.softmax(-1), v[: p + 1]))
        qs += ql
    return torch.stack(out)


def fia(q, k_cache, v_cache, block_table, cu_q, kv_lens):
    return torch.ops.npu.npu_fused_infer_attention_score(
        q, k_cache, v_cache,
        atten_mask=MASK,
        actual_seq_lengths=cu_q, actual_seq_lengths_kv=kv_lens, block_table=block_table,
        num_heads=N, scale=1.0 / math.sqrt(D), pre_tokens=2147483647, next_tokens=0,
        input_layout="TND", num_key_value_heads=KVH, sparse_mode=3, block_size=BS,
    )


def test_fia_lengths_are_frozen_until_update():
    gen = torch.Generator().manual_seed(0)
    k_cache, v_cache = paged_cache(gen)
    block_table = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32)
    q = torch.randn(2, N, D, generator=gen)  # decode: one token per request
    kv_lens = [100, 150]
    g, (out, _lse) = capture(lambda: fia(q, k_cache, v_cache, block_table, [1, 2], kv_lens),
                             auto_dispatch_capture=True)
    torch.testing.assert_close(out.double(), reference(q, k_cache, v_cache, block_table, [1, 1],
                                                       [100, 150]), rtol=1e-4, atol=1e-5)
    kv_lens[:] = [60, 230]  # the Python side moves on; the captured call does not
    new_ref = reference(q, k_cache, v_cache, block_table, [1, 1], [60, 230])
    old_ref = reference(q, k_cache, v_cache, block_table, [1, 1], [100, 150])
    g.replay()
    torch.testing.assert_close(out.double(), old_ref, rtol=1e-4, atol=1e-5)
    assert (out.double() - new_ref).abs().max() > 1e-2
    g.update([{"actual_seq_lengths_kv": [60, 230]}])
    g.replay()
    torch.testing.assert_close(out.double(), new_ref, rtol=1e-4, atol=1e-5)
    g.replay()  # the update persists
    torch.testing.assert_close(out.double(), new_ref, rtol=1e-4, atol=1e-5)
    # in-place query contents still flow through the updated call
    q.copy_(torch.randn(2, N, D, generator=gen))
    g.replay()
    torch.testing.assert_close(out.double(),
                               reference(q, k_cache, v_cache, block_table, [1, 1], [60, 230]),
                               rtol=1e-4, atol=1e-5)


def test_update_follows_torch_npu_format():
    gen = torch.Generator().manual_seed(1)
    k_cache, v_cache = paged_cache(gen)
    bt = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32)
    q = torch.randn(3, N, D, generator=gen)  # request 0: 2 tokens, request 1: 1 token

    def two_layers():
        a, _ = fia(q, k_cache, v_cache, bt, [2, 3], [130, 40])
        b, _ = fia(q, v_cache, k_cache, bt, [2, 3], [130, 40])  # a second "layer"
        return a, b

    g, (a, b) = capture(two_layers, auto_dispatch_capture=True)
    # One dict per recorded fused-attention call, in capture order.
    g.update([{"actual_seq_lengths_kv": [10, 200]}, {"actual_seq_lengths_kv": [250, 5]}])
    g.replay()
    tol = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.double(), reference(q, k_cache, v_cache, bt, [2, 1], [10, 200]),
                               **tol)
    torch.testing.assert_close(b.double(), reference(q, v_cache, k_cache, bt, [2, 1], [250, 5]),
                               **tol)
    # A single dict applies to every call; both length lists can be replaced.
    g.update([{"actual_seq_lengths": [1, 3], "actual_seq_lengths_kv": [50, 60]}])
    g.replay()
    torch.testing.assert_close(a.double(), reference(q, k_cache, v_cache, bt, [1, 2], [50, 60]),
                               **tol)
    torch.testing.assert_close(b.double(), reference(q, v_cache, k_cache, bt, [1, 2], [50, 60]),
                               **tol)
    with pytest.raises(RuntimeError, match="2 updatable calls"):
        g.update([{"actual_seq_lengths_kv": [1, 1]}] * 3)
    with pytest.raises(ValueError, match="actual_seq_length_kv"):
        g.update([{"actual_seq_length_kv": [1, 1]}])  # a typo torch_npu would ignore

    g2, _ = capture(lambda: fia(q, k_cache, v_cache, bt, [2, 3], [130, 40]))
    with pytest.raises(RuntimeError, match="auto_dispatch_capture"):
        g2.update([{"actual_seq_lengths_kv": [10, 20]}])


def test_kv_scatter_runs_in_place_on_replay():
    gen = torch.Generator().manual_seed(2)
    halves = torch.zeros(2, NUM_BLOCKS, BS, KVH, D)
    key = torch.randn(3, KVH, D, generator=gen)
    value = torch.randn(3, KVH, D, generator=gen)
    slots = torch.tensor([5, BS + 7, 3 * BS], dtype=torch.int64)

    def step():
        torch.ops.npu.npu_scatter_pa_kv_cache(key, value, halves[0], halves[1], slots,
                                              cache_mode="Norm")

    g, out = capture(step)
    assert out is None and g.num_replay_ops == 1  # the two cache views are not re-run
    halves.zero_()
    key.copy_(torch.randn(3, KVH, D, generator=gen))
    value.copy_(torch.randn(3, KVH, D, generator=gen))
    slots.copy_(torch.tensor([2 * BS + 1, 9, 5 * BS + 127]))
    g.replay()
    flat = halves.view(2, NUM_BLOCKS * BS, KVH, D)
    assert torch.equal(flat[0, slots], key) and torch.equal(flat[1, slots], value)
    assert int((flat.abs().sum(dim=(2, 3)) > 0).sum()) == 6  # nothing else written


def test_plugin_attention_forward_captured_and_replayed():
    """AscendAttentionImpl.forward in a tape: a decode step of two requests, replayed for the
    next step after writing the step's inputs into the captured buffers and updating lengths."""
    gen = torch.Generator().manual_seed(3)
    impl = AscendAttentionImpl(N, D, 1.0 / math.sqrt(D), num_kv_heads=KVH)
    halves = torch.zeros(2, NUM_BLOCKS, BS, KVH, D)
    kv_cache = halves.transpose(0, 1)  # the runner's [blocks, 2, block, kv heads, dim] view
    block_table = torch.tensor([[0, 1], [3, 4]], dtype=torch.int32)
    hist = [140, 70]  # tokens already cached per request
    for r, n in enumerate(hist):
        pos = torch.arange(n)
        s = block_table[r].long()[pos // BS] * BS + pos % BS
        halves.view(2, -1, KVH, D)[:, s] = torch.randn(2, n, KVH, D, generator=gen)

    def slots_for(lens):
        return torch.tensor([int(block_table[r, p // BS]) * BS + p % BS
                             for r, p in enumerate(lens)], dtype=torch.int64)

    qkv = torch.zeros(2, (N + 2 * KVH) * D)  # static input buffer of the step
    query = qkv[:, : N * D].view(2, N, D)  # strided, as vLLM hands it
    key = qkv[:, N * D : (N + KVH) * D].view(2, KVH, D)
    value = qkv[:, (N + KVH) * D :].view(2, KVH, D)
    output = torch.zeros(2, N * D)
    slot_mapping = slots_for(hist)

    def meta(lens):
        return AscendAttentionMetadata(
            num_actual_tokens=2, slot_mapping=slot_mapping, block_table=block_table,
            attn_mask=MASK, cu_query_lens=[1, 2],
            seq_lens=[n + 1 for n in lens], max_query_len=1)

    qkv.copy_(torch.randn(qkv.shape, generator=gen))
    g, _ = capture(lambda: impl.forward(None, query, key, value, kv_cache, meta(hist), output),
                   auto_dispatch_capture=True)
    lens = hist
    for _ in range(3):
        lens = [n + 1 for n in lens]  # next decode step
        qkv.copy_(torch.randn(qkv.shape, generator=gen))
        slot_mapping.copy_(slots_for(lens))
        ref_halves = halves.clone()
        ref_out = torch.zeros_like(output)
        with torch.inference_mode():
            impl.forward(None, query.clone(), key.clone(), value.clone(),
                         ref_halves.transpose(0, 1), meta(lens), ref_out)
        g.update([{"actual_seq_lengths_kv": [n + 1 for n in lens]}])
        g.replay()
        torch.testing.assert_close(output, ref_out, rtol=1e-5, atol=1e-6)
        assert torch.equal(halves, ref_halves)  # the new K/V landed in the cache in place
        expect = reference(query, halves[0].reshape(NUM_BLOCKS, BS, -1),
                           halves[1].reshape(NUM_BLOCKS, BS, -1), block_table, [1, 1],
                           [n + 1 for n in lens])
        torch.testing.assert_close(output.view(2, N, D).double(), expect, rtol=1e-4, atol=1e-5)


def test_collectives_are_recorded_and_waited_on_at_replay():
    """A tensor-parallel all-reduce inside a capture (gloo, one rank here) is recorded as the
    c10d op it is; replay re-runs it in place and waits on its work before the next op."""
    import socket

    import torch.distributed as dist

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0,
                            world_size=1)
    try:
        x = torch.ones(4)
        graph = TapeGraph()
        with torch.inference_mode(), tape_graph.graph(graph):
            y = x * 2
            dist.all_reduce(y)
            z = y + 1
        _replay_with_spied_waits(graph, x, z)
    finally:
        dist.destroy_process_group()


def _replay_with_spied_waits(graph, x, z):
    names = graph.recorded_op_names()
    assert "c10d.allreduce_.default" in names, names
    step = next(s for s in graph._steps if s.name == "allreduce_.default")
    assert step.copies is tape_graph.WAIT

    original = torch.ops.c10d.allreduce_.default

    class Spy:  # the replayed op's work handle, seen being waited on
        def __init__(self, work):
            self.work = work

        def wait(self):
            waited.append(True)
            return self.work.wait()

    def spied(*args, **kwargs):
        out = original(*args, **kwargs)
        return (*out[:-1], Spy(out[-1]))

    waited = []
    graph._plan = [(spied if fn in (original, original._op) else fn, args, kwargs, copies)
                   for fn, args, kwargs, copies in graph._plan]
    x.fill_(3.0)
    graph.replay()
    assert waited and torch.equal(z, torch.full((4,), 7.0))


GLUE_SCALE = {"value": 2.0}


def _glue_op():
    """A vLLM-style custom op (Python glue in the vllm namespace) reading a host value."""
    from vllm.utils.torch_utils import direct_register_custom_op

    if not hasattr(torch.ops.vllm, "ascend_tape_glue_test"):
        def glue(x: torch.Tensor) -> torch.Tensor:
            return x * GLUE_SCALE["value"] + 1

        direct_register_custom_op("ascend_tape_glue_test", glue, mutates_args=[],
                                  fake_impl=lambda x: torch.empty_like(x), dispatch_key="CPU")
    return torch.ops.vllm.ascend_tape_glue_test


def test_vllm_custom_ops_are_recorded_through():
    """vLLM's custom ops are Python glue: the tape records the ops inside them, so the glue's
    host values are frozen at capture (as a device graph would hold the kernels it launched),
    instead of the glue re-running at replay."""
    op = _glue_op()
    x = torch.ones(3)
    graph = TapeGraph()
    with torch.inference_mode(), tape_graph.graph(graph):
        y = op(x)
    names = graph.recorded_op_names()
    assert not any("ascend_tape_glue_test" in n for n in names), names
    assert "aten.mul.Tensor" in names and "aten.add.Tensor" in names, names
    GLUE_SCALE["value"] = 5.0  # a later host change does not reach the captured graph
    x.fill_(2.0)
    graph.replay()
    assert torch.equal(y, torch.full((3,), 5.0))  # 2 * 2 + 1, not 2 * 5 + 1
