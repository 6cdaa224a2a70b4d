"""The `endodoc site` commands: create sites and manage their API keys from the server's shell."""

from __future__ import annotations

import argparse
import json

from sqlalchemy import select

from services.settings import Settings


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register `endodoc site add`, `issue-key`, `list-keys` and `revoke-key`."""
    site = commands.add_parser("site", help="create sites and manage their API keys")
    site_commands = site.add_subparsers(dest="site_command", required=True)

    add = site_commands.add_parser("add", help="create a site, or show the existing one with that slug")
    add.add_argument("slug", help="1-64 lowercase letters, digits and hyphens")
    add.add_argument("--name", help="display name (default: the slug)")
    add.set_defaults(handler=cmd_site_add)

    issue = site_commands.add_parser("issue-key", help="issue an API key for a site and print its secret once")
    issue.add_argument("slug")
    issue.add_argument("--name", required=True, help="what the key is for, e.g. 'PACS bridge'")
    issue.set_defaults(handler=cmd_issue_key)

    listing = site_commands.add_parser("list-keys", help="list a site's API keys without their secrets")
    listing.add_argument("slug")
    listing.set_defaults(handler=cmd_list_keys)

    revoke = site_commands.add_parser("revoke-key", help="revoke one of a site's API keys")
    revoke.add_argument("slug")
    revoke.add_argument("key_id", help="the key's id, from list-keys")
    revoke.set_defaults(handler=cmd_revoke_key)


def _open(settings: Settings):
    from services.cli import _runtime

    return _runtime(settings)


def _site(session, slug: str):
    from services.catalog.models import Site
    from services.cli import CommandError

    site = session.scalar(select(Site).where(Site.slug == slug))
    if site is None:
        raise CommandError(f"site {slug!r} not found: create it with `endodoc site add {slug}`")
    return site


def cmd_site_add(args: argparse.Namespace, settings: Settings) -> int:
    from services.catalog.queries import get_or_create_site
    from services.db import unit_of_work

    runtime = _open(settings)
    try:
        with unit_of_work(runtime.sessions) as session:
            site = get_or_create_site(session, args.slug, args.name)
            print(json.dumps({"id": str(site.id), "slug": site.slug, "name": site.name}))
    finally:
        runtime.close()
    return 0


def cmd_issue_key(args: argparse.Namespace, settings: Settings) -> int:
    from services.catalog.keys import issue_api_key
    from services.db import unit_of_work

    runtime = _open(settings)
    try:
        with unit_of_work(runtime.sessions) as session:
            key, secret = issue_api_key(session, _site(session, args.slug), args.name)
            print(json.dumps({"id": str(key.id), "site": args.slug, "name": key.name, "secret": secret}))
    finally:
        runtime.close()
    return 0


def cmd_list_keys(args: argparse.Namespace, settings: Settings) -> int:
    from services.catalog.models import ApiKey
    from services.db import unit_of_work

    runtime = _open(settings)
    try:
        with unit_of_work(runtime.sessions) as session:
            site = _site(session, args.slug)
            for key in session.scalars(select(ApiKey).where(ApiKey.site_id == site.id).order_by(ApiKey.created_at)):
                revoked = key.revoked_at.isoformat() if key.revoked_at else "active"
                print(f"{key.id}  {key.prefix}…  {key.name}  {revoked}")
    finally:
        runtime.close()
    return 0


def cmd_revoke_key(args: argparse.Namespace, settings: Settings) -> int:
    from services.catalog.keys import revoke_api_key
    from services.catalog.queries import parse_uuid
    from services.cli import CommandError
    from services.db import unit_of_work

    runtime = _open(settings)
    try:
        with unit_of_work(runtime.sessions) as session:
            site = _site(session, args.slug)
            key = revoke_api_key(session, site.id, parse_uuid(args.key_id, "API key"))
            if key is None:
                raise CommandError(f"site {args.slug!r} has no API key {args.key_id}: see `endodoc site list-keys`")
            print(f"revoked {key.id} ({key.name})")
    finally:
        runtime.close()
    return 0
