"""Check that LoRA training of the `dinov2-gastronet` profile runs on this machine, and measure it.

The backbones are randomly initialised, so no weight file is needed and the loss does not measure
quality. The script trains LoRA adapters and the fusion head with the semi-hard triplet
loss for --steps steps on real images and prints one JSON object: images per second (after
--warmup-steps), peak memory, and the first and last losses.

    python scripts/gpu_lora_check.py --images ../shared/data/hyperkvasir-lower-gi --steps 300
    python scripts/gpu_lora_check.py --images DIR --steps 3 --device cpu --tiny   # a CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from services.embedding.dataset import scan_labeled_folder, stratified_split  # noqa: E402
from services.embedding.embedder import load_model, resolve_device  # noqa: E402
from services.embedding.features import DecodedImages  # noqa: E402
from services.embedding.head import FusionHead  # noqa: E402
from services.embedding.lora import LoraSettings, add_lora  # noqa: E402
from services.embedding.losses import MetricLoss, class_balanced_batches  # noqa: E402
from services.embedding.model import EmbeddingModel, create_backbone  # noqa: E402
from services.embedding.preprocess import Transform  # noqa: E402
from services.embedding.profiles import PROFILES, BranchSpec  # noqa: E402
from services.embedding.train import freeze_batch_norm, seed_everything  # noqa: E402
from services.logs import configure_logging  # noqa: E402
from services.settings import ModelSettings  # noqa: E402

TINY_VIT = {"depth": 2, "embed_dim": 64, "num_heads": 2}


def tiny_spec(spec: BranchSpec) -> BranchSpec:
    """Shrink a ViT branch to depth 2, width 64 and 56 or 64 pixels, keeping its architecture family."""
    patch = 14 if "patch14" in spec.architecture else 16
    size = patch * 4
    return BranchSpec(**{**spec.__dict__, "input_size": size, "feature_dim": 64,
                         "create_kwargs": {**spec.create_kwargs, **TINY_VIT, "img_size": size}})


def build_model(tiny: bool) -> EmbeddingModel:
    if not tiny:
        loaded = load_model(ModelSettings(profile="dinov2-gastronet", random_weights=True))
        return loaded.model
    specs = [tiny_spec(spec) for spec in PROFILES["dinov2-gastronet"]]
    return EmbeddingModel(specs, [create_backbone(spec) for spec in specs])


def peak_memory(device: torch.device) -> dict[str, float]:
    memory = {"host_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.type == "cuda":
        memory["cuda_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        memory["cuda_peak_reserved_mib"] = round(torch.cuda.max_memory_reserved(device) / 2**20, 1)
    return memory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "hyperkvasir-lower-gi",
                        help="folder with one subfolder of images per class")
    parser.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="steps left out of the throughput (default: 10, or 1 when --steps is below 20)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--max-images", type=int, default=None, help="use at most this many images (a stratified sample)")
    parser.add_argument("--tiny", action="store_true", help="depth-2, width-64 ViTs instead of ViT-S, for CPU runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-level", default=None, help="log level on stderr (default: WARNING)")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)

    device = resolve_device(args.device)
    seed_everything(args.seed)
    items = scan_labeled_folder(args.images, min_per_class=2)
    if args.max_images is not None and args.max_images < len(items):
        items, _ = stratified_split(items, 1 - args.max_images / len(items), args.seed)

    model = build_model(args.tiny)
    adapted = {spec.name: len(add_lora(backbone, spec, LoraSettings()))
               for spec, backbone in zip(model.specs, model.backbones, strict=True)}
    model.head = FusionHead([spec.feature_dim for spec in model.specs])
    model.to(device)
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps)
    loss_function = MetricLoss("triplet")

    started = time.perf_counter()
    images = DecodedImages(items, [Transform.for_branch(spec) for spec in model.specs])
    decode_seconds = time.perf_counter() - started
    classes = sorted({item.label for item in items})
    labels = torch.tensor([classes.index(item.label) for item in items])
    generator = np.random.default_rng(args.seed)

    if args.warmup_steps is not None:
        warmup = args.warmup_steps
    elif args.steps >= 20:
        warmup = 10
    else:
        warmup = 1
    warmup = min(warmup, max(0, args.steps - 1))
    model.train()
    freeze_batch_norm(model.backbones)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    losses: list[float] = []
    timed_images = 0
    timed_from = time.perf_counter()
    step = 0
    while step < args.steps:
        for indices in class_balanced_batches(labels.tolist(), batch_size=args.batch_size, per_class=4,
                                              generator=generator):
            if step == warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                timed_from, timed_images = time.perf_counter(), 0
            flips = torch.from_numpy(generator.random((len(indices), 2)) < 0.5)
            inputs = images.inputs(indices, device, flips=flips)
            with autocast:
                features = model.branch_features(inputs)
            embeddings = model.head([feature.float() for feature in features])
            loss = loss_function(embeddings, labels[indices].to(device))
            optimizer.zero_grad(set_to_none=True)
            if loss.requires_grad:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, 2.0)
                optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            timed_images += len(indices)
            step += 1
            if step >= args.steps:
                break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - timed_from

    report = {
        "profile": "dinov2-gastronet (tiny ViTs)" if args.tiny else "dinov2-gastronet",
        "weights": "random",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "images": len(items),
        "decode_seconds": round(decode_seconds, 2),
        "steps": step,
        "timed_steps": step - warmup,
        "batch_size": args.batch_size,
        "images_per_second": round(timed_images / elapsed, 2) if elapsed > 0 else None,
        "adapted_modules": adapted,
        "trainable_parameters": sum(parameter.numel() for parameter in trainable),
        "first_loss": losses[0],
        "last_loss": losses[-1],
        **peak_memory(device),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
