"""The load generator of the API benchmarks: concurrent httpx clients on asyncio, with per-operation statistics.

Each client repeats one operation after another until the duration ends, picking each one at
random with the weights of the mix:

- `upload`: POST a batch of real images into the client's own procedure. A client starts a
  new procedure (a timed `create_procedure` request) when the next batch would pass
  `procedure_images`, so no procedure gets the same file twice;
- `coverage`: GET the coverage of a random known procedure;
- `search`: POST /v1/search by the id of a random embedded image;
- `search_file`: POST /v1/search with an uploaded query image, which the server embeds in the request.

Latency percentiles are over the 2xx responses. Every other status and every transport
exception counts as an error.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx

from stack import DEFAULT_IMAGES, LANDMARK_SET

OPERATIONS = ("upload", "coverage", "search", "search_file")
REQUEST_TIMEOUT_S = 300
# Below uvicorn's default keep-alive timeout of 5 s (uvicorn 0.54), so the client drops an idle
# connection before the server can close it. httpx's default expiry is also 5 s.
KEEPALIVE_EXPIRY_S = 2.0
POLL_INTERVAL_S = 0.5
POLL_ATTEMPTS = 3
LIST_PAGE = 500


def parse_mix(text: str) -> dict[str, float]:
    """Parse `upload=1,coverage=2,search=1` into operation weights."""
    mix: dict[str, float] = {}
    for item in text.split(","):
        name, _, weight = item.strip().partition("=")
        if name not in OPERATIONS:
            raise SystemExit(f"invalid --mix entry {item!r}: operations are {', '.join(OPERATIONS)}")
        try:
            mix[name] = float(weight or 1)
        except ValueError:
            raise SystemExit(f"invalid weight in --mix entry {item!r}: expected a number, as in upload=1") from None
        if mix[name] < 0:
            raise SystemExit(f"invalid weight in --mix entry {item!r}: weights must not be negative")
    if sum(mix.values()) <= 0:
        raise SystemExit(f"invalid --mix {text!r}: at least one weight must be positive")
    return mix


def parse_levels(text: str) -> list[int]:
    """Parse `1,4,16` into concurrency levels."""
    try:
        levels = [int(item) for item in text.split(",")]
    except ValueError:
        raise SystemExit(f"invalid --concurrency {text!r}: expected whole numbers separated by commas") from None
    if not levels or min(levels) < 1:
        raise SystemExit(f"invalid --concurrency {text!r}: every level must be at least 1")
    return levels


def percentile(values: list[float], share: float) -> float:
    """Return the nearest-rank percentile of `values` (share 0.95 for p95)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


@dataclass
class OperationStats:
    """Latencies of the 2xx responses of one operation, the count of each status, and images sent."""

    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    images: int = 0
    # The first error message seen for each non-2xx status or exception type.
    error_samples: dict[str, str] = field(default_factory=dict)

    def summary(self, wall_s: float) -> dict:
        requests = sum(self.statuses.values())
        ok = len(self.latencies_ms)
        latencies = self.latencies_ms
        return {
            "requests": requests,
            "ok": ok,
            "errors": requests - ok,
            "error_rate": round((requests - ok) / requests, 4) if requests else 0.0,
            "status_counts": dict(sorted(self.statuses.items())),
            "error_samples": self.error_samples,
            "requests_per_s": round(requests / wall_s, 2),
            "images": self.images,
            "images_per_s": round(self.images / wall_s, 2) if self.images else None,
            "p50_ms": round(percentile(latencies, 0.50), 1) if latencies else None,
            "p95_ms": round(percentile(latencies, 0.95), 1) if latencies else None,
            "p99_ms": round(percentile(latencies, 0.99), 1) if latencies else None,
            "mean_ms": round(statistics.fmean(latencies), 1) if latencies else None,
            "max_ms": round(max(latencies), 1) if latencies else None,
        }


@dataclass
class Run:
    """Statistics per operation and the images the server accepted, recorded by one timed run."""

    stats: dict[str, OperationStats] = field(default_factory=dict)
    # Image id -> procedure id of every upload outcome `queued`, to check later that each one is embedded.
    accepted: dict[str, str] = field(default_factory=dict)
    duplicates: int = 0
    rejected: int = 0
    first_upload_at: float | None = None

    def operation(self, name: str) -> OperationStats:
        return self.stats.setdefault(name, OperationStats())


@dataclass
class Workload:
    """The server, the files to upload, and the procedures and images the clients read."""

    client: httpx.AsyncClient
    files: list[tuple[str, bytes]]
    run_id: str
    procedure_images: int
    upload_batch: int
    procedures: list[str] = field(default_factory=list)
    search_ids: list[str] = field(default_factory=list)
    procedure_counter: int = 0
    # Failed attempts of the embedding checks, which are retried and not counted as load errors.
    poll_failures: list[str] = field(default_factory=list)


