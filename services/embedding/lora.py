"""LoRA adapters (peft) on the backbone branches."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import structlog
import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from services.embedding.errors import WeightsError
from services.embedding.profiles import BranchSpec

logger = structlog.get_logger(__name__)

ADAPTER_MARKER = "lora_"


@dataclass(frozen=True)
class LoraSettings:
    """LoRA rank, scaling and dropout, and the target module names per branch.

    `targets` maps a branch name to the leaf names it adapts. A branch missing from it uses
    its spec's `lora_targets`.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"LoRA rank r must be at least 1, got {self.r}.")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}.")

    def targets_for(self, spec: BranchSpec) -> tuple[str, ...]:
        return tuple(self.targets.get(spec.name, spec.lora_targets))

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "targets": {name: list(names) for name, names in self.targets.items()}}


def target_pattern(spec: BranchSpec, targets: Sequence[str]) -> str:
    """Return the regular expression peft matches against whole module names, e.g. `blocks.3.attn.qkv`."""
    if not targets:
        raise WeightsError(f"No LoRA target modules given for the {spec.name} branch.")
    leaves = "|".join(re.escape(name) for name in targets)
    return rf"{spec.lora_scope}\.(?:{leaves})"


def add_lora(backbone: nn.Module, spec: BranchSpec, settings: LoraSettings) -> list[str]:
    """Inject LoRA adapters into `backbone` in place and return the names of the adapted modules.

    peft freezes every original parameter, so afterwards only the adapter weights require
    gradients. Raises WeightsError when the target pattern matches no module.
    """
    targets = settings.targets_for(spec)
    pattern = target_pattern(spec, targets)
    config = LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=pattern, bias="none"
    )
    try:
        inject_adapter_in_model(config, backbone)
    except ValueError as error:
        raise WeightsError(
            f"LoRA matched no module of the {spec.name} branch ({spec.architecture}) with targets {list(targets)} "
            f"(pattern {pattern!r}): {error}"
        ) from error
    adapted = adapted_modules(backbone)
    if not adapted:
        raise WeightsError(
            f"LoRA adapted no module of the {spec.name} branch ({spec.architecture}) with targets {list(targets)}."
        )
    logger.info("lora_added", branch=spec.name, adapted_modules=len(adapted), r=settings.r, targets=list(targets))
    return adapted


def adapted_modules(module: nn.Module) -> list[str]:
    """Return the names of the modules that carry a LoRA adapter."""
    return [name for name, child in module.named_modules() if isinstance(child, LoraLayer)]


def adapter_state(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """Return the LoRA adapter tensors of a backbone, detached, keyed by their state-dict names."""
    return {key: value.detach() for key, value in backbone.state_dict().items() if ADAPTER_MARKER in key}


def load_adapter_state(backbone: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Copy adapter tensors into a backbone that has the same adapters, rejecting any key or shape mismatch."""
    expected = adapter_state(backbone)
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    mismatched = [
        f"{key} expected {list(expected[key].shape)} got {list(state[key].shape)}"
        for key in sorted(expected.keys() & state.keys())
        if expected[key].shape != state[key].shape
    ]
    if missing or unexpected or mismatched:
        parts = [f"LoRA adapters in {source} do not match the model."]
        if missing:
            parts.append(f"Missing keys ({len(missing)}): {', '.join(missing[:10])}")
        if unexpected:
            parts.append(f"Unexpected keys ({len(unexpected)}): {', '.join(unexpected[:10])}")
        if mismatched:
            parts.append(f"Shape mismatches ({len(mismatched)}): {'; '.join(mismatched[:10])}")
        raise WeightsError("\n".join(parts))
    with torch.no_grad():
        parameters = dict(backbone.named_parameters())
        for key, value in state.items():
            parameters[key].copy_(value)
