"""Bad files that get past the upload: each embedding path marks them `failed` with the reason and embeds the rest.

Two ways lead there: the ingest service (`add_images`, which the demo calls) takes files
without the upload's format check, and a stored file can be damaged after it was accepted.
Both embedding paths run: the in-process queue of the embedded deployment, and the Celery
task of the production workers (run eagerly, without a broker).
"""

from __future__ import annotations

import re
import shutil

import pytest
from sqlalchemy import select

from services.catalog.models import Image, ImageStatus, Prediction
from services.cli import main
from services.db import unit_of_work
from services.ingest.dispatch import InProcessQueue
from services.ingest.service import UploadedFile, add_images
from tests.badinput.conftest import stored_vectors
from tests.badinput.corpus import REJECTED, case_ids
from tests.conftest import class_images

EMBED_TIMEOUT_S = 120
EMBEDDING_PATHS = ("in-process", "worker")
# A stored file removed from the blob folder, beside the corpus' damaged contents.
BLOB_DELETED = "blob-deleted"
CORRUPTIONS = (*case_ids(REJECTED), BLOB_DELETED)


def embed_through(path: str, runtime, image_ids, monkeypatch) -> None:
    """Embed the images on one path; a path that raises, instead of marking images failed, fails the test."""
    if path == "in-process":
        queue = InProcessQueue(runtime)
        try:
            queue.enqueue(image_ids)
            queue.wait_idle(timeout_s=EMBED_TIMEOUT_S)
        finally:
            queue.close()
        return

    from workers import tasks

    monkeypatch.setattr(tasks, "_runtime", runtime)
    result = tasks.embed_images_task.apply(args=[[str(image_id) for image_id in image_ids]])
    assert result.successful(), result.traceback


def image_row(runtime, image_id) -> Image:
    with unit_of_work(runtime.sessions) as session:
        image = session.get(Image, image_id)
        session.expunge(image)
        return image


def has_prediction(runtime, image_id) -> bool:
    with unit_of_work(runtime.sessions) as session:
        return session.scalar(select(Prediction).where(Prediction.image_id == image_id)) is not None


def uploaded(path) -> UploadedFile:
    return UploadedFile(path.name, path.read_bytes())


def assert_names_problem_and_fix(message: str, problem: tuple[str, ...], fix: str) -> None:
    for text in problem:
        assert text in message, f"{text!r} missing from {message!r}"
    assert fix.lower() in message.lower(), f"fix {fix!r} missing from {message!r}"


@pytest.mark.parametrize("case", REJECTED, ids=case_ids(REJECTED))
def test_ingest_service_fails_bad_file_and_embeds_good(
    case, runtime, procedure_uuid, source_jpeg, good_image, monkeypatch
):
    with unit_of_work(runtime.sessions) as session:
        files = [UploadedFile(case.filename, case.data(source_jpeg)), uploaded(good_image)]
        bad, good = add_images(session, runtime, procedure_uuid, files)

    assert bad.status == ImageStatus.FAILED
    assert bad.error.startswith("not a readable image: ")
    assert_names_problem_and_fix(bad.error, case.decode_problem, case.decode_fix)
    assert good.status == ImageStatus.QUEUED

    # Both ids are enqueued: the embedding step must skip the failed one, not stop on it.
    embed_through("in-process", runtime, [bad.image_id, good.image_id], monkeypatch)
    assert image_row(runtime, good.image_id).status == ImageStatus.EMBEDDED
    assert has_prediction(runtime, good.image_id)
    assert image_row(runtime, bad.image_id).error == bad.error


def queue_two_good_images(runtime, procedure_uuid, labeled_images):
    """Store two real images as `queued` and return their outcomes and the first one's file bytes."""
    victim_path, good_path = class_images(labeled_images, "polyp", 9)[7:9]
    with unit_of_work(runtime.sessions) as session:
        victim, good = add_images(session, runtime, procedure_uuid, [uploaded(victim_path), uploaded(good_path)])
    assert [victim.status, good.status] == [ImageStatus.QUEUED, ImageStatus.QUEUED]
    return victim, good, victim_path.read_bytes()


def damage_blob(runtime, settings, image_id, corruption: str, source_jpeg: bytes) -> None:
    """Replace or delete an accepted image's stored file, as a failing disk or a careless restore would."""
    blob = settings.resolved_blob_dir / image_row(runtime, image_id).blob_key
    assert blob.is_file()
    if corruption == BLOB_DELETED:
        blob.unlink()
        return
    [case] = [case for case in REJECTED if case.id == corruption]
    blob.write_bytes(case.data(source_jpeg))