def read_files(paths: list[Path]) -> list[tuple[str, bytes]]:
    return [(path.name, path.read_bytes()) for path in paths]


def make_client(url: str, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url,
        headers={"Authorization": f"Bearer {key}"},
        timeout=REQUEST_TIMEOUT_S,
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=None, keepalive_expiry=KEEPALIVE_EXPIRY_S),
    )


async def timed(run: Run, name: str, send: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response | None:
    """Send one request, record its status and latency under `name`, and return the 2xx response."""
    stats = run.operation(name)
    start = time.perf_counter()
    try:
        response = await send()
    except httpx.HTTPError as error:
        stats.statuses[type(error).__name__] += 1
        stats.error_samples.setdefault(type(error).__name__, str(error)[:500])
        return None
    elapsed_ms = (time.perf_counter() - start) * 1000
    status = str(response.status_code)
    stats.statuses[status] += 1
    if response.is_success:
        stats.latencies_ms.append(elapsed_ms)
        return response
    stats.error_samples.setdefault(status, response.text[:500])
    return None


async def create_procedure(workload: Workload, run: Run) -> str | None:
    workload.procedure_counter += 1
    body = {
        "external_id": f"LOAD-{workload.run_id}-{workload.procedure_counter}",
        "kind": "colonoscopy",
        "landmark_set": LANDMARK_SET,
        "performed_at": datetime.now(UTC).isoformat(),
    }
    response = await timed(run, "create_procedure", lambda: workload.client.post("/v1/procedures", json=body))
    if response is None:
        return None
    procedure_id = response.json()["id"]
    workload.procedures.append(procedure_id)
    return procedure_id


@dataclass
class ClientState:
    """One client's procedure, how many images it holds, and the client's position in the file list."""

    rng: random.Random
    cursor: int
    procedure_id: str | None = None
    in_procedure: int = 0


async def upload_batch(workload: Workload, run: Run, state: ClientState, size: int | None = None) -> None:
    """Upload the client's next `size` files (default: the workload's batch), starting a new procedure when this one is full."""
    size = size if size is not None else workload.upload_batch
    if state.procedure_id is None or state.in_procedure + size > workload.procedure_images:
        state.procedure_id = await create_procedure(workload, run)
        state.in_procedure = 0
        if state.procedure_id is None:
            return
    batch = [workload.files[(state.cursor + offset) % len(workload.files)] for offset in range(size)]
    state.cursor += size
    state.in_procedure += size
    files = [("files", (name, data, "image/jpeg")) for name, data in batch]
    url = f"/v1/procedures/{state.procedure_id}/images"
    if run.first_upload_at is None:
        run.first_upload_at = time.perf_counter()
    response = await timed(run, "upload", lambda: workload.client.post(url, files=files))
    if response is None:
        return
    run.operation("upload").images += len(batch)
    for outcome in response.json()["images"]:
        if outcome["duplicate"]:
            run.duplicates += 1
        elif outcome["status"] == "queued":
            run.accepted[outcome["image_id"]] = state.procedure_id
        else:
            run.rejected += 1


async def read_coverage(workload: Workload, run: Run, state: ClientState) -> None:
    procedure_id = state.rng.choice(workload.procedures)
    await timed(run, "coverage", lambda: workload.client.get(f"/v1/procedures/{procedure_id}/coverage"))


async def search_by_id(workload: Workload, run: Run, state: ClientState) -> None:
    body = {"image_id": state.rng.choice(workload.search_ids), "limit": 10}
    await timed(run, "search", lambda: workload.client.post("/v1/search", json=body))


async def search_by_file(workload: Workload, run: Run, state: ClientState) -> None:
    name, data = state.rng.choice(workload.files)
    files = {"file": (name, data, "image/jpeg")}
    form = {"filters": '{"limit": 10}'}
    response = await timed(run, "search_file", lambda: workload.client.post("/v1/search", files=files, data=form))
    if response is not None:
        run.operation("search_file").images += 1


ACTIONS: dict[str, Callable[[Workload, Run, ClientState], Awaitable[None]]] = {
    "upload": upload_batch,
    "coverage": read_coverage,
    "search": search_by_id,
    "search_file": search_by_file,
}


async def run_clients(
    workload: Workload, concurrency: int, duration_s: float, mix: dict[str, float], seed: int
) -> tuple[Run, float]:
    """Run `concurrency` clients for `duration_s`; return what they recorded and the wall time in seconds.

    Requests still in flight at the deadline finish and count, so the wall time runs until the
    last client stops.
    """
    names = [name for name, weight in mix.items() if weight > 0]
    weights = [mix[name] for name in names]
    run = Run()
    deadline = time.perf_counter() + duration_s
    stride = max(1, len(workload.files) // concurrency)

    async def client(index: int) -> None:
        state = ClientState(rng=random.Random(seed * 1000 + index), cursor=index * stride)
        while time.perf_counter() < deadline:
            await ACTIONS[state.rng.choices(names, weights)[0]](workload, run, state)

    start = time.perf_counter()
    await asyncio.gather(*(client(index) for index in range(concurrency)))
    return run, time.perf_counter() - start


async def get_with_retries(workload: Workload, url: str, params: dict) -> dict:
    """GET a JSON body for the embedding checks, retrying transport errors and 5xx up to POLL_ATTEMPTS times."""
    for attempt in range(1, POLL_ATTEMPTS + 1):
        try:
            response = await workload.client.get(url, params=params)
        except httpx.TransportError as error:
            failure = f"{type(error).__name__}: {error}"
        else:
            if response.status_code < 500:
                response.raise_for_status()
                return response.json()
            failure = f"HTTP {response.status_code}: {response.text[:300]}"
        workload.poll_failures.append(failure)
        if attempt == POLL_ATTEMPTS:
            raise SystemExit(f"GET {url} failed {POLL_ATTEMPTS} times while checking the embedding; last: {failure}")
        await asyncio.sleep(attempt)
    raise AssertionError("unreachable")


async def queued_count(workload: Workload, procedure_id: str) -> int:
    page = await get_with_retries(workload, f"/v1/procedures/{procedure_id}/images", {"status": "queued", "limit": 1})
    return page["total"]


async def image_statuses(workload: Workload, procedure_id: str) -> dict[str, tuple[str, str | None]]:
    """Return image id -> (status, error) of every image of one procedure."""
    statuses = {}
    offset = 0
    while True:
        page = await get_with_retries(
            workload, f"/v1/procedures/{procedure_id}/images", {"limit": LIST_PAGE, "offset": offset}
        )
        statuses.update({item["id"]: (item["status"], item["error"]) for item in page["items"]})
        offset += LIST_PAGE
        if offset >= page["total"]:
            return statuses


async def wait_embedded(workload: Workload, run: Run, started_at: float, timeout_s: float) -> dict:
    """Poll until no accepted image is `queued`, then check each one's final status.

    `wait_s` counts from `started_at` to the poll that found nothing queued, so it is late by at
    most POLL_INTERVAL_S plus one round of polls.
    """
    waiting = set(run.accepted.values())
    deadline = time.perf_counter() + timeout_s
    while waiting and time.perf_counter() < deadline:
        counts = await asyncio.gather(*(queued_count(workload, procedure_id) for procedure_id in waiting))
        waiting = {procedure_id for procedure_id, count in zip(waiting, counts, strict=True) if count}
        if waiting:
            await asyncio.sleep(POLL_INTERVAL_S)
    done_at = time.perf_counter()

    statuses: dict[str, tuple[str, str | None]] = {}
    for procedure_id in sorted(set(run.accepted.values())):
        statuses.update(await image_statuses(workload, procedure_id))
    final = Counter(statuses[image_id][0] if image_id in statuses else "missing" for image_id in run.accepted)
    errors = Counter(
        statuses[image_id][1] for image_id in run.accepted if image_id in statuses and statuses[image_id][1]
    )
    return {
        "accepted_images": len(run.accepted),
        "final_status": dict(sorted(final.items())),
        "lost_images": final.get("missing", 0) + final.get("queued", 0),
        "errors": dict(errors.most_common(5)),
        "poll_failures": list(workload.poll_failures),
        "timed_out": bool(waiting),
        "wait_s": round(done_at - started_at, 2),
    }


async def seed_procedure(workload: Workload, count: int, timeout_s: float) -> dict:
    """Upload `count` files into one new procedure and wait until they are embedded (not timed).

    The procedure gives the readers something to read, and its images are the `search` queries.
    """
    run = Run()
    state = ClientState(rng=random.Random(0), cursor=len(workload.files) - count)
    batches = math.ceil(count / workload.upload_batch)
    saved = workload.procedure_images
    workload.procedure_images = batches * workload.upload_batch
    try:
        for _ in range(batches):
            await upload_batch(workload, run, state)
    finally:
        workload.procedure_images = saved
    failed = {name: dict(stats.statuses) for name, stats in run.stats.items() if stats.summary(1)["errors"]}
    if failed:
        raise SystemExit(f"seeding the read procedure failed with these responses: {failed}")
    report = await wait_embedded(workload, run, time.perf_counter(), timeout_s)
    workload.search_ids = [image_id for image_id in run.accepted]
    if report["final_status"].get("embedded", 0) != len(run.accepted):
        raise SystemExit(f"seeded images were not all embedded: {report}")
    return report


def print_table(rows: list[dict]) -> None:
    """Print one Markdown table row per concurrency level and operation."""
    columns = ["concurrency", "operation", "requests", "req/s", "images/s", "errors", "error %",
               "p50 ms", "p95 ms", "p99 ms"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for level in rows:
        for name, summary in level["operations"].items():
            values = [
                level["concurrency"],
                name,
                summary["requests"],
                summary["requests_per_s"],
                summary["images_per_s"] if summary["images_per_s"] is not None else "-",
                summary["errors"],
                f"{100 * summary['error_rate']:.2f}",
                summary["p50_ms"] if summary["p50_ms"] is not None else "-",
                summary["p95_ms"] if summary["p95_ms"] is not None else "-",
                summary["p99_ms"] if summary["p99_ms"] is not None else "-",
            ]
            print("| " + " | ".join(str(value) for value in values) + " |")


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of the image folder, the clients, the mix and the waits."""
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES,
                        help="labeled folder: one subfolder of JPEG files per landmark code")
    parser.add_argument("--references-per-class", type=int, default=20,
                        help="gallery images per class of a server started here; the rest are uploaded (default 20)")
    parser.add_argument("--concurrency", default="8", help="concurrent clients; several levels as 1,4,16 (default 8)")
    parser.add_argument("--duration", type=float, default=60, help="seconds of load per concurrency level (default 60)")
    parser.add_argument("--upload-batch", type=int, default=4, help="images per upload request (default 4)")
    parser.add_argument("--procedure-images", type=int, default=100,
                        help="images per procedure before a client starts a new one (default 100)")
    parser.add_argument("--mix", default="upload=1,coverage=2,search=1",
                        help="operation weights of upload, coverage, search, search_file (default upload=1,coverage=2,search=1)")
    parser.add_argument("--seed-images", type=int, default=64,
                        help="images embedded before the timed runs, for coverage reads and search queries (default 64)")
    parser.add_argument("--embed-timeout", type=float, default=1800,
                        help="seconds to wait for the accepted images to be embedded after each level (default 1800)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the clients' random choices (default 0)")


def check_load_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    parse_mix(args.mix)
    parse_levels(args.concurrency)
    if args.upload_batch < 1 or args.procedure_images < args.upload_batch:
        parser.error("--upload-batch must be at least 1 and at most --procedure-images")
    if args.seed_images < 1:
        parser.error("--seed-images must be at least 1: the readers need embedded images")


async def run_levels(url: str, key: str, files: list[tuple[str, bytes]], args: argparse.Namespace) -> tuple[dict, list[dict]]:
    """Seed the read procedure, then run each concurrency level and wait until its uploads are embedded."""
    if args.procedure_images > len(files):
        raise SystemExit(f"--procedure-images {args.procedure_images} is more than the {len(files)} upload files")
    mix = parse_mix(args.mix)
    async with make_client(url, key) as client:
        workload = Workload(
            client=client,
            files=files,
            run_id=uuid.uuid4().hex[:8],
            procedure_images=args.procedure_images,
            upload_batch=args.upload_batch,
        )
        seeded = await seed_procedure(workload, args.seed_images, args.embed_timeout)
        print(f"seeded {seeded['accepted_images']} embedded images in {seeded['wait_s']} s", flush=True)
        levels = []
        for concurrency in parse_levels(args.concurrency):
            load_before = os.getloadavg()
            cpu_before = time.process_time()
            run, wall_s = await run_clients(workload, concurrency, args.duration, mix, args.seed)
            ended_at = time.perf_counter()
            client_cpu_s = time.process_time() - cpu_before
            embedding = await wait_embedded(workload, run, ended_at, args.embed_timeout)
            if run.first_upload_at is not None and not embedding["timed_out"]:
                embedding["first_upload_to_all_embedded_s"] = round(ended_at + embedding["wait_s"] - run.first_upload_at, 2)
            levels.append({
                "concurrency": concurrency,
                "wall_s": round(wall_s, 2),
                # CPU time of this load generator process, which shares the machine with the server.
                "client_cpu_s": round(client_cpu_s, 2),
                "load_average_before": [round(value, 2) for value in load_before],
                "load_average_after": [round(value, 2) for value in os.getloadavg()],
                "operations": {name: stats.summary(wall_s) for name, stats in sorted(run.stats.items())},
                "uploads": {"duplicates": run.duplicates, "rejected": run.rejected},
                "embedding": embedding,
            })
            print(f"concurrency {concurrency}: {wall_s:.1f} s, accepted {embedding['accepted_images']} images, "
                  f"all embedded {embedding['wait_s']} s after the load ended", flush=True)
        return seeded, levels
