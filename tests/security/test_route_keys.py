"""Keys: every route of the app, enumerated from the app itself, rejects a request without a valid key.

JSON routes return 401. Clinician pages redirect to the sign-in page with 303 and the page's
path in `next`. A new route is covered as soon as it is added.
"""

from __future__ import annotations

import base64
import secrets
from urllib.parse import quote

from tests.api.conftest import ADMIN, ADMIN_KEY, create_site
from tests.security.routes import PUBLIC_ROUTES, fill_path, http_routes, keyed_routes

# The pages take their key from this cookie, so a valid key in it is a missing key only for the JSON API.
COOKIE_ONLY = "valid key only in cookie"


def revoked_key(client) -> str:
    """Return the secret of a real site key that the admin has revoked."""
    site = create_site(client, "site-revoked")
    [key] = client.get(f"/v1/sites/{site.id}/api-keys", headers=ADMIN).json()
    revoked = client.delete(f"/v1/sites/{site.id}/api-keys/{key['id']}", headers=ADMIN)
    assert revoked.status_code == 200, revoked.text
    return site.key


def invalid_credentials(client, valid_site_key: str) -> dict[str, dict]:
    """Return request options, by name, that carry no valid key for the JSON API."""
    basic = base64.b64encode(f"admin:{ADMIN_KEY}".encode()).decode()
    return {
        "no key": {},
        "unknown key": {"headers": {"Authorization": f"Bearer edk_{secrets.token_urlsafe(32)}"}},
        "revoked key": {"headers": {"Authorization": f"Bearer {revoked_key(client)}"}},
        "admin key plus one character": {"headers": {"Authorization": f"Bearer {ADMIN_KEY}x"}},
        "admin key as basic auth": {"headers": {"Authorization": f"Basic {basic}"}},
        "empty bearer": {"headers": {"Authorization": "Bearer "}},
        "unknown key in cookie": {"cookies": {"endodoc_key": f"edk_{secrets.token_urlsafe(32)}"}},
        # The JSON API ignores the sign-in cookie of the pages, so even a valid key there is no key.
        COOKIE_ONLY: {"cookies": {"endodoc_key": valid_site_key}},
    }


def rejection_problem(method: str, template: str, path: str, response, leaked: tuple[str, ...]) -> str | None:
    """Return what is wrong with the response to a request without a valid key, or None when it is right."""
    if path.startswith("/ui/"):
        expected_location = f"/ui/login?next={quote(path)}"
        if response.status_code != 303 or response.headers.get("location") != expected_location:
            return f"{method} {template}: {response.status_code} to {response.headers.get('location')!r}"
    else:
        if response.status_code != 401:
            return f"{method} {template}: {response.status_code} {response.text[:200]}"
        if response.json()["error"]["code"] != "unauthorized":
            return f"{method} {template}: error code {response.json()['error']['code']}"
    for value in leaked:
        if value in response.text:
            return f"{method} {template}: response contains {value!r}"
    return None


def test_public_routes_exist(app_client):
    assert PUBLIC_ROUTES <= set(http_routes(app_client.app))


def test_every_route_rejects_missing_or_invalid_key(app_client, site_b):
    routes = keyed_routes(app_client.app)
    assert len(routes) >= 20
    # Real ids of an existing site, so a route that skipped the key check would return its data.
    values = site_b.path_values()
    leaked = (site_b.external_id, *site_b.image_sha256s)

    problems = []
    for name, options in invalid_credentials(app_client, site_b.access.key).items():
        for method, template in routes:
            path = fill_path(template, values)
            if name == COOKIE_ONLY and path.startswith("/ui/"):
                continue
            app_client.cookies.clear()
            app_client.cookies.update(options.get("cookies", {}))
            response = app_client.request(method, path, headers=options.get("headers"), follow_redirects=False)
            problem = rejection_problem(method, template, path, response, leaked)
            if problem is not None:
                problems.append(f"{name}: {problem}")
    app_client.cookies.clear()
    assert problems == []


def test_pages_accept_the_sign_in_cookie(app_client, site_b):
    page = f"/ui/procedures/{site_b.procedure_id}"
    app_client.cookies.set("endodoc_key", site_b.access.key)
    response = app_client.get(page, follow_redirects=False)
    app_client.cookies.clear()
    assert response.status_code == 200
    assert site_b.external_id in response.text


def test_health_needs_no_key(app_client):
    response = app_client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
