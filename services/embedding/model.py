"""The N-branch embedding network: timm backbones whose pooled features are joined into one vector."""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn

from services.embedding.head import FusionHead
from services.embedding.profiles import BranchSpec


def create_backbone(spec: BranchSpec, *, pretrained: bool = False) -> nn.Module:
    """Build the timm feature extractor of one branch, randomly initialised unless `pretrained`.

    With num_classes=0 the model returns pooled features: the final-norm CLS token for the ViT
    branches (global_pool "token") and the average-pooled head convolution for EfficientNet.
    """
    return timm.create_model(spec.architecture, pretrained=pretrained, num_classes=0, **spec.create_kwargs)


class EmbeddingModel(nn.Module):
    """Backbones whose features are joined into one unit-length embedding.

    Without a head, the L2-normalised branch features are concatenated and L2-normalised
    again. Normalising each branch first gives every branch the same weight, so the cosine
    similarity of two embeddings is the mean of the per-branch cosine similarities. With a
    trained `FusionHead`, the head maps the branch features to its own embedding.
    """

    def __init__(
        self, specs: Sequence[BranchSpec], backbones: Sequence[nn.Module], head: FusionHead | None = None
    ) -> None:
        super().__init__()
        if len(specs) != len(backbones):
            raise ValueError(f"Expected one backbone per branch spec, got {len(backbones)} for {len(specs)}.")
        self.specs = tuple(specs)
        self.backbones = nn.ModuleList(backbones)
        self.head = head

    @property
    def dim(self) -> int:
        """Embedding size: the head's output size, or the sum of the branch feature sizes without a head."""
        if self.head is not None:
            return self.head.out_dim
        return sum(spec.feature_dim for spec in self.specs)

    def branch_features(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Return the pooled float32 features of each branch, one (n, feature_dim) batch per branch."""
        return [backbone(batch).float() for backbone, batch in zip(self.backbones, inputs, strict=True)]

    def embed_features(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Join per-branch features into (n, dim) unit rows, through the head when there is one."""
        if self.head is not None:
            return self.head(features)
        return concatenate_normalised(features)

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Embed one input batch per branch, each (n, 3, size, size), into (n, dim) unit rows."""
        return self.embed_features(self.branch_features(inputs))


def concatenate_normalised(features: Sequence[torch.Tensor]) -> torch.Tensor:
    """L2-normalise each branch, concatenate and L2-normalise the result."""
    return F.normalize(torch.cat([F.normalize(batch.float(), dim=1) for batch in features], dim=1), dim=1)
