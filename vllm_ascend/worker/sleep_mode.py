"""Sleep mode, levels 1 and 2, as a backend of vLLM's sleep-mode registry.

vLLM 0.32 dispatches ``LLM.sleep`` / ``POST /sleep`` -> engine -> executor -> ``Worker.sleep``,
and the worker hands the mechanism to a ``SleepModeBackend`` chosen by name
(``ModelConfig.sleep_mode_backend``, resolved by ``SleepModeBackendFactory``). Its default,
``cumem``, needs CUDA's virtual-memory allocator. This module registers ``ascend`` (the platform
selects it when sleep mode is on), which works on the storages of tensors the worker names
(``track``) rather than on allocator pools:

* ``weights``: the model's (and a drafter's) parameters and buffers;
* ``kv_cache``: the runner's KV cache tensors.

Level 1 backs weights up (device/sleep.py: to a temporary file on the CPU backend, pinned host
memory on an NPU) and discards the KV cache. Level 2 discards the parameters too; buffers (rotary
tables and the like, which no checkpoint reloads) and parameters matching
``sleep_preserve_parameter_names`` are backed up as at level 1. Wake-up gives every storage its
memory back (zeroed where discarded) and reloads the backups; after a level-2 wake-up the user
reloads the weights (``llm.collective_rpc("reload_weights")``, or ``POST /collective_rpc`` with
``{"method": "reload_weights"}``), which vLLM copies into the same storages.

The tensor objects never change, only the memory behind them, so everything that holds a weight
or KV tensor (layers, the CPU tape graphs) sees the restored contents. Graphs that captured
device addresses (NPUGraph) are captured again by the worker after a full wake-up.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
from vllm.device_allocator.sleep_mode_backend import SleepModeBackend, SleepModeBackendFactory

from vllm_ascend import device
from vllm_ascend.device import sleep as device_sleep
from vllm_ascend.logger import init_logger

logger = init_logger(__name__)

BACKEND_NAME = "ascend"
TAGS = ("weights", "kv_cache")


@dataclass
class Region:
    """One storage the backend may free."""

    storage: torch.UntypedStorage
    tag: str
    keep_at_level2: bool  # back it up even at level 2 (buffers, preserved parameters)
    nbytes: int = 0
    backup: object | None = None  # the offloader's handle while asleep with a backup
    asleep: bool = False


class TrackedStorages:
    """The process's storages under sleep mode, keyed by storage identity (``_cdata`` is the
    storage implementation, which stays the same when its memory is resized). Named by the
    worker just before each sleep; a storage is forgotten once it is awake again."""

    def __init__(self) -> None:
        self.regions: dict[int, Region] = {}
        self.offloader: device_sleep.Offloader | None = None
        self.skipped_bytes = 0

    def track(self, tag: str, tensors: list[tuple[torch.Tensor, bool]]) -> None:
        """(Re)name the storages of ``tag``: each tensor with whether level 2 keeps it. Storages
        asleep right now keep their record."""
        regions = {k: r for k, r in self.regions.items() if r.tag != tag or r.asleep}
        skipped = 0
        for tensor, keep in tensors:
            storage = tensor.untyped_storage()
            key = storage._cdata
            region = regions.get(key)
            if region is not None:
                region.keep_at_level2 |= keep
                continue
            if not device_sleep.can_free(storage):
                skipped += storage.nbytes()
                continue
            regions[key] = Region(storage, tag, keep)
        self.regions = regions
        if skipped and skipped != self.skipped_bytes:
            logger.warning("sleep mode: %.1f MiB of %s cannot be freed (memory the storages "
                           "do not own)", skipped / (1 << 20), tag)
        self.skipped_bytes = skipped

    def asleep(self, tags=TAGS) -> list[Region]:
        return [r for r in self.regions.values() if r.asleep and r.tag in tags]

    def awake(self, tags=TAGS) -> list[Region]:
        return [r for r in self.regions.values() if not r.asleep and r.tag in tags]


STORAGES = TrackedStorages()


class AscendSleepBackend(SleepModeBackend):
    """Frees and restores the tracked storages through the device layer's offloader."""

    def __init__(self) -> None:
        super().__init__()
        self.storages = STORAGES
        if self.storages.offloader is None:
            self.storages.offloader = device_sleep.offloader_for(device.current().device_type)
        self.offloader = self.storages.offloader

    @property
    def graphs_survive(self) -> bool:
        return self.offloader.graphs_survive_reallocation

    def suspend(self, level: int = 1) -> None:
        if level not in (1, 2):
            raise ValueError(f"sleep level {level} is not 1 or 2")
        self._state = "SUSPENDED"
        saved = dropped = 0
        for region in self.storages.awake():
            keep = region.tag == "weights" and (level == 1 or region.keep_at_level2)
            if keep:
                region.backup = self.offloader.save(region.storage)
                saved += region.storage.nbytes()
            else:
                dropped += region.storage.nbytes()
            region.nbytes = device_sleep.free_storage(region.storage)
            region.asleep = True
        self.offloader.release_cache()
        logger.info("sleep level %d: %.1f MiB backed up, %.1f MiB discarded", level,
                    saved / (1 << 20), dropped / (1 << 20))

    def discard(self, tags: tuple[str, ...]) -> None:
        unknown = set(tags) - set(TAGS)
        if unknown:
            raise ValueError(f"sleep mode: unknown tags {sorted(unknown)}; known: {TAGS}")
        for region in self.storages.awake(tags):
            region.nbytes = device_sleep.free_storage(region.storage)
            region.backup = None
            region.asleep = True
        self.offloader.release_cache()
        self._state = "SUSPENDED"

    def resume(self, tags: list[str] | None = None) -> None:
        self._state = "RESUMING"
        for key, region in list(self.storages.regions.items()):
            if not region.asleep or (tags is not None and region.tag not in tags):
                continue
            device_sleep.reallocate_storage(region.storage, region.nbytes,
                                            zero=region.backup is None)
            if region.backup is not None:
                self.offloader.load(region.backup, region.storage)
            # Forget it: the worker names its storages again at the next sleep, and a record
            # kept here would keep this engine's memory alive after it shuts down.
            del self.storages.regions[key]
        if self.storages.asleep():
            self._state = "SUSPENDED"
        else:
            self.offloader.drop()
            self._state = "RUNNING"

    @classmethod
    def preserves_communicators(cls) -> bool:
        return True  # HCCL / gloo groups are not touched

    @classmethod
    def preserves_compiled_artifacts(cls) -> bool:
        return True  # nothing is compiled (CompilationMode.NONE); kernels stay loaded


def track_worker(worker, model: torch.nn.Module) -> None:
    """Name the worker's weight and KV-cache storages (called by the worker before suspend)."""
    patterns = worker.model_config.sleep_preserve_parameter_names
    weights = [
        (param, any(fnmatch.fnmatchcase(name, p) for p in patterns))
        for name, param in worker._get_sleep_parameters(model).items()
    ]
    modules = [model]
    draft = worker.get_draft_model()
    if draft is not None:
        modules.append(draft)
    weights += [(buf, True) for m in modules for buf in m.buffers()]
    STORAGES.track("weights", weights)
    STORAGES.track("kv_cache", [(t, False) for t in _kv_tensors(worker.model_runner.kv_caches)])


def _kv_tensors(caches) -> list[torch.Tensor]:
    if isinstance(caches, torch.Tensor):
        return [caches]
    if isinstance(caches, dict):
        caches = list(caches.values())
    return [t for c in caches or () for t in _kv_tensors(c)]


def register() -> None:
    """Add ``ascend`` to vLLM's sleep-mode backend registry (once per process)."""
    try:
        SleepModeBackendFactory.register_backend(BACKEND_NAME, __name__, "AscendSleepBackend")
    except ValueError:  # already registered
        pass


register()
