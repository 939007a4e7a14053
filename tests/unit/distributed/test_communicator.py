"""AscendCommunicator over gloo between two real processes.

One spawn of two ranks runs every check (start-up dominates the time), returns its outputs
through a queue, and the parent asserts them against references computed in float64 from the
full inputs. Each rank's input is a slice of (or a contribution built from) a full tensor made
from a fixed seed, so the parent rebuilds exactly what every rank held.

Part 1 builds the communicator on plain gloo groups. Part 2 brings up vLLM's own parallel state
(data parallel 2, expert parallel) so vLLM's AgRsAll2AllManager runs MoE dispatch/combine through
the expert-parallel group's AscendCommunicator, as in serving. Part 3 runs the plugin's own
all-to-all expert dispatch (distributed/moe_dispatch.py) over that group: uneven expert ranges,
a rank with no tokens, and an expert function whose output names the expert that computed it.
"""

from __future__ import annotations

import io
import os
import queue
import socket
import traceback
from datetime import timedelta

import pytest
import torch
import torch.multiprocessing as mp

WORLD = 2
QUALNAME = "vllm_ascend.distributed.communicator.AscendCommunicator"
UNSUPPORTED_BACKEND = "deepep_low_latency"

# name: (seed, full shape, dim, per-rank sizes along dim or None for even, dtypes)
GATHER_CASES = {
    "dim0_second_rank_empty": (1, (3, 4), 0, [3, 0], [torch.float32]),
    "last_dim_uneven": (2, (3, 7), -1, [2, 5], [torch.float32]),
    "middle_dim_uneven": (3, (2, 5, 3), 1, [1, 4], [torch.float32]),
    "even_sizes_none": (4, (4, 3), 0, None, [torch.float32]),
    "every_rank_empty": (5, (0, 4), 0, [0, 0], [torch.float32]),
    "list_last_dim": (6, (3, 7), -1, [2, 5], [torch.bfloat16, torch.int64]),
    "list_dim0_as_moe": (7, (8, 6), 0, [3, 5], [torch.float32, torch.int32]),
}
# name: (seed, full shape, dim, sizes or None): rank r contributes _full(seed + r, shape)
SCATTER_CASES = {
    "dim0_uneven": (11, (8, 4), 0, [3, 5]),
    "last_dim_first_rank_empty": (12, (2, 3), -1, [0, 3]),
    "even_sizes_none": (13, (3, 4), 1, None),
}
INTO_OUTPUT_CASE = (14, (6, 2), 0, [5, 1])
# rank r sends A2A_SPLITS[r][s] rows to rank s
A2A_SPLITS = [[1, 3], [2, 0]]
A2A_SEED, A2A_EVEN_SEED = 21, 22
SEND_SEED = 31
MOE_TOKENS = [3, 5]  # tokens per data-parallel rank
MOE_SEED = 41
# The all-to-all dispatch: 5 experts over 2 ranks (3 + 2), top-2, tokens per rank per call.
A2A_EXPERTS, A2A_TOPK = 5, 2
A2A_CALLS = {"both_ranks": [3, 5], "second_rank_empty": [4, 0]}
A2A_MOE_SEED = 51


def _full(seed: int, shape, dtype=torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen).to(dtype)
    return torch.randint(-1000, 1000, shape, generator=gen, dtype=dtype)


def _even(shape, dim, sizes):
    return sizes if sizes is not None else [shape[dim] // WORLD] * WORLD


def _shard(full: torch.Tensor, dim: int, sizes, rank: int) -> torch.Tensor:
    sizes = _even(full.shape, dim, sizes)
    return full.narrow(dim, sum(sizes[:rank]), sizes[rank]).clone()


def _moe_inputs():
    n = sum(MOE_TOKENS)
    return (
        _full(MOE_SEED, (n, 6)),
        _full(MOE_SEED + 1, (n, 2)).softmax(-1),
        _full(MOE_SEED + 2, (n, 2), torch.int32),
        _full(MOE_SEED + 3, (n, 4)),
    )


def _a2a_inputs(call: str):
    """Tokens (T, 6), routing weights (T, K) and distinct expert ids (T, K) of every rank."""
    seed = A2A_MOE_SEED + list(A2A_CALLS).index(call)
    n = sum(A2A_CALLS[call])
    gen = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(A2A_EXPERTS, generator=gen)[:A2A_TOPK] for _ in range(n)])
    return (_full(seed, (n, 6)), _full(seed + 1, (n, A2A_TOPK)).softmax(-1),
            ids.to(torch.int32).reshape(n, A2A_TOPK))


