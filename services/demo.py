"""The demo: build a gallery and procedures from a labeled image folder and report coverage."""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from sqlalchemy import select
from tqdm import tqdm

from services.catalog.models import Prediction, Procedure, ProcedureKind, Site
from services.catalog.queries import CatalogError, get_or_create_procedure, get_or_create_site
from services.coverage.landmarks import LandmarkSet, landmark_sets
from services.coverage.report import procedure_coverage
from services.db import unit_of_work
from services.embedding.metrics import retrieval_metrics
from services.ingest.service import LabeledFile, UploadedFile, add_images, add_references, embed_images
from services.runtime import Runtime
from services.vectors import collection_name

logger = structlog.get_logger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff"}


@dataclass(frozen=True)
class LabeledPath:
    label: str
    path: Path


def scan_class_folders(root: Path) -> list[LabeledPath]:
    """List the images of `root`, one subfolder per class, labeled by the folder name."""
    if not root.is_dir():
        raise CatalogError(f"image folder {str(root)!r} does not exist: pass a folder with one subfolder per class")
    items = [
        LabeledPath(label=folder.name, path=path)
        for folder in sorted(root.iterdir())
        if folder.is_dir()
        for path in sorted(folder.iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    ]
    if not items:
        raise CatalogError(f"no images found in class subfolders of {str(root)!r}: expected DIR/<class>/<image>.jpg")
    return items


def stratified_split(
    items: Sequence[LabeledPath], reference_fraction: float, seed: int
) -> tuple[list[LabeledPath], list[LabeledPath]]:
    """Split each class with a seeded shuffle into references and queries, keeping at least one of each."""
    by_label: dict[str, list[LabeledPath]] = {}
    for item in items:
        by_label.setdefault(item.label, []).append(item)
    generator = random.Random(seed)
    references, queries = [], []
    for label in sorted(by_label):
        members = list(by_label[label])
        if len(members) < 2:
            raise CatalogError(f"class {label!r} has {len(members)} image: the split needs at least 2 per class")
        generator.shuffle(members)
        cut = min(max(round(len(members) * reference_fraction), 1), len(members) - 1)
        references.extend(members[:cut])
        queries.extend(members[cut:])
    return references, queries


def matching_landmark_set(labels: set[str]) -> LandmarkSet:
    """Return the landmark set whose codes include every class label."""
    for landmark_set in landmark_sets().values():
        if labels <= {landmark.code for landmark in landmark_set.landmarks}:
            return landmark_set
    raise CatalogError(
        f"no landmark set contains all class folders {sorted(labels)}: name the folders after the landmark "
        f"codes of one set, for example {[landmark.code for landmark in landmark_sets()['hyperkvasir-lower-gi'].landmarks]}"
    )


def assign_procedures(
    queries: Sequence[LabeledPath], required: set[str], procedures: int, without_required: int, seed: int
) -> list[list[LabeledPath]]:
    """Deal query images into procedures; the last `without_required` get no required-landmark image."""
    if procedures < 1 or not 0 <= without_required < procedures:
        raise CatalogError(
            f"invalid procedure counts: {procedures} procedures with {without_required} lacking the required "
            "landmarks; need at least one procedure that can have them"
        )
    shuffled = list(queries)
    random.Random(seed).shuffle(shuffled)
    dealt: list[list[LabeledPath]] = [[] for _ in range(procedures)]
    with_required = procedures - without_required
    required_count = other_count = 0
    for item in shuffled:
        if item.label in required:
            dealt[required_count % with_required].append(item)
            required_count += 1
        else:
            dealt[other_count % procedures].append(item)
            other_count += 1
    return dealt


def _read(item: LabeledPath) -> UploadedFile:
    return UploadedFile(filename=item.path.name, data=item.path.read_bytes())


def run_demo(
    runtime: Runtime,
    images_dir: Path,
    *,
    seed: int = 0,
    reference_fraction: float = 0.5,
    procedures: int = 6,
    without_required: int = 2,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Run the whole embedded path on a labeled folder and return the report as a dict."""
    items = scan_class_folders(images_dir)
    landmark_set = matching_landmark_set({item.label for item in items})
    required = {landmark.code for landmark in landmark_set.required}
    references, queries = stratified_split(items, reference_fraction, seed)
    dealt = assign_procedures(queries, required, procedures, without_required, seed)
    run_id = uuid.uuid4().hex[:8]
    logger.info("demo_started", run_id=run_id, references=len(references), queries=len(queries))

    with unit_of_work(runtime.sessions) as session:
        site = get_or_create_site(session, f"demo-{run_id}", name=f"endodoc demo {run_id}")
        with tqdm(total=len(references), desc="Embedding references", unit="img", disable=not show_progress) as bar:
            reference_rows = add_references(
                session, runtime, site, [LabeledFile(item.label, _read(item)) for item in references], bar.update
            )
        site_id = site.id

    procedure_ids = []
    image_labels: dict[uuid.UUID, str] = {}
    performed_at = datetime.now(UTC)
    with tqdm(total=len(queries), desc="Ingesting procedures", unit="img", disable=not show_progress) as bar:
        for index, members in enumerate(dealt):
            with unit_of_work(runtime.sessions) as session:
                site = session.get_one(Site, site_id)
                procedure, _ = get_or_create_procedure(
                    session,
                    site,
                    external_id=f"demo-{run_id}-{index + 1:02d}",
                    kind=ProcedureKind(landmark_set.procedure_kind),
                    landmark_set=landmark_set.code,
                    performed_at=performed_at - timedelta(hours=index),
                )
                outcomes = add_images(session, runtime, procedure.id, [_read(item) for item in members])
                procedure_ids.append(procedure.id)
                for outcome, item in zip(outcomes, members, strict=True):
                    image_labels[outcome.image_id] = item.label
            # The images are committed before embedding, as on the queued path.
            with unit_of_work(runtime.sessions) as session:
                embed_images(session, runtime, [outcome.image_id for outcome in outcomes], bar.update)

    model_version = runtime.model_version
    min_score = runtime.settings.coverage.min_score
    report_procedures = []
    with unit_of_work(runtime.sessions) as session:
        for procedure_id in procedure_ids:
            procedure = session.get_one(Procedure, procedure_id)
            report = procedure_coverage(session, procedure, model_version, min_score)
            report_procedures.append(
                {
                    "id": report.procedure_id,
                    "external_id": report.external_id,
                    "coverage": report.coverage,
                    "landmarks": [landmark.__dict__ for landmark in report.landmarks],
                    "observed": [observed.__dict__ for observed in report.observed],
                    "images": report.images,
                    "true_labels": sorted({image_labels[image.id] for image in procedure.images}),
                }
            )
        predicted = dict(
            session.execute(
                select(Prediction.image_id, Prediction.landmark_code).where(
                    Prediction.image_id.in_(list(image_labels)), Prediction.model_version == model_version
                )
            ).all()
        )

    correct = sum(1 for image_id, label in image_labels.items() if predicted.get(image_id) == label)
    accuracy = correct / len(image_labels)
    metrics = _query_metrics(runtime, model_version, image_labels, {row.id: row.label for row in reference_rows})
    result = {
        "site": f"demo-{run_id}",
        "model_version": model_version,
        "landmark_set": landmark_set.code,
        "references": len(references),
        "queries": len(queries),
        "procedures": report_procedures,
        "accuracy": round(accuracy, 4),
        "recall_at_1": round(metrics.recall_at[1], 4),
        "recall_at_5": round(metrics.recall_at[5], 4),
        "recall_at_10": round(metrics.recall_at[10], 4),
        "map": round(metrics.mean_average_precision, 4),
    }
    logger.info("demo_finished", run_id=run_id, accuracy=accuracy, recall_at_1=metrics.recall_at[1])
    return result


def _query_metrics(
    runtime: Runtime, model_version: str, query_labels: dict[uuid.UUID, str], reference_labels: dict[uuid.UUID, str]
):
    """Score the stored query vectors against the stored reference vectors."""
    queries = runtime.vectors.retrieve(collection_name("images", model_version), list(query_labels))
    gallery = runtime.vectors.retrieve(collection_name("references", model_version), list(reference_labels))
    return retrieval_metrics(
        np.stack([point.vector for point in queries]),
        [query_labels[point.id] for point in queries],
        np.stack([point.vector for point in gallery]),
        [reference_labels[point.id] for point in gallery],
    )


def format_report(result: dict[str, Any]) -> str:
    """Render the demo result as a plain-text report."""
    lines = [
        f"endodoc demo: site {result['site']}, model {result['model_version']}, landmark set {result['landmark_set']}",
        f"{result['references']} reference images, {result['queries']} query images in {len(result['procedures'])} procedures",
        "",
    ]
    for procedure in result["procedures"]:
        lines.append(f"Procedure {procedure['external_id']} ({procedure['id']}): coverage {procedure['coverage']:.0%}")
        for landmark in procedure["landmarks"]:
            if landmark["status"] == "documented":
                lines.append(
                    f"  {landmark['code']:<28} documented by image {landmark['image_id']} (score {landmark['score']:.2f})"
                )
            else:
                lines.append(f"  {landmark['code']:<28} {landmark['status'].upper()}")
        observed = ", ".join(f"{item['code']} x{item['count']}" for item in procedure["observed"] if item["count"])
        lines.append(f"  observed: {observed or 'none'}")
        counts = ", ".join(f"{count} {status}" for status, count in procedure["images"].items())
        lines.append(f"  images: {counts}; true classes: {', '.join(procedure['true_labels'])}")
        lines.append("")
    lines.append(f"Labelling accuracy (k-NN label against the folder label): {result['accuracy']:.4f}")
    lines.append(
        f"Retrieval of queries against references: Recall@1 {result['recall_at_1']:.4f}, "
        f"Recall@5 {result['recall_at_5']:.4f}, Recall@10 {result['recall_at_10']:.4f}, mAP {result['map']:.4f}"
    )
    lines.append(
        "Recall@K: a reference of the query's class among its K nearest. mAP: mean average precision over "
        "the whole reference ranking, so it also rewards ranking every same-class reference first."
    )
    return "\n".join(lines)
