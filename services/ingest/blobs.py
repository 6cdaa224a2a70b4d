"""Content-addressed storage of image bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from services.files import write_atomically


class BlobNotFoundError(FileNotFoundError):
    """A catalog row names a blob that the store does not have."""


class BlobStore(Protocol):
    """Stores bytes under keys derived from their sha256; writing the same key twice is harmless.

    `put` replaces a stored blob whose bytes differ from the new ones: under a content key that
    blob is damaged, and uploading the original file again repairs it.
    """

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...


def blob_key(sha256: str) -> str:
    """Return the key of content with this sha256: `ab/abcdef...` keeps folders small."""
    if len(sha256) != 64 or any(char not in "0123456789abcdef" for char in sha256):
        raise ValueError(f"invalid sha256 hex digest {sha256!r}")
    return f"{sha256[:2]}/{sha256}"


class FileBlobStore:
    """Blobs as files under one folder; writes go to a temporary file, then an atomic rename."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"blob key {key!r} points outside the blob folder {self.root}")
        return path

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        if path.exists() and path.read_bytes() == data:
            return
        write_atomically(path, data)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise BlobNotFoundError(f"blob {key!r} is missing from {self.root}; restore the blob folder") from None

    def exists(self, key: str) -> bool:
        return self._path(key).exists()
