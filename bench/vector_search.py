"""Measure vector search on realistic 512-d embeddings: build time, p50/p99 latency and recall@10.

Uniform random vectors are a poor stand-in for image embeddings: they have no neighbourhood
structure, so HNSW recall measured on them does not predict recall on real embeddings. This
script embeds a few hundred real images with the `lite` model and projects the 1280-d
vectors to 512 dims with a fixed seeded random orthogonal matrix. It grows them into 10k and
100k points by mixing each image with one of its nearest images and adding small Gaussian
noise. Every point gets
a `site_id` payload (one of 20 sites) and the `label` of its source image.

The default noise levels (0.015 and 0.03 per coordinate) put a query's nearest stored point
at a median cosine of about 0.90 and 0.70 among 20k points. The 400 real HyperKvasir images
themselves have nearest-neighbour cosines of 0.77 to 0.95 (10th to 90th percentile), so
0.03 is the harder, sparser case. Noise of 0.3 makes the points nearly uniform random.

For each size it times qdrant-edge through EdgeVectorIndex (upsert, then `optimize` to
build the HNSW index), exact search in NumPy, and, at 10k only, qdrant-client's local mode,
which takes minutes beyond that. Recall@10 is measured against the exact NumPy top 10 of the
same query and filter. It prints a table and writes JSON.

    python bench/vector_search.py --images ../shared/data --out /tmp/vector_search.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from qdrant_client import QdrantClient

from services.embedding import load_embedder
from services.embedding.images import open_image
from services.settings import ModelSettings
from services.vectors.base import PayloadFilter, VectorIndex, VectorPoint
from services.vectors.edge import EdgeVectorIndex
from services.vectors.server import QdrantServerIndex

DIM = 512
SITES = 20
TOP_K = 10
COLLECTION = "bench"
MAX_IMAGE_PIXELS = 50_000_000
# Sizes above this skip qdrant-client's local mode, which scans every point per query: at
# 10,000 points it took 9 s to upsert and about 90 ms per filtered query on 2 cores.
LOCAL_MODE_MAX_POINTS = 10_000


@dataclass
class Dataset:
    """Unit-length points with their payloads, and queries drawn the same way but not stored."""

    vectors: np.ndarray
    sites: np.ndarray
    labels: list[str]
    queries: np.ndarray
    query_sites: np.ndarray
    noise: float


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=Path("../shared/data"),
                        help="folder searched recursively for JPEG files to embed as cluster centres")
    parser.add_argument("--base-images", type=int, default=400, help="real images to embed")
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated collection sizes in points")
    parser.add_argument("--queries", type=int, default=300, help="timed queries per size and filter mode")
    parser.add_argument("--local-mode-queries", type=int, default=50,
                        help="timed queries per filter mode for qdrant-client's local mode")
    parser.add_argument("--hnsw-ef", default="64,128,256",
                        help="comma-separated qdrant-edge hnsw_ef values to measure")
    parser.add_argument("--noise", default="0.015,0.03",
                        help="comma-separated standard deviations of the Gaussian noise added to each "
                             "coordinate, one dataset per value")
    parser.add_argument("--seed", type=int, default=0, help="seed of the projection, mixing, noise and sites")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON to this file")
    return parser.parse_args()


def embed_base_images(images: Path, count: int) -> tuple[np.ndarray, list[str]]:
    """Embed `count` JPEG files spread evenly over the sorted files under `images` with the `lite` model."""
    files = sorted(images.rglob("*.jpg"))
    if len(files) < count:
        raise SystemExit(f"found {len(files)} JPEG files under {images}, need {count}: pass --images or --base-images")
    # Take every n-th file so each class folder contributes.
    picked = [files[int(i * len(files) / count)] for i in range(count)]
    embedder = load_embedder(ModelSettings(profile="lite"))
    decoded = [
        open_image(path.read_bytes(), max_pixels=MAX_IMAGE_PIXELS, draft_size=embedder.input_size) for path in picked
    ]
    labels = [path.parent.name for path in picked]
    return embedder.embed(decoded), labels


def project(embeddings: np.ndarray, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Map rows to `dim` dims with a random orthogonal matrix and scale them to unit length."""
    gaussian = rng.standard_normal((embeddings.shape[1], dim))
    orthonormal, _ = np.linalg.qr(gaussian)
    projected = embeddings @ orthonormal
    return normalise(projected.astype(np.float32))


