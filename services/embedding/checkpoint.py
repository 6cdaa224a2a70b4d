"""Trained checkpoints: LoRA adapters and the fusion head in safetensors, with a JSON card.

One `.safetensors` file contains the tensors and, in its metadata under `endodoc_card`, the
card: profile, backbone weight hashes, preprocessing, LoRA and training settings, data summary
and validation metrics. The sha256 of that file therefore covers the card too, and it names
the embedding space. A copy of the card is written beside the file as `<name>.json` for
people to read. Loading uses only the copy inside the file.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from services.embedding.errors import WeightsError
from services.embedding.head import FusionHead
from services.embedding.lora import LoraSettings, add_lora, adapted_modules, adapter_state, load_adapter_state
from services.embedding.model import EmbeddingModel
from services.embedding.weights import LoadedBranch
from services.files import write_atomically

logger = structlog.get_logger(__name__)

CARD_METADATA_KEY = "endodoc_card"
CARD_FORMAT = "endodoc-checkpoint"
CARD_FORMAT_VERSION = 1
HEAD_PREFIX = "head."
BRANCH_PREFIX = "branch."


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file read into memory: its card, its tensors and the file's sha256."""

    path: Path
    card: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    sha256: str


def branch_card(branch: LoadedBranch) -> dict[str, Any]:
    """Describe one loaded branch for the card: architecture, weights and preprocessing."""
    spec = branch.spec
    return {
        "name": spec.name,
        "architecture": spec.architecture,
        "create_kwargs": dict(spec.create_kwargs),
        "feature_dim": spec.feature_dim,
        "weights": branch.kind,
        "weights_sha256": branch.sha256,
        "weights_file": str(branch.path) if branch.path is not None else None,
        "licence": spec.licence,
        "identity": branch.identity,
        "preprocessing": {
            "input_size": spec.input_size,
            "mean": list(spec.mean),
            "std": list(spec.std),
            "interpolation": spec.interpolation,
            "resize": "whole frame to a square, no crop",
        },
    }


def save_checkpoint(
    path: Path,
    model: EmbeddingModel,
    branches: Sequence[LoadedBranch],
    *,
    profile: str,
    lora: LoraSettings | None,
    extra_card: Mapping[str, Any] | None = None,
) -> str:
    """Write the model's head and adapters to `path` atomically, and its card beside it; return the sha256.

    The file is written to a temporary name in the same folder and renamed, so a failed save
    never leaves a partial checkpoint under `path`.
    """
    if model.head is None:
        raise ValueError("Only a model with a fusion head can be saved as a checkpoint.")
    tensors: dict[str, torch.Tensor] = {
        HEAD_PREFIX + key: value.detach().cpu().contiguous() for key, value in model.head.state_dict().items()
    }
    adapted: dict[str, int] = {}
    for spec, backbone in zip(model.specs, model.backbones, strict=True):
        adapters = adapter_state(backbone)
        if lora is not None and not adapters:
            raise ValueError(f"The {spec.name} branch has no LoRA adapters although LoRA settings were given.")
        adapted[spec.name] = len(adapted_modules(backbone))
        for key, value in adapters.items():
            tensors[f"{BRANCH_PREFIX}{spec.name}.{key}"] = value.cpu().contiguous()

    card: dict[str, Any] = {
        "format": CARD_FORMAT,
        "format_version": CARD_FORMAT_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "profile": profile,
        "embedding_dim": model.head.out_dim,
        "branches": [branch_card(branch) for branch in branches],
        "head": {"type": "fusion", "in_dims": list(model.head.in_dims), "out_dim": model.head.out_dim},
        "lora": None if lora is None else {**lora.as_dict(), "adapted_modules": adapted},
        **dict(extra_card or {}),
    }
    data = save_safetensors(tensors, metadata={CARD_METADATA_KEY: json.dumps(card, sort_keys=True)})
    sha256 = hashlib.sha256(data).hexdigest()
    card_path = path.with_suffix(".json")
    write_atomically(path, data)
    write_atomically(card_path, (json.dumps({**card, "sha256": sha256}, indent=2, sort_keys=True) + "\n").encode())
    logger.info("checkpoint_saved", path=str(path), sha256=sha256[:12], tensors=len(tensors))
    return sha256


