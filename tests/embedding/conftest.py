"""Fixtures for the embedding tests: real HyperKvasir images and ViT weight files in several layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from weight_layouts import (
    MAX_PIXELS,
    labeled_image_paths,
    random_backbone_state,
    to_dino_v1_checkpoint,
    to_meta_dinov2_layout,
)

from services.embedding import open_image
from services.embedding.profiles import DINOV2_VITS14_REG4, GASTRONET_VITS16


@pytest.fixture(scope="session")
def real_images(labeled_images: Path):
    """Six decoded HyperKvasir images, at least one from each of the five classes."""
    pairs = labeled_image_paths(labeled_images, per_class=2)
    chosen = pairs[::2] + pairs[1:2]
    return [open_image(path.read_bytes(), max_pixels=MAX_PIXELS) for _, path in chosen]


@pytest.fixture(scope="session")
def dinov2_state() -> dict[str, torch.Tensor]:
    return random_backbone_state(DINOV2_VITS14_REG4, seed=1)


@pytest.fixture(scope="session")
def gastronet_state() -> dict[str, torch.Tensor]:
    return random_backbone_state(GASTRONET_VITS16, seed=2)


@pytest.fixture(scope="session")
def vit_weight_files(tmp_path_factory, dinov2_state, gastronet_state) -> dict[str, Path]:
    """Random ViT-S weights saved in timm layout, Meta's DINOv2 layout and DINO v1 checkpoint layout."""
    folder = tmp_path_factory.mktemp("vit_weights")
    dinov2_518 = random_backbone_state(DINOV2_VITS14_REG4, seed=3, img_size=518)
    contents = {
        "dinov2_timm": dinov2_state,
        "dinov2_meta": to_meta_dinov2_layout(dinov2_state, seed=4),
        "dinov2_timm_518": dinov2_518,
        "dinov2_meta_518": to_meta_dinov2_layout(dinov2_518, seed=5),
        "gastronet_timm": gastronet_state,
        "gastronet_dino": to_dino_v1_checkpoint(gastronet_state),
    }
    paths = {}
    for name, content in contents.items():
        paths[name] = folder / f"{name}.pth"
        torch.save(content, paths[name])
    return paths