def normalise(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def grow(base: np.ndarray, count: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw `count` unit points, each a random mix of a base row and one of its 5 nearest rows plus noise.

    Returns the points and the index of the base row each one started from.
    """
    similarity = base @ base.T
    np.fill_diagonal(similarity, -np.inf)
    neighbours = np.argsort(-similarity, axis=1)[:, :5]
    origin = rng.integers(0, len(base), count)
    partner = neighbours[origin, rng.integers(0, neighbours.shape[1], count)]
    weight = rng.uniform(0.0, 0.5, (count, 1)).astype(np.float32)
    mixed = (1 - weight) * base[origin] + weight * base[partner]
    mixed += noise * rng.standard_normal(mixed.shape).astype(np.float32)
    return normalise(mixed), origin


def make_dataset(
    base: np.ndarray, base_labels: list[str], size: int, queries: int, noise: float, seed: int
) -> Dataset:
    rng = np.random.default_rng(seed)
    vectors, origin = grow(base, size, noise, rng)
    query_vectors, _ = grow(base, queries, noise, rng)
    return Dataset(
        vectors=vectors,
        sites=rng.integers(0, SITES, size),
        labels=[base_labels[i] for i in origin],
        queries=query_vectors,
        query_sites=rng.integers(0, SITES, queries),
        noise=noise,
    )


def site_name(site: int) -> str:
    return f"site-{site:02d}"


def exact_top_k(data: Dataset, filtered: bool) -> tuple[list[list[int]], list[float]]:
    """Return the exact top-k row numbers per query and the time of each search in ms."""
    rows_by_site = {site: np.flatnonzero(data.sites == site) for site in range(SITES)}
    results, times = [], []
    for query, site in zip(data.queries, data.query_sites, strict=True):
        started = time.perf_counter()
        if filtered:
            rows = rows_by_site[int(site)]
            scores = data.vectors[rows] @ query
        else:
            rows = None
            scores = data.vectors @ query
        top = np.argpartition(-scores, TOP_K)[:TOP_K]
        top = top[np.argsort(-scores[top])]
        found = rows[top] if rows is not None else top
        times.append((time.perf_counter() - started) * 1000)
        results.append([int(row) for row in found])
    return results, times


def point_id(row: int) -> uuid.UUID:
    return uuid.UUID(int=row + 1)


def build_points(data: Dataset) -> list[VectorPoint]:
    return [
        VectorPoint(id=point_id(row), vector=data.vectors[row],
                    payload={"site_id": site_name(int(data.sites[row])), "label": data.labels[row]})
        for row in range(len(data.vectors))
    ]


def timed_searches(
    index: VectorIndex, data: Dataset, filtered: bool, count: int
) -> tuple[list[list[int]], list[float]]:
    """Run `count` top-k searches one at a time and return the found row numbers and each time in ms."""
    results, times = [], []
    for query, site in zip(data.queries[:count], data.query_sites[:count], strict=True):
        where: PayloadFilter | None = {"site_id": site_name(int(site))} if filtered else None
        started = time.perf_counter()
        hits = index.search(COLLECTION, query, TOP_K, where)
        times.append((time.perf_counter() - started) * 1000)
        results.append([hit.id.int - 1 for hit in hits])
    return results, times


def recall_at_k(found: Sequence[Sequence[int]], exact: Sequence[Sequence[int]]) -> float:
    overlaps = [len(set(got) & set(truth)) / TOP_K for got, truth in zip(found, exact, strict=False)]
    return statistics.fmean(overlaps)


def percentile(times: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(times), q))


def row(
    engine: str, data: Dataset, filtered: bool, build_s: float | None, times, recall: float, **extra
) -> dict:
    return {
        "engine": engine,
        "points": len(data.vectors),
        "noise": data.noise,
        "filter": "site_id" if filtered else None,
        "build_s": None if build_s is None else round(build_s, 2),
        "queries": len(times),
        "p50_ms": round(percentile(times, 50), 3),
        "p99_ms": round(percentile(times, 99), 3),
        "recall_at_10": round(recall, 4),
        **extra,
    }


def measure_edge(data: Dataset, points, exact, hnsw_efs: list[int], queries: int, directory: Path) -> list[dict]:
    """Build one qdrant-edge collection, then time searches for each hnsw_ef."""
    size = len(data.vectors)
    # A threshold above the size keeps upsert from optimising, so the two steps are timed apart.
    index = EdgeVectorIndex(directory, optimize_after_unindexed_points=size + 1)
    index.ensure_collection(COLLECTION, DIM)
    started = time.perf_counter()
    index.upsert(COLLECTION, points)
    upsert_s = time.perf_counter() - started
    started = time.perf_counter()
    index.optimize(COLLECTION)
    optimize_s = time.perf_counter() - started
    index.close()

    rows = []
    for hnsw_ef in hnsw_efs:
        index = EdgeVectorIndex(directory, hnsw_ef=hnsw_ef, optimize_after_unindexed_points=size + 1)
        for filtered in (False, True):
            timed_searches(index, data, filtered, min(20, queries))  # warm-up
            found, times = timed_searches(index, data, filtered, queries)
            rows.append(row("qdrant-edge", data, filtered, upsert_s + optimize_s, times,
                            recall_at_k(found, exact[filtered]), hnsw_ef=hnsw_ef,
                            upsert_s=round(upsert_s, 2), optimize_s=round(optimize_s, 2)))
        index.close()
    return rows


def measure_local_mode(data: Dataset, points, exact, queries: int, directory: Path) -> list[dict]:
    index = QdrantServerIndex(QdrantClient(path=str(directory)))
    index.ensure_collection(COLLECTION, DIM)
    started = time.perf_counter()
    index.upsert(COLLECTION, points)
    build_s = time.perf_counter() - started
    rows = []
    for filtered in (False, True):
        found, times = timed_searches(index, data, filtered, queries)
        rows.append(row("qdrant-client local", data, filtered, build_s, times,
                        recall_at_k(found, exact[filtered])))
    index.close()
    return rows


def measure_size(data: Dataset, hnsw_efs: list[int], args: argparse.Namespace) -> list[dict]:
    """Measure exact NumPy search, qdrant-edge and (at small sizes) local mode on one dataset."""
    size = len(data.vectors)
    points = build_points(data)
    results = []
    exact: dict[bool, list[list[int]]] = {}
    for filtered in (False, True):
        exact[filtered], times = exact_top_k(data, filtered)
        results.append(row("numpy exact", data, filtered, None, times, 1.0))

    with tempfile.TemporaryDirectory(prefix="endodoc-vector-bench-") as directory:
        results.extend(measure_edge(data, points, exact, hnsw_efs, args.queries, Path(directory) / "edge"))
        if size <= LOCAL_MODE_MAX_POINTS:
            results.extend(
                measure_local_mode(data, points, exact, args.local_mode_queries, Path(directory) / "local")
            )
        else:
            print(f"skipped qdrant-client local mode at {size} points: it is too slow beyond {LOCAL_MODE_MAX_POINTS}")
    return results


def print_table(rows: list[dict]) -> None:
    header = ("engine", "points", "noise", "filter", "hnsw_ef", "build_s", "p50_ms", "p99_ms", "recall_at_10")
    print(" | ".join(header))
    for result in rows:
        print(" | ".join(str(result.get(column, "")) if result.get(column) is not None else "-" for column in header))


def main() -> None:
    args = parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    hnsw_efs = [int(value) for value in args.hnsw_ef.split(",")]
    noises = [float(value) for value in args.noise.split(",")]

    started = time.perf_counter()
    embeddings, base_labels = embed_base_images(args.images, args.base_images)
    base = project(embeddings, DIM, np.random.default_rng(args.seed))
    embed_s = time.perf_counter() - started
    print(f"embedded {len(base)} images in {embed_s:.1f} s, projected {embeddings.shape[1]} -> {DIM} dims")

    results: list[dict] = []
    for size in sizes:
        for noise_number, noise in enumerate(noises):
            data = make_dataset(base, base_labels, size, args.queries, noise,
                                seed=args.seed + size + noise_number)
            results.extend(measure_size(data, hnsw_efs, args))

    print_table(results)
    if args.out is not None:
        report = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "python": platform.python_version()},
            "settings": {"dim": DIM, "sites": SITES, "top_k": TOP_K, "base_images": len(base),
                         "noise": noises, "seed": args.seed, "embed_s": round(embed_s, 1)},
            "results": results,
        }
        args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
