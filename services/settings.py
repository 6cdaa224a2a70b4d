"""The one settings class of endodoc, read from `ENDODOC_*` environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ProfileName = Literal[
    "lite", "dinov2-gastronet", "dinov2", "gastronet", "dinov2-gastronet-resnet50", "gastronet-resnet50"
]


def default_data_dir() -> Path:
    """Return the per-user data directory: `$XDG_DATA_HOME/endodoc` or `~/.local/share/endodoc`."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "endodoc"


class ModelSettings(BaseModel):
    """Embedding model: profile, weight files and inference options."""

    profile: ProfileName | None = Field(
        default=None,
        description="Model profile. Unset: `dinov2-gastronet` when both weight files are set, else `lite`.",
    )
    dinov2_weights: Path | None = Field(default=None, description="DINOv2 ViT-S/14 reg4 weight file.")
    gastronet_weights: Path | None = Field(default=None, description="GastroNet-5M ViT-S/16 weight file.")
    gastronet_resnet50_weights: Path | None = Field(default=None, description="GastroNet-5M ResNet50 weight file.")
    hub_download: bool = Field(
        default=False, description="Allow DINOv2 weights from the timm hub when no file is set (needs network)."
    )
    random_weights: bool = Field(
        default=False, description="Initialise backbones randomly when no weights are set (tests only)."
    )
    checkpoint: Path | None = Field(default=None, description="Trained checkpoint (adapters and fusion head).")
    batch_size: int = Field(default=32, ge=1, le=1024)
    device: str = Field(default="auto", description="`auto`, `cpu`, `cuda` or `cuda:N`.")
    num_threads: int | None = Field(default=None, ge=1, description="torch CPU threads; unset keeps torch's default.")
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="Inference precision. `auto`: bfloat16 autocast on CUDA, float32 on CPUs without fast bfloat16.",
    )
    compile: bool = Field(
        default=False, description="Compile the model with torch.compile; docs/benchmarks.md has the measurements."
    )

    def resolved_profile(self) -> ProfileName:
        """Return the configured profile, or pick one from the weight files that are set."""
        if self.profile is not None:
            return self.profile
        if self.dinov2_weights is not None and self.gastronet_weights is not None:
            return "dinov2-gastronet"
        return "lite"


class CoverageSettings(BaseModel):
    """Landmark labelling by weighted k-NN over the reference gallery."""

    knn_k: int = Field(default=10, ge=1, le=200, description="Reference neighbours that vote on a label.")
    knn_temperature: float = Field(
        default=0.05, gt=0, description="Softmax temperature over cosine similarities for vote weights."
    )
    # With the untrained `lite` model on HyperKvasir, most wrong `normal-cecum` votes had a share
    # below 0.8, while most right ones were above it. docs/benchmarks.md has the measurements.
    min_score: float = Field(
        default=0.8, ge=0, le=1, description="Vote share a label needs before it documents a landmark."
    )
    evidence_count: int = Field(default=3, ge=1, le=20, description="Reference neighbours kept as evidence.")


class Settings(BaseSettings):
    """endodoc settings. Unset URLs mean the embedded deployment inside `data_dir`."""

    model_config = SettingsConfigDict(env_prefix="ENDODOC_", env_nested_delimiter="__", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; unset: SQLite in data_dir.")
    database_connect_timeout_s: int = Field(
        default=10, ge=2, description="Seconds a new PostgreSQL connection may take before the request fails."
    )
    qdrant_url: str | None = Field(default=None, description="Qdrant server URL; unset: qdrant-edge in data_dir.")
    qdrant_api_key: str | None = None
    qdrant_timeout_s: float = Field(default=10.0, gt=0)
    broker_url: str | None = Field(default=None, description="Celery broker URL; unset: tasks run in process.")
    blob_dir: Path | None = Field(default=None, description="Image blob folder; unset: data_dir/blobs.")

    model: ModelSettings = Field(default_factory=ModelSettings)
    coverage: CoverageSettings = Field(default_factory=CoverageSettings)

    upload_max_bytes: int = Field(default=50 * 1024 * 1024, ge=1, description="Largest upload request body.")
    upload_max_files: int = Field(default=200, ge=1, description="Maximum number of files in one upload request.")
    admin_api_key: SecretStr | None = Field(
        default=None, description="Admin API key for site and key management; unset: no admin access."
    )
    image_max_pixels: int = Field(
        default=40_000_000, ge=1, description="Largest decoded image in pixels (decompression bomb guard)."
    )
    task_time_limit_s: int = Field(default=600, ge=1)
    broker_visibility_timeout_s: int | None = Field(
        default=None,
        ge=1,
        description="Seconds before Redis redelivers an unacknowledged task; unset: twice task_time_limit_s.",
    )
    embed_max_attempts: int = Field(
        default=3, ge=1, description="Embedding attempts per image before a worker crash marks it failed."
    )
    embed_max_retries: int = Field(
        default=8, ge=0, description="Retries of an embedding task while Qdrant, PostgreSQL or Redis is unavailable."
    )
    reconcile_queued_after_s: int = Field(
        default=900, ge=1, description="Age of a `queued` image after which reconciliation enqueues it again."
    )
    reconcile_interval_s: int = Field(default=600, ge=1, description="Period of the scheduled reconciliation task.")

    @property
    def resolved_visibility_timeout_s(self) -> int:
        """Return the broker visibility timeout: the setting, or twice the task time limit."""
        if self.broker_visibility_timeout_s is not None:
            return self.broker_visibility_timeout_s
        return 2 * self.task_time_limit_s

    @model_validator(mode="after")
    def _check_visibility_timeout(self) -> Settings:
        """Reject a broker visibility timeout that would redeliver tasks while they still run."""
        if self.broker_visibility_timeout_s is not None and self.broker_visibility_timeout_s <= self.task_time_limit_s:
            raise ValueError(
                f"ENDODOC_BROKER_VISIBILITY_TIMEOUT_S={self.broker_visibility_timeout_s} is not above "
                f"ENDODOC_TASK_TIME_LIMIT_S={self.task_time_limit_s}: Redis would hand a running task to a "
                "second worker; raise the visibility timeout or unset it (default: twice the time limit)"
            )
        return self

    @property
    def embedded(self) -> bool:
        """Return True when no server URL is set and everything runs in this process."""
        return self.database_url is None and self.qdrant_url is None and self.broker_url is None

    @property
    def resolved_database_url(self) -> str:
        """Return the database URL, normalised to psycopg 3 for PostgreSQL."""
        if self.database_url is None:
            return f"sqlite:///{self.data_dir / 'endodoc.sqlite3'}"
        return normalise_database_url(self.database_url)

    @property
    def resolved_blob_dir(self) -> Path:
        return self.blob_dir if self.blob_dir is not None else self.data_dir / "blobs"

    @property
    def vector_dir(self) -> Path:
        """Return the qdrant-edge shard folder of the embedded deployment."""
        return self.data_dir / "vectors"


def normalise_database_url(url: str) -> str:
    """Point plain `postgresql://` and `postgres://` URLs at the psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings, read once from the environment."""
    return Settings()
