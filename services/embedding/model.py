"""The N-branch embedding network: timm backbones whose pooled features are joined into one vector."""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn

from services.embedding.profiles import BranchSpec


def create_backbone(spec: BranchSpec, *, pretrained: bool = False) -> nn.Module:
    """Build the timm feature extractor of one branch, randomly initialised unless `pretrained`.

    With num_classes=0 the model returns pooled features: the final-norm CLS token for the ViT
    branches (global_pool "token") and the average-pooled head convolution for EfficientNet.
    """
    return timm.create_model(spec.architecture, pretrained=pretrained, num_classes=0, **spec.create_kwargs)


class EmbeddingModel(nn.Module):
    """Backbones whose L2-normalised features are concatenated and L2-normalised again.

    Normalising each branch first gives every branch the same weight, so the cosine similarity
    of two embeddings is the mean of the per-branch cosine similarities.
    """

    def __init__(self, specs: Sequence[BranchSpec], backbones: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(specs) != len(backbones):
            raise ValueError(f"Expected one backbone per branch spec, got {len(backbones)} for {len(specs)}.")
        self.specs = tuple(specs)
        self.backbones = nn.ModuleList(backbones)

    @property
    def dim(self) -> int:
        """Embedding size: the sum of the branch feature sizes."""
        return sum(spec.feature_dim for spec in self.specs)

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Embed one input batch per branch, each (n, 3, size, size), into (n, dim) unit rows."""
        features = [
            F.normalize(backbone(batch).float(), dim=1) for backbone, batch in zip(self.backbones, inputs, strict=True)
        ]
        return F.normalize(torch.cat(features, dim=1), dim=1)
