"""Ascend options, passed as vLLM's ``additional_config`` (``--additional-config '{...}'``).

Read once per process from the VllmConfig, validated in the platform's config check so a typo
stops ``vllm serve`` at start-up instead of being ignored. Keys:

- ``expert_dispatch``: how an expert-parallel MoE layer moves tokens to the ranks that hold
  their experts.
  ``"alltoall"`` (default): each rank sends every routed token row only to the rank owning its
  expert and gets the results back (distributed/moe_dispatch.py).
  ``"allgather"``: vLLM's own path: every rank sees every token (all-gather across data
  parallel ranks, or replicated under tensor parallel), computes its experts for all of them,
  and the partial sums are reduced. More traffic, no host read of the split sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vllm.config import VllmConfig

EXPERT_DISPATCH_CHOICES = ("alltoall", "allgather")
# Keys vLLM 0.32 itself stores in additional_config (engine/arg_utils.py), not ours to check.
VLLM_OWNED_KEYS = frozenset({"gdn_prefill_backend", "kda_prefill_backend", "kda_decode_backend"})


@dataclass(frozen=True)
class AscendConfig:
    expert_dispatch: str = "alltoall"

    @classmethod
    def from_additional_config(cls, raw: Any) -> AscendConfig:
        if raw is not None and not isinstance(raw, dict):
            # vLLM also accepts a hashable config object here; Ascend options come as a dict.
            raise ValueError(
                f"vllm-ascend: additional_config must be a dict of Ascend options (e.g. "
                f"'{{\"expert_dispatch\": \"allgather\"}}'), got {type(raw).__name__}")
        raw = {k: v for k, v in (raw or {}).items() if k not in VLLM_OWNED_KEYS}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(
                f"vllm-ascend: unknown additional_config key(s) {unknown}; the Ascend options "
                f"are {sorted(known)}"
            )
        config = cls(**raw)
        if config.expert_dispatch not in EXPERT_DISPATCH_CHOICES:
            raise ValueError(
                f"vllm-ascend: additional_config expert_dispatch={config.expert_dispatch!r} is "
                f"not valid; use one of {', '.join(EXPERT_DISPATCH_CHOICES)}"
            )
        return config


def get_ascend_config(vllm_config: VllmConfig) -> AscendConfig:
    return AscendConfig.from_additional_config(vllm_config.additional_config)
