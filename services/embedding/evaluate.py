"""Retrieval evaluation of a model: queries against a labeled gallery, per class, with an ablation of the branches."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from services.embedding.dataset import LabeledImage, class_counts, scan_labeled_folder
from services.embedding.embedder import LoadedModel, resolve_device
from services.embedding.features import DecodedImages, branch_features
from services.embedding.metrics import retrieval_metrics
from services.embedding.model import concatenate_normalised
from services.embedding.preprocess import Transform

KS = (1, 5, 10)


@dataclass
class Variant:
    """One embedding of gallery and queries to score: the full model, or one branch alone."""

    name: str
    gallery: np.ndarray
    queries: np.ndarray


def score(
    variant: Variant, gallery_labels: Sequence[str], query_labels: Sequence[str], classes: Sequence[str]
) -> dict[str, Any]:
    """Return overall and per-class Recall@1/5/10 and mAP, and the 1-NN confusion matrix (rows: true class)."""
    overall = retrieval_metrics(variant.queries, query_labels, variant.gallery, gallery_labels, KS)
    per_class = {}
    query_array = np.asarray(query_labels)
    for label in classes:
        rows = np.flatnonzero(query_array == label)
        if len(rows) == 0:
            continue
        metrics = retrieval_metrics(variant.queries[rows], query_array[rows].tolist(), variant.gallery, gallery_labels, KS)
        per_class[label] = {
            "queries": len(rows),
            **{f"recall_at_{k}": value for k, value in metrics.recall_at.items()},
            "map": metrics.mean_average_precision,
        }
    nearest = np.argmax(variant.queries @ variant.gallery.T, axis=1)
    predicted = np.asarray(gallery_labels)[nearest]
    index = {label: position for position, label in enumerate(classes)}
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    for truth, guess in zip(query_labels, predicted, strict=True):
        confusion[index[truth], index[guess]] += 1
    return {
        "name": variant.name,
        "dim": int(variant.gallery.shape[1]),
        **{f"recall_at_{k}": value for k, value in overall.recall_at.items()},
        "map": overall.mean_average_precision,
        "queries": overall.queries,
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
    }


@torch.no_grad()
def embed_variants(
    loaded: LoadedModel,
    gallery: Sequence[LabeledImage],
    queries: Sequence[LabeledImage],
    *,
    ablation: bool,
    batch_size: int,
    device: str = "auto",
    progress: bool = True,
) -> list[Variant]:
    """Embed gallery and queries with the model, and with each branch alone when `ablation` is set.

    A single branch is scored on its own L2-normalised pooled features (after its LoRA
    adapters, when the checkpoint has them). With a trained head and several branches, the
    ablation also scores the per-branch normalised concatenation without the head.
    """
    model = loaded.model
    torch_device = resolve_device(device)
    model.to(torch_device).eval()
    transforms = [Transform.for_branch(spec) for spec in model.specs]
    features = {}
    for name, items in (("gallery", gallery), ("queries", queries)):
        decoded = DecodedImages(items, transforms, progress=progress)
        features[name] = branch_features(model, decoded, batch_size=batch_size, device=torch_device, progress=progress)

    def as_numpy(tensor: torch.Tensor) -> np.ndarray:
        return tensor.float().cpu().numpy()

    head_features = {
        name: model.embed_features([tensor.to(torch_device) for tensor in value]) for name, value in features.items()
    }
    if model.head is not None:
        model_name = "fused (trained head)" if len(model.specs) > 1 else "trained head"
    else:
        model_name = "concatenated (no head)" if len(model.specs) > 1 else model.specs[0].name
    variants = [Variant(model_name, as_numpy(head_features["gallery"]), as_numpy(head_features["queries"]))]
    if ablation:
        for index, spec in enumerate(model.specs):
            variants.append(Variant(
                f"{spec.name} only",
                as_numpy(concatenate_normalised([features["gallery"][index]])),
                as_numpy(concatenate_normalised([features["queries"][index]])),
            ))
        if model.head is not None and len(model.specs) > 1:
            variants.append(Variant(
                "concatenated (no head)",
                as_numpy(concatenate_normalised(features["gallery"])),
                as_numpy(concatenate_normalised(features["queries"])),
            ))
    return variants


def evaluate(
    loaded: LoadedModel,
    gallery_dir: Path,
    queries_dir: Path,
    *,
    ablation: bool = False,
    batch_size: int = 32,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate the loaded model on a gallery folder and a query folder and return the report."""
    gallery = scan_labeled_folder(gallery_dir)
    queries = scan_labeled_folder(queries_dir)
    classes = sorted({item.label for item in gallery} | {item.label for item in queries})
    variants = embed_variants(
        loaded, gallery, queries, ablation=ablation, batch_size=batch_size, device=device, progress=progress
    )
    gallery_labels = [item.label for item in gallery]
    query_labels = [item.label for item in queries]
    card = loaded.checkpoint.card if loaded.checkpoint is not None else None
    return {
        "model_version": loaded.version,
        "profile": loaded.profile,
        "checkpoint": str(loaded.checkpoint.path) if loaded.checkpoint is not None else None,
        "checkpoint_sha256": loaded.checkpoint.sha256 if loaded.checkpoint is not None else None,
        "trained_validation": card.get("validation") if card else None,
        "gallery": {"folder": str(gallery_dir), "counts": class_counts(gallery)},
        "queries": {"folder": str(queries_dir), "counts": class_counts(queries)},
        "classes": classes,
        "protocol": "each query ranks the whole gallery by cosine similarity; Recall@K: a same-class image "
                    "in the top K; mAP over the full ranking; confusion matrix of the nearest gallery image",
        "results": [score(variant, gallery_labels, query_labels, classes) for variant in variants],
    }


