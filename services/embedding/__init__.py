"""Image embedding: backbones, weight loading, preprocessing and the embedder the services call.

    embedder = load_embedder(settings.model)
    image = open_image(data, max_pixels=settings.image_max_pixels, draft_size=embedder.input_size)
    vectors = embedder.embed([image])  # float32, shape (1, embedder.dim), unit-length rows
"""

from services.embedding.embedder import Embedder, load_embedder
from services.embedding.errors import InvalidImageError, WeightsError
from services.embedding.images import open_image

__all__ = ["Embedder", "InvalidImageError", "WeightsError", "load_embedder", "open_image"]
