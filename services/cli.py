"""The `endodoc` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from services.catalog.models import Procedure, ProcedureKind
from services.catalog.queries import CatalogError, get_or_create_procedure, get_or_create_site, parse_uuid
from services.coverage.landmarks import UnknownLandmarkSetError
from services.coverage.report import procedure_coverage
from services.db import unit_of_work
from services.embedding.errors import WeightsError
from services.logs import configure_logging
from services.schema import SchemaOutdatedError, ensure_schema
from services.settings import Settings
from services.vectors import VectorIndexError


class CommandError(Exception):
    """A command failed for a reason the user can fix; the message explains the fix."""


def _runtime(settings: Settings):
    """Open the runtime and make sure the database schema is current."""
    from services.runtime import Runtime

    runtime = Runtime(settings)
    ensure_schema(runtime)
    return runtime


def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    from services.catalog import migrate

    if args.db_command == "upgrade":
        migrate.upgrade(settings.resolved_database_url, args.revision)
    else:
        migrate.downgrade(settings.resolved_database_url, args.revision)
    print(f"database {args.db_command}d to {args.revision}")
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from services.demo import format_report, run_demo

    runtime = _runtime(settings)
    try:
        result = run_demo(
            runtime,
            Path(args.images),
            seed=args.seed,
            reference_fraction=args.reference_fraction,
            procedures=args.procedures,
            without_required=args.without_required,
            show_progress=not args.no_progress,
        )
    finally:
        runtime.close()
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


def _expand_files(paths: Sequence[str]) -> list[Path]:
    from services.demo import IMAGE_SUFFIXES

    files = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files.extend(sorted(item for item in path.iterdir() if item.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            raise CommandError(f"file not found: {name!r}")
    if not files:
        raise CommandError(f"no image files in {list(paths)}")
    return files


def cmd_gallery_add(args: argparse.Namespace, settings: Settings) -> int:
    from services.demo import scan_class_folders
    from services.ingest.service import LabeledFile, UploadedFile, add_references

    if args.label:
        labeled = [(args.label, path) for path in _expand_files(args.paths)]
    else:
        if len(args.paths) != 1:
            raise CommandError("without --label, pass one folder with one subfolder per landmark code")
        labeled = [(item.label, item.path) for item in scan_class_folders(Path(args.paths[0]))]
    runtime = _runtime(settings)
    try:
        with unit_of_work(runtime.sessions) as session:
            site = get_or_create_site(session, args.site) if args.site else None
            files = [LabeledFile(label, UploadedFile(path.name, path.read_bytes())) for label, path in labeled]
            references = add_references(session, runtime, site, files)
            print(f"added {len(references)} reference images to the {'site ' + args.site if args.site else 'shared'} gallery "
                  f"(model {runtime.model_version})")
    finally:
        runtime.close()
    return 0


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy import select

    from services.api.uploads import store_files
    from services.catalog.models import Image, Prediction
    from services.ingest.dispatch import InProcessQueue, make_queue

    paths = _expand_files(args.paths)
    performed_at = datetime.fromisoformat(args.performed_at) if args.performed_at else datetime.now(UTC)
    runtime = _runtime(settings)
    if not settings.broker_url:
        # Embedding runs in this process: load the model and open the vector store before
        # storing anything, so a missing weight file or a store locked by `endodoc serve`
        # stops the command instead of failing every image.
        runtime.collections()
    queue = make_queue(runtime)
    try:
        with unit_of_work(runtime.sessions) as session:
            site = get_or_create_site(session, args.site)
            procedure, _ = get_or_create_procedure(
                session, site, args.procedure, ProcedureKind(args.kind), args.landmark_set, performed_at
            )
            # The same checks as API uploads: JPEG, PNG or TIFF only, fully decoded, stored without metadata.
            outcomes = store_files(session, runtime, procedure.id, [(path.name, path.read_bytes()) for path in paths])
            procedure_id = procedure.id
        queue.enqueue([outcome.image_id for outcome in outcomes if outcome.status.value == "queued"])
        if isinstance(queue, InProcessQueue):
            queue.wait_idle()
        with unit_of_work(runtime.sessions) as session:
            images = {image.id: image for image in session.scalars(
                select(Image).where(Image.id.in_([outcome.image_id for outcome in outcomes]))
            )}
            labels = dict(session.execute(
                select(Prediction.image_id, Prediction.landmark_code).where(
                    Prediction.image_id.in_(list(images)), Prediction.model_version == runtime.model_version
                )
            ).all())
    finally:
        queue.close()
        runtime.close()
    for outcome in outcomes:
        image = images[outcome.image_id]
        detail = f": {image.error}" if image.error else ""
        label = f" as {labels[image.id]}" if image.id in labels else ""
        duplicate = " (already in the procedure)" if outcome.duplicate else ""
        print(f"{outcome.filename}: image {image.id} {image.status.value}{label}{duplicate}{detail}")
    print(f"procedure {procedure_id}")
    failed = sum(images[outcome.image_id].status.value == "failed" for outcome in outcomes)
    if failed:
        # A script must see that not every file went in, as the API's per-file statuses show it.
        print(f"{failed} of {len(outcomes)} files failed; fix or replace them and run the command again", file=sys.stderr)
        return 1
    return 0


def _find_procedure(session, procedure: str, site_slug: str | None) -> Procedure:
    """Find a procedure by UUID, or by its external id at the site given with --site."""
    from sqlalchemy import select

    from services.catalog.models import Site

    if site_slug is not None:
        found = session.scalar(
            select(Procedure).join(Site).where(Site.slug == site_slug, Procedure.external_id == procedure)
        )
        if found is None:
            raise CommandError(f"procedure {procedure!r} not found at site {site_slug!r}")
        return found
    try:
        procedure_id = parse_uuid(procedure, "procedure")
    except CatalogError as error:
        raise CommandError(f"{error}; to look a procedure up by its external id, add --site SLUG") from None
    found = session.get(Procedure, procedure_id)
    if found is None:
        raise CommandError(f"procedure {procedure} not found")
    return found


def format_image_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{count} {status}" for status, count in counts.items())


def cmd_coverage(args: argparse.Namespace, settings: Settings) -> int:
    runtime = _runtime(settings)
    try:
        with unit_of_work(runtime.sessions) as session:
            procedure = _find_procedure(session, args.procedure_id, args.site)
            report = procedure_coverage(session, procedure, runtime.model_version, settings.coverage.min_score)
    finally:
        runtime.close()
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    print(f"Procedure {report.external_id} ({report.procedure_id}), landmark set {report.landmark_set}: "
          f"coverage {report.coverage:.0%}")
    for landmark in report.landmarks:
        where = f" by image {landmark.image_id} (score {landmark.score:.2f})" if landmark.image_id else ""
        if landmark.candidate_image_id:
            where = (
                f" (best candidate: image {landmark.candidate_image_id}, score {landmark.candidate_score:.2f}, "
                f"below the threshold {settings.coverage.min_score:.2f})"
            )
        print(f"  {landmark.code:<28} {landmark.status}{where}")
    print(f"  images: {format_image_counts(report.images)}")
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from services.api.app import create_app

    runtime = _runtime(settings)
    if not settings.broker_url:
        # This process embeds uploads: load the model and open the vector store now, so a bad
        # weight setting or a store held by another process stops the server at start.
        runtime.collections()
    try:
        uvicorn.run(create_app(settings, runtime=runtime), host=args.host, port=args.port, log_level="info")
    finally:
        runtime.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="endodoc", description="Photo-documentation coverage for GI endoscopy.")
    parser.add_argument("--log-level", help="log level: DEBUG, INFO, WARNING (default: ENDODOC_LOG_LEVEL or WARNING)")
    commands = parser.add_subparsers(dest="command", required=True)

    db = commands.add_parser("db", help="manage the database schema")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser("upgrade", help="apply migrations up to a revision")
    upgrade.add_argument("revision", nargs="?", default="head")
    downgrade = db_commands.add_parser("downgrade", help="revert migrations down to a revision")
    downgrade.add_argument("revision", help="target revision, or `base` to drop every table")
    db.set_defaults(handler=cmd_db)

    demo = commands.add_parser("demo", help="run the whole path on a folder with one subfolder per class")
    demo.add_argument("--images", required=True, help="folder with one subfolder of images per landmark code")
    demo.add_argument("--json", action="store_true", help="print one JSON object instead of the text report")
    demo.add_argument("--seed", type=int, default=0, help="seed of the reference/query split (default 0)")
    demo.add_argument("--reference-fraction", type=float, default=0.5, help="share of each class used as references")
    demo.add_argument("--procedures", type=int, default=6, help="procedures to build from the queries (default 6)")
    demo.add_argument("--without-required", type=int, default=2,
                      help="procedures that get no image of a required landmark (default 2)")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(handler=cmd_demo)

    gallery = commands.add_parser("gallery", help="manage the reference gallery")
    gallery_commands = gallery.add_subparsers(dest="gallery_command", required=True)
    add = gallery_commands.add_parser("add", help="embed and add labeled reference images")
    add.add_argument("paths", nargs="+", help="image files or folders; without --label one folder of class subfolders")
    add.add_argument("--label", help="landmark code of every image given")
    add.add_argument("--site", help="site slug; unset adds to the gallery shared by all sites")
    add.set_defaults(handler=cmd_gallery_add)

    ingest = commands.add_parser("ingest", help="add images to a procedure and embed them")
    ingest.add_argument("paths", nargs="+", help="image files or folders of images")
    ingest.add_argument("--site", required=True, help="site slug (created if new)")
    ingest.add_argument("--procedure", required=True, help="external procedure id at the site (created if new)")
    ingest.add_argument("--kind", choices=[kind.value for kind in ProcedureKind], default="colonoscopy")
    ingest.add_argument("--landmark-set", default="colonoscopy-completion", help="landmark set code")
    ingest.add_argument("--performed-at", help="ISO 8601 time of the procedure (default: now)")
    ingest.set_defaults(handler=cmd_ingest)

    coverage = commands.add_parser("coverage", help="print the documentation coverage of a procedure")
    coverage.add_argument("procedure_id", help="procedure UUID, or its external id together with --site")
    coverage.add_argument("--site", help="site slug, to name the procedure by its external id")
    coverage.add_argument("--json", action="store_true")
    coverage.set_defaults(handler=cmd_coverage)

    serve = commands.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(handler=cmd_serve)

    from services.ingest.commands import add_commands as add_ingest_commands

    add_ingest_commands(commands)
    from services.embedding.commands import add_commands as add_embedding_commands

    add_embedding_commands(commands)
    from services.api.commands import add_commands as add_site_commands

    add_site_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        settings = Settings()
    except ValidationError as error:
        problems = "; ".join(
            f"ENDODOC_{'__'.join(str(part) for part in item['loc']).upper()}: {item['msg']}"
            if item["loc"]
            else item["msg"].removeprefix("Value error, ")
            for item in error.errors()
        )
        print(f"endodoc: error: invalid settings: {problems}", file=sys.stderr)
        return 2
    try:
        return args.handler(args, settings)
    except (
        CommandError,
        CatalogError,
        UnknownLandmarkSetError,
        SchemaOutdatedError,
        VectorIndexError,
        WeightsError,
    ) as error:
        print(f"endodoc: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
