"""Process-wide logging: key-value lines on stderr, from both structlog and the standard library."""

from __future__ import annotations

import logging
import os

import structlog


def configure_logging(level: str | None = None) -> None:
    """Send log records to stderr at `level` (default: ENDODOC_LOG_LEVEL or WARNING).

    structlog events go through the standard library's handlers, so stdout stays free for
    command output such as `endodoc demo --json`.
    """
    chosen = (level or os.environ.get("ENDODOC_LOG_LEVEL") or "WARNING").upper()
    logging.basicConfig(
        level=chosen,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
        force=True,
    )
    # Pillow logs every TIFF tag value at DEBUG, and those tags can carry a patient's name and
    # birth date, so Pillow's loggers stay at INFO or above whatever level is chosen.
    logging.getLogger("PIL").setLevel(max(logging.getLogger().level, logging.INFO))
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.processors.format_exc_info,
            structlog.processors.KeyValueRenderer(key_order=["event"], sort_keys=True),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
