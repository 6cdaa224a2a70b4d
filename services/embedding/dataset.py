"""Labeled image folders for training and evaluation: scanning, checks and a seeded stratified split."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")


class DatasetError(ValueError):
    """A labeled image folder that cannot be used as it is; the message names the folder and the fix."""


@dataclass(frozen=True)
class LabeledImage:
    """One image file and its class, the name of the folder it is in."""

    label: str
    path: Path


def scan_labeled_folder(root: Path, *, min_per_class: int = 1) -> list[LabeledImage]:
    """List the images of `root`, one subfolder per class, sorted by class and file name.

    Raises DatasetError when the folder is missing, has no images, or a class subfolder has
    fewer than `min_per_class` images. Subfolders without any image are an error too, because
    an empty class folder is usually a copy that went wrong.
    """
    if not root.is_dir():
        raise DatasetError(f"Image folder {str(root)!r} does not exist: pass a folder with one subfolder per class.")
    items: list[LabeledImage] = []
    counts: dict[str, int] = {}
    for folder in sorted(path for path in root.iterdir() if path.is_dir() and not path.name.startswith(".")):
        images = sorted(
            path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
        )
        counts[folder.name] = len(images)
        items.extend(LabeledImage(folder.name, path) for path in images)
    if not items:
        raise DatasetError(
            f"No images found in class subfolders of {str(root)!r}: expected DIR/<class>/<image>.jpg "
            f"({', '.join(IMAGE_SUFFIXES)})."
        )
    empty = sorted(label for label, count in counts.items() if count == 0)
    if empty:
        raise DatasetError(f"Class folders without images in {str(root)!r}: {', '.join(empty)}. Remove them or add images.")
    too_small = sorted(f"{label} ({count})" for label, count in counts.items() if count < min_per_class)
    if too_small:
        raise DatasetError(
            f"Class folders with fewer than {min_per_class} images in {str(root)!r}: {', '.join(too_small)}. "
            f"Metric learning needs at least {min_per_class} images of every class: add images or remove the folder."
        )
    return items


def class_counts(items: Sequence[LabeledImage]) -> dict[str, int]:
    """Return the number of images per class, sorted by class."""
    return dict(sorted(Counter(item.label for item in items).items()))


def stratified_split(
    items: Sequence[LabeledImage], holdout_fraction: float, seed: int
) -> tuple[list[LabeledImage], list[LabeledImage]]:
    """Split each class with a seeded shuffle into (remaining, held out), holding out round(n * fraction) of each.

    Every class keeps at least two images, so each remaining image has a same-class partner for
    metric learning, and every class with at least three images holds out at least one.
    """
    if not 0 < holdout_fraction < 1:
        raise DatasetError(f"The held-out fraction must be between 0 and 1, got {holdout_fraction}.")
    by_class: dict[str, list[LabeledImage]] = defaultdict(list)
    for item in items:
        by_class[item.label].append(item)
    generator = np.random.default_rng(seed)
    remaining: list[LabeledImage] = []
    held_out: list[LabeledImage] = []
    for label in sorted(by_class):
        members = sorted(by_class[label], key=lambda item: item.path.name)
        order = generator.permutation(len(members))
        count = min(max(1, round(len(members) * holdout_fraction)), len(members) - 2)
        if count < 1:
            raise DatasetError(
                f"Class {label!r} has {len(members)} images, too few to hold any out while keeping two for "
                f"training: add images to it or pass validation images separately."
            )
        held_out.extend(members[index] for index in sorted(order[:count]))
        remaining.extend(members[index] for index in sorted(order[count:]))
    return remaining, held_out