def format_report(report: dict[str, Any]) -> str:
    """Render the overall table and the per-class table of the first result as text."""
    lines = [f"model {report['model_version']} ({report['profile']})"]
    header = f"{'model':<28} {'R@1':>7} {'R@5':>7} {'R@10':>7} {'mAP':>7}"
    lines += [header, "-" * len(header)]
    for result in report["results"]:
        lines.append(
            f"{result['name']:<28} {result['recall_at_1']:>7.4f} {result['recall_at_5']:>7.4f} "
            f"{result['recall_at_10']:>7.4f} {result['map']:>7.4f}"
        )
    main = report["results"][0]
    lines += ["", f"per class ({main['name']})", f"{'class':<28} {'queries':>7} {'R@1':>7} {'R@5':>7} {'mAP':>7}"]
    for label, row in main["per_class"].items():
        lines.append(
            f"{label:<28} {row['queries']:>7} {row['recall_at_1']:>7.4f} {row['recall_at_5']:>7.4f} {row['map']:>7.4f}"
        )
    return "\n".join(lines)


def write_report(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write report.json and one confusion-matrix PNG per result into `out_dir`; return the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index, result in enumerate(report["results"]):
        path = out_dir / f"confusion-{index}-{_slug(result['name'])}.png"
        draw_confusion_matrix(result["confusion_matrix"], report["classes"], result["name"]).save(path)
        result["confusion_matrix_image"] = path.name
        written.append(path)
    report_path = out_dir / "report.json"
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    return [report_path, *written]


def draw_confusion_matrix(matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str) -> Image.Image:
    """Draw a confusion matrix (rows: true class, columns: nearest gallery image's class) as an image."""
    cell, label_width, top = 72, 170, 60
    size = len(classes)
    image = Image.new("RGB", (label_width + cell * size + 20, top + cell * size + 50), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((10, 10), f"{title}: rows true class, columns 1-NN class", fill="black", font=font)
    values = np.asarray(matrix, dtype=float)
    row_totals = values.sum(axis=1, keepdims=True)
    shares = np.divide(values, row_totals, out=np.zeros_like(values), where=row_totals > 0)
    for row in range(size):
        draw.text((10, top + row * cell + cell // 2 - 6), classes[row][:24], fill="black", font=font)
        for column in range(size):
            shade = int(255 * (1 - shares[row, column]))
            x, y = label_width + column * cell, top + row * cell
            draw.rectangle([x, y, x + cell - 2, y + cell - 2], fill=(shade, shade, 255))
            text_colour = "white" if shares[row, column] > 0.5 else "black"
            draw.text((x + 8, y + cell // 2 - 6), str(int(values[row, column])), fill=text_colour, font=font)
    for column in range(size):
        draw.text((label_width + column * cell + 4, top + size * cell + 8 + 14 * (column % 2)),
                  classes[column][:12], fill="black", font=font)
    return image


def _slug(name: str) -> str:
    return "".join(character if character.isalnum() else "-" for character in name.lower()).strip("-")
