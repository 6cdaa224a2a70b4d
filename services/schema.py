"""Make sure the database schema is at the latest migration before a command uses it."""

from __future__ import annotations

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from services.catalog import migrate
from services.runtime import Runtime


class SchemaOutdatedError(RuntimeError):
    """The server database is not at the latest migration."""


def ensure_schema(runtime: Runtime) -> None:
    """Migrate the embedded SQLite database; check that a server database is already migrated.

    Server databases are migrated by an operator (`endodoc db upgrade`, or the deployment's
    migration job), never implicitly by an API or worker process.
    """
    url = runtime.settings.resolved_database_url
    if runtime.settings.database_url is None:
        migrate.upgrade(url)
        return
    head = ScriptDirectory.from_config(migrate.alembic_config(url)).get_current_head()
    with runtime.engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    if current != head:
        raise SchemaOutdatedError(
            f"database schema is at revision {current or 'none'}, expected {head}: run `endodoc db upgrade`"
        )
