"""Measure the latency of GET /v1/procedures/{id}/coverage for one procedure of many real images.

The script builds a reference gallery and one procedure from a labeled folder (one subfolder
per landmark code), embeds everything with the configured model, serves the API with uvicorn
on 127.0.0.1, and times sequential coverage requests over HTTP. It prints one JSON object.

    python bench/coverage_latency.py --images ../shared/data/hyperkvasir-lower-gi
    python bench/coverage_latency.py --database-url postgresql://postgres@127.0.0.1:5432/EMPTY_DB
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import socket
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import uvicorn

from services.api.app import create_app
from services.catalog import migrate
from services.catalog.keys import issue_api_key
from services.catalog.models import ProcedureKind
from services.catalog.queries import get_or_create_procedure, get_or_create_site
from services.db import unit_of_work
from services.ingest.dispatch import InProcessQueue, run_embedding
from services.ingest.service import LabeledFile, UploadedFile, add_images, add_references
from services.runtime import Runtime
from services.settings import ModelSettings, Settings

LANDMARK_SET = "hyperkvasir-lower-gi"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=Path("../shared/data/hyperkvasir-lower-gi"),
                        help="labeled folder: one subfolder of JPEG files per landmark code")
    parser.add_argument("--procedure-images", type=int, default=200, help="images in the timed procedure")
    parser.add_argument("--references-per-class", type=int, default=20, help="gallery images per class")
    parser.add_argument("--requests", type=int, default=300, help="timed coverage requests")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests first")
    parser.add_argument("--database-url", default=None,
                        help="an empty PostgreSQL database to use; unset: SQLite in a temporary folder")
    return parser.parse_args()


def class_files(images: Path) -> dict[str, list[Path]]:
    folders = sorted(path for path in images.iterdir() if path.is_dir())
    if not folders:
        raise SystemExit(f"no class folders under {images}: pass --images DIR with one folder per landmark code")
    return {folder.name: sorted(folder.glob("*.jpg")) for folder in folders}


def build_procedure(runtime: Runtime, files: dict[str, list[Path]], args: argparse.Namespace) -> tuple[str, str]:
    """Store the gallery and one procedure, embed its images, and return (procedure id, site key)."""
    references = [
        LabeledFile(label, UploadedFile(path.name, path.read_bytes()))
        for label, paths in files.items()
        for path in paths[: args.references_per_class]
    ]
    # Deal the remaining files of all classes in turn, so the procedure mixes every class.
    remaining = [paths[args.references_per_class :] for paths in files.values()]
    dealt = [path for group in itertools.zip_longest(*remaining) for path in group if path is not None]
    chosen = dealt[: args.procedure_images]
    if len(chosen) < args.procedure_images:
        raise SystemExit(f"only {len(chosen)} images left after the gallery; lower --procedure-images")

    with unit_of_work(runtime.sessions) as session:
        add_references(session, runtime, None, references)
        site = get_or_create_site(session, "bench-site")
        _, secret = issue_api_key(session, site, "benchmark")
        procedure, _ = get_or_create_procedure(
            session, site, "BENCH-1", ProcedureKind.COLONOSCOPY, LANDMARK_SET, datetime.now(UTC)
        )
        outcomes = add_images(
            session, runtime, procedure.id, [UploadedFile(path.name, path.read_bytes()) for path in chosen]
        )
        procedure_id = procedure.id
    run_embedding(runtime, [outcome.image_id for outcome in outcomes])
    return str(procedure_id), secret


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))
    return ordered[index]


def main() -> None:
    args = parse_args()
    files = class_files(args.images)
    with tempfile.TemporaryDirectory(prefix="endodoc-bench-") as folder:
        settings = Settings(
            data_dir=Path(folder),
            database_url=args.database_url,
            qdrant_url=None,
            broker_url=None,
            model=ModelSettings(profile="lite"),
        )
        migrate.upgrade(settings.resolved_database_url)
        runtime = Runtime(settings)
        queue = InProcessQueue(runtime)
        procedure_id, secret = build_procedure(runtime, files, args)

        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(create_app(settings, runtime=runtime, queue=queue), host="127.0.0.1", port=port,
                           log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)

        url = f"http://127.0.0.1:{port}/v1/procedures/{procedure_id}/coverage"
        timings_ms = []
        with httpx.Client(headers={"Authorization": f"Bearer {secret}"}, timeout=30) as client:
            for index in range(args.warmup + args.requests):
                start = time.perf_counter()
                response = client.get(url)
                elapsed = (time.perf_counter() - start) * 1000
                response.raise_for_status()
                if index >= args.warmup:
                    timings_ms.append(elapsed)
            body = response.json()

        server.should_exit = True
        thread.join(timeout=30)
        queue.close()
        runtime.close()

    print(json.dumps({
        "database": "postgresql" if args.database_url else "sqlite",
        "procedure_images": sum(body["images"].values()),
        "image_status": body["images"],
        "requests": len(timings_ms),
        "p50_ms": round(statistics.median(timings_ms), 2),
        "p95_ms": round(percentile(timings_ms, 0.95), 2),
        "mean_ms": round(statistics.fmean(timings_ms), 2),
        "max_ms": round(max(timings_ms), 2),
        "model_version": body["model_version"],
        "python": platform.python_version(),
    }, indent=2))


if __name__ == "__main__":
    main()
