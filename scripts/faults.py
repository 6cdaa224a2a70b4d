"""Run a fault drill: private Redis, PostgreSQL and Qdrant stand-in that you stop and start by command.

    python scripts/faults.py --workdir /tmp/endodoc-drill

It starts the three servers on free loopback ports (PostgreSQL as the `postgres` account
when run as root), migrates the database and prints the ENDODOC_* settings. Export them in
other shells to run `endodoc serve` and `endodoc worker`, then type commands here:

    stop redis | start redis                  kill Redis (its queue is lost) or start it empty
    stop postgres [fast|immediate] | start postgres
    freeze postgres | thaw postgres           SIGSTOP or SIGCONT the PostgreSQL server process
    stop qdrant | start qdrant                stop the stand-in, or start it on its port and storage
    status | quit

The servers never touch the machine's own PostgreSQL on 5432 or Redis on 6379. `quit`, end
of input or Ctrl-C stops them and deletes the PostgreSQL folder.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.faults.servers import FaultSetupError, PrivatePostgres, PrivateRedis, StandInQdrant  # noqa: E402


def settings_lines(database_url: str, redis: PrivateRedis, qdrant: StandInQdrant, workdir: Path) -> list[str]:
    return [
        f"export ENDODOC_DATABASE_URL={database_url}",
        f"export ENDODOC_BROKER_URL={redis.url()}",
        f"export ENDODOC_QDRANT_URL={qdrant.url}",
        f"export ENDODOC_BLOB_DIR={workdir / 'blobs'}",
    ]


def run_command(words: list[str], redis: PrivateRedis, postgres: PrivatePostgres, qdrant: StandInQdrant) -> str:
    """Apply one drill command and return the line to print."""
    match words:
        case ["stop", "redis"]:
            redis.stop()
        case ["start", "redis"]:
            redis.start()
        case ["stop", "postgres"]:
            postgres.stop("fast")
        case ["stop", "postgres", mode]:
            postgres.stop(mode)
        case ["start", "postgres"]:
            postgres.start()
        case ["freeze", "postgres"]:
            postgres.freeze()
        case ["thaw", "postgres"]:
            postgres.thaw()
        case ["stop", "qdrant"]:
            qdrant.stop()
        case ["start", "qdrant"]:
            qdrant.start()
        case ["status"]:
            pass
        case _:
            return f"unknown command {' '.join(words)!r}: see the list at the top of scripts/faults.py"
    return (
        f"redis {'up' if redis.running else 'down'}, postgres {'up' if postgres.running else 'down'}, "
        f"qdrant {'up' if qdrant.running else 'down'}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="folder for Redis, the stand-in and the blobs")
    args = parser.parse_args(argv)

    from services.catalog import migrate

    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    redis = qdrant = postgres = None
    try:
        redis = PrivateRedis(workdir / "redis")
        redis.start()
        qdrant = StandInQdrant(workdir / "qdrant-standin")
        qdrant.start()
        postgres = PrivatePostgres()
        postgres.init()
        postgres.start()
        database_url = postgres.create_database("endodoc")
        migrate.upgrade(database_url)

        print("\n".join(settings_lines(database_url, redis, qdrant, workdir)), flush=True)
        for line in sys.stdin:
            words = shlex.split(line)
            if words == ["quit"]:
                break
            if not words:
                continue
            try:
                print(run_command(words, redis, postgres, qdrant), flush=True)
            except (FaultSetupError, ValueError) as error:
                print(f"faults: error: {error}", file=sys.stderr, flush=True)
    except FaultSetupError as error:
        print(f"faults: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    finally:
        for server in (qdrant, redis):
            if server is not None:
                server.stop()
        if postgres is not None:
            postgres.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
