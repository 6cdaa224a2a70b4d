"""Batches decoded and preprocessed in a background thread while the model embeds the one before.

Decoding a JPEG and resizing it take a few milliseconds per image, the model tens of
milliseconds on a CPU. Done one after the other, the decode time is lost from the model's
throughput. In a second thread it overlaps with inference, because Pillow and NumPy release
the GIL while they work. One thread and one batch ahead are enough: the model is the slower
stage, and more threads would only take cores from torch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch
from PIL import Image

from services.embedding.embedder import Embedder

Item = TypeVar("Item")


@dataclass
class PreparedBatch(Generic[Item]):
    """One batch ready for `Embedder.embed_inputs`, with the items whose image could not be read."""

    items: list[Item] = field(default_factory=list)
    inputs: list[torch.Tensor] | None = None
    failures: list[tuple[Item, Exception]] = field(default_factory=list)


def prepare_ahead(
    batches: Iterable[Sequence[Item]],
    read: Callable[[Item], Image.Image],
    embedder: Embedder,
    *,
    errors: tuple[type[Exception], ...],
    ahead: int = 1,
) -> Iterator[PreparedBatch[Item]]:
    """Yield each batch decoded by `read` and preprocessed, preparing up to `ahead` batches in advance.

    `read` runs in a background thread and must not touch state the caller changes meanwhile,
    such as ORM objects of a session: pass it plain values. An exception of a type in `errors`
    marks only that item as failed; any other exception is raised from this iterator.
    """
    if ahead < 1:
        raise ValueError(f"ahead must be at least 1, got {ahead}")
    pending: deque[Future[PreparedBatch[Item]]] = deque()
    source = iter(batches)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="endodoc-decode") as pool:
        try:
            for batch in source:
                pending.append(pool.submit(_prepare, batch, read, embedder, errors))
                if len(pending) > ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            # A consumer that stops early leaves no work queued behind it.
            for future in pending:
                future.cancel()


def _prepare(
    batch: Sequence[Item],
    read: Callable[[Item], Image.Image],
    embedder: Embedder,
    errors: tuple[type[Exception], ...],
) -> PreparedBatch[Item]:
    prepared: PreparedBatch[Item] = PreparedBatch()
    pictures = []
    for item in batch:
        try:
            pictures.append(read(item))
        except errors as error:
            prepared.failures.append((item, error))
            continue
        prepared.items.append(item)
    if pictures:
        prepared.inputs = embedder.preprocess(pictures)
    return prepared