def read_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint file and its card, raising WeightsError when it is missing, corrupt or not a checkpoint."""
    hint = "Set ENDODOC_MODEL__CHECKPOINT (or --checkpoint) to a file written by `endodoc train`."
    if not path.is_file():
        raise WeightsError(f"Checkpoint file not found: {path}. {hint}")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise WeightsError(f"Cannot read checkpoint file {path}: {error}. {hint}") from error
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        tensors = load_safetensors(data)
        metadata = _safetensors_metadata(data)
    except (SafetensorError, ValueError, json.JSONDecodeError) as error:
        raise WeightsError(f"Checkpoint file {path} is not a valid safetensors file: {error}. {hint}") from error

    raw_card = metadata.get(CARD_METADATA_KEY)
    if raw_card is None:
        raise WeightsError(f"Checkpoint file {path} has no endodoc card in its metadata. {hint}")
    try:
        card = json.loads(raw_card)
    except json.JSONDecodeError as error:
        raise WeightsError(f"The card in checkpoint file {path} is not valid JSON: {error}. {hint}") from error
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise WeightsError(f"Checkpoint file {path} is not an endodoc checkpoint. {hint}")
    if card.get("format_version") != CARD_FORMAT_VERSION:
        raise WeightsError(
            f"Checkpoint file {path} has card format version {card.get('format_version')}, but this endodoc "
            f"reads version {CARD_FORMAT_VERSION}. Retrain the checkpoint with this version."
        )
    return Checkpoint(path=path, card=card, tensors=tensors, sha256=sha256)


def check_card_matches(checkpoint: Checkpoint, branches: Sequence[LoadedBranch], profile: str) -> None:
    """Raise WeightsError unless the checkpoint was trained on this profile with these exact backbone weights."""
    card = checkpoint.card
    if card.get("profile") != profile:
        raise WeightsError(
            f"Checkpoint {checkpoint.path} was trained for the {card.get('profile')!r} profile, but the configured "
            f"profile is {profile!r}. Set ENDODOC_MODEL__PROFILE={card.get('profile')} with its weights, or use a "
            f"checkpoint trained for {profile!r}."
        )
    trained = card.get("branches") or []
    if [item.get("name") for item in trained] != [branch.spec.name for branch in branches]:
        raise WeightsError(
            f"Checkpoint {checkpoint.path} has branches {[item.get('name') for item in trained]}, but the "
            f"{profile!r} profile has {[branch.spec.name for branch in branches]}."
        )
    for item, branch in zip(trained, branches, strict=True):
        current = branch_card(branch)
        for field in ("architecture", "create_kwargs", "feature_dim", "identity"):
            if item.get(field) != current[field]:
                raise WeightsError(
                    f"Checkpoint {checkpoint.path} was trained on other {branch.spec.name} backbone weights or "
                    f"preprocessing: {field} is {item.get(field)!r} in the checkpoint but {current[field]!r} now "
                    f"(trained on weights sha256 {item.get('weights_sha256')}, configured {branch.sha256}). "
                    f"Configure the weight file the checkpoint was trained on, or retrain."
                )


def apply_checkpoint(
    model: EmbeddingModel, branches: Sequence[LoadedBranch], profile: str, path: Path
) -> Checkpoint:
    """Check the checkpoint at `path` against the loaded branches, then add its adapters and head to `model`.

    The model is changed only after every check has passed and every tensor has loaded, so a
    rejected checkpoint leaves it as it was. Returns the checkpoint read.
    """
    checkpoint = read_checkpoint(path)
    check_card_matches(checkpoint, branches, profile)
    card = checkpoint.card
    source = f"checkpoint {path}"

    head_card = card.get("head") or {}
    try:
        head = FusionHead(head_card["in_dims"], head_card["out_dim"])
    except (KeyError, TypeError, ValueError) as error:
        raise WeightsError(f"The head description in {source} is invalid: {head_card!r} ({error}).") from error
    head_state = {
        key[len(HEAD_PREFIX) :]: value for key, value in checkpoint.tensors.items() if key.startswith(HEAD_PREFIX)
    }
    _load_head(head, head_state, source=source)

    lora_card = card.get("lora")
    branch_states: dict[str, dict[str, torch.Tensor]] = {spec.name: {} for spec in model.specs}
    for key, value in checkpoint.tensors.items():
        if key.startswith(HEAD_PREFIX):
            continue
        name, _, rest = key.removeprefix(BRANCH_PREFIX).partition(".")
        if not key.startswith(BRANCH_PREFIX) or name not in branch_states:
            raise WeightsError(f"Unexpected tensor {key!r} in {source}.")
        branch_states[name][rest] = value

    # Adapters go into copies first, so that a mismatch leaves the model's backbones untouched.
    adapted_backbones = list(model.backbones)
    if lora_card is not None:
        lora = LoraSettings(
            r=int(lora_card["r"]),
            alpha=float(lora_card["alpha"]),
            dropout=float(lora_card["dropout"]),
            targets={name: tuple(names) for name, names in (lora_card.get("targets") or {}).items()},
        )
        adapted_backbones = []
        for spec, backbone in zip(model.specs, model.backbones, strict=True):
            candidate = copy.deepcopy(backbone)
            add_lora(candidate, spec, lora)
            load_adapter_state(candidate, branch_states[spec.name], source=f"{source} ({spec.name} branch)")
            adapted_backbones.append(candidate)
    elif any(branch_states.values()):
        raise WeightsError(f"{source} contains adapter tensors but its card lists no LoRA settings.")

    for index, backbone in enumerate(adapted_backbones):
        model.backbones[index] = backbone
    model.head = head
    logger.info("checkpoint_loaded", path=str(path), sha256=checkpoint.sha256[:12], profile=profile,
                lora=lora_card is not None, dim=head.out_dim)
    return checkpoint


def _load_head(head: FusionHead, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    expected = head.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    mismatched = [
        f"head.{key} expected {list(expected[key].shape)} got {list(state[key].shape)}"
        for key in sorted(expected.keys() & state.keys())
        if expected[key].shape != state[key].shape
    ]
    if missing or unexpected or mismatched:
        raise WeightsError(
            f"The fusion head in {source} does not match its card: missing {missing}, unexpected {unexpected}, "
            f"shape mismatches {mismatched}."
        )
    head.load_state_dict(dict(state), strict=True)


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    # The safetensors header is an 8-byte little-endian length followed by that much JSON.
    if len(data) < 8:
        raise ValueError("file is shorter than the safetensors header")
    header_size = int.from_bytes(data[:8], "little")
    if header_size > len(data) - 8:
        raise ValueError("header length exceeds the file size")
    header = json.loads(data[8 : 8 + header_size])
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise ValueError("metadata is not a mapping")
    return metadata
