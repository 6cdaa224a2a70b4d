"""Exceptions raised by the embedding package."""

from __future__ import annotations


class InvalidImageError(ValueError):
    """An uploaded file that is empty, not a supported image, truncated or too large.

    `reason` is a short sentence fit to show to the uploader.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WeightsError(RuntimeError):
    """A weight file that is missing, unreadable or does not match the model architecture."""
