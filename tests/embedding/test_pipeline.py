"""Batches prepared in a background thread: order, failures, errors and equality with `Embedder.embed`."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from services.embedding import InvalidImageError, open_image
from services.embedding.embedder import resolve_autocast
from services.embedding.pipeline import prepare_ahead
from tests.conftest import class_images

MAX_PIXELS = 50_000_000


@pytest.fixture(scope="module")
def image_files(labeled_images):
    paths = class_images(labeled_images, "polyp", 5) + class_images(labeled_images, "normal-cecum", 5)
    return [path.read_bytes() for path in paths]


def decode(data: bytes):
    return open_image(data, max_pixels=MAX_PIXELS)


def test_pipelined_batches_embed_like_embed(lite_embedder, image_files):
    batches = [image_files[0:4], image_files[4:8], image_files[8:10]]
    prepared = list(prepare_ahead(batches, decode, lite_embedder, errors=(InvalidImageError,)))

    assert [batch.items for batch in prepared] == batches
    piped = np.concatenate([lite_embedder.embed_inputs(batch.inputs) for batch in prepared])
    direct = lite_embedder.embed([decode(data) for data in image_files])
    np.testing.assert_allclose(piped, direct, atol=1e-5)


def test_unreadable_items_are_reported_and_the_rest_embedded(lite_embedder, image_files):
    broken = b"<html>not an image</html>"
    batches = [[image_files[0], broken, image_files[1]], [broken]]

    first, second = prepare_ahead(batches, decode, lite_embedder, errors=(InvalidImageError,))

    assert first.items == [image_files[0], image_files[1]]
    assert [item for item, _ in first.failures] == [broken]
    assert isinstance(first.failures[0][1], InvalidImageError)
    assert lite_embedder.embed_inputs(first.inputs).shape == (2, lite_embedder.dim)
    assert second.items == []
    assert second.inputs is None
    assert len(second.failures) == 1


def test_unexpected_errors_are_raised_to_the_consumer(lite_embedder, image_files):
    def read(data: bytes):
        if data is image_files[2]:
            raise RuntimeError("disk gone")
        return decode(data)

    batches = [image_files[0:2], image_files[2:4]]
    with pytest.raises(RuntimeError, match="disk gone"):
        list(prepare_ahead(batches, read, lite_embedder, errors=(InvalidImageError,)))


def test_reads_one_batch_ahead_in_thread(lite_embedder, image_files):
    threads: set[str] = set()
    read_count = 0

    def read(data: bytes):
        nonlocal read_count
        threads.add(threading.current_thread().name)
        read_count += 1
        return decode(data)

    batches = [[data] for data in image_files[:4]]
    iterator = prepare_ahead(batches, read, lite_embedder, errors=())
    next(iterator)
    # While the consumer works on the first batch, only the second is prepared; nothing further is read.
    iterator.close()

    assert threads and all(name.startswith("endodoc-decode") for name in threads)
    assert read_count <= 2


def test_ahead_must_be_positive(lite_embedder):
    with pytest.raises(ValueError, match="ahead must be at least 1"):
        list(prepare_ahead([[b"x"]], decode, lite_embedder, errors=(), ahead=0))


@pytest.mark.parametrize(
    ("precision", "device", "expected"),
    [
        ("auto", "cpu", None),
        ("auto", "cuda", torch.bfloat16),
        ("float32", "cuda", None),
        ("bfloat16", "cpu", torch.bfloat16),
    ],
)
def test_autocast_follows_precision_and_device(precision, device, expected):
    assert resolve_autocast(precision, torch.device(device)) == expected
