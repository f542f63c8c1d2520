"""A real PostgreSQL server (Debian's package) on a free loopback port, for tests."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .broker import free_port


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class Postgres:
    def __init__(self, workdir: Path):
        b = pg_bin()
        if b is None:
            raise RuntimeError("PostgreSQL server is not installed (make test installs the postgresql package)")
        self.bin = b
        if os.geteuid() == 0:
            # the server runs as another user, who cannot enter pytest's private (0700) temp folders
            workdir = Path(tempfile.mkdtemp(prefix="edge-pg-"))
            self._cleanup = workdir
        else:
            self._cleanup = None
        self.dir = workdir / "pgdata"
        self.sock = workdir / "pgsock"
        self.port = free_port()
        self.proc = None
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # postgres refuses to run as root
            try:
                pwd.getpwnam("postgres")
                user = "postgres"
            except KeyError:
                user = "nobody"
            self.as_user = ["runuser", "-u", user, "--"]
            workdir.mkdir(parents=True, exist_ok=True)
            self.sock.mkdir(exist_ok=True)
            shutil.chown(workdir, user)
            shutil.chown(self.sock, user)
            os.chmod(workdir, 0o777)

    def start(self) -> Postgres:
        subprocess.run([*self.as_user, str(self.bin / "initdb"), "-D", str(self.dir), "-U", "postgres", "--auth=trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
        self.sock.mkdir(exist_ok=True)
        self.proc = subprocess.Popen([*self.as_user, str(self.bin / "postgres"), "-D", str(self.dir), "-p", str(self.port),
                                      "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.sock}",
                                      "-c", "fsync=off"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import psycopg

        end = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(self.url, connect_timeout=1).close()
                return self
            except psycopg.OperationalError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def database(self, name: str) -> str:
        """A new, empty database on this server; its URL."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + "/" + name

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(20)
            self.proc = None
        if self._cleanup:
            shutil.rmtree(self._cleanup, ignore_errors=True)
