"""Metric-learning losses and the class-balanced batches they train on."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import torch
from pytorch_metric_learning import distances, losses, miners

LossName = Literal["triplet", "multi-similarity", "contrastive", "ntxent"]
LOSS_NAMES: tuple[LossName, ...] = ("triplet", "multi-similarity", "contrastive", "ntxent")


class MetricLoss:
    """A pytorch-metric-learning loss with its miner, both on cosine similarity of unit embeddings."""

    def __init__(self, name: LossName, *, margin: float = 0.2, mining: Literal["semihard", "hard", "all"] = "semihard"):
        cosine = distances.CosineSimilarity()
        self.name = name
        self.miner = None
        if name == "triplet":
            self.loss = losses.TripletMarginLoss(margin=margin, distance=cosine)
            self.miner = miners.TripletMarginMiner(margin=margin, type_of_triplets=mining, distance=cosine)
        elif name == "multi-similarity":
            self.loss = losses.MultiSimilarityLoss(alpha=2.0, beta=50.0, base=0.5)
            self.miner = miners.MultiSimilarityMiner(epsilon=0.1)
        elif name == "contrastive":
            self.loss = losses.ContrastiveLoss(pos_margin=1.0, neg_margin=0.5, distance=cosine)
        elif name == "ntxent":
            self.loss = losses.NTXentLoss(temperature=0.07)
        else:
            raise ValueError(f"Unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}.")

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return the loss over the mined pairs or triplets of the batch (all of them without a miner)."""
        if self.miner is None:
            return self.loss(embeddings, labels)
        return self.loss(embeddings, labels, self.miner(embeddings, labels))

    def unmined(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return the loss over every pair or triplet of the batch, which does not depend on mining."""
        return self.loss(embeddings, labels)


def class_balanced_batches(
    labels: Sequence[int], *, batch_size: int, per_class: int, generator: np.random.Generator
) -> Iterator[np.ndarray]:
    """Yield the index batches of one epoch: each batch draws `per_class` images from each of several classes.

    An epoch has ceil(len(labels) / batch_size) batches. When there are fewer classes than
    batch_size / per_class, each class contributes more images, so batches stay near batch_size.
    A class with fewer images than its share is drawn with replacement.
    """
    label_array = np.asarray(labels)
    classes = np.unique(label_array)
    members = {label: np.flatnonzero(label_array == label) for label in classes}
    per_class = max(per_class, batch_size // len(classes))
    classes_per_batch = max(1, min(len(classes), batch_size // per_class))
    steps = max(1, -(-len(label_array) // batch_size))
    for _ in range(steps):
        chosen = generator.choice(classes, size=classes_per_batch, replace=False)
        batch = [
            generator.choice(members[label], size=per_class, replace=len(members[label]) < per_class)
            for label in chosen
        ]
        yield np.concatenate(batch)