def _expert_fn(rows: torch.Tensor, global_ids: torch.Tensor) -> torch.Tensor:
    """A stand-in expert MLP whose output depends on which expert computed each row."""
    return rows * (global_ids.to(rows.dtype).unsqueeze(1) + 1) + global_ids.unsqueeze(1)


def _expert_output(gathered: torch.Tensor, rank: int) -> torch.Tensor:
    """What rank ``rank``'s experts contribute for the gathered tokens (distinct per rank)."""
    return gathered * (rank + 1) + rank


# ---- the two ranks ---------------------------------------------------------------------------
def _part1_communicator(rank: int) -> dict:
    import torch.distributed as dist
    from vllm.config import ParallelConfig, VllmConfig, set_current_vllm_config

    from vllm_ascend.distributed.communicator import AscendCommunicator

    cpu_group = dist.new_group(backend="gloo")
    comm = AscendCommunicator(cpu_group=cpu_group, device=torch.device("cpu"),
                              device_group=dist.group.WORLD, unique_name="test")
    out: dict = {"manager_without_all2all": comm.all2all_manager}

    for name, (seed, shape, dim, sizes, dtypes) in GATHER_CASES.items():
        shards = [_shard(_full(seed + i, shape, dt), dim, sizes, rank)
                  for i, dt in enumerate(dtypes)]
        arg = shards[0] if len(shards) == 1 else shards
        out[f"gather/{name}"] = comm.all_gatherv(arg, dim=dim, sizes=sizes)

    for name, (seed, shape, dim, sizes) in SCATTER_CASES.items():
        out[f"scatter/{name}"] = comm.reduce_scatterv(_full(seed + rank, shape), dim, sizes)
    seed, shape, dim, sizes = INTO_OUTPUT_CASE
    target = torch.full((sizes[rank], *shape[1:]), float("nan"))
    returned = comm.reduce_scatterv_into_output(_full(seed + rank, shape), target, dim, sizes)
    out["scatter_into_output"] = (target, returned is target)

    out["a2a/uneven"] = comm.all_to_all(
        _full(A2A_SEED + rank, (sum(A2A_SPLITS[rank]), 3)),
        output_split_sizes=[A2A_SPLITS[s][rank] for s in range(WORLD)],
        input_split_sizes=A2A_SPLITS[rank],
    )
    out["a2a/even"] = comm.all_to_all(_full(A2A_EVEN_SEED + rank, (4, 2)))

    ping = _full(SEND_SEED, (2, 3), torch.bfloat16)
    pong = _full(SEND_SEED + 1, (5,), torch.int64)
    if rank == 0:
        comm.send(ping)  # default dst: the next rank
        out["recv"] = comm.recv(pong.shape, pong.dtype, src=1)
    else:
        out["recv"] = comm.recv(ping.shape, ping.dtype)  # default src: the previous rank
        comm.send(pong, dst=0)

    errors = {}
    for key, call in {
        "gather_wrong_local_size": lambda: comm.all_gatherv(torch.zeros(2, 3), 0, [1, 1]),
        "gather_wrong_count": lambda: comm.all_gatherv(torch.zeros(1, 3), 0, [1]),
        "scatter_wrong_sum": lambda: comm.reduce_scatterv(torch.zeros(4, 2), 0, [1, 1]),
        "scatter_uneven_without_sizes": lambda: comm.reduce_scatterv(torch.zeros(3, 2), 0),
        "a2a_one_sided": lambda: comm.all_to_all(torch.zeros(2, 1), [1, 1], None),
    }.items():
        try:
            call()
            errors[key] = None
        except ValueError as exc:
            errors[key] = str(exc)
    config = VllmConfig(parallel_config=ParallelConfig(all2all_backend=UNSUPPORTED_BACKEND))
    try:
        with set_current_vllm_config(config):
            AscendCommunicator(cpu_group=cpu_group, device=torch.device("cpu"),
                               device_group=dist.group.WORLD, unique_name="ep:0",
                               use_all2all=True)
        errors["unsupported_backend"] = None
    except ValueError as exc:
        errors["unsupported_backend"] = str(exc)
    out["errors"] = errors
    return out


