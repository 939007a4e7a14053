"""Worker of bench_npu_path.py: runs inside ONE venv (the plugin's .venv or the peer's .venv-peer)
with the engine in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0), so the model runner, its
model and its sampler are reachable and every op of an engine step passes this process's
dispatcher. Standard library, torch and vLLM only, so the same file runs under both engines.

The spec comes as a JSON file (argv[1]); the result goes to a JSON file (argv[2]).

Spec keys: model, dtype, kv_cache_memory_bytes, max_model_len, block_size, seed,
  batch_sizes, prompt_len, warmup_steps, count_steps, fake_warmup_steps, time_steps,
  micro_ops, expect_platform

For each decode batch N: N requests (random prompts, greedy, ignore_eos) are added and the engine
stepped through the prefill and `warmup_steps` decode steps; then
  1. `count_steps` engine steps under OpCounter (every op counted by region, host syncs found);
  2. `time_steps` engine steps with real kernels (reference timing);
  3. `fake_warmup_steps` + `time_steps` engine steps with the model forward under FakeKernels.
bench_npu_path.py's docstring describes the method.
"""

from __future__ import annotations

import collections
import json
import os
import random
import statistics
import sys
import time
import traceback

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

# Ops whose kernel is Python glue around other ops (vLLM's custom ops such as
# vllm::unified_attention_with_output): the ops inside are what a device runs.
TRANSPARENT_NAMESPACES = frozenset({"vllm"})
_CPU_KEYS = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)
# Allocations: the caching allocator hands out memory, no kernel runs.
ALLOC_OPS = frozenset({"empty", "empty_strided", "new_empty", "new_empty_strided", "empty_like"})
# Ops that read a device value on the host (the host waits for the device).
HOST_READ_OPS = frozenset({"_local_scalar_dense", "is_nonzero", "equal", "item"})
# Ops whose output shape depends on device data (the host must wait to size the output).
DATA_DEPENDENT_OPS = frozenset({"nonzero", "masked_select", "_unique", "_unique2", "unique_dim",
                                "unique_consecutive", "_ctc_loss"})
DEVICE_REGIONS = frozenset({"model", "layer", "logits", "sampler"})


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def _label(func) -> str:
    return f"{func.namespace}::{func._overloadpacket.__name__}"


def _where(skip_self: bool = True, depth: int = 5) -> list[str]:
    """The innermost vLLM / vllm-ascend frames of the current Python stack."""
    frames = []
    for fr in traceback.extract_stack()[:-1]:
        path = fr.filename.replace("\\", "/")
        if skip_self and path.endswith("_npu_path_worker.py"):
            continue
        for marker in ("/site-packages/", "/work/main/"):
            if marker in path:
                path = path.split(marker, 1)[1]
                break
        if path.startswith(("vllm/", "vllm_ascend/")):
            frames.append(f"{path}:{fr.lineno} {fr.name}")
    return frames[-depth:]


class _Schema:
    """What an op's schema says about its arguments and returns (cached per OpOverload)."""

    __slots__ = ("writes", "ret_alias", "all_view", "tensor_returns", "data_dependent", "label")

    def __init__(self, func) -> None:
        schema = func._schema
        self.label = _label(func)
        # Written arguments: (position, name) of every argument marked (a!).
        self.writes = [(i, a.name, a.alias_info.before_set)
                       for i, a in enumerate(schema.arguments)
                       if a.alias_info is not None and a.alias_info.is_write]
        # Each return: the written argument it is (position, name), or None when fresh.
        self.ret_alias = []
        for r in schema.returns:
            hit = None
            if r.alias_info is not None and r.alias_info.is_write:
                for i, name, sets in self.writes:
                    if sets == r.alias_info.before_set:
                        hit = (i, name)
            self.ret_alias.append(hit)
        self.all_view = (bool(schema.returns) and not self.writes
                         and all(r.alias_info is not None for r in schema.returns))
        self.tensor_returns = all("Tensor" in str(r.type) for r in schema.returns)
        packet = func._overloadpacket.__name__
        self.data_dependent = packet in DATA_DEPENDENT_OPS or (
            packet == "repeat_interleave" and func._overloadname == "Tensor")


