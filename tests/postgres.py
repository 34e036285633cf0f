"""A throwaway PostgreSQL server for tests: Debian's server binaries (``initdb`` and
``pg_ctl`` from /usr/lib/postgresql/<major>/bin, package ``postgresql``), a cluster in a
temporary directory, listening on a free loopback port only, password authentication.

Run as the current user; under root (CI containers), as the ``postgres`` system user the
Debian package creates, since the server refuses to run as root.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

BIN_GLOB = "/usr/lib/postgresql/*/bin"
USER = "vision"
PASSWORD = "test-password"
START_TIMEOUT_S = 60


def find_binaries() -> Path | None:
    """The newest major version's bin directory holding initdb and pg_ctl, if any."""
    found = [
        path
        for path in Path("/").glob(BIN_GLOB.lstrip("/"))
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file()
    ]
    found.sort(key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0)
    return found[-1] if found else None


def why_unavailable() -> str | None:
    """Why no server can be started here (a skip reason), or None."""
    if find_binaries() is None:
        return (
            f"PostgreSQL server binaries not found ({BIN_GLOB}/initdb): install Debian's "
            "postgresql package (`make system-packages` and .ci/run do)"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run the server as"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class PostgresServer:
    bin_dir: Path
    root: Path  # the temporary directory: data/, the password file, the log
    port: int
    run_as: dict[str, Any]  # subprocess user/group when we are root

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres", password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        result = subprocess.run(args, capture_output=True, text=True, check=False, **self.run_as)
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{args[0]} failed:\n{result.stdout}{result.stderr}\n{log}")

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} "
            f"-c unix_socket_directories={self.root} -c max_connections=200"
        )
        self._run(
            str(self.bin_dir / "pg_ctl"),
            *("-D", str(self.data), "-l", str(self.log), "-o", options),
            *("-w", "-t", str(START_TIMEOUT_S), "start"),
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    @contextmanager
    def admin(self) -> Iterator[psycopg.Connection[Any]]:
        with psycopg.connect(self.url(), autocommit=True) as connection:
            yield connection

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with self.admin() as connection:
            connection.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """initdb + pg_ctl start on a free loopback port; stopped and deleted afterwards."""
    bin_dir = find_binaries()
    assert bin_dir is not None, why_unavailable()
    root = Path(tempfile.mkdtemp(prefix="vision-pg-"))
    run_as: dict[str, Any] = {}
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        run_as = {"user": owner.pw_uid, "group": owner.pw_gid, "cwd": root}
    server = PostgresServer(bin_dir, root, _free_port(), run_as)
    try:
        password_file = root / "password"
        password_file.write_text(PASSWORD + "\n")
        if run_as:
            os.chown(password_file, run_as["user"], run_as["group"])
        server._run(
            str(bin_dir / "initdb"),
            *("-D", str(server.data), "-U", USER, f"--pwfile={password_file}"),
            *("--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync"),
        )
        server.start()
        try:
            yield server
        finally:
            with suppress(RuntimeError):  # a test may have left it stopped
                server.stop("immediate")
    finally:
        shutil.rmtree(root, ignore_errors=True)
