"""The long-lived parts one process needs: database, blob store, vector index and model."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from services.db import make_engine, make_session_factory
from services.ingest.blobs import BlobStore, FileBlobStore
from services.settings import Settings
from services.vectors import VectorIndex, collection_name, open_vector_index

if TYPE_CHECKING:
    from services.embedding import Embedder


class Runtime:
    """Opens each outside system once per process; the model and vector index load on first use."""

    def __init__(
        self,
        settings: Settings,
        *,
        embedder: Embedder | None = None,
        vectors: VectorIndex | None = None,
        blobs: BlobStore | None = None,
    ) -> None:
        self.settings = settings
        self.engine = make_engine(settings.resolved_database_url, settings.database_connect_timeout_s)
        self.sessions: sessionmaker[Session] = make_session_factory(self.engine)
        self.blobs: BlobStore = blobs if blobs is not None else FileBlobStore(settings.resolved_blob_dir)
        self._embedder = embedder
        self._vectors = vectors
        self._lock = threading.Lock()

    @property
    def embedder(self) -> Embedder:
        """Return the embedding model, loading its weights on first use (safe from several threads)."""
        with self._lock:
            if self._embedder is None:
                from services.embedding import load_embedder

                self._embedder = load_embedder(self.settings.model)
            return self._embedder

    @property
    def vectors(self) -> VectorIndex:
        with self._lock:
            if self._vectors is None:
                self._vectors = open_vector_index(self.settings)
            return self._vectors

    @property
    def model_version(self) -> str:
        return self.embedder.model_version

    def collections(self) -> tuple[str, str]:
        """Return the (images, references) collections of the current model, creating them if needed."""
        embedder = self.embedder
        images = collection_name("images", embedder.model_version)
        references = collection_name("references", embedder.model_version)
        self.vectors.ensure_collection(images, embedder.dim)
        self.vectors.ensure_collection(references, embedder.dim)
        return images, references

    def close(self) -> None:
        with self._lock:
            if self._vectors is not None:
                self._vectors.close()
                self._vectors = None
        self.engine.dispose()