_SCHEMAS: dict = {}


def _schema(func) -> _Schema:
    s = _SCHEMAS.get(func)
    if s is None:
        s = _SCHEMAS[func] = _Schema(func)
    return s


def _arg(args, kwargs, pos_name):
    i, name = pos_name
    return args[i] if i < len(args) else kwargs.get(name)


# ---- counting ---------------------------------------------------------------------------------


class Regions:
    """Which part of an engine step is running, from module hooks: `model` (the model forward
    outside its decoder layers), `layer` (inside decoder layer i), `logits`, `sampler`; anything
    else is `runner` (scheduler, input preparation, output handling)."""

    def __init__(self) -> None:
        self.stack: list[tuple[str, int]] = []
        self.handles = []

    def current(self) -> tuple[str, int]:
        return self.stack[-1] if self.stack else ("runner", -1)

    def hook(self, module, name: str, index: int = -1) -> None:
        def pre(mod, args):
            self.stack.append((name, index))

        def post(mod, args, out):
            self.stack.pop()

        self.handles.append(module.register_forward_pre_hook(pre))
        self.handles.append(module.register_forward_hook(post))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


class OpCounter(TorchDispatchMode):
    """Counts every op of the engine steps it is active for, by region, and finds host syncs.

    An op is a device launch when it runs in a device region (model, layers, logits, sampler),
    or outside them when it touches device memory ("tainted" storages: the model's weights, KV
    caches, the runner's device-side buffers, and every result of a device op). Views (all
    outputs alias inputs, nothing written) and allocations are not launches."""

    def __init__(self, regions: Regions) -> None:
        super().__init__()
        self.regions = regions
        self.taint: dict[int, StorageWeakRef] = {}
        self.shared: set[int] = set()  # storages that are both a device and a host buffer
        self.op_where: dict[str, list[str]] = {}  # "region op" -> first occurrence
        # (region, layer) -> Counter(op label) of launches; plus views/allocs/host ops.
        self.launches: dict[tuple[str, int], collections.Counter] = collections.defaultdict(
            collections.Counter)
        self.other = collections.Counter()  # "view" / "alloc" / "host op" by region
        self.syncs = collections.Counter()  # kind -> count
        self.sync_where: dict[str, list[str]] = {}
        self.async_d2h = collections.Counter()
        self.async_where: dict[str, list[str]] = {}

    # storages
    def mark(self, t: torch.Tensor) -> None:
        s = t.untyped_storage()
        self.taint[s._cdata] = StorageWeakRef(s)

    def tainted(self, t: torch.Tensor) -> bool:
        ref = self.taint.get(t.untyped_storage()._cdata)
        return ref is not None and not ref.expired()

    def sync(self, kind: str) -> None:
        self.syncs[kind] += 1
        self.sync_where.setdefault(kind, _where())

    def d2h_async(self, kind: str) -> None:
        self.async_d2h[kind] += 1
        self.async_where.setdefault(kind, _where())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace in TRANSPARENT_NAMESPACES:
            with self:
                return func.redispatch(_CPU_KEYS, *args, **kwargs)
        sch = _schema(func)
        region, layer = self.regions.current()
        ins = list(_tensors(args)) + list(_tensors(kwargs))
        written = [_arg(args, kwargs, (i, n)) for i, n, _ in sch.writes]
        written = [t for w in written for t in _tensors(w)]
        read = [t for t in ins if all(t is not w for w in written)]
        dev_in = any(self.tainted(t) for t in read)
        on_device = region in DEVICE_REGIONS or dev_in or any(self.tainted(t) for t in written)
        packet = func._overloadpacket.__name__
        out = func(*args, **kwargs)

        if packet in HOST_READ_OPS:
            if dev_in:
                self.sync(f"{sch.label} (a device value read on the host: item/bool/int)")
            return out
        if sch.data_dependent or (packet in ("index", "index_put", "index_put_") and any(
                t.dtype in (torch.bool, torch.uint8) for t in read[1:])):
            if dev_in:
                self.sync(f"{sch.label} (output size depends on device data)")
        # Device data written into host memory: a device-to-host transfer.
        for w in written:
            if dev_in and not self.tainted(w) and w.untyped_storage()._cdata not in self.shared:
                blocking = not (packet == "copy_" and (kwargs.get("non_blocking") or (
                    len(args) > 2 and args[2])))
                if packet != "copy_":
                    self.sync(f"{sch.label} (a device op writing host memory)")
                elif blocking:
                    self.sync(f"{sch.label} (blocking device-to-host copy)")
                else:
                    self.d2h_async(f"{sch.label} (non-blocking device-to-host copy)")
        if not on_device:
            self.other[("host op", region)] += 1
            return out
        outs = list(_tensors(out))
        in_storages = {t.untyped_storage()._cdata for t in ins}
        fresh = [t for t in outs if t.untyped_storage()._cdata not in in_storages]
        for t in fresh:
            self.mark(t)
        if packet in ALLOC_OPS:
            self.other[("alloc", region)] += 1
        elif not sch.writes and outs and not fresh:
            self.other[("view", region)] += 1
        elif not sch.tensor_returns and not sch.writes:
            self.other[("scalar", region)] += 1
        else:
            self.launches[(region, layer)][sch.label] += 1
            key = f"{region} {sch.label}"
            if key not in self.op_where:
                self.op_where[key] = _where(depth=3)
        return out


