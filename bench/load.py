"""Load-test `endodoc serve` with concurrent clients that upload real images and read coverage and search.

Without --url the script builds a temporary data directory (catalog, a reference gallery of
--references-per-class real images per class, a site and its key) with the `endodoc` command,
and starts `endodoc serve` in the embedded deployment on a free 127.0.0.1 port. With --url
and --key it loads a server that is already running; that server needs a reference gallery
for the images to get labels.

It first uploads --seed-images into one procedure and waits until they are embedded (not
timed), so the readers have a procedure to read and images to search by. Then, for each
concurrency level, it runs the clients of bench/loadgen.py for --duration seconds, waits
until every image accepted in that level is embedded, and prints one table row per
operation: requests, requests/s, images/s, errors, and p50/p95/p99 latency of the 2xx
responses. The JSON report adds status counts, the wait until all images were embedded, and
each accepted image's final status.

    python bench/load.py --concurrency 8 --duration 60 --json /tmp/load.json
    python bench/load.py --mix coverage=1,search=1 --concurrency 1,4,16 --duration 30 --json /tmp/read.json
    python bench/load.py --url http://127.0.0.1:8000 --key "$KEY" --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import loadgen
from stack import check_loopback, endodoc_env, peak_rss_mib, prepare_site, split_images, start_serve


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="base URL of a running endodoc API on loopback; unset: start one")
    parser.add_argument("--key", help="site key for --url (a server started here gets its own)")
    loadgen.add_load_arguments(parser)
    parser.add_argument("--json", type=Path, help="write the report as JSON to this file")
    parser.add_argument("--server-log", type=Path, help="copy the log of a server started here to this file")
    args = parser.parse_args()
    if args.url and not args.key:
        parser.error("--url needs --key, a site key of the running server")
    loadgen.check_load_arguments(parser, args)
    return args


def first_traceback(log: str) -> str:
    """Return the first Python traceback in a server log, up to the next access log line."""
    start = log.find("Traceback")
    lines = []
    for line in log[start:].splitlines():
        if line.startswith("INFO:") and lines:
            break
        lines.append(line)
    return "\n".join(lines[:80])


def main() -> None:
    args = parse_args()
    images = split_images(args.images, args.references_per_class)
    files = loadgen.read_files(images.queries)
    started = datetime.now(UTC)
    server_info: dict = {}
    with tempfile.TemporaryDirectory(prefix="endodoc-load-") as folder:
        server = None
        if args.url:
            url, key = check_loopback(args.url), args.key
            server_info = {"started_here": False, "url": url}
        else:
            work_dir = Path(folder)
            env = endodoc_env(work_dir / "data")
            key = prepare_site(work_dir, images, env)
            server, url = start_serve(env, work_dir / "serve.log")
            server_info = {"started_here": True, "deployment": "embedded", "references": sum(
                len(paths) for paths in images.references.values()
            )}
        completed = False
        try:
            seeded, levels = asyncio.run(loadgen.run_levels(url, key, files, args))
            if server is not None:
                server_info["peak_rss_mib"] = peak_rss_mib(server.pid)
                server.check_running()
            completed = True
        finally:
            if server is not None:
                alive = server.process.poll() is None
                server.stop()
                log = server.log_path.read_text(errors="replace")
                if args.server_log:
                    args.server_log.write_text(log, encoding="utf-8")
                server_errors = log.count("Traceback")
                server_info["tracebacks_in_log"] = server_errors
                if server_errors:
                    print(f"the server logged {server_errors} tracebacks; the first one:\n{first_traceback(log)}",
                          file=sys.stderr)
                if not completed:
                    print(f"the server was {'running' if alive else 'gone'}; its log ends with:\n{server.log_tail(6000)}",
                          file=sys.stderr)

    loadgen.print_table(levels)
    for level in levels:
        print(f"concurrency {level['concurrency']}: embedding {level['embedding']}")
    report = {
        "benchmark": "load",
        "command": " ".join(sys.argv),
        "started_at": started.isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {name: value for name, value in vars(args).items() if name not in ("key", "json", "server_log")} | {
            "images": str(args.images), "upload_files": len(files)},
        "server": server_info,
        "seed": seeded,
        "levels": levels,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
