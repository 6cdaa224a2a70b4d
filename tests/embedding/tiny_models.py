"""Tiny randomly initialised ViT branches and labeled folders of real images for fast training tests."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from services.embedding.embedder import LoadedModel
from services.embedding.model import EmbeddingModel, create_backbone
from services.embedding.profiles import IMAGENET_MEAN, IMAGENET_STD, BranchSpec
from services.embedding.weights import LoadedBranch

TINY_PROFILE = "tiny-dual-vit"
TINY_VIT = {"depth": 2, "embed_dim": 64, "num_heads": 2}

TINY_REGISTER_VIT = BranchSpec(
    name="tiny_reg_vit",
    architecture="vit_small_patch14_reg4_dinov2",
    input_size=56,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    feature_dim=64,
    weight_source="file",
    licence="random weights for tests",
    create_kwargs={**TINY_VIT, "img_size": 56},
)
TINY_VIT16 = BranchSpec(
    name="tiny_vit16",
    architecture="vit_small_patch16_224",
    input_size=64,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    feature_dim=64,
    weight_source="file",
    licence="random weights for tests",
    create_kwargs={**TINY_VIT, "img_size": 64},
)


def tiny_branches(seed: int = 0) -> list[LoadedBranch]:
    """Build the two tiny ViT branches with seeded random weights."""
    branches = []
    for offset, spec in enumerate((TINY_REGISTER_VIT, TINY_VIT16)):
        torch.manual_seed(seed + offset)
        branches.append(LoadedBranch(spec=spec, backbone=create_backbone(spec), kind="random", sha256=None))
    return branches


def tiny_loaded_model(seed: int = 0) -> LoadedModel:
    """Return an untrained tiny dual-ViT model as `load_model` would."""
    branches = tiny_branches(seed)
    model = EmbeddingModel([branch.spec for branch in branches], [branch.backbone for branch in branches])
    return LoadedModel(TINY_PROFILE, branches, model, None, f"{TINY_PROFILE}-test")


def fresh_copy(loaded: LoadedModel) -> LoadedModel:
    """Return an independent copy of an untrained model, with its own backbones."""
    branches = [
        LoadedBranch(spec=branch.spec, backbone=copy.deepcopy(branch.backbone), kind=branch.kind, sha256=branch.sha256)
        for branch in loaded.branches
    ]
    model = EmbeddingModel([branch.spec for branch in branches], [branch.backbone for branch in branches])
    return LoadedModel(loaded.profile, branches, model, None, loaded.version)


def link_class_folders(source: Path, target: Path, classes: dict[str, int]) -> Path:
    """Make `target/<class>/` folders of symbolic links to the first images of each source class."""
    for label, count in classes.items():
        folder = target / label
        folder.mkdir(parents=True, exist_ok=True)
        for path in sorted((source / label).glob("*.jpg"))[:count]:
            (folder / path.name).symlink_to(path)
    return target