_INHERITED = object()


class PythonReads:
    """Host reads of device tensors that bypass the dispatcher on the CPU backend (every tensor
    is a host tensor there): Tensor.tolist/numpy/cpu and Tensor.to("cpu"), and the device
    layer's synchronize calls (device, stream, event). Installed only while counting."""

    def __init__(self, counter: OpCounter) -> None:
        self.counter = counter
        self.saved: list[tuple[object, str, object]] = []

    def _patch(self, owner, name: str, make) -> None:
        if getattr(owner, name, None) is None:
            return
        own = owner.__dict__.get(name, _INHERITED) if hasattr(owner, "__dict__") else _INHERITED
        try:
            setattr(owner, name, make(getattr(owner, name)))
        except (TypeError, AttributeError):
            return
        self.saved.append((owner, name, own))

    def install(self) -> None:
        c = self.counter

        def host_copy(t):
            with _disable_current_modes():
                return t.clone()

        def reader(kind):
            def make(orig):
                def wrapped(self_, *a, **k):
                    if isinstance(self_, torch.Tensor) and c.tainted(self_):
                        c.sync(kind)
                    return orig(self_, *a, **k)
                return wrapped
            return make

        self._patch(torch.Tensor, "tolist", reader("Tensor.tolist of a device tensor"))
        self._patch(torch.Tensor, "numpy", reader("Tensor.numpy of a device tensor"))

        def make_cpu(orig):
            def cpu(self_, *a, **k):
                if c.tainted(self_):
                    c.sync("Tensor.cpu of a device tensor (blocking copy)")
                    return host_copy(self_)
                return orig(self_, *a, **k)
            return cpu

        self._patch(torch.Tensor, "cpu", make_cpu)

        def make_to(orig):
            # Only the string "cpu" is taken as the host: on the CPU backend the device is
            # torch.device("cpu") too, and .to(self.device) must stay a device tensor.
            def to(self_, *a, **k):
                target = k.get("device", a[0] if a else None)
                if target == "cpu" and c.tainted(self_):
                    if k.get("non_blocking"):
                        c.d2h_async("Tensor.to('cpu', non_blocking=True)")
                    else:
                        c.sync("Tensor.to('cpu') of a device tensor (blocking copy)")
                    return host_copy(self_)
                return orig(self_, *a, **k)
            return to

        self._patch(torch.Tensor, "to", make_to)

        def counting(kind):
            def make(orig):
                def wrapped(*a, **k):
                    c.sync(kind)
                    return orig(*a, **k)
                return wrapped
            return make

        self._patch(torch.accelerator, "synchronize", counting("torch.accelerator.synchronize"))
        if hasattr(torch, "cuda"):
            self._patch(torch.cuda, "synchronize", counting("torch.cuda.synchronize"))
        seen = set()
        classes = [("torch.Event", getattr(torch, "Event", None)),
                   ("torch.cuda.Event", getattr(torch.cuda, "Event", None)),
                   ("torch.cuda.Stream", getattr(torch.cuda, "Stream", None))]
        try:  # the plugin's device layer
            from vllm_ascend import device as ascend_device

            dev = ascend_device.current()
            self._patch(dev, "synchronize", lambda orig: staticmethod(
                counting("device layer synchronize()")(orig)))
            classes += [("device.Event", dev.Event), ("device.Stream", dev.Stream)]
        except ImportError:
            pass
        for name, cls in classes:
            if not isinstance(cls, type) or cls in seen or cls.__module__.startswith("torch._C"):
                continue
            seen.add(cls)

            def method(orig, _n=name):
                def wrapped(self_, *a, **k):
                    c.sync(f"{_n}.synchronize()")
                    return orig(self_, *a, **k)
                return wrapped

            self._patch(cls, "synchronize", method)

    def remove(self) -> None:
        for owner, name, orig in reversed(self.saved):
            if orig is _INHERITED:
                delattr(owner, name)
            else:
                setattr(owner, name, orig)
        self.saved = []


