"""A real PostgreSQL server for tests and benchmarks: own data directory, loopback only.

Debian's ``postgresql`` package provides ``initdb`` and ``pg_ctl`` under
``/usr/lib/postgresql/<version>/bin``. PostgreSQL refuses to run as root (CI runs as root),
so the server runs as the ``postgres`` system user the package creates, via ``runuser``;
when the tests already run as an ordinary user, as that user. Trust authentication on
loopback: the server lives only as long as the test session.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from haidang.testbed.orthanc import free_port


def pg_bin(tool: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    if not found:
        raise RuntimeError(
            f"PostgreSQL {tool} not found under /usr/lib/postgresql/*/bin: "
            "apt-get install postgresql (scripts/setup.sh does)"
        )
    return found[-1]  # the newest version


class PostgresServer:
    """``initdb`` + ``pg_ctl start`` in ``root``; ``url()`` gives a database URL per name."""

    def __init__(self, root: Path | None = None, port: int | None = None):
        # default: a fresh folder directly under /tmp, which the server user can reach
        # (pytest's tmp_path parents are private to the user running the tests)
        self.root = Path(root or tempfile.mkdtemp(prefix="haidang-pg-"))
        self.data = self.root / "data"
        self.port = port or free_port()
        self.log = self.root / "postgres.log"
        self.user = "postgres" if os.geteuid() == 0 else None

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        if self.user:
            cmd = ("runuser", "-u", self.user, "--", *cmd)
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)

    def start(self) -> PostgresServer:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.user:
            shutil.chown(self.root, self.user)
        self._run(pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   "-c max_connections=200")
        run = self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                        "-o", options, "-w", "-t", "60", "start", check=False)
        if run.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {run.stderr}\n{log[-2000:]}")
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop",
                  check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


_counter = iter(range(1, 1_000_000))


def fresh_database(server: PostgresServer) -> str:
    """A new, empty database on the shared server (one per test keeps tests independent)."""
    return server.create_database(f"haidang_{os.getpid()}_{next(_counter)}_{int(time.time())}")
