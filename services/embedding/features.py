"""Decoded image tensors and cached backbone features for training and evaluation."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import structlog
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from services.embedding.dataset import DatasetError, LabeledImage
from services.embedding.errors import InvalidImageError
from services.embedding.images import open_image
from services.embedding.model import EmbeddingModel
from services.embedding.preprocess import Transform

logger = structlog.get_logger(__name__)

# Decompression-bomb guard for training images, the same default as uploads.
MAX_PIXELS = 40_000_000
DECODE_THREADS = 4


def decode_images(
    items: Sequence[LabeledImage], transform: Transform, *, progress: bool = False
) -> torch.Tensor:
    """Decode and resize every image for `transform` into one uint8 tensor of shape (n, 3, size, size).

    Raises DatasetError naming the file when an image cannot be decoded.
    """
    def load(item: LabeledImage) -> np.ndarray:
        try:
            image = open_image(item.path.read_bytes(), max_pixels=MAX_PIXELS, draft_size=transform.size)
        except InvalidImageError as error:
            raise DatasetError(f"Cannot use training image {item.path}: {error.reason}") from error
        except OSError as error:
            raise DatasetError(f"Cannot read training image {item.path}: {error}") from error
        return np.asarray(transform.resize(image))

    pixels = np.empty((len(items), transform.size, transform.size, 3), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
        rows = pool.map(load, items)
        for index, row in enumerate(tqdm(rows, total=len(items), desc="decode", disable=not progress, leave=False)):
            pixels[index] = row
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()


def normalise(pixels: torch.Tensor, transform: Transform) -> torch.Tensor:
    """Turn a uint8 (n, 3, size, size) batch into the float32 input `transform` defines."""
    mean = torch.tensor(transform.mean, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(transform.std, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
    return (pixels.float() / 255.0 - mean) / std


class DecodedImages:
    """The images of a dataset decoded once per distinct branch transform, kept in memory as uint8."""

    def __init__(self, items: Sequence[LabeledImage], transforms: Sequence[Transform], *, progress: bool = False):
        self.items = list(items)
        self.transforms = list(transforms)
        self.pixels: dict[Transform, torch.Tensor] = {}
        for transform in self.transforms:
            if transform not in self.pixels:
                self.pixels[transform] = decode_images(self.items, transform, progress=progress)

    def __len__(self) -> int:
        return len(self.items)

    def inputs(self, indices: Sequence[int] | torch.Tensor, device: torch.device, *, flips: torch.Tensor | None = None):
        """Return one normalised input batch per branch for the given rows.

        `flips` is an optional (n, 2) bool tensor of horizontal and vertical flips per row, the
        augmentation that LoRA training uses.
        """
        index = torch.as_tensor(indices, dtype=torch.long)
        batches: dict[Transform, torch.Tensor] = {}
        for transform, pixels in self.pixels.items():
            batch = pixels[index]
            if flips is not None:
                batch = batch.clone()
                horizontal, vertical = flips[:, 0], flips[:, 1]
                batch[horizontal] = batch[horizontal].flip(-1)
                batch[vertical] = batch[vertical].flip(-2)
            batches[transform] = normalise(batch.to(device), transform)
        return [batches[transform] for transform in self.transforms]


@torch.inference_mode()
def branch_features(
    model: EmbeddingModel, images: DecodedImages, *, batch_size: int, device: torch.device, progress: bool = False
) -> list[torch.Tensor]:
    """Run every backbone over all images in eval mode and return one float32 (n, feature_dim) tensor per branch."""
    was_training = model.training
    model.eval()
    outputs: list[list[torch.Tensor]] = [[] for _ in model.specs]
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc="features", disable=not progress, leave=False):
        indices = list(range(start, min(start + batch_size, len(images))))
        for branch, features in enumerate(model.branch_features(images.inputs(indices, device))):
            outputs[branch].append(features.float().cpu())
    model.train(was_training)
    dims = [spec.feature_dim for spec in model.specs]
    return [torch.cat(parts) if parts else torch.empty(0, dim) for parts, dim in zip(outputs, dims, strict=True)]


def features_cache_key(identities: Sequence[str], items: Sequence[LabeledImage]) -> str:
    """Hash the branch identities and each image's path, size and modification time."""
    digest = hashlib.sha256("\n".join(identities).encode())
    for item in items:
        stat = item.path.stat()
        digest.update(f"\n{item.label}:{item.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:24]


def cached_branch_features(
    model: EmbeddingModel,
    items: Sequence[LabeledImage],
    identities: Sequence[str],
    *,
    cache_dir: Path | None,
    batch_size: int,
    device: torch.device,
    progress: bool = False,
) -> list[torch.Tensor]:
    """Return the branch features of `items`, read from `cache_dir` when an entry for these weights and files exists.

    A cache entry is a safetensors file named by `features_cache_key`, so changed weights or
    changed image files never reuse stale features. An unreadable entry is recomputed.
    """
    path = None
    if cache_dir is not None:
        path = cache_dir / f"features-{features_cache_key(identities, items)}.safetensors"
        if path.is_file():
            try:
                stored = load_file(path)
                features = [stored[f"branch{index}"] for index in range(len(model.specs))]
                if all(len(tensor) == len(items) for tensor in features):
                    logger.info("features_cache_hit", path=str(path), images=len(items))
                    return features
            except (SafetensorError, KeyError, OSError) as error:
                logger.warning("features_cache_unreadable", path=str(path), error=str(error))
    decoded = DecodedImages(items, [Transform.for_branch(spec) for spec in model.specs], progress=progress)
    features = branch_features(model, decoded, batch_size=batch_size, device=device, progress=progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        save_file({f"branch{index}": tensor.contiguous() for index, tensor in enumerate(features)}, temporary)
        temporary.replace(path)
        logger.info("features_cached", path=str(path), images=len(items))
    return features