# ---- fake kernels -----------------------------------------------------------------------------

_REAL, _MUTATE, _FRESH, _SKIP = range(4)


def _key(x, loose: bool):
    """A hashable description of an argument: tensors by metadata; with `loose`, ints and int
    lists by kind and length only (host values such as sequence lengths change every step)."""
    if isinstance(x, torch.Tensor):
        return (x.shape, x.stride(), x.dtype, x.device)
    if isinstance(x, (list, tuple)):
        if loose and x and all(type(v) is int for v in x):
            return ("ints", len(x))
        return tuple(_key(v, loose) for v in x)
    if isinstance(x, dict):
        return tuple((k, _key(v, loose)) for k, v in x.items())
    if loose and type(x) is int:
        return "int"
    try:
        hash(x)
        return x
    except TypeError:
        return (type(x).__name__, id(x))


def _spec(value):
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), tuple(value.stride()), value.dtype)
    if isinstance(value, (list, tuple)):
        return [_spec(v) for v in value]
    return None


class FakeKernels(TorchDispatchMode):
    """Shape-only kernels. View ops and ops that return host values (item, sizes) or have
    data-dependent output shapes run for real; in-place and out= ops return the argument they
    would have written without computing; every other op returns empty tensors of the shapes,
    strides and dtypes its real kernel would return. Those are cached per (op, argument
    metadata); a miss asks the op's Meta kernel (tensors as meta tensors), else runs the real
    kernel once. An op whose int arguments change every step (sequence lengths) is matched by
    a loose key (ints by kind, int lists by length) once three different values gave the same
    output metadata."""

    def __init__(self) -> None:
        super().__init__()
        self.plans: dict = {}
        self.cache: dict = {}
        self.loose: dict = {}  # loose key -> [spec, confirmations] (None spec: varies)
        self.counts = collections.Counter()
        self.misses = collections.Counter()  # op label -> cache misses
        self.device = torch.device("cpu")

    def _plan(self, func) -> int:
        sch = _schema(func)
        if sch.all_view or not sch.tensor_returns or sch.data_dependent:
            plan = _REAL
        elif not func._schema.returns:
            plan = _MUTATE if sch.writes else _SKIP
        elif all(a is not None for a in sch.ret_alias):
            plan = _MUTATE
        else:
            plan = _FRESH
        self.plans[func] = plan
        return plan

    def _resolve(self, func, args, kwargs):
        """Output metadata of a call: from the Meta kernel, else from a real run."""
        def to_meta(x):
            if isinstance(x, torch.Tensor):
                return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="meta")
            if isinstance(x, (list, tuple)):
                return type(x)(to_meta(v) for v in x)
            return x
        try:
            out = func(*[to_meta(a) for a in args], **{k: to_meta(v) for k, v in kwargs.items()})
            self.counts["resolved by meta"] += 1
            self.misses[_label(func)] += 1
            return _spec(out), None
        except Exception:  # noqa: BLE001  (no Meta kernel: run it)
            out = func(*args, **kwargs)
            self.counts["resolved by a real run"] += 1
            self.misses[_label(func) + " (real)"] += 1
            return _spec(out), out

    def _make(self, spec):
        if spec is None:
            return None
        if isinstance(spec, list):
            return [self._make(s) for s in spec]
        shape, stride, dtype = spec
        return torch.empty_strided(shape, stride, dtype=dtype, device=self.device)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace in TRANSPARENT_NAMESPACES:
            with self:
                return func.redispatch(_CPU_KEYS, *args, **kwargs)
        plan = self.plans.get(func)
        if plan is None:
            plan = self._plan(func)
        if plan == _REAL:
            self.counts["real (view / host value)"] += 1
            return func(*args, **kwargs)
        sch = _SCHEMAS[func]
        if plan == _SKIP:
            self.counts["faked in-place"] += 1
            return None
        if plan == _MUTATE:
            self.counts["faked in-place"] += 1
            rets = [_arg(args, kwargs, a) for a in sch.ret_alias]
            if not rets:
                return None
            return rets[0] if len(rets) == 1 else tuple(rets)
        key = (func, _key(args, False), _key(kwargs, False))
        spec = self.cache.get(key)
        real = None
        if spec is None:
            lkey = (func, _key(args, True), _key(kwargs, True))
            entry = self.loose.get(lkey)
            if entry is not None and entry[0] is not None and entry[1] >= 3:
                spec = entry[0]
                self.counts["faked (loose key)"] += 1
            else:
                spec, real = self._resolve(func, args, kwargs)
                if entry is None:
                    self.loose[lkey] = [spec, 1]
                elif entry[0] == spec:
                    entry[1] += 1
                else:
                    entry[0] = None
                self.cache[key] = spec
        else:
            self.counts["faked"] += 1
        if real is not None:
            return real
        if len(sch.ret_alias) == 1:
            return self._make(spec)
        outs = []
        for i, alias in enumerate(sch.ret_alias):
            outs.append(_arg(args, kwargs, alias) if alias is not None else self._make(spec[i]))
        return tuple(outs)


