"""Metric learning of the fusion head, with or without LoRA adapters on the backbones.

Two modes:
- `head`: the backbones stay frozen, their features are computed once (and cached), and only
  the fusion head trains, which takes seconds on a CPU.
- `lora`: LoRA adapters on every branch train together with the head on decoded images,
  with random flips. Batch-norm statistics of the backbones stay frozen.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import structlog
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from tqdm import tqdm

from services.embedding.checkpoint import check_card_matches, read_checkpoint, save_checkpoint
from services.embedding.dataset import LabeledImage, class_counts, scan_labeled_folder, stratified_split
from services.embedding.embedder import LoadedModel, resolve_device
from services.embedding.errors import WeightsError
from services.embedding.features import DecodedImages, branch_features, cached_branch_features
from services.embedding.head import FUSED_DIM, FusionHead
from services.embedding.lora import LoraSettings, add_lora, adapter_state
from services.embedding.losses import LossName, MetricLoss, class_balanced_batches
from services.embedding.metrics import RetrievalMetrics, retrieval_metrics
from services.embedding.model import EmbeddingModel, concatenate_normalised
from services.embedding.preprocess import Transform

logger = structlog.get_logger(__name__)

TrainMode = Literal["lora", "head"]


@dataclass(frozen=True)
class TrainSettings:
    """Hyperparameters of one training run. The defaults follow the published method (AdamW, lr 1e-4)."""

    mode: TrainMode = "head"
    epochs: int = 30
    batch_size: int = 32
    per_class: int = 4
    lr: float = 1e-4
    weight_decay: float = 1e-4
    grad_clip: float = 2.0
    warmup_steps: int = 0
    loss: LossName = "triplet"
    margin: float = 0.2
    mining: Literal["semihard", "hard", "all"] = "semihard"
    out_dim: int = FUSED_DIM
    seed: int = 0
    val_fraction: float = 0.2
    augment: bool = True
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}.")
        if self.batch_size < 2 or self.per_class < 2:
            raise ValueError(
                f"batch size and images per class must be at least 2, got {self.batch_size} and {self.per_class}."
            )
        if self.lr <= 0:
            raise ValueError(f"learning rate must be positive, got {self.lr}.")

    def as_card(self) -> dict[str, Any]:
        card = asdict(self)
        card["lora"] = self.lora.as_dict() if self.mode == "lora" else None
        return card


@dataclass
class EpochRecord:
    epoch: int
    # Mean training loss of the epoch; None for epoch 0, the starting point before any step.
    loss: float | None
    recall_at_1: float
    recall_at_5: float
    mean_average_precision: float
    seconds: float


@dataclass
class TrainResult:
    """The outcome of a run: where the best checkpoint is, its sha256 and the per-epoch history."""

    checkpoint: Path
    sha256: str
    best_epoch: int
    best: EpochRecord
    baseline: RetrievalMetrics
    history: list[EpochRecord]
    trainable_parameters: int
    adapted_modules: dict[str, int]


@dataclass
class TrainData:
    """The training and validation images, with integer labels in sorted class order."""

    train: list[LabeledImage]
    val: list[LabeledImage]
    classes: list[str]
    summary: dict[str, Any]

    def labels(self, items: Sequence[LabeledImage]) -> torch.Tensor:
        index = {label: position for position, label in enumerate(self.classes)}
        return torch.tensor([index[item.label] for item in items], dtype=torch.long)


def prepare_data(images: Path, *, val_images: Path | None, val_fraction: float, seed: int) -> TrainData:
    """Scan the training folder and split off the validation images (or scan `val_images`).

    Raises DatasetError for a missing or empty folder and for a class with fewer than two images.
    """
    items = scan_labeled_folder(images, min_per_class=2)
    if val_images is not None:
        train_items, val_items = items, scan_labeled_folder(val_images)
        split = {"validation": str(val_images)}
    else:
        train_items, val_items = stratified_split(items, val_fraction, seed)
        split = {"validation": "stratified split of the training folder", "val_fraction": val_fraction, "seed": seed}
    classes = sorted({item.label for item in train_items})
    unknown = sorted({item.label for item in val_items} - set(classes))
    if unknown:
        logger.warning("validation_classes_not_in_training", classes=unknown)
        classes = sorted(set(classes) | set(unknown))
    summary = {
        "images": str(images),
        **split,
        "classes": classes,
        "train_counts": class_counts(train_items),
        "val_counts": class_counts(val_items),
    }
    return TrainData(train_items, val_items, classes, summary)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def freeze_batch_norm(module: nn.Module) -> None:
    """Put every batch-norm layer of `module` in eval mode, so training does not update its statistics."""
    for child in module.modules():
        if isinstance(child, _BatchNorm):
            child.eval()


class Trainer:
    """One training run of a loaded profile's model on prepared data."""

    def __init__(
        self,
        loaded: LoadedModel,
        data: TrainData,
        settings: TrainSettings,
        *,
        out: Path,
        device: str = "auto",
        cache_dir: Path | None = None,
        eval_batch_size: int = 64,
        progress: bool = True,
        max_steps: int | None = None,
        init_head: Path | None = None,
    ) -> None:
        if loaded.model.head is not None or loaded.checkpoint is not None:
            raise ValueError("Training starts from the backbones: load the profile without a checkpoint.")
        self.loaded = loaded
        self.model: EmbeddingModel = loaded.model
        self.data = data
        self.settings = settings
        self.out = out
        self.device = resolve_device(device)
        self.cache_dir = cache_dir
        self.eval_batch_size = eval_batch_size
        self.progress = progress
        self.max_steps = max_steps
        self.init_head = init_head
        self.loss = MetricLoss(settings.loss, margin=settings.margin, mining=settings.mining)
        self.train_labels = data.labels(data.train)
        self.val_labels = data.labels(data.val)
        self.adapted: dict[str, int] = {}

    def run(self) -> TrainResult:
        """Train, validate after every epoch and keep the checkpoint with the best validation mAP."""
        settings = self.settings
        seed_everything(settings.seed)
        model = self.model
        model.to(self.device)
        # The frozen backbones' features give the baseline metrics, and in head mode the training
        # inputs too. They are computed (or read from the cache) before any adapter exists.
        frozen = {
            name: cached_branch_features(
                model, items, [branch.identity for branch in self.loaded.branches], cache_dir=self.cache_dir,
                batch_size=self.eval_batch_size, device=self.device, progress=self.progress,
            )
            for name, items in (("train", self.data.train), ("val", self.data.val))
        }
        baseline = self._score(concatenate_normalised(frozen["train"]), concatenate_normalised(frozen["val"]))
        logger.info("validation_baseline", recall_at_1=baseline.recall_at[1], map=baseline.mean_average_precision)

        seed_everything(settings.seed)
        model.head = FusionHead([spec.feature_dim for spec in model.specs], settings.out_dim)
        if self.init_head is not None:
            load_head_from(self.init_head, model.head, self.loaded)
        if settings.mode == "lora":
            for spec, backbone in zip(model.specs, model.backbones, strict=True):
                self.adapted[spec.name] = len(add_lora(backbone, spec, settings.lora))
        else:
            for parameter in model.backbones.parameters():
                parameter.requires_grad_(False)
        model.to(self.device)

        trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
        trainable_count = sum(parameter.numel() for parameter in trainable)
        logger.info("training_started", mode=settings.mode, profile=self.loaded.profile, trainable=trainable_count,
                    train_images=len(self.data.train), val_images=len(self.data.val), adapted=self.adapted)

        step_batch, embed_train, embed_val = self._prepare_inputs(frozen)
        steps_per_epoch = max(1, -(-len(self.data.train) // settings.batch_size))
        total_steps = steps_per_epoch * settings.epochs
        if self.max_steps is not None:
            total_steps = min(total_steps, self.max_steps)
        optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine_with_warmup(settings.warmup_steps, total_steps))
        generator = np.random.default_rng(settings.seed)

        history: list[EpochRecord] = []
        best: EpochRecord | None = None
        best_state: dict[str, Any] | None = None
        sha256 = ""
        step = 0
        if self.init_head is not None:
            # LoRA's B matrices start at zero, so before the first step the model embeds exactly like
            # the initial head on the frozen features: epoch 0 is the starting point, and it is kept
            # when no epoch improves on it.
            model.eval()
            with torch.no_grad():
                start = self._score(
                    model.head([tensor.to(self.device) for tensor in frozen["train"]]),
                    model.head([tensor.to(self.device) for tensor in frozen["val"]]),
                )
            best = EpochRecord(0, None, start.recall_at[1], start.recall_at.get(5, math.nan),
                               start.mean_average_precision, 0.0)
            history.append(best)
            best_state = self._trained_state()
            sha256 = self._save(best, baseline, history, trainable_count)
        for epoch in range(1, settings.epochs + 1):
            started = time.perf_counter()
            self._train_mode()
            losses: list[float] = []
            batches = class_balanced_batches(
                self.train_labels.tolist(), batch_size=settings.batch_size, per_class=settings.per_class,
                generator=generator,
            )
            bar = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch}/{settings.epochs}",
                       disable=not self.progress, leave=False)
            for indices in bar:
                if step >= total_steps:
                    break
                embeddings = step_batch(indices, generator)
                loss = self.loss(embeddings, self.train_labels[indices].to(self.device))
                optimizer.zero_grad(set_to_none=True)
                if loss.requires_grad:
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(trainable, settings.grad_clip)
                    optimizer.step()
                scheduler.step()
                step += 1
                losses.append(float(loss.detach()))
                bar.set_postfix(loss=f"{losses[-1]:.4f}")

            metrics = self._validate(embed_train, embed_val)
            record = EpochRecord(
                epoch=epoch,
                loss=float(np.mean(losses)) if losses else None,
                recall_at_1=metrics.recall_at[1],
                recall_at_5=metrics.recall_at.get(5, math.nan),
                mean_average_precision=metrics.mean_average_precision,
                seconds=round(time.perf_counter() - started, 2),
            )
            history.append(record)
            logger.info("epoch_finished", **asdict(record))
            if self.progress:
                loss_text = "n/a" if record.loss is None else f"{record.loss:.4f}"
                tqdm.write(f"epoch {epoch}: loss {loss_text}  val R@1 {record.recall_at_1:.4f}  "
                           f"mAP {record.mean_average_precision:.4f}  ({record.seconds:.1f} s)")
            if best is None or (record.mean_average_precision, record.recall_at_1) > (
                best.mean_average_precision, best.recall_at_1
            ):
                best = record
                best_state = self._trained_state()
                sha256 = self._save(best, baseline, history, trainable_count)
            if step >= total_steps:
                break

        assert best is not None and best_state is not None
        self._restore(best_state)
        # The card's history is that of the best epoch's save. Rewrite it with the whole run.
        sha256 = self._save(best, baseline, history, trainable_count)
        model.eval()
        logger.info("training_finished", checkpoint=str(self.out), sha256=sha256[:12], best_epoch=best.epoch,
                    recall_at_1=best.recall_at_1, map=best.mean_average_precision)
        return TrainResult(self.out, sha256, best.epoch, best, baseline, history, trainable_count, self.adapted)

    def _prepare_inputs(self, frozen: dict[str, list[torch.Tensor]]) -> tuple[Callable, Callable, Callable]:
        """Return the training step's forward function and the embedding functions for validation."""
        model = self.model
        device = self.device
        if self.settings.mode == "head":
            train_features = [tensor.to(device) for tensor in frozen["train"]]
            val_features = [tensor.to(device) for tensor in frozen["val"]]

            def step_batch(indices: np.ndarray, generator: np.random.Generator) -> torch.Tensor:
                index = torch.as_tensor(indices, device=device)
                return model.head([tensor[index] for tensor in train_features])

            return step_batch, lambda: train_features, lambda: val_features

        transforms = [Transform.for_branch(spec) for spec in model.specs]
        train_images = DecodedImages(self.data.train, transforms, progress=self.progress)
        val_images = DecodedImages(self.data.val, transforms, progress=self.progress)

        def step_batch(indices: np.ndarray, generator: np.random.Generator) -> torch.Tensor:
            flips = None
            if self.settings.augment:
                flips = torch.from_numpy(generator.random((len(indices), 2)) < 0.5)
            inputs = train_images.inputs(indices, device, flips=flips)
            with _autocast(device):
                features = model.branch_features(inputs)
            return model.head([feature.float() for feature in features])

        def features_of(images: DecodedImages) -> Callable[[], list[torch.Tensor]]:
            def compute() -> list[torch.Tensor]:
                with _autocast(device):
                    features = branch_features(
                        model, images, batch_size=self.eval_batch_size, device=device, progress=self.progress
                    )
                return [tensor.float().to(device) for tensor in features]

            return compute

        return step_batch, features_of(train_images), features_of(val_images)

    @torch.no_grad()
    def _validate(self, embed_train: Callable, embed_val: Callable) -> RetrievalMetrics:
        """Score the validation images as queries against the training images as the gallery."""
        model = self.model
        was_training = model.training
        model.eval()
        train_features, val_features = embed_train(), embed_val()
        metrics = self._score(model.head(train_features), model.head(val_features))
        model.train(was_training)
        return metrics

    def _score(self, gallery: torch.Tensor, queries: torch.Tensor) -> RetrievalMetrics:
        return retrieval_metrics(
            queries.cpu().numpy(), self.val_labels.tolist(), gallery.cpu().numpy(), self.train_labels.tolist()
        )

    def _train_mode(self) -> None:
        self.model.train()
        freeze_batch_norm(self.model.backbones)

    def _trained_state(self) -> dict[str, Any]:
        return {
            "head": copy.deepcopy(self.model.head.state_dict()),
            "adapters": [
                {key: value.clone() for key, value in adapter_state(backbone).items()}
                for backbone in self.model.backbones
            ],
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.head.load_state_dict(state["head"])
        with torch.no_grad():
            for backbone, adapters in zip(self.model.backbones, state["adapters"], strict=True):
                parameters = dict(backbone.named_parameters())
                for key, value in adapters.items():
                    parameters[key].copy_(value)

    def _save(self, best: EpochRecord, baseline: RetrievalMetrics, history: list[EpochRecord], trainable: int) -> str:
        self.model.to("cpu")
        try:
            return save_checkpoint(
                self.out,
                self.model,
                self.loaded.branches,
                profile=self.loaded.profile,
                lora=self.settings.lora if self.settings.mode == "lora" else None,
                extra_card={
                    "training": {**self.settings.as_card(), "trainable_parameters": trainable,
                                 "device": str(self.device)},
                    "data": self.data.summary,
                    "validation": {
                        "protocol": "validation images as queries against the training images as gallery",
                        "best_epoch": best.epoch,
                        "recall_at_1": best.recall_at_1,
                        "recall_at_5": best.recall_at_5,
                        "map": best.mean_average_precision,
                        "frozen_backbones": {
                            "recall_at_1": baseline.recall_at[1],
                            "map": baseline.mean_average_precision,
                        },
                        "history": [asdict(record) for record in history],
                    },
                },
            )
        finally:
            self.model.to(self.device)


def load_head_from(path: Path, head: FusionHead, loaded: LoadedModel) -> None:
    """Initialise `head` from the head of a head-only checkpoint trained on the same backbones.

    Training LoRA from a head fitted on frozen features (linear probing, then fine-tuning)
    needs far fewer steps than training adapters and a random head together.
    """
    checkpoint = read_checkpoint(path)
    check_card_matches(checkpoint, loaded.branches, loaded.profile)
    if checkpoint.card.get("lora") is not None:
        raise WeightsError(f"--init-head needs a head-only checkpoint, but {path} also contains LoRA adapters.")
    state = {key.removeprefix("head."): value for key, value in checkpoint.tensors.items() if key.startswith("head.")}
    expected = head.state_dict()
    if state.keys() != expected.keys() or any(state[key].shape != expected[key].shape for key in expected):
        raise WeightsError(
            f"The head in {path} does not match this run: its card lists {checkpoint.card.get('head')}, but this run "
            f"builds in_dims {list(head.in_dims)} and out_dim {head.out_dim}. Pass the same --out-dim."
        )
    head.load_state_dict(state, strict=True)
    logger.info("head_initialised", path=str(path), sha256=checkpoint.sha256[:12])


def _cosine_with_warmup(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _autocast(device: torch.device):
    # bf16 autocast only on CUDA: on the AVX2 build CPUs bf16 matrix products were far slower than fp32.
    from contextlib import nullcontext

    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()
