"""Retry delays of the embedding task while a service is unavailable."""

from __future__ import annotations

from services.settings import Settings
from workers.tasks import RETRY_BACKOFF_MAX_S, retry_delay_s


def delays(settings: Settings, count: int) -> list[int]:
    return [retry_delay_s(retries, settings) for retries in range(count)]


def test_retry_delay_doubles_up_to_backoff_max():
    settings = Settings(task_time_limit_s=600, broker_visibility_timeout_s=None)

    assert delays(settings, 8) == [2, 4, 8, 16, 32, 64, 120, 120]
    assert RETRY_BACKOFF_MAX_S == 120


def test_retry_delay_leaves_time_limit_inside_visibility_timeout():
    settings = Settings(task_time_limit_s=60, broker_visibility_timeout_s=100)

    assert delays(settings, 8) == [2, 4, 8, 16, 32, 40, 40, 40]
    assert all(delay + settings.task_time_limit_s <= 100 for delay in delays(settings, 8))


def test_retry_delay_is_one_second_at_least():
    settings = Settings(task_time_limit_s=6, broker_visibility_timeout_s=7)

    assert delays(settings, 3) == [1, 1, 1]