def mode_cost_us(n: int, hidden: int, dtype) -> dict:
    """Host µs per op under FakeKernels (a cached fresh op, an in-place op, a view op) and,
    for reference, of the same ops run for real on tiny tensors."""
    a = torch.randn(1, hidden).to(dtype)
    b = torch.randn(1, hidden).to(dtype)
    cases = {"fresh op (add)": lambda: torch.add(a, b),
             "in-place op (add_)": lambda: a.add_(b),
             "view op (view)": lambda: a.view(-1)}
    res = {}
    for name, fn in cases.items():
        for fake in (True, False):
            mode = FakeKernels() if fake else None
            best = float("inf")
            for _ in range(5):
                if mode is not None:
                    mode.__enter__()
                try:
                    fn()
                    t0 = time.perf_counter()
                    for _ in range(n):
                        fn()
                    best = min(best, (time.perf_counter() - t0) / n * 1e6)
                finally:
                    if mode is not None:
                        mode.__exit__(None, None, None)
            res[f"{name}{'' if fake else ' real'}"] = best
    return res


# ---- the engine -------------------------------------------------------------------------------


def _decoder_layers(model, num_layers: int):
    for _, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == num_layers:
            return list(mod)
    raise RuntimeError(f"no ModuleList of {num_layers} decoder layers in {type(model)}")