def expected_read_error(corruption: str) -> tuple[tuple[str, ...], str]:
    if corruption == BLOB_DELETED:
        return ("missing",), "restore the blob folder"
    [case] = [case for case in REJECTED if case.id == corruption]
    return case.decode_problem, case.decode_fix


@pytest.mark.parametrize("embedding_path", EMBEDDING_PATHS)
@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_damaged_blob_fails_only_its_image(
    corruption, embedding_path, runtime, settings, procedure_uuid, labeled_images, source_jpeg, monkeypatch
):
    victim, good, _ = queue_two_good_images(runtime, procedure_uuid, labeled_images)
    damage_blob(runtime, settings, victim.image_id, corruption, source_jpeg)

    embed_through(embedding_path, runtime, [victim.image_id, good.image_id], monkeypatch)

    damaged = image_row(runtime, victim.image_id)
    assert damaged.status == ImageStatus.FAILED
    assert damaged.error.startswith("could not be read for embedding: ")
    problem, fix = expected_read_error(corruption)
    assert_names_problem_and_fix(damaged.error, problem, fix)
    assert not has_prediction(runtime, victim.image_id)
    assert image_row(runtime, good.image_id).status == ImageStatus.EMBEDDED
    assert has_prediction(runtime, good.image_id)
    vectors = stored_vectors(runtime, [str(victim.image_id), str(good.image_id)])
    assert set(vectors) == {str(good.image_id)}


@pytest.mark.parametrize("corruption", ["truncated-jpeg", BLOB_DELETED])
def test_upload_again_repairs_damaged_blob(
    corruption, runtime, settings, procedure_uuid, labeled_images, source_jpeg, monkeypatch
):
    victim, good, original = queue_two_good_images(runtime, procedure_uuid, labeled_images)
    damage_blob(runtime, settings, victim.image_id, corruption, source_jpeg)
    embed_through("in-process", runtime, [victim.image_id, good.image_id], monkeypatch)
    assert image_row(runtime, victim.image_id).status == ImageStatus.FAILED

    with unit_of_work(runtime.sessions) as session:
        [again] = add_images(session, runtime, procedure_uuid, [UploadedFile("again.jpg", original)])
    assert again.image_id == victim.image_id
    assert again.duplicate
    assert again.status == ImageStatus.QUEUED

    embed_through("in-process", runtime, [again.image_id], monkeypatch)
    repaired = image_row(runtime, victim.image_id)
    assert repaired.status == ImageStatus.EMBEDDED, repaired.error
    assert has_prediction(runtime, victim.image_id)
    assert runtime.blobs.get(repaired.blob_key) == original


@pytest.fixture
def cli_data_dir(tmp_path, monkeypatch):
    directory = tmp_path / "cli-data"
    monkeypatch.setenv("ENDODOC_DATA_DIR", str(directory))
    for name in ("ENDODOC_DATABASE_URL", "ENDODOC_QDRANT_URL", "ENDODOC_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    return directory


def test_cli_ingest_reports_every_bad_file(
    cli_data_dir, command_logging, tmp_path, labeled_images, source_jpeg, good_image, capsys
):
    gallery = tmp_path / "gallery"
    for label in ("normal-cecum", "polyp"):
        (gallery / label).mkdir(parents=True)
        for path in class_images(labeled_images, label, 2):
            shutil.copy(path, gallery / label / path.name)
    files = tmp_path / "files"
    files.mkdir()
    for case in REJECTED:
        (files / case.filename).write_bytes(case.data(source_jpeg))
    shutil.copy(good_image, files / good_image.name)

    assert main(["db", "upgrade"]) == 0
    assert main(["gallery", "add", str(gallery)]) == 0
    capsys.readouterr()
    names = [case.filename for case in REJECTED] + [good_image.name]
    assert main(["ingest", *[str(files / name) for name in names], "--site", "cli-bad-input",
                 "--procedure", "CLI-BAD-1", "--landmark-set", "hyperkvasir-lower-gi"]) == 1

    output = capsys.readouterr()
    assert f"{len(REJECTED)} of {len(names)} files failed" in output.err
    lines = {line.split(": ", 1)[0]: line for line in output.out.splitlines() if ": image " in line}
    assert set(lines) == set(names)
    for case in REJECTED:
        assert re.search(r": image [0-9a-f-]{36} failed: ", lines[case.filename]), lines[case.filename]
        assert_names_problem_and_fix(lines[case.filename], case.problem, case.fix)
    assert re.search(r": image [0-9a-f-]{36} embedded as [a-z0-9-]+$", lines[good_image.name]), lines[good_image.name]
