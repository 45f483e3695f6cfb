"""A throwaway PostgreSQL server for the tests that run Prefect's server the way a team does
(docs/cluster.md section 1: PostgreSQL, not SQLite): Debian's `postgresql` package (scripts/test.sh
installs it), a fresh cluster in a temporary folder, on a free loopback port, trust authentication,
stopped and deleted at the end. PostgreSQL refuses to run as root: as root it runs as the package's
`postgres` user.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.helpers.cluster import Procs, wait_for


def pg_bin() -> Path | None:
    """The folder of initdb / postgres: PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=os.path.getmtime)
    return Path(versions[-1]).parent if versions else None


def _install() -> None:
    if shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "postgresql"], capture_output=True, timeout=600
        )


def require_postgres() -> Path:
    """The binaries' folder; installs Debian's package when absent and possible, else skips."""
    found = pg_bin()
    if found is None:
        _install()
        found = pg_bin()
    if found is None or shutil.which("psql") is None:
        pytest.skip(
            "PostgreSQL is not installed and cannot be installed here (needs root and apt-get: "
            "`apt-get install -y postgresql`)"
        )
    return found


class Postgres:
    """`start()`: a new cluster on `port`, superuser `postgres`, reachable at 127.0.0.1 without a
    password. `psql(sql)` runs SQL as that superuser; `stop()` ends the server and deletes the folder."""

    def __init__(self, procs: Procs, port: int):
        self.procs, self.port = procs, port
        self.bin = require_postgres()
        # not under pytest's tmp_path: PostgreSQL's own user must reach the folder
        self.root = Path(tempfile.mkdtemp(prefix="sgpo-pg-"))
        self.data = self.root / "data"
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def start(self) -> Postgres:
        if self.as_user:
            shutil.chown(self.root, "postgres", "postgres")
        init = subprocess.run(
            [*self.as_user, str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres"]
            + ["--auth=trust", "--encoding=UTF8", "--no-sync"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert init.returncode == 0, init.stdout + init.stderr
        self.procs.start(
            "postgres",
            [*self.as_user, str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port)]
            + ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}"]
            + ["-c", "fsync=off", "-c", "max_connections=200"],
            dict(os.environ),
        )
        wait_for(
            lambda: self.psql("select 1").strip() == "1", 120, "PostgreSQL to accept connections"
        )
        return self

    def psql(self, sql: str, db: str = "postgres") -> str:
        r = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", db]
            + ["-v", "ON_ERROR_STOP=1", "-At", "-c", sql],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if r.returncode:
            raise RuntimeError(f"psql {sql!r}: {r.stderr.strip()}")
        return r.stdout

    def create_database(self, user: str, password: str, db: str) -> str:
        """A role and its database; returns Prefect's connection URL for them."""
        self.psql(f"CREATE USER {user} PASSWORD '{password}'")
        self.psql(f"CREATE DATABASE {db} OWNER {user}")
        return f"postgresql+asyncpg://{user}:{password}@127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        self.procs.stop("postgres")
        shutil.rmtree(self.root, ignore_errors=True)
