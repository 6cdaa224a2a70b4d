"""Image-to-tensor preprocessing built from a branch spec: square resize and normalisation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from services.embedding.images import to_rgb, upright
from services.embedding.profiles import BranchSpec

RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class Transform:
    """Resize the whole frame to a square and normalise with per-channel mean and std.

    Endoscopy frames carry the scope view across the whole frame, so nothing is cropped and
    the aspect ratio is not kept. Pillow's resize filters over the full source footprint,
    which antialiases when shrinking.
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    @classmethod
    def for_branch(cls, spec: BranchSpec) -> Transform:
        return cls(size=spec.input_size, mean=spec.mean, std=spec.std, interpolation=spec.interpolation)

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Return a float32 batch of shape (n, 3, size, size) in channels-last memory format.

        The arithmetic runs in NumPy on one thread, so a decoding thread that preprocesses the
        next batch does not compete for torch's intra-op threads with the running model.
        """
        pixels = np.empty((len(images), self.size, self.size, 3), dtype=np.uint8)
        for row, image in enumerate(images):
            pixels[row] = np.asarray(self.resize(image))
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        # (pixel / 255 - mean) / std as one multiply and one add per value.
        normalised = pixels.astype(np.float32)
        normalised *= 1.0 / (255.0 * std)
        normalised -= mean / std
        return torch.from_numpy(normalised).permute(0, 3, 1, 2)

    def resize(self, image: Image.Image) -> Image.Image:
        """Return the upright RGB image resized to size x size pixels."""
        rgb = to_rgb(upright(image))
        if rgb.size == (self.size, self.size):
            return rgb
        return rgb.resize((self.size, self.size), RESAMPLING[self.interpolation])
