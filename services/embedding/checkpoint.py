"""Trained checkpoints (LoRA adapters plus a fusion head) on top of the backbones."""

from __future__ import annotations

from pathlib import Path

from services.embedding.model import EmbeddingModel


def apply_checkpoint(model: EmbeddingModel, path: Path, sha256: str) -> None:
    """Load the adapters and fusion head stored at `path` into `model`.

    TODO: checkpoint loading is not implemented yet. Until it is, a configured checkpoint
    raises NotImplementedError instead of silently embedding with the untrained backbones.
    """
    raise NotImplementedError(
        f"Trained checkpoints are not supported by this version of endodoc: cannot load {path} "
        f"(sha256 {sha256[:12]}). Unset ENDODOC_MODEL__CHECKPOINT to embed with the untrained backbones."
    )
