"""Private Redis, PostgreSQL and Qdrant stand-in processes that a fault test may stop and restart.

Each server is started from the machine's binaries on a free loopback port in a temporary
folder, so stopping it never touches the PostgreSQL and Redis that other test runs share.
The module has no pytest dependency: `scripts/faults.py` uses the same classes.

PostgreSQL's `initdb` and `postgres` exit with an error when run as root. Under root, the
cluster belongs to the unprivileged `postgres` account (the one the Debian packages create),
and every PostgreSQL binary runs through `runuser -u postgres --`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
STANDIN = REPO_ROOT / "tests" / "qdrant_standin" / "server.py"

# Binaries, each overridable by an environment variable that names another path.
REDIS_SERVER = os.environ.get("ENDODOC_FAULTS_REDIS_SERVER", "/usr/bin/redis-server")
POSTGRES_BIN_DIR = Path(os.environ.get("ENDODOC_FAULTS_POSTGRES_BIN", "/usr/local/bin"))
# The account that owns a private cluster when the tests run as root.
POSTGRES_OS_USER = os.environ.get("ENDODOC_FAULTS_POSTGRES_USER", "postgres")

START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 30


class FaultSetupError(RuntimeError):
    """A private server could not be started. The message names the binary or step and the fix."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that no socket was bound to a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_accepts(port: int, timeout_s: float = 0.5) -> bool:
    """Return True when a TCP connection to 127.0.0.1:`port` succeeds."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _require_binary(path: str | Path, variable: str) -> str:
    if not os.access(path, os.X_OK):
        raise FaultSetupError(f"{path} is missing or not executable: install it or set {variable} to its path")
    return str(path)


class PrivateRedis:
    """A redis-server on a free loopback port that keeps nothing on disk.

    `stop` kills the process, so a restart comes back with an empty database, as a Redis
    without persistence does after a crash or a node restart.
    """

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.binary = _require_binary(REDIS_SERVER, "ENDODOC_FAULTS_REDIS_SERVER")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.log = workdir / "redis.log"
        self._process: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server and wait until it replies to PING."""
        import redis

        command = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self.workdir), "--logfile", str(self.log),
        ]
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise FaultSetupError(f"redis-server exited with code {self._process.returncode}: {self._log_tail()}")
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    time.sleep(0.05)
        finally:
            client.close()
        raise FaultSetupError(f"redis-server on port {self.port} did not reply to PING within {START_TIMEOUT_S} s")

    def stop(self) -> None:
        """Kill the server with SIGKILL, which loses every queued message."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=STOP_TIMEOUT_S)
        self._process = None

    def _log_tail(self) -> str:
        return self.log.read_text()[-2000:] if self.log.exists() else "(no log)"


class PrivatePostgres:
    """A PostgreSQL cluster of its own in a temporary folder, on a free loopback port.

    The folder comes from `tempfile.mkdtemp` rather than a pytest folder, because pytest's
    base folder is private to the user running the tests and the server may run as another.
    Call `close` to stop the server and delete the folder.
    """

    def __init__(self, port: int | None = None) -> None:
        self.bin_dir = POSTGRES_BIN_DIR
        for name in ("initdb", "pg_ctl", "postgres"):
            _require_binary(self.bin_dir / name, "ENDODOC_FAULTS_POSTGRES_BIN")
        self.run_as = self._server_account()
        self.root = Path(tempfile.mkdtemp(prefix="endodoc-pg-"))
        self.data_dir = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = port or free_port()
        if self.run_as is not None:
            account = pwd.getpwnam(self.run_as)
            os.chown(self.root, account.pw_uid, account.pw_gid)

    @staticmethod
    def _server_account() -> str | None:
        """Return the account to run PostgreSQL as: None for the current user unless that is root."""
        if os.geteuid() != 0:
            return None
        try:
            pwd.getpwnam(POSTGRES_OS_USER)
        except KeyError:
            raise FaultSetupError(
                f"PostgreSQL cannot run as root and there is no {POSTGRES_OS_USER!r} account to run it as: "
                "run the tests as an unprivileged user or set ENDODOC_FAULTS_POSTGRES_USER to an existing account"
            ) from None
        if shutil.which("runuser") is None:
            raise FaultSetupError("PostgreSQL cannot run as root and `runuser` (util-linux) is not installed")
        return POSTGRES_OS_USER

    def _run(self, name: str, *args: str, timeout_s: float = START_TIMEOUT_S) -> None:
        command = [str(self.bin_dir / name), *args]
        if self.run_as is not None:
            command = ["runuser", "-u", self.run_as, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=self.root)
        if result.returncode != 0:
            raise FaultSetupError(
                f"{name} {' '.join(args)} failed with code {result.returncode}:\n{result.stdout}{result.stderr}\n"
                f"server log: {self._log_tail()}"
            )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        """Create the cluster: superuser `postgres`, trust authentication, no fsync during initdb."""
        self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8",
                  timeout_s=120)

    def start(self) -> None:
        """Start the server on 127.0.0.1 and wait until it accepts connections."""
        # fsync=off risks data only on an operating system crash, because a killed server recovers from its WAL.
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data_dir), "-o", options, "-l", str(self.log), "-w",
                  "-t", str(START_TIMEOUT_S), "start", timeout_s=START_TIMEOUT_S + 10)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` disconnects clients and shuts down cleanly, `immediate` is a crash."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"invalid pg_ctl stop mode {mode!r}: use smart, fast or immediate")
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", str(STOP_TIMEOUT_S), "stop",
                  timeout_s=STOP_TIMEOUT_S + 10)

    @property
    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists() and port_accepts(self.port)

    def postmaster_pid(self) -> int:
        """Return the process id of the running server, from the first line of `postmaster.pid`."""
        return int((self.data_dir / "postmaster.pid").read_text().split()[0])

    def freeze(self) -> None:
        """Stop the server process with SIGSTOP: the kernel still accepts TCP connections, but no one replies.

        Connections opened before keep working, because each is served by its own child process.
        """
        os.kill(self.postmaster_pid(), signal.SIGSTOP)

    def thaw(self) -> None:
        """Let a frozen server process run again with SIGCONT."""
        os.kill(self.postmaster_pid(), signal.SIGCONT)

    def create_database(self, name: str) -> str:
        """Create a database and return its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True,
                             connect_timeout=5) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        """Stop the server if it runs and delete its folder."""
        if (self.data_dir / "postmaster.pid").exists():
            try:
                self.thaw()
                self.stop("immediate")
            except (FaultSetupError, subprocess.TimeoutExpired, ProcessLookupError, ValueError):
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    def _log_tail(self) -> str:
        try:
            return self.log.read_text()[-2000:]
        except OSError:
            return "(no log)"


