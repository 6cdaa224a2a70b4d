"""A fixture that lets a test set up logging as `endodoc` commands do, then restores the process-wide state."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest
import structlog

from services import cli, logs


@pytest.fixture
def command_logging(monkeypatch) -> Iterator[Callable[[str | None], None]]:
    """Yield `configure_logging` without structlog's logger cache, and undo its changes after the test.

    `configure_logging` caches each structlog logger on first use. A cached logger keeps this
    test's configuration for the rest of the session, where `structlog.testing.capture_logs`
    no longer sees its events, so the cache is turned off. `endodoc` commands run in the test
    get the same function.
    """
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_structlog = structlog.get_config()
    configure = logs.configure_logging

    def configure_without_cache(level: str | None = None) -> None:
        configure(level)
        structlog.configure(cache_logger_on_first_use=False)

    monkeypatch.setattr(cli, "configure_logging", configure_without_cache)
    yield configure_without_cache

    for handler in root.handlers:
        if handler not in saved_handlers:
            root.removeHandler(handler)
    for handler in saved_handlers:
        root.addHandler(handler)
    root.setLevel(saved_level)
    structlog.configure(**saved_structlog)
