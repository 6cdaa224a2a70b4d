"""The `endodoc worker`, `endodoc reconcile` and `endodoc reindex` commands."""

from __future__ import annotations

import argparse
import json

from services.settings import Settings


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register the worker, reconcile and reindex subcommands."""
    worker = commands.add_parser("worker", help="run a Celery embedding worker (one per GPU)")
    worker.add_argument("--queues", default="embed", help="comma-separated Celery queues to consume (default embed)")
    worker.add_argument("--hostname", help="Celery node name (default: celery@HOST)")
    worker.add_argument("--loglevel", default="INFO", help="Celery log level (default INFO)")
    worker.set_defaults(handler=cmd_worker)

    reconcile = commands.add_parser(
        "reconcile", help="repair images marked embedded without a point, orphan points and stuck queued images"
    )
    reconcile.add_argument("--dry-run", action="store_true", help="only count what would be repaired")
    reconcile.add_argument("--json", action="store_true", help="print one JSON object")
    reconcile.set_defaults(handler=cmd_reconcile)

    reindex = commands.add_parser(
        "reindex", help="embed everything with the configured model into new collections, then switch the aliases"
    )
    reindex.add_argument("--no-switch", action="store_true", help="build the collections but keep the aliases")
    reindex.add_argument("--json", action="store_true", help="print one JSON object")
    reindex.set_defaults(handler=cmd_reindex)


def _open_runtime(settings: Settings):
    from services.runtime import Runtime
    from services.schema import ensure_schema

    runtime = Runtime(settings)
    ensure_schema(runtime)
    return runtime


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """Check the schema, load the model and create the collections, then consume tasks with the solo pool."""
    from services.cli import CommandError

    if not settings.broker_url:
        raise CommandError("ENDODOC_BROKER_URL is not set: set it to the Redis URL the API enqueues on")
    from workers import tasks

    runtime = tasks.worker_runtime()
    from services.schema import ensure_schema

    ensure_schema(runtime)
    runtime.collections()
    print(f"worker model {runtime.model_version} loaded; consuming {args.queues}", flush=True)

    argv = ["worker", "--pool=solo", "--concurrency=1", f"--queues={args.queues}", f"--loglevel={args.loglevel}"]
    if args.hostname:
        argv.append(f"--hostname={args.hostname}")
    tasks.app.worker_main(argv)
    return 0


def cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    from services.ingest.dispatch import InProcessQueue, make_queue
    from services.ingest.reconcile import reconcile

    runtime = _open_runtime(settings)
    queue = make_queue(runtime)
    try:
        report = reconcile(runtime, queue, dry_run=args.dry_run)
        if isinstance(queue, InProcessQueue):
            queue.wait_idle()
    finally:
        queue.close()
        runtime.close()
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    verb = "would repair" if args.dry_run else "repaired"
    print(f"reconcile {verb}: {report.embedded_without_point} embedded images without a point, "
          f"{report.orphan_image_points} image points without an image, "
          f"{report.stuck_queued} images stuck in queued ({report.exhausted} of them failed after their attempts); "
          f"{report.requeued} enqueued again")
    if report.orphan_reference_points:
        print(f"{report.orphan_reference_points} reference points have no reference row (counted, not deleted)")
    for line in report.skipped:
        print(f"skipped: {line}")
    return 0


def cmd_reindex(args: argparse.Namespace, settings: Settings) -> int:
    from services.ingest.reindex import reindex

    runtime = _open_runtime(settings)
    try:
        report = reindex(runtime, switch_aliases=not args.no_switch)
    finally:
        runtime.close()
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    print(f"reindexed {report.references} references and {report.images} images with model {report.model_version}")
    for failure in report.references_failed:
        print(f"reference failed: {failure}")
    if report.aliases:
        for alias, collection in report.aliases.items():
            print(f"alias {alias} -> {collection}")
    elif report.references_failed or report.images_remaining:
        print(f"aliases kept: {len(report.references_failed)} references failed, "
              f"{report.images_remaining} images still under another model; fix them and run again")
    else:
        print("aliases kept (--no-switch, or the vector index has no aliases)")
    return 0
