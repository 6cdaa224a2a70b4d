"""Measure the peak memory of `endodoc serve` under load and of the processes that embed.

Peak memory is VmHWM, the peak resident set size the kernel keeps in /proc/PID/status, read
from each process of the tree before it stops. A sampler also adds up VmRSS over the process
and its children every 0.2 s, for the peak of the whole tree (a sampled value, which can miss
short spikes).

Three measurements, each in fresh processes started here:

1. `batch`: a child process loads the `lite` model and embeds one batch of real images
   (each of --batch-sizes), as the embedding step does. It reports VmHWM after the imports,
   after the model load, and after the batch.
2. `embedded`: `endodoc serve` in the embedded deployment (SQLite, qdrant-edge, embedding in
   a thread of the API process). VmHWM after start-up, then after the load of bench/loadgen.py
   (--concurrency clients for --duration seconds) and after every accepted image is embedded.
3. `production` (unless --skip-production): `endodoc serve` and one `endodoc worker` with a
   PostgreSQL database created here and dropped afterwards, the Redis database of
   --redis-url (locked for this run, flushed before and after), and the test suite's Qdrant
   REST stand-in, under the same load.

It prints a table and writes JSON.

    python bench/memory.py --json /tmp/memory.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import loadgen
from stack import (
    REPO_ROOT,
    endodoc_env,
    locked_redis_database,
    postgres_database,
    prepare_site,
    read_memory_kib,
    split_images,
    start_qdrant_standin,
    start_serve,
    start_worker,
)

SAMPLE_INTERVAL_S = 0.2


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    loadgen.add_load_arguments(parser)
    parser.add_argument("--batch-sizes", default="32,128",
                        help="images per batch of the child-process measurement (default 32,128)")
    parser.add_argument("--skip-production", action="store_true",
                        help="measure only the embedded deployment and the child process")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="PostgreSQL server on loopback where a database is created and dropped")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/10",
                        help="Redis database on loopback for the broker; locked and flushed by this run (default db 10)")
    parser.add_argument("--json", type=Path, help="write the report as JSON to this file")
    parser.add_argument("--child-batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_batch is None:
        loadgen.check_load_arguments(parser, args)
    return args


def child_embed_batch(args: argparse.Namespace) -> None:
    """Run in the child process: load the `lite` model, embed one batch, print VmHWM at each step as JSON."""
    pid = os.getpid()
    from services.embedding import load_embedder
    from services.embedding.images import open_image
    from services.logs import configure_logging
    from services.settings import ModelSettings, Settings

    configure_logging("WARNING")
    after_imports = read_memory_kib(pid)["VmHWM"]
    embedder = load_embedder(ModelSettings(profile="lite", batch_size=args.child_batch))
    after_load = read_memory_kib(pid)["VmHWM"]
    paths = split_images(args.images, args.references_per_class).queries[: args.child_batch]
    max_pixels = Settings.model_fields["image_max_pixels"].default
    pictures = [open_image(path.read_bytes(), max_pixels=max_pixels, draft_size=embedder.input_size) for path in paths]
    start = time.perf_counter()
    embedder.embed(pictures)
    embed_s = time.perf_counter() - start
    print(json.dumps({
        "batch": len(paths),
        "after_imports_mib": round(after_imports / 1024, 1),
        "after_model_load_mib": round(after_load / 1024, 1),
        "after_batch_mib": round(read_memory_kib(pid)["VmHWM"] / 1024, 1),
        "embed_s": round(embed_s, 2),
    }))


def measure_batches(args: argparse.Namespace) -> list[dict]:
    results = []
    for size in (int(item) for item in args.batch_sizes.split(",")):
        output = subprocess.run(
            [sys.executable, __file__, "--child-batch", str(size), "--images", str(args.images),
             "--references-per-class", str(args.references_per_class)],
            cwd=REPO_ROOT, capture_output=True, text=True, check=False,
        )
        if output.returncode != 0:
            raise SystemExit(f"the batch embedding child failed with exit code {output.returncode}:\n{output.stderr[-3000:]}")
        results.append(json.loads(output.stdout.strip().splitlines()[-1]))
    return results


def process_tree(pid: int) -> list[int]:
    """Return `pid` and all its descendants, from /proc/PID/task/*/children."""
    found = [pid]
    for current in found:
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                found.extend(int(child) for child in (task / "children").read_text().split())
            except (FileNotFoundError, ProcessLookupError):
                continue
    return found


class TreeSampler:
    """Samples VmRSS and VmHWM of a process and its children in a background thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_tree_kib = 0
        self.peak_hwm_kib: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(SAMPLE_INTERVAL_S)

    def sample(self) -> None:
        total = 0
        for pid in process_tree(self.pid):
            try:
                memory = read_memory_kib(pid)
            except (FileNotFoundError, ProcessLookupError):
                continue
            total += memory.get("VmRSS", 0)
            self.peak_hwm_kib[pid] = max(self.peak_hwm_kib.get(pid, 0), memory.get("VmHWM", 0))
        self.peak_tree_kib = max(self.peak_tree_kib, total)

    def snapshot(self) -> dict:
        """Sample once more and return the peaks so far in MiB."""
        self.sample()
        return {
            "vm_hwm_mib": round(self.peak_hwm_kib.get(self.pid, 0) / 1024, 1),
            "children": len(self.peak_hwm_kib) - 1,
            "children_vm_hwm_mib": round(sum(v for p, v in self.peak_hwm_kib.items() if p != self.pid) / 1024, 1),
            "sampled_tree_rss_peak_mib": round(self.peak_tree_kib / 1024, 1),
        }

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_load(url: str, key: str, files: list[tuple[str, bytes]], args: argparse.Namespace) -> dict:
    seeded, levels = asyncio.run(loadgen.run_levels(url, key, files, args))
    level = levels[-1]
    return {
        "operations": {name: {field: summary[field] for field in ("requests", "errors", "requests_per_s", "p50_ms", "p95_ms")}
                       for name, summary in level["operations"].items()},
        "embedding": level["embedding"],
        "load_average_after": level["load_average_after"],
    }


def measure_embedded(work_dir: Path, images, files, args: argparse.Namespace) -> dict:
    env = endodoc_env(work_dir / "data")
    key = prepare_site(work_dir, images, env)
    server, url = start_serve(env, work_dir / "serve.log")
    sampler = TreeSampler(server.pid)
    try:
        idle = sampler.snapshot()
        load = run_load(url, key, files, args)
        loaded = sampler.snapshot()
        server.check_running()
    finally:
        sampler.stop()
        server.stop()
    return {"serve_after_start": idle, "serve_after_load": loaded, "load": load}


def measure_production(work_dir: Path, images, files, args: argparse.Namespace) -> dict:
    with ExitStack() as stack:
        database_url = stack.enter_context(postgres_database(args.postgres_url))
        redis_url = stack.enter_context(locked_redis_database(args.redis_url))
        standin, qdrant_url = start_qdrant_standin(work_dir / "qdrant", work_dir / "qdrant.log")
        stack.callback(standin.stop)
        env = endodoc_env(work_dir / "data", {
            "ENDODOC_DATABASE_URL": database_url,
            "ENDODOC_BROKER_URL": redis_url,
            "ENDODOC_QDRANT_URL": qdrant_url,
            "ENDODOC_BLOB_DIR": str(work_dir / "blobs"),
        })
        key = prepare_site(work_dir, images, env)
        worker = start_worker(env, work_dir / "worker.log")
        stack.callback(worker.stop)
        worker_sampler = TreeSampler(worker.pid)
        stack.callback(worker_sampler.stop)
        server, url = start_serve(env, work_dir / "serve.log")
        stack.callback(server.stop)
        server_sampler = TreeSampler(server.pid)
        stack.callback(server_sampler.stop)

        idle = {"serve": server_sampler.snapshot(), "worker": worker_sampler.snapshot()}
        load = run_load(url, key, files, args)
        loaded = {"serve": server_sampler.snapshot(), "worker": worker_sampler.snapshot()}
        for process in (server, worker):
            process.check_running()
        return {"after_start": idle, "after_load": loaded, "load": load}


def print_table(report: dict) -> None:
    columns = ["measurement", "process", "peak RSS (VmHWM) MiB", "children VmHWM MiB", "sampled tree RSS peak MiB"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for batch in report["batch"]:
        print(f"| lite embed of a batch of {batch['batch']} | child process | {batch['after_batch_mib']} | - | - |")
    rows = [("embedded, after start", "endodoc serve", report["embedded"]["serve_after_start"]),
            ("embedded, after load", "endodoc serve", report["embedded"]["serve_after_load"])]
    if report.get("production"):
        for moment in ("after_start", "after_load"):
            for process in ("serve", "worker"):
                label = f"production, {moment.replace('_', ' ')}"
                rows.append((label, f"endodoc {process}", report["production"][moment][process]))
    for label, process, values in rows:
        print(f"| {label} | {process} | {values['vm_hwm_mib']} | {values['children_vm_hwm_mib'] or '-'} | "
              f"{values['sampled_tree_rss_peak_mib']} |")


def main() -> None:
    args = parse_args()
    if args.child_batch is not None:
        child_embed_batch(args)
        return
    images = split_images(args.images, args.references_per_class)
    files = loadgen.read_files(images.queries)
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    report: dict = {
        "benchmark": "memory",
        "command": " ".join(sys.argv),
        "started_at": started.isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "load_average_before": [round(value, 2) for value in load_before],
        "settings": {name: value for name, value in vars(args).items() if name not in ("json", "child_batch")}
        | {"images": str(args.images)},
    }
    report["batch"] = measure_batches(args)
    with tempfile.TemporaryDirectory(prefix="endodoc-memory-embedded-") as folder:
        report["embedded"] = measure_embedded(Path(folder), images, files, args)
    if not args.skip_production:
        with tempfile.TemporaryDirectory(prefix="endodoc-memory-production-") as folder:
            report["production"] = measure_production(Path(folder), images, files, args)
    report["load_average_after"] = [round(value, 2) for value in os.getloadavg()]

    print_table(report)
    for name in ("embedded", "production"):
        if name in report:
            print(f"{name}: embedding after the load {report[name]['load']['embedding']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