def _part2_moe_round_trip(rank: int) -> dict:
    from vllm.config import ParallelConfig, VllmConfig, set_current_vllm_config
    from vllm.distributed import parallel_state
    from vllm.forward_context import get_forward_context, set_forward_context
    from vllm.platforms import current_platform

    # The platform hands vLLM's parallel groups this communicator.
    assert current_platform.get_device_communicator_cls() == QUALNAME
    config = VllmConfig(parallel_config=ParallelConfig(
        data_parallel_size=WORLD, data_parallel_rank=rank, enable_expert_parallel=True))
    hidden, weights, ids, logits = _moe_inputs()
    start, n = sum(MOE_TOKENS[:rank]), MOE_TOKENS[rank]
    mine = [t[start:start + n] for t in (hidden, weights, ids, logits)]
    out: dict = {}
    with set_current_vllm_config(config):
        # Each data-parallel rank is a one-rank engine (world size 1, rank 0); vLLM adopts the
        # already initialised default process group as the world across data parallel.
        parallel_state.init_distributed_environment(
            world_size=1, rank=0, distributed_init_method="unused://", local_rank=rank,
            backend="gloo")
        parallel_state.initialize_model_parallel(1, 1)
        ep = parallel_state.get_ep_group()
        out["ep_comm"] = type(ep.device_communicator).__name__
        out["ep_manager"] = type(ep.device_communicator.all2all_manager).__name__
        out["dp_comm"] = type(parallel_state.get_dp_group().device_communicator).__name__
        with set_forward_context(None, config, num_tokens=n,
                                 num_tokens_across_dp=torch.tensor(MOE_TOKENS)):
            with get_forward_context().dp_metadata.sp_local_sizes(1):
                out["dispatch"] = ep.dispatch(mine[0], mine[1], mine[2])
                out["dispatch_router_logits"] = ep.dispatch_router_logits(mine[0], mine[3])
                expert_out = _expert_output(out["dispatch"][0], rank)
                out["combine"] = ep.combine(expert_out)
                target = torch.full((n, hidden.shape[1]), float("nan"))
                ep.combine_into_output(expert_out, target)
                out["combine_into_output"] = target
    return out


def _part3_all_to_all_dispatch(rank: int) -> dict:
    """The plugin's all-to-all dispatch on the expert-parallel group part 2 brought up."""
    from vllm.distributed import parallel_state

    import vllm_ascend.kernels.npu_ops  # noqa: F401  (registers torch.ops.npu.*)
    from vllm_ascend.distributed.moe_dispatch import AllToAllDispatch, linear_expert_ranges

    ep = parallel_state.get_ep_group()
    local = linear_expert_ranges(A2A_EXPERTS, WORLD)[rank]
    dispatch = AllToAllDispatch(ep, A2A_EXPERTS, local)
    seen: list[int] = []

    def mlp(rows: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        global_ids = local[0] + torch.repeat_interleave(torch.arange(len(counts)), counts)
        seen.extend(global_ids.tolist())
        return _expert_fn(rows, global_ids)

    out: dict = {}
    for call, tokens in A2A_CALLS.items():
        hidden, weights, ids = _a2a_inputs(call)
        start, n = sum(tokens[:rank]), tokens[rank]
        out[call] = dispatch(hidden[start:start + n], ids[start:start + n],
                             weights[start:start + n], mlp)
    out["experts_seen"] = sorted(set(seen))
    out["rows_seen"] = len(seen)
    try:
        AllToAllDispatch(ep, A2A_EXPERTS, (0, 1))
        out["wrong_range"] = None
    except RuntimeError as exc:
        out["wrong_range"] = str(exc)
    return out


def _rank_main(rank: int, port: int, results) -> None:
    os.environ.setdefault("VLLM_ASCEND_DEVICE", "cpu")
    try:
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=WORLD, timeout=timedelta(seconds=60))
        out = {"part1": _part1_communicator(rank), "part2": _part2_moe_round_trip(rank),
               "part3": _part3_all_to_all_dispatch(rank)}
        buf = io.BytesIO()
        torch.save(out, buf)
        results.put((rank, "ok", buf.getvalue()))
    except BaseException:
        results.put((rank, "error", traceback.format_exc()))


