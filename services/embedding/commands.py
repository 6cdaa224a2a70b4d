"""The `endodoc train` and `endodoc evaluate` commands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from services.embedding.dataset import DatasetError
from services.embedding.errors import WeightsError
from services.embedding.lora import LoraSettings
from services.embedding.losses import LOSS_NAMES
from services.settings import Settings


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register `train` and `evaluate` on the `endodoc` subcommand parser."""
    train = commands.add_parser(
        "train",
        help="train the fusion head (and LoRA adapters) by metric learning on labeled images",
        description="Train on DIR/<class>/<image> folders. The profile and backbone weights come from "
        "ENDODOC_MODEL__* settings; the checkpoint is a .safetensors file with a .json card beside it.",
    )
    train.add_argument("--images", required=True, type=Path, help="training folder, one subfolder per class")
    train.add_argument("--out", required=True, type=Path, help="checkpoint file to write (.safetensors)")
    train.add_argument("--val-images", type=Path, help="validation folder; unset: a stratified split of --images")
    train.add_argument("--val-fraction", type=float, default=0.2, help="share of each class held out (default 0.2)")
    train.add_argument("--mode", choices=("head", "lora"), default="head",
                       help="head: frozen backbones, cached features; lora: LoRA adapters plus head (default head)")
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--batch-size", type=int, default=32, help="images per training batch (default 32)")
    train.add_argument("--per-class", type=int, default=4, help="minimum images per class in a batch (default 4)")
    train.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default 1e-4)")
    train.add_argument("--weight-decay", type=float, default=1e-4)
    train.add_argument("--grad-clip", type=float, default=2.0, help="maximum gradient norm (default 2.0)")
    train.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps before the cosine decay")
    train.add_argument("--loss", choices=LOSS_NAMES, default="triplet", help="metric-learning loss (default triplet)")
    train.add_argument("--margin", type=float, default=0.2, help="triplet margin on cosine distance (default 0.2)")
    train.add_argument("--mining", choices=("semihard", "hard", "all"), default="semihard",
                       help="triplets the miner keeps (default semihard)")
    train.add_argument("--out-dim", type=int, default=512, help="embedding size of the fusion head (default 512)")
    train.add_argument("--lora-r", type=int, default=8)
    train.add_argument("--lora-alpha", type=float, default=16.0)
    train.add_argument("--lora-dropout", type=float, default=0.05)
    train.add_argument("--lora-targets", action="append", default=[], metavar="BRANCH=NAME,NAME",
                       help="module names to adapt in one branch, e.g. dinov2=qkv,proj (default: per branch)")
    train.add_argument("--init-head", type=Path, metavar="CHECKPOINT",
                       help="start the head from a head-only checkpoint of the same profile (useful with --mode lora)")
    train.add_argument("--max-steps", type=int, help="stop after this many optimiser steps in total")
    train.add_argument("--no-augment", action="store_true", help="no random flips in LoRA training")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: ENDODOC_MODEL__DEVICE)")
    train.add_argument("--cache", type=Path, help="folder for cached backbone features (head mode)")
    train.add_argument("--eval-batch-size", type=int, default=64, help="images per forward pass when validating")
    train.add_argument("--no-progress", action="store_true", help="hide progress bars")
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser(
        "evaluate",
        help="score retrieval of query images against a gallery: Recall@1/5/10, mAP, per class",
    )
    evaluate.add_argument("--gallery", required=True, type=Path, help="gallery folder, one subfolder per class")
    evaluate.add_argument("--queries", required=True, type=Path, help="query folder, one subfolder per class")
    evaluate.add_argument("--checkpoint", type=Path, help="trained checkpoint (default: ENDODOC_MODEL__CHECKPOINT)")
    evaluate.add_argument("--no-checkpoint", action="store_true", help="evaluate the untrained backbones")
    evaluate.add_argument("--ablation", action="store_true", help="also score each branch alone")
    evaluate.add_argument("--out", type=Path, help="folder for report.json and the confusion-matrix images")
    evaluate.add_argument("--json", action="store_true", help="print the JSON report instead of tables")
    evaluate.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: ENDODOC_MODEL__DEVICE)")
    evaluate.add_argument("--no-progress", action="store_true", help="hide progress bars")
    evaluate.set_defaults(handler=cmd_evaluate)


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from services.embedding.embedder import load_model
    from services.embedding.train import Trainer, TrainSettings, prepare_data

    try:
        train_settings = TrainSettings(
            mode=args.mode, epochs=args.epochs, batch_size=args.batch_size, per_class=args.per_class, lr=args.lr,
            weight_decay=args.weight_decay, grad_clip=args.grad_clip, warmup_steps=args.warmup_steps,
            loss=args.loss, margin=args.margin, mining=args.mining, out_dim=args.out_dim, seed=args.seed,
            val_fraction=args.val_fraction, augment=not args.no_augment,
            lora=LoraSettings(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
                              targets=parse_lora_targets(args.lora_targets)),
        )
        if args.out.suffix != ".safetensors":
            raise ValueError(f"--out must name a .safetensors file, got {str(args.out)!r}.")
        data = prepare_data(args.images, val_images=args.val_images, val_fraction=args.val_fraction, seed=args.seed)
        if settings.model.checkpoint is not None:
            print(f"endodoc: note: training starts from the backbones; ENDODOC_MODEL__CHECKPOINT "
                  f"({settings.model.checkpoint}) is not used", file=sys.stderr)
        loaded = load_model(settings.model.model_copy(update={"checkpoint": None}))
        result = Trainer(
            loaded, data, train_settings, out=args.out, device=args.device or settings.model.device,
            cache_dir=args.cache, eval_batch_size=args.eval_batch_size, progress=not args.no_progress,
            max_steps=args.max_steps, init_head=args.init_head,
        ).run()
    except (DatasetError, WeightsError, ValueError) as error:
        print(f"endodoc: error: {error}", file=sys.stderr)
        return 2
    print(f"checkpoint {result.checkpoint} (sha256 {result.sha256[:12]}), best epoch {result.best_epoch}: "
          f"validation R@1 {result.best.recall_at_1:.4f}, mAP {result.best.mean_average_precision:.4f} "
          f"(frozen backbones: R@1 {result.baseline.recall_at[1]:.4f}, mAP {result.baseline.mean_average_precision:.4f})")
    return 0


def cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from services.embedding.embedder import load_model
    from services.embedding.evaluate import evaluate, format_report, write_report

    checkpoint = None if args.no_checkpoint else (args.checkpoint or settings.model.checkpoint)
    try:
        loaded = load_model(settings.model.model_copy(update={"checkpoint": checkpoint}))
        report = evaluate(
            loaded, args.gallery, args.queries, ablation=args.ablation, batch_size=settings.model.batch_size,
            device=args.device or settings.model.device, progress=not args.no_progress,
        )
    except (DatasetError, WeightsError) as error:
        print(f"endodoc: error: {error}", file=sys.stderr)
        return 2
    if args.out is not None:
        written = write_report(report, args.out)
        print(f"wrote {', '.join(str(path) for path in written)}", file=sys.stderr)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def parse_lora_targets(values: list[str]) -> dict[str, tuple[str, ...]]:
    """Parse `BRANCH=NAME,NAME` options into a mapping of branch name to module names."""
    targets = {}
    for value in values:
        branch, separator, names = value.partition("=")
        modules = tuple(name.strip() for name in names.split(",") if name.strip())
        if not separator or not branch or not modules:
            raise ValueError(f"--lora-targets expects BRANCH=NAME[,NAME...], got {value!r}.")
        targets[branch.strip()] = modules
    return targets
