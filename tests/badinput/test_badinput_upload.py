"""Bad and unusual uploads through the HTTP API: each file gets its expected outcome, and good files beside it embed."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.embedding import open_image
from tests.badinput.conftest import stored_blob, stored_vectors
from tests.badinput.corpus import (
    ACCEPTED,
    ALL_CASES,
    PALETTE_OPAQUE_COLOUR,
    REJECTED,
    Case,
    case_ids,
    cmyk_jpeg,
    decode_rgb,
    exif_rotated_jpeg,
    gradient_8_bit_png,
    gradient_16_bit_png,
    one_pixel_png,
    palette_png_with_transparency,
    physically_rotated_jpeg,
    unrotated_jpeg,
)
from tests.conftest import class_images

EMBED_TIMEOUT_S = 120


def images_url(procedure_id: str) -> str:
    return f"/v1/procedures/{procedure_id}/images"


def assert_names_problem_and_fix(message: str, case: Case) -> None:
    for text in case.problem:
        assert text in message, f"{case.id}: {text!r} missing from {message!r}"
    assert case.fix.lower() in message.lower(), f"{case.id}: fix {case.fix!r} missing from {message!r}"


def upload(client, procedure_id: str, files: list[tuple[str, bytes, str]]):
    return client.post(
        images_url(procedure_id),
        files=[("files", (name, data, content_type)) for name, data, content_type in files],
    )


def upload_and_embed(client, queue, procedure_id: str, files: list[tuple[str, bytes, str]]) -> list[dict]:
    """Upload files that must all be accepted, wait for the embedding, and return each image as the API shows it."""
    response = upload(client, procedure_id, files)
    assert response.status_code == 202, response.text
    outcomes = response.json()["images"]
    assert [outcome["status"] for outcome in outcomes] == ["queued"] * len(files), outcomes
    queue.wait_idle(timeout_s=EMBED_TIMEOUT_S)
    return [client.get(f"/v1/images/{outcome['image_id']}").json() for outcome in outcomes]


def cosine(first, second) -> float:
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    return float(first @ second / (np.linalg.norm(first) * np.linalg.norm(second)))


def embedding_decode(runtime, data: bytes) -> Image.Image:
    """Decode stored bytes the way the embedding step does."""
    return open_image(data, max_pixels=runtime.settings.image_max_pixels, draft_size=runtime.embedder.input_size)


@pytest.mark.parametrize("case", REJECTED, ids=case_ids(REJECTED))
def test_rejected_file_alone_is_422(case, client, procedure_id, source_jpeg):
    response = upload(client, procedure_id, [(case.filename, case.data(source_jpeg), case.content_type)])

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_image"
    assert error["message"].startswith(f"{case.filename}: ")
    assert_names_problem_and_fix(error["message"], case)
    [outcome] = error["details"]["images"]
    assert outcome["status"] == "failed"
    assert_names_problem_and_fix(outcome["error"], case)


@pytest.mark.parametrize("case", ALL_CASES, ids=case_ids(ALL_CASES))
def test_bad_file_beside_good_image(
    case, client, queue, runtime, procedure_id, source_jpeg, good_image
):
    response = upload(
        client,
        procedure_id,
        [
            (case.filename, case.data(source_jpeg), case.content_type),
            (good_image.name, good_image.read_bytes(), "image/jpeg"),
        ],
    )

    assert response.status_code == 202, response.text
    bad, good = response.json()["images"]
    assert bad["filename"] == case.filename
    assert good["status"] == "queued"
    if case.outcome == "rejected":
        assert bad["status"] == "failed"
        assert_names_problem_and_fix(bad["error"], case)
    else:
        assert bad["status"] == "queued", bad["error"]

    queue.wait_idle(timeout_s=EMBED_TIMEOUT_S)
    good_now = client.get(f"/v1/images/{good['image_id']}").json()
    bad_now = client.get(f"/v1/images/{bad['image_id']}").json()
    vectors = stored_vectors(runtime, [good["image_id"], bad["image_id"]])
    assert good_now["status"] == "embedded", good_now["error"]
    assert good_now["prediction"] is not None
    assert good["image_id"] in vectors
    if case.outcome == "rejected":
        assert bad_now["status"] == "failed"
        assert bad_now["error"] == bad["error"]
        assert bad_now["thumbnail_url"] is None
        assert bad["image_id"] not in vectors
    else:
        assert bad_now["status"] == "embedded", bad_now["error"]
        assert bad_now["prediction"] is not None
        assert bad["image_id"] in vectors
        thumbnail = client.get(bad_now["thumbnail_url"])
        assert thumbnail.status_code == 200
        assert Image.open(io.BytesIO(thumbnail.content)).format == "JPEG"


def test_corpus_covers_every_case():
    assert {case.id for case in ACCEPTED} == {
        "16-bit-grey-png", "cmyk-jpeg", "palette-png-transparency", "exif-rotated-jpeg", "1x1-png",
        "parent-path-filename",
    }
    assert {case.id for case in REJECTED} == {
        "zero-byte", "text-as-jpeg", "html-as-jpeg", "truncated-jpeg", "decompression-bomb-png",
    }


def test_decompression_bomb_is_a_few_kilobytes(source_jpeg):
    [bomb] = [case for case in REJECTED if case.id == "decompression-bomb-png"]
    assert len(bomb.data(source_jpeg)) < 4096


def test_16_bit_grey_png_keeps_its_gradient(client, queue, runtime, procedure_id):
    deep, shallow = upload_and_embed(
        client, queue, procedure_id,
        [("ramp16.png", gradient_16_bit_png(), "image/png"), ("ramp8.png", gradient_8_bit_png(), "image/png")],
    )

    decoded = np.asarray(embedding_decode(runtime, stored_blob(runtime, deep["id"])), dtype=np.int64)
    ramp = decoded[0, :, 0]
    assert ramp[0] == 0
    assert ramp[-1] == 255
    assert np.all(np.diff(ramp) >= 0)
    assert np.all(decoded == decoded[:1, :, :1])  # grey, and every row the same
    assert abs(decoded.mean() - 127.5) < 1

    thumbnail = client.get(f"/v1/images/{deep['id']}/thumbnail?size=128")
    thumbnail_pixels = np.asarray(Image.open(io.BytesIO(thumbnail.content)).convert("L"), dtype=np.float64)
    assert 110 < thumbnail_pixels.mean() < 145
    assert thumbnail_pixels[:, :8].mean() < 20
    assert thumbnail_pixels[:, -8:].mean() > 235

    vectors = stored_vectors(runtime, [deep["id"], shallow["id"]])
    assert cosine(vectors[deep["id"]].vector, vectors[shallow["id"]].vector) > 0.999


def test_cmyk_jpeg_keeps_its_colours(client, queue, runtime, procedure_id, source_jpeg):
    cmyk, rgb = upload_and_embed(
        client, queue, procedure_id,
        [("cmyk.jpg", cmyk_jpeg(source_jpeg), "image/jpeg"), ("rgb.jpg", unrotated_jpeg(source_jpeg), "image/jpeg")],
    )

    decoded = open_image(stored_blob(runtime, cmyk["id"]), max_pixels=runtime.settings.image_max_pixels)
    original = decode_rgb(source_jpeg)
    assert decoded.size == original.size
    difference = np.abs(np.asarray(decoded, dtype=np.float64) - np.asarray(original, dtype=np.float64))
    assert difference.mean() < 4

    vectors = stored_vectors(runtime, [cmyk["id"], rgb["id"]])
    assert cosine(vectors[cmyk["id"]].vector, vectors[rgb["id"]].vector) > 0.99


def test_palette_png_transparency_becomes_black(client, queue, runtime, procedure_id):
    [palette] = upload_and_embed(
        client, queue, procedure_id, [("palette.png", palette_png_with_transparency(), "image/png")]
    )

    decoded = open_image(stored_blob(runtime, palette["id"]), max_pixels=runtime.settings.image_max_pixels)
    pixels = np.asarray(decoded)
    assert decoded.size == (64, 32)
    assert np.all(pixels[:, :32] == (0, 0, 0))
    assert np.all(pixels[:, 32:] == PALETTE_OPAQUE_COLOUR)


def test_exif_rotated_jpeg_embeds_upright(client, queue, runtime, procedure_id, source_jpeg):
    rotated, physical, unrotated = upload_and_embed(
        client, queue, procedure_id,
        [
            ("rotated.jpg", exif_rotated_jpeg(source_jpeg), "image/jpeg"),
            ("physical.jpg", physically_rotated_jpeg(source_jpeg), "image/jpeg"),
            ("unrotated.jpg", unrotated_jpeg(source_jpeg), "image/jpeg"),
        ],
    )

    width, height = decode_rgb(source_jpeg).size
    assert (rotated["width"], rotated["height"]) == (height, width)
    stored = Image.open(io.BytesIO(stored_blob(runtime, rotated["id"])))
    assert stored.size == (height, width)
    assert not stored.getexif()

    vectors = stored_vectors(runtime, [rotated["id"], physical["id"], unrotated["id"]])
    upright_similarity = cosine(vectors[rotated["id"]].vector, vectors[physical["id"]].vector)
    unrotated_similarity = cosine(vectors[rotated["id"]].vector, vectors[unrotated["id"]].vector)
    assert upright_similarity > 0.995
    # The check can fail: the same pixels left sideways embed measurably differently.
    assert upright_similarity - unrotated_similarity > 0.05


def test_one_pixel_image_is_embedded(client, queue, runtime, procedure_id):
    [dot] = upload_and_embed(client, queue, procedure_id, [("dot.png", one_pixel_png(), "image/png")])

    assert (dot["width"], dot["height"]) == (1, 1)
    assert dot["status"] == "embedded"
    vector = np.asarray(stored_vectors(runtime, [dot["id"]])[dot["id"]].vector)
    assert np.all(np.isfinite(vector))
    assert abs(np.linalg.norm(vector) - 1) < 1e-3


def files_under(root: Path) -> set[Path]:
    return {path.resolve() for path in root.rglob("*") if path.is_file()}


def test_parent_path_filename_stays_inside(
    client, queue, runtime, settings, procedure_id, source_jpeg, tmp_path
):
    marker = uuid.uuid4().hex
    names = [
        f"../../../{marker}-a.jpg",
        f"..\\..\\..\\{marker}-b.jpg",
        f"/tmp/{marker}-c.jpg",
        f"blobs/../../../{marker}-d.jpg",
        f"..%2f..%2f{marker}-e.jpg",
    ]
    picture = decode_rgb(source_jpeg)
    files = []
    for quality, name in enumerate(names, start=80):
        output = io.BytesIO()
        picture.save(output, "JPEG", quality=quality)  # each file different, so none is a duplicate
        files.append((name, output.getvalue(), "image/jpeg"))
    before = files_under(tmp_path)

    response = upload(client, procedure_id, files)
    assert response.status_code == 202, response.text
    outcomes = response.json()["images"]
    queue.wait_idle(timeout_s=EMBED_TIMEOUT_S)

    assert [outcome["filename"] for outcome in outcomes] == names
    assert [outcome["status"] for outcome in outcomes] == ["queued"] * len(names)
    data_dir = settings.data_dir.resolve()
    new_files = files_under(tmp_path) - before
    assert new_files
    outside = [path for path in new_files if not path.is_relative_to(data_dir)]
    assert outside == []
    assert [path for path in new_files if marker in str(path)] == []
    assert list(Path("/tmp").glob(f"*{marker}*")) == []
    for outcome in outcomes:
        image = client.get(f"/v1/images/{outcome['image_id']}").json()
        assert image["status"] == "embedded"
        blob = settings.resolved_blob_dir / image["sha256"][:2] / image["sha256"]
        assert blob.is_file()


def real_files(paths: list[Path]) -> list[tuple[str, bytes, str]]:
    return [(path.name, path.read_bytes(), "image/jpeg") for path in paths]


def chunked(body: bytes, size: int = 4096):
    for start in range(0, len(body), size):
        yield body[start : start + size]


def multipart_body(files: list[tuple[str, bytes, str]], boundary: str) -> bytes:
    body = b""
    for name, data, content_type in files:
        body += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


LIMIT_CASES = ("too-many-files", "declared-body-too-large", "streamed-body-too-large")


@pytest.mark.parametrize("limit", LIMIT_CASES)
def test_request_over_limit_is_413_and_stores_nothing(
    limit, client, queue, settings, procedure_id, labeled_images, good_image
):
    files = real_files(class_images(labeled_images, "polyp", 10)[7:10])
    total_file_bytes = sum(len(data) for _, data, _ in files)
    if limit == "too-many-files":
        settings.upload_max_files = 2
        response = upload(client, procedure_id, files)
        expected = ("too_many_files", ("Maximum number of files is 2", "ENDODOC_UPLOAD_MAX_FILES"), "at most 2 files")
    else:
        settings.upload_max_bytes = total_file_bytes // 2
        if limit == "declared-body-too-large":
            response = upload(client, procedure_id, files)
        else:
            boundary = "bad-input-boundary"
            response = client.post(
                images_url(procedure_id),
                content=chunked(multipart_body(files, boundary)),
                headers={"content-type": f"multipart/form-data; boundary={boundary}"},
            )
            assert "content-length" not in {key.lower() for key in response.request.headers}
        expected = (
            "too_large",
            (f"limit of {settings.upload_max_bytes} bytes", "ENDODOC_UPLOAD_MAX_BYTES"),
            "send fewer or smaller files per request",
        )

    code, problem, fix = expected
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == code
    for text in problem:
        assert text in error["message"]
    assert fix in error["message"]
    assert client.get(images_url(procedure_id)).json()["total"] == 0

    settings.upload_max_files, settings.upload_max_bytes = 200, 50 * 1024 * 1024
    [good] = upload_and_embed(client, queue, procedure_id, real_files([good_image]))
    assert good["status"] == "embedded"
    assert good["prediction"] is not None
