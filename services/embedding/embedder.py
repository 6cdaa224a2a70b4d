"""The embedder: a model profile loaded once, turning images into unit-length vectors."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog
import torch
from PIL import Image

from services.embedding.checkpoint import Checkpoint, apply_checkpoint
from services.embedding.model import EmbeddingModel
from services.embedding.preprocess import Transform
from services.embedding.profiles import PROFILES
from services.embedding.weights import LoadedBranch, load_branch
from services.settings import ModelSettings, ProfileName

logger = structlog.get_logger(__name__)

VERSION_HASH_CHARS = 12


class Embedder:
    """A loaded embedding model with its preprocessing and the name of its embedding space.

    Build it with `load_embedder` once per process and reuse it, because loading reads and
    hashes every weight file. `embed` runs under torch.inference_mode and changes no state.
    """

    def __init__(
        self,
        *,
        profile: ProfileName,
        model: EmbeddingModel,
        model_version: str,
        device: torch.device,
        batch_size: int,
        autocast_dtype: torch.dtype | None = None,
        forward: Callable[[Sequence[torch.Tensor]], torch.Tensor] | None = None,
    ) -> None:
        self.profile = profile
        self.model = model
        self.model_version = model_version
        self.device = device
        self.batch_size = batch_size
        self.autocast_dtype = autocast_dtype
        # The compiled model when ModelSettings.compile is set; it shares the model's weights.
        self.forward = forward if forward is not None else model
        self.transforms = [Transform.for_branch(spec) for spec in model.specs]

    @property
    def dim(self) -> int:
        """Embedding size."""
        return self.model.dim

    @property
    def input_size(self) -> int:
        """Largest square input side of the branches in pixels, the `draft_size` for `open_image`."""
        return max(transform.size for transform in self.transforms)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed images into a float32 array of shape (len(images), dim) with unit-length rows."""
        rows = [
            self.embed_inputs(self.preprocess(images[start : start + self.batch_size]))
            for start in range(0, len(images), self.batch_size)
        ]
        if not rows:
            return np.empty((0, self.dim), dtype=np.float32)
        return np.concatenate(rows, axis=0)

    def preprocess(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        """Turn images into one input batch per branch, already on the model's device.

        Safe to call from another thread while `embed_inputs` runs, which is how the ingest
        path overlaps decoding and preprocessing with inference. On CUDA the batch is copied
        from pinned memory without blocking, so the copy overlaps with the running model.
        """
        # Branches that share a transform share one preprocessed batch.
        batches: dict[Transform, torch.Tensor] = {}
        for transform in self.transforms:
            if transform not in batches:
                batch = transform(images).contiguous(memory_format=torch.channels_last)
                if self.device.type == "cuda":
                    batch = batch.pin_memory()
                batches[transform] = batch.to(self.device, non_blocking=True)
        return [batches[transform] for transform in self.transforms]

    def embed_inputs(self, inputs: Sequence[torch.Tensor]) -> np.ndarray:
        """Embed the batches made by `preprocess` into a float32 (n, dim) array of unit rows."""
        with torch.inference_mode(), self._autocast():
            embeddings = self.forward(inputs)
        return embeddings.float().cpu().numpy()

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def load_embedder(settings: ModelSettings) -> Embedder:
    """Build the model of the configured profile, load all its weights strictly and return the embedder.

    With `settings.checkpoint` set, the checkpoint's LoRA adapters and fusion head are added
    and the model version includes the checkpoint's sha256. Raises WeightsError when a weight
    file or the checkpoint is missing, corrupt or does not match the configured backbones.
    """
    device = resolve_device(settings.device)
    if settings.num_threads is not None:
        torch.set_num_threads(settings.num_threads)
    loaded = load_model(settings)

    # Channels-last memory format runs the depthwise convolutions of EfficientNet-Lite0 about
    # 1.6 times faster on a 2-core x86 CPU with torch 2.14, and changes nothing for ViT weights.
    model = loaded.model.to(device=device, memory_format=torch.channels_last).eval()
    autocast_dtype = resolve_autocast(settings.precision, device)
    # Compilation happens on the first batch, and once more for the first batch of another
    # size, after which torch compiles for dynamic shapes. Compiling with dynamic=True from
    # the start did not finish within 20 minutes on the 2-core build machine.
    forward = torch.compile(model) if settings.compile else None
    logger.info(
        "embedder_loaded",
        profile=loaded.profile,
        model_version=loaded.version,
        dim=model.dim,
        device=str(device),
        autocast=str(autocast_dtype) if autocast_dtype is not None else "off",
        compiled=settings.compile,
    )
    return Embedder(
        profile=loaded.profile,
        model=model,
        model_version=loaded.version,
        device=device,
        batch_size=settings.batch_size,
        autocast_dtype=autocast_dtype,
        forward=forward,
    )


def resolve_autocast(precision: str, device: torch.device) -> torch.dtype | None:
    """Return the autocast dtype for a ModelSettings.precision on a device, or None for float32.

    `auto` uses bfloat16 only on CUDA: on the 2-core AVX2 build machines, which lack fast
    bfloat16 instructions, a bfloat16 matrix product ran about 400 times slower than float32.
    """
    if precision == "float32" or (precision == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


@dataclass
class LoadedModel:
    """A profile's model on the CPU with its loaded branches, its checkpoint (if any) and its version."""

    profile: ProfileName
    branches: list[LoadedBranch]
    model: EmbeddingModel
    checkpoint: Checkpoint | None
    version: str


def load_model(settings: ModelSettings, *, checkpoint: Path | None = None) -> LoadedModel:
    """Load the configured profile's backbones and, from `checkpoint` or the settings, a trained checkpoint."""
    profile = settings.resolved_profile()
    branches = [load_branch(spec, settings) for spec in PROFILES[profile]]
    model = EmbeddingModel([branch.spec for branch in branches], [branch.backbone for branch in branches])
    checkpoint_path = checkpoint if checkpoint is not None else settings.checkpoint
    loaded_checkpoint = None
    if checkpoint_path is not None:
        loaded_checkpoint = apply_checkpoint(model, branches, profile, checkpoint_path)
    version = model_version(profile, branches, loaded_checkpoint.sha256 if loaded_checkpoint else None)
    return LoadedModel(profile, branches, model, loaded_checkpoint, version)


def model_version(profile: ProfileName, branches: Sequence[LoadedBranch], checkpoint_sha256: str | None = None) -> str:
    """Name the embedding space: the profile, `random` if any branch is random, and a weights hash.

    The hash covers the sha256 of every branch weight file and of the checkpoint, so vectors
    from different weights never share a version. Random branches hash their architecture and
    seed instead, so they never share a version with real weights.
    """
    identities = [branch.identity for branch in branches]
    if checkpoint_sha256 is not None:
        identities.append(f"checkpoint:sha256:{checkpoint_sha256}")
    digest = hashlib.sha256("\n".join(identities).encode()).hexdigest()[:VERSION_HASH_CHARS]
    if any(branch.kind == "random" for branch in branches):
        return f"{profile}-random-{digest}"
    return f"{profile}-{digest}"


def resolve_device(name: str) -> torch.device:
    """Return the torch device for `auto`, `cpu`, `cuda` or `cuda:N`; `auto` prefers CUDA."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"ENDODOC_MODEL__DEVICE is {name!r}, but CUDA is not available; use `auto` or `cpu`.")
    return device