# ---- the parent --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_rank_main, args=(r, port, results)) for r in range(WORLD)]
    for p in procs:
        p.start()
    got: dict[int, dict] = {}
    try:
        for _ in range(WORLD):
            try:
                rank, status, payload = results.get(timeout=180)
            except queue.Empty:
                pytest.fail(f"ranks {sorted(set(range(WORLD)) - set(got))} sent no result in 180 s")
            if status != "ok":
                pytest.fail(f"rank {rank} failed:\n{payload}")
            got[rank] = torch.load(io.BytesIO(payload), weights_only=False)
    finally:
        for p in procs:
            p.join(timeout=30 if len(got) == WORLD else 0)
            if p.is_alive():
                p.kill()
                p.join()
    assert [p.exitcode for p in procs] == [0] * WORLD
    return [got[r] for r in range(WORLD)]


def _assert_same(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Exact: gathers move bits, and a sum of two float32 values rounds once either way."""
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != " \
                                           f"{tuple(expected.shape)}"
    assert torch.equal(actual.double(), expected.double()), (
        f"{what}: max abs diff {(actual.double() - expected.double()).abs().max()}"
    )


@pytest.mark.parametrize("name", list(GATHER_CASES))
def test_all_gatherv_concatenates_every_ranks_rows(ranks, name):
    seed, shape, dim, sizes, dtypes = GATHER_CASES[name]
    fulls = [_full(seed + i, shape, dt) for i, dt in enumerate(dtypes)]
    for rank, res in enumerate(ranks):
        got = res["part1"][f"gather/{name}"]
        got = [got] if isinstance(got, torch.Tensor) else got
        assert len(got) == len(fulls), f"rank {rank}: {len(got)} outputs for {len(fulls)}"
        for i, (out, full) in enumerate(zip(got, fulls, strict=True)):
            _assert_same(out, full, f"rank {rank} all_gatherv {name} tensor {i}")


def _scatter_reference(seed, shape, dim, sizes, rank):
    total = sum(_full(seed + r, shape).double() for r in range(WORLD))
    return _shard(total, dim, sizes, rank).float()


@pytest.mark.parametrize("name", list(SCATTER_CASES))
def test_reduce_scatterv_sums_and_keeps_own_slice(ranks, name):
    seed, shape, dim, sizes = SCATTER_CASES[name]
    for rank, res in enumerate(ranks):
        expected = _scatter_reference(seed, shape, dim, sizes, rank)
        _assert_same(res["part1"][f"scatter/{name}"], expected, f"rank {rank} {name}")


def test_reduce_scatterv_into_output_fills_the_given_tensor(ranks):
    for rank, res in enumerate(ranks):
        target, returned_target = res["part1"]["scatter_into_output"]
        assert returned_target, f"rank {rank}: did not return the output tensor it filled"
        _assert_same(target, _scatter_reference(*INTO_OUTPUT_CASE, rank), f"rank {rank}")


def test_all_to_all_uneven_and_even(ranks):
    inputs = [_full(A2A_SEED + r, (sum(A2A_SPLITS[r]), 3)) for r in range(WORLD)]
    even = [_full(A2A_EVEN_SEED + r, (4, 2)) for r in range(WORLD)]
    for rank, res in enumerate(ranks):
        expected = torch.cat([inputs[s].split(A2A_SPLITS[s])[rank] for s in range(WORLD)])
        _assert_same(res["part1"]["a2a/uneven"], expected, f"rank {rank} uneven all_to_all")
        expected = torch.cat([x.chunk(WORLD)[rank] for x in even])
        _assert_same(res["part1"]["a2a/even"], expected, f"rank {rank} even all_to_all")


def test_send_recv_between_ranks(ranks):
    _assert_same(ranks[1]["part1"]["recv"], _full(SEND_SEED, (2, 3), torch.bfloat16),
                 "rank 1 received from rank 0")
    _assert_same(ranks[0]["part1"]["recv"], _full(SEND_SEED + 1, (5,), torch.int64),
                 "rank 0 received from rank 1")


def test_invalid_arguments_raise_clear_errors(ranks):
    for rank, res in enumerate(ranks):
        errors = res["part1"]["errors"]
        assert res["part1"]["manager_without_all2all"] is None
        assert f"sizes[{rank}] is 1 but this rank's input has 2" in errors[
            "gather_wrong_local_size"]
        assert "1 sizes for a group of 2 ranks" in errors["gather_wrong_count"]
        assert "sum to 2 but the input has 4" in errors["scatter_wrong_sum"]
        assert "divisible by the group's world size 2" in errors["scatter_uneven_without_sizes"]
        assert "both output_split_sizes and input_split_sizes" in errors["a2a_one_sided"]
        message = errors["unsupported_backend"]
        assert message is not None, f"rank {rank}: {UNSUPPORTED_BACKEND} was accepted"
        assert UNSUPPORTED_BACKEND in message
        assert "--all2all-backend allgather_reducescatter" in message


def test_moe_groups_use_the_ascend_communicator(ranks):
    for rank, res in enumerate(ranks):
        part2 = res["part2"]
        assert (part2["ep_comm"], part2["dp_comm"], part2["ep_manager"]) == (
            "AscendCommunicator", "AscendCommunicator", "AgRsAll2AllManager"), f"rank {rank}"


def test_moe_dispatch_gathers_every_ranks_tokens(ranks):
    hidden, weights, ids, logits = _moe_inputs()
    for rank, res in enumerate(ranks):
        got = res["part2"]["dispatch"]
        assert len(got) == 3, f"rank {rank}: dispatch returned {len(got)} tensors"
        for what, out, full in zip(("hidden", "topk_weights", "topk_ids"), got,
                                   (hidden, weights, ids), strict=True):
            _assert_same(out, full, f"rank {rank} dispatched {what}")
        got = res["part2"]["dispatch_router_logits"]
        _assert_same(got[0], hidden, f"rank {rank} dispatch_router_logits hidden")
        _assert_same(got[1], logits, f"rank {rank} dispatch_router_logits logits")


def test_moe_combine_sums_expert_outputs_and_returns_own_tokens(ranks):
    hidden = _moe_inputs()[0]
    total = sum(_expert_output(hidden, r).double() for r in range(WORLD))
    for rank, res in enumerate(ranks):
        start, n = sum(MOE_TOKENS[:rank]), MOE_TOKENS[rank]
        expected = total[start:start + n].float()
        _assert_same(res["part2"]["combine"], expected, f"rank {rank} combine")
        _assert_same(res["part2"]["combine_into_output"], expected,
                     f"rank {rank} combine_into_output")


@pytest.mark.parametrize("call", list(A2A_CALLS))
def test_all_to_all_dispatch_runs_each_row_on_its_experts_owner(ranks, call):
    """Every token gets sum_k w_k * expert_{id_k}(x), computed by the rank holding that expert;
    a rank with no tokens still joins the exchange and gets an empty result."""
    hidden, weights, ids = _a2a_inputs(call)
    rows = _expert_fn(hidden.double().unsqueeze(1).expand(-1, A2A_TOPK, -1).reshape(-1, 6),
                      ids.reshape(-1).long()).reshape(-1, A2A_TOPK, 6)
    expected = (rows * weights.double().unsqueeze(-1)).sum(1)
    tokens = A2A_CALLS[call]
    for rank, res in enumerate(ranks):
        start, n = sum(tokens[:rank]), tokens[rank]
        got = res["part3"][call]
        assert got.shape == (n, 6), f"rank {rank}: shape {tuple(got.shape)}"
        torch.testing.assert_close(got.double(), expected[start:start + n], rtol=1e-5,
                                   atol=1e-5, msg=f"rank {rank} {call}")


def test_all_to_all_dispatch_sends_rows_only_to_owners(ranks):
    from vllm_ascend.distributed.moe_dispatch import linear_expert_ranges

    ranges = linear_expert_ranges(A2A_EXPERTS, WORLD)
    assert ranges == [(0, 3), (3, 5)]
    all_ids = torch.cat([_a2a_inputs(call)[2].reshape(-1) for call in A2A_CALLS])
    for rank, res in enumerate(ranks):
        start, end = ranges[rank]
        part3 = res["part3"]
        assert set(part3["experts_seen"]) <= set(range(start, end)), f"rank {rank}"
        # Each routed row is computed once, by its owner: no rank sees all of them.
        assert part3["rows_seen"] == int(((all_ids >= start) & (all_ids < end)).sum())
        assert f"linear placement over 2 ranks gives it {ranges[rank]}" in (
            part3["wrong_range"] or ""), f"rank {rank}: a wrong expert range was accepted"