def _device_roots(runner) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The runner's device-side tensors: weights, KV caches, the device halves of its
    host/device buffer pairs; and apart, the device halves that are their host twin (the peer's
    CPU runner makes them one tensor): host memory, but no transfer reaches them either."""
    host, dev = [], []

    def walk(obj):
        for name, v in vars(obj).items():
            if isinstance(getattr(v, "gpu", None), torch.Tensor) and hasattr(v, "cpu"):
                host.append(v.cpu)
                dev.append(v.gpu)
            elif isinstance(v, torch.Tensor):
                (host if ("cpu" in name or "pinned" in name) else dev).append(v)

    walk(runner)
    ib = getattr(runner, "input_batch", None)
    if ib is not None:
        walk(ib)
        for bt in getattr(getattr(ib, "block_table", None), "block_tables", []) or []:
            walk(bt)
    host_storages = {t.untyped_storage()._cdata for t in host}
    roots = [t for t in dev if t.untyped_storage()._cdata not in host_storages]
    shared = [t for t in dev if t.untyped_storage()._cdata in host_storages]
    roots += list(runner.model.parameters()) + list(runner.model.buffers())
    roots += list(_tensors(list(getattr(runner, "kv_caches", []))))
    return roots, shared


class Probe:
    """Times each model forward (and optionally runs it and the logits under FakeKernels)."""

    def __init__(self, model, logits=None) -> None:
        self.fake: FakeKernels | None = None
        self.forward_s: list[float] = []
        self.tokens: list[int] = []
        self._t0 = 0.0

        def pre(mod, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            self.tokens.append(int(ids.shape[0]) if isinstance(ids, torch.Tensor) else -1)
            if self.fake is not None:
                self.fake.__enter__()
            self._t0 = time.perf_counter()

        def post(mod, args, kwargs, out):
            self.forward_s.append(time.perf_counter() - self._t0)
            if self.fake is not None:
                self.fake.__exit__(None, None, None)

        model.register_forward_pre_hook(pre, with_kwargs=True)
        model.register_forward_hook(post, with_kwargs=True)
        if logits is not None:
            def logits_pre(mod, args):
                if self.fake is not None:
                    self.fake.__enter__()

            def logits_post(mod, args, out):
                if self.fake is not None:
                    self.fake.__exit__(None, None, None)

            logits.register_forward_pre_hook(logits_pre)
            logits.register_forward_hook(logits_post)


def _percentiles(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values),
            "n": len(values)}


def run_batch(llm, runner, probe: Probe, spec: dict, n: int, rng: random.Random) -> dict:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    engine = llm.llm_engine
    num_layers = engine.model_config.hf_config.num_hidden_layers
    vocab = engine.model_config.get_vocab_size()
    total = (spec["warmup_steps"] + spec["count_steps"] + spec["time_steps"] * 2
             + spec["fake_warmup_steps"] + 8)
    params = SamplingParams(max_tokens=total, min_tokens=total, ignore_eos=True, temperature=0.0)
    ids = []
    for i in range(n):
        prompt = TokensPrompt(prompt_token_ids=[rng.randrange(8, vocab)
                                                for _ in range(spec["prompt_len"])])
        ids.append(engine.add_request(f"b{n}-{i}", prompt, params))

    def steps(k: int) -> list[float]:
        walls = []
        for _ in range(k):
            t0 = time.perf_counter()
            engine.step()
            walls.append(time.perf_counter() - t0)
        return walls

    steps(1 + spec["warmup_steps"])  # prefill + decode warm-up
    if probe.tokens[-1] != n:
        raise RuntimeError(f"batch {n}: the last warm-up step ran {probe.tokens[-1]} tokens")

    # 1. counting
    regions = Regions()
    model = runner.model
    regions.hook(model, "model")
    for i, layer in enumerate(_decoder_layers(model, num_layers)):
        regions.hook(layer, "layer", i)
    if hasattr(model, "logits_processor"):
        regions.hook(model.logits_processor, "logits")
    regions.hook(runner.sampler, "sampler")
    counter = OpCounter(regions)
    roots, shared = _device_roots(runner)
    for t in roots:
        counter.mark(t)
    for t in shared:
        counter.shared.add(t.untyped_storage()._cdata)
    reads = PythonReads(counter)
    reads.install()
    first = len(probe.tokens)
    try:
        with counter:
            steps(spec["count_steps"])
    finally:
        reads.remove()
        regions.remove()
    k = spec["count_steps"]
    assert probe.tokens[first:] == [n] * k, probe.tokens[first:]
    per_layer = [{op: c / k for op, c in counter.launches[("layer", i)].items()}
                 for i in range(num_layers)]
    by_region = {r: {op: c / k for op, c in counter.launches[(r, -1)].items()}
                 for r in ("model", "logits", "sampler", "runner")}
    counted = {
        "per_layer": per_layer,
        "by_region": by_region,
        "other": {f"{kind} ({r})": c / k for (kind, r), c in sorted(counter.other.items())},
        "syncs": {kind: c / k for kind, c in counter.syncs.items()},
        "sync_where": counter.sync_where,
        "async_d2h": {kind: c / k for kind, c in counter.async_d2h.items()},
        "async_where": counter.async_where,
        "op_where": counter.op_where,
    }

    # 2. real kernels
    first = len(probe.forward_s)
    real_step = steps(spec["time_steps"])
    real_fwd = probe.forward_s[first:]

    # 3. fake kernels
    fake = FakeKernels()
    probe.fake = fake
    try:
        steps(spec["fake_warmup_steps"])
        fake.counts.clear()
        fake.misses.clear()
        first = len(probe.forward_s)
        fake_step = steps(spec["time_steps"])
        fake_fwd = probe.forward_s[first:]
    finally:
        probe.fake = None
    engine.abort_request(ids, internal=True)
    while engine.has_unfinished_requests():
        engine.step()
    t = spec["time_steps"]
    ms = 1e3
    return {
        "batch": n,
        "counted": counted,
        "real": {"forward_ms": _percentiles([x * ms for x in real_fwd]),
                 "step_ms": _percentiles([x * ms for x in real_step])},
        "fake": {"forward_ms": _percentiles([x * ms for x in fake_fwd]),
                 "step_ms": _percentiles([x * ms for x in fake_step]),
                 "ops_per_step": {kind: c / t for kind, c in fake.counts.items()},
                 "misses_per_step": {op: c / t for op, c in fake.misses.items()}},
    }


def main(spec_path: str, out_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    import vllm
    from vllm import LLM
    from vllm.platforms import current_platform

    platform = type(current_platform).__name__
    if spec.get("expect_platform") and platform != spec["expect_platform"]:
        raise SystemExit(f"wrong platform {platform}, expected {spec['expect_platform']}")
    try:  # The plugin's CPU-backend GEMMs (device/cpu_linear.py: oneDNN heads, float32 panels)
        # never run on an NPU, where a linear layer is one matmul launch: F.linear is kept here.
        from vllm_ascend.device import cpu_linear

        cpu_linear.wanted = lambda: False
    except ImportError:
        pass
    t0 = time.perf_counter()
    llm = LLM(model=spec["model"], dtype=spec["dtype"], enforce_eager=True,
              kv_cache_memory_bytes=spec["kv_cache_memory_bytes"],
              max_model_len=spec["max_model_len"], max_num_seqs=max(spec["batch_sizes"]),
              block_size=spec["block_size"], enable_prefix_caching=False, seed=spec["seed"])
    startup_s = time.perf_counter() - t0
    runner = llm.llm_engine.model_executor.driver_worker.worker.model_runner
    probe = Probe(runner.model, getattr(runner.model, "logits_processor", None))
    rng = random.Random(spec["seed"])
    dtype = getattr(torch, spec["dtype"])
    hidden = llm.llm_engine.model_config.get_hidden_size()
    result = {
        "platform": platform,
        "vllm_version": vllm.__version__,
        "torch_version": torch.__version__,
        "python": sys.executable,
        "startup_s": startup_s,
        "runner": type(runner).__name__,
        "attention_backend": sorted({type(m.impl).__name__ for m in runner.model.modules()
                                     if hasattr(m, "impl") and hasattr(m, "layer_name")}),
        "async_scheduling": bool(llm.llm_engine.vllm_config.scheduler_config.async_scheduling),
        "num_layers": llm.llm_engine.model_config.hf_config.num_hidden_layers,
        "mode_cost_us": mode_cost_us(spec["micro_ops"], hidden, dtype),
        "batches": [],
    }
    with torch.inference_mode():
        result["mode_cost_us_inference"] = mode_cost_us(spec["micro_ops"], hidden, dtype)
    for n in spec["batch_sizes"]:
        t1 = time.perf_counter()
        result["batches"].append(run_batch(llm, runner, probe, spec, n, rng))
        print(f"[{platform}] batch {n} done in {time.perf_counter() - t1:.1f}s",
              file=sys.stderr, flush=True)
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1, default=str)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # The engine core in this process: its model runner is reachable and its ops are ours to see.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    main(sys.argv[1], sys.argv[2])
