"""Schemathesis fuzzes every operation of the OpenAPI schema with a real site key; no request may get a 5xx.

The app runs on the embedded stack (SQLite, qdrant-edge, in-process embedding) with one
populated site. Path parameters and JSON fields that Schemathesis fills with a well-formed UUID
get the id of that site's real resource instead, so requests reach the handlers rather than
stopping at 404.

The cases come from each operation's Hypothesis strategy (`APIOperation.as_strategy`), in
both generation modes. NOTE: Schemathesis' `from_fixture` pytest loader fails under pytest
9.2 (it sets `Node._nodeid`, which pytest 9.2 no longer has), so the test drives Hypothesis itself.
"""

from __future__ import annotations

import uuid

import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from services.api.app import create_app

# Hypothesis examples per operation and generation mode. With about 20 operations in two
# modes the test took about 30 s on a 2-core build machine.
MAX_EXAMPLES = 25
EMBED_TIMEOUT_S = 120


def is_uuid(value: object) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def generation_modes(operation) -> list[GenerationMode]:
    """Return both modes, or only the positive one for an operation without inputs, which has no invalid request."""
    inputs = (operation.path_parameters, operation.query, operation.headers, operation.cookies, operation.body)
    if any(len(group) for group in inputs):
        return [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    return [GenerationMode.POSITIVE]


def fuzz_operation(operation, mode: GenerationMode, site, queue) -> None:
    """Send MAX_EXAMPLES generated requests to one operation; raise on the first response that fails a check."""
    real_ids = site.path_values()

    @given(case=operation.as_strategy(mode))
    @hypothesis_settings(
        max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def fuzz(case) -> None:
        for name, value in (case.path_parameters or {}).items():
            if name in real_ids and is_uuid(value):
                case.path_parameters[name] = real_ids[name]
        if isinstance(case.body, dict):
            for name, value in case.body.items():
                if name in real_ids and is_uuid(value):
                    case.body[name] = real_ids[name]
        # The generated Authorization header, valid or not, gives way to the site's real key.
        case.headers = {
            name: value for name, value in (case.headers or {}).items() if name.lower() != "authorization"
        } | site.access.headers
        case.call_and_validate(checks=[not_a_server_error])
        queue.wait_idle(timeout_s=EMBED_TIMEOUT_S)

    fuzz()


def test_no_operation_answers_5xx(settings, runtime, queue, site_b):
    app = create_app(settings, runtime=runtime, queue=queue)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20

    failures = []
    for operation in operations:
        for mode in generation_modes(operation):
            try:
                fuzz_operation(operation, mode, site_b, queue)
            # Any error counts: a check failure, or an exception the app raised through the ASGI transport.
            except (Exception, BaseExceptionGroup) as error:  # noqa: BLE001
                failures.append(f"{operation.label} ({mode.value}): {type(error).__name__}: {error}")
    assert failures == [], "\n\n".join(failures)
