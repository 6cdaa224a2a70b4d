"""Helpers for the embedding tests: real image paths and random ViT weights in published layouts."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from services.embedding.model import create_backbone
from services.embedding.profiles import BranchSpec

CLASSES = ("bbps-0-1", "bbps-2-3", "impacted-stool", "normal-cecum", "polyp")
MAX_PIXELS = 40_000_000


def labeled_image_paths(root: Path, per_class: int) -> list[tuple[str, Path]]:
    """Return (class, path) pairs, the first `per_class` JPEG files of each class in name order."""
    pairs = []
    for label in CLASSES:
        paths = sorted((root / label).glob("*.jpg"))[:per_class]
        pairs.extend((label, path) for path in paths)
    return pairs


def random_backbone_state(spec: BranchSpec, seed: int, **create_kwargs) -> dict[str, torch.Tensor]:
    """Return the timm-layout state dict of a seeded random backbone for `spec`, with trained-like token scales.

    timm initialises the class and register tokens with std 1e-6 and DINOv2's layer scales at
    1e-5. The final LayerNorm then normalises a near-zero class token and magnifies float
    rounding into visible differences, so those tensors get the magnitudes of trained weights.
    """
    torch.manual_seed(seed)
    if create_kwargs:
        spec = BranchSpec(**{**spec.__dict__, "create_kwargs": {**spec.create_kwargs, **create_kwargs}})
    state = create_backbone(spec).state_dict()
    for key, value in state.items():
        if key in ("cls_token", "reg_token"):
            state[key] = torch.randn_like(value) * 0.5
        elif key.endswith(("ls1.gamma", "ls2.gamma")):
            state[key] = torch.full_like(value, 0.1)
    return state


def to_meta_dinov2_layout(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Rewrite a timm DINOv2-reg4 state dict in the key layout of Meta's `dinov2_vits14_reg4_pretrain.pth`.

    Meta's `pos_embed` has an extra first position for the class token, which timm folds into
    `cls_token`. Every split of timm's `cls_token` into the two parts is equivalent, so a random one is used.
    """
    generator = torch.Generator().manual_seed(seed)
    class_position = torch.randn(state["cls_token"].shape, generator=generator)
    meta = {key: value for key, value in state.items() if key not in ("cls_token", "reg_token", "pos_embed")}
    meta["cls_token"] = state["cls_token"] - class_position
    meta["pos_embed"] = torch.cat([class_position, state["pos_embed"]], dim=1)
    meta["register_tokens"] = state["reg_token"]
    meta["mask_token"] = torch.zeros(1, state["cls_token"].shape[-1])
    return meta


def to_dino_v1_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, object]:
    """Wrap a timm ViT state dict as a DINO v1 training checkpoint with teacher, student and projection head."""
    head = {
        "head.mlp.0.weight": torch.randn(2048, 384),
        "head.mlp.0.bias": torch.randn(2048),
        "head.last_layer.weight_g": torch.ones(65536, 1),
    }
    teacher = {f"backbone.{key}": value for key, value in state.items()} | head
    # The student differs from the teacher, so loading it by mistake changes the embeddings.
    student = {f"module.backbone.{key}": value + 1.0 for key, value in state.items()}
    student |= {f"module.{key}": value for key, value in head.items()}
    return {"student": student, "teacher": teacher, "epoch": 100, "args": argparse.Namespace(arch="vit_small")}
