"""Measure end-to-end ingest throughput of `endodoc serve` in the embedded deployment: upload to `embedded`.

The script builds a temporary data directory with a reference gallery and a site key through
the `endodoc` command, and starts `endodoc serve` on a free 127.0.0.1 port. It uploads
--images-count real images with --clients concurrent clients, in requests of --upload-batch
files, into procedures of at most --procedure-images. It times from the start of the first upload
request to the first poll that finds none of them `queued`, and checks that every one ended
`embedded`. The server embeds in one background thread while it accepts the uploads.

Afterwards, with the server stopped, it embeds the same files in this process with the same
`lite` model, decoding them as the server does, to show how much of the raw embedder speed
the whole path keeps. It prints a table and writes JSON.

    python bench/ingest_throughput.py --images-count 400 --json /tmp/ingest.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import loadgen
from stack import DEFAULT_IMAGES, endodoc_env, prepare_site, split_images, start_serve


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES,
                        help="labeled folder: one subfolder of JPEG files per landmark code")
    parser.add_argument("--references-per-class", type=int, default=20, help="gallery images per class (default 20)")
    parser.add_argument("--images-count", type=int, default=400, help="images to upload (default 400)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent upload clients (default 4)")
    parser.add_argument("--upload-batch", type=int, default=8, help="images per upload request (default 8)")
    parser.add_argument("--procedure-images", type=int, default=100, help="images per procedure (default 100)")
    parser.add_argument("--embed-timeout", type=float, default=1800,
                        help="seconds to wait for the uploads to be embedded (default 1800)")
    parser.add_argument("--raw-batch-size", type=int, default=32,
                        help="batch size of the in-process embedder comparison (default 32, the server's default)")
    parser.add_argument("--no-raw", action="store_true", help="skip the in-process embedder comparison")
    parser.add_argument("--json", type=Path, help="write the report as JSON to this file")
    return parser.parse_args()


async def upload_all(url: str, key: str, files: list[tuple[str, bytes]], args: argparse.Namespace) -> dict:
    """Upload every file once with the concurrent clients, then wait until none is `queued`."""
    async with loadgen.make_client(url, key) as client:
        workload = loadgen.Workload(
            client=client,
            files=files,
            run_id=uuid.uuid4().hex[:8],
            procedure_images=args.procedure_images,
            upload_batch=args.upload_batch,
        )
        run = loadgen.Run()
        # Each client takes the next batch from one shared list, so every file is sent exactly once.
        batches = [files[start : start + args.upload_batch] for start in range(0, len(files), args.upload_batch)]
        next_batch = iter(range(len(batches)))

        async def client_loop() -> None:
            state = loadgen.ClientState(rng=random.Random(0), cursor=0)
            for index in next_batch:
                state.cursor = index * args.upload_batch
                await loadgen.upload_batch(workload, run, state, size=len(batches[index]))

        await asyncio.gather(*(client_loop() for _ in range(args.clients)))
        uploads_done = time.perf_counter()
        embedding = await loadgen.wait_embedded(workload, run, uploads_done, args.embed_timeout)
        assert run.first_upload_at is not None
        upload_s = uploads_done - run.first_upload_at
        total_s = upload_s + embedding["wait_s"]
        embedded = embedding["final_status"].get("embedded", 0)
        return {
            "images_uploaded": len(files),
            "operations": {name: stats.summary(upload_s) for name, stats in sorted(run.stats.items())},
            "duplicates": run.duplicates,
            "rejected": run.rejected,
            "embedding": embedding,
            "upload_s": round(upload_s, 2),
            "upload_images_per_s": round(len(files) / upload_s, 2),
            "first_upload_to_all_embedded_s": round(total_s, 2),
            "end_to_end_images_per_s": round(embedded / total_s, 2),
        }


def raw_embedder_throughput(paths: list[Path], batch_size: int) -> dict:
    """Decode and embed the files in this process as the server's embedding step does, without the catalog and index."""
    from services.embedding import load_embedder
    from services.embedding.images import open_image
    from services.logs import configure_logging
    from services.settings import ModelSettings, Settings

    configure_logging("WARNING")
    max_pixels = Settings.model_fields["image_max_pixels"].default
    start = time.perf_counter()
    embedder = load_embedder(ModelSettings(profile="lite", batch_size=batch_size))
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    for offset in range(0, len(paths), batch_size):
        pictures = [
            open_image(path.read_bytes(), max_pixels=max_pixels, draft_size=embedder.input_size)
            for path in paths[offset : offset + batch_size]
        ]
        embedder.embed(pictures)
    embed_s = time.perf_counter() - start
    return {
        "images": len(paths),
        "batch_size": batch_size,
        "model_load_s": round(load_s, 2),
        "decode_and_embed_s": round(embed_s, 2),
        "images_per_s": round(len(paths) / embed_s, 2),
        "model_version": embedder.model_version,
    }


def main() -> None:
    args = parse_args()
    images = split_images(args.images, args.references_per_class)
    if args.images_count > len(images.queries):
        raise SystemExit(f"--images-count {args.images_count} is more than the {len(images.queries)} images left "
                         "after the gallery; lower it or --references-per-class")
    paths = images.queries[: args.images_count]
    files = loadgen.read_files(paths)
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="endodoc-ingest-") as folder:
        work_dir = Path(folder)
        env = endodoc_env(work_dir / "data")
        key = prepare_site(work_dir, images, env)
        server, url = start_serve(env, work_dir / "serve.log")
        try:
            ingest = asyncio.run(upload_all(url, key, files, args))
            server.check_running()
        finally:
            server.stop()
            tracebacks = server.log_path.read_text(errors="replace").count("Traceback")
            if tracebacks:
                print(f"the server log has {tracebacks} tracebacks; its end:\n{server.log_tail()}", file=sys.stderr)
    load_after_ingest = os.getloadavg()
    raw = None if args.no_raw else raw_embedder_throughput(paths, args.raw_batch_size)

    columns = ["path", "images", "seconds", "images/s"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    print(f"| upload requests only | {len(files)} | {ingest['upload_s']} | {ingest['upload_images_per_s']} |")
    print(f"| upload to all embedded | {ingest['embedding']['final_status'].get('embedded', 0)} | "
          f"{ingest['first_upload_to_all_embedded_s']} | {ingest['end_to_end_images_per_s']} |")
    if raw is not None:
        print(f"| raw embedder in process (decode + embed) | {raw['images']} | {raw['decode_and_embed_s']} | "
              f"{raw['images_per_s']} |")
        print(f"end-to-end rate is {ingest['end_to_end_images_per_s'] / raw['images_per_s']:.0%} of the raw embedder rate")
    print(f"final image status: {ingest['embedding']['final_status']}, lost: {ingest['embedding']['lost_images']}")

    report = {
        "benchmark": "ingest_throughput",
        "command": " ".join(sys.argv),
        "started_at": started.isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "load_average_before": [round(value, 2) for value in load_before],
        "load_average_after_ingest": [round(value, 2) for value in load_after_ingest],
        "settings": {name: value for name, value in vars(args).items() if name != "json"} | {"images": str(args.images)},
        "ingest": ingest,
        "raw_embedder": raw,
        "server_tracebacks": tracebacks,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
