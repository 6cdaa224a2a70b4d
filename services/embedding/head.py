"""The fusion head that turns the branch features into one trained embedding."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

FUSED_DIM = 512


class FusionHead(nn.Module):
    """L2-normalise each branch, concatenate, Linear to `out_dim`, BatchNorm1d, GELU, L2-normalise.

    Training and inference use this one module, so a trained checkpoint embeds exactly as it
    was validated. A single-branch profile uses it too, with one input.
    """

    def __init__(self, in_dims: Sequence[int], out_dim: int = FUSED_DIM) -> None:
        super().__init__()
        if not in_dims or any(dim < 1 for dim in in_dims):
            raise ValueError(f"FusionHead needs at least one positive branch feature size, got {list(in_dims)}.")
        self.in_dims = tuple(int(dim) for dim in in_dims)
        self.out_dim = int(out_dim)
        self.linear = nn.Linear(sum(self.in_dims), self.out_dim)
        self.norm = nn.BatchNorm1d(self.out_dim)
        self.activation = nn.GELU()

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Map one (n, in_dim) feature batch per branch to (n, out_dim) unit-length rows."""
        if len(features) != len(self.in_dims):
            raise ValueError(f"FusionHead expects {len(self.in_dims)} branch feature batches, got {len(features)}.")
        joined = torch.cat([F.normalize(batch.float(), dim=1) for batch in features], dim=1)
        return F.normalize(self.activation(self.norm(self.linear(joined))), dim=1)
