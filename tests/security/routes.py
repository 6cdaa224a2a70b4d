"""The app's HTTP routes, enumerated from the FastAPI app itself, and the few that need no key."""

from __future__ import annotations

import re

from fastapi import FastAPI
from fastapi.routing import iter_route_contexts

# Routes that serve no site data and so need no key: the liveness probe, FastAPI's schema and
# documentation pages, and the sign-in and sign-out pages of the clinician UI.
PUBLIC_ROUTES = frozenset(
    {
        ("GET", "/healthz"),
        ("GET", "/openapi.json"),
        ("HEAD", "/openapi.json"),
        ("GET", "/docs"),
        ("HEAD", "/docs"),
        ("GET", "/docs/oauth2-redirect"),
        ("HEAD", "/docs/oauth2-redirect"),
        ("GET", "/redoc"),
        ("HEAD", "/redoc"),
        ("GET", "/ui/login"),
        ("POST", "/ui/login"),
        ("POST", "/ui/logout"),
    }
)

PATH_PARAMETER = re.compile(r"\{([a-z_]+)(?::[a-z]+)?\}")


def http_routes(app: FastAPI) -> list[tuple[str, str]]:
    """Return (method, path template) for every route of the app, routers included, sorted."""
    routes = []
    for context in iter_route_contexts(app.routes):
        assert context.methods, f"route {context.path} is not an HTTP route: extend the security tests to cover it"
        routes.extend((method, context.path) for method in context.methods)
    return sorted(routes)


def keyed_routes(app: FastAPI) -> list[tuple[str, str]]:
    """Return every route that must need a key."""
    return [route for route in http_routes(app) if route not in PUBLIC_ROUTES]


def fill_path(template: str, values: dict[str, str]) -> str:
    """Replace each `{name}` of a path template with values[name]; a missing name raises KeyError."""
    return PATH_PARAMETER.sub(lambda match: values[match.group(1)], template)