class StandInQdrant:
    """The test-only Qdrant REST stand-in as a child process that can be stopped and started again.

    The storage folder and the port stay the same across restarts, so the points written
    before an outage are there after it, as on a restarted Qdrant server.
    """

    def __init__(self, storage: Path, port: int | None = None) -> None:
        self.storage = storage
        self.port = port or free_port()
        self.log = storage.parent / f"{storage.name}.log"
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the stand-in on its port and wait for its `listening on` line."""
        self.storage.parent.mkdir(parents=True, exist_ok=True)
        # The log keeps every run's output, so only the text after this offset belongs to this start.
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("a") as output:
            self._process = subprocess.Popen(
                [sys.executable, str(STANDIN), "--path", str(self.storage), "--port", str(self.port)],
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise FaultSetupError(
                    f"the Qdrant stand-in exited with code {self._process.returncode}: {self.log.read_text()[offset:][-2000:]}"
                )
            if f"listening on {self.url}" in self.log.read_text()[offset:]:
                return
            time.sleep(0.05)
        raise FaultSetupError(f"the Qdrant stand-in did not listen on {self.url} within {START_TIMEOUT_S} s")

    def stop(self) -> None:
        """Stop the stand-in with SIGTERM (SIGKILL after a grace period)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=STOP_TIMEOUT_S)
        self._process = None
