"""A private, throw-away PostgreSQL cluster for tests and benchmarks.

``PgServer`` runs ``initdb`` and ``pg_ctl`` from ``/usr/lib/postgresql/*/bin`` as the ``postgres``
OS user (PostgreSQL refuses to run as root), with its data directory in a fresh temporary
directory under /tmp owned by that user, listening on 127.0.0.1 only, on a free port, with
password authentication (``scram-sha-256``; no ``trust``, even locally). The password is random
per cluster, handed to ``initdb`` in a 0600 file that is deleted right after; the URLs the helper
builds carry it (percent-encoded), so print them through ``speechtune._urls.mask_url``. It can
create a database per test, restart the server (fault injection), and always stops and removes
itself. Every wait is bounded.

Used by ``tests/test_workers.py``, ``tests/test_fault_injection.py`` and, imported by path,
``benchmarks/workers_scaling.py``; it imports nothing from pytest at module level.

    with PgServer.start_new() as pg:
        url = pg.create_database("study1")   # postgresql+psycopg://postgres:PW@127.0.0.1:PORT/study1
        ...
        pg.restart(down_s=2.0)
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

PG_USER = "postgres"


class PgUnavailable(RuntimeError):
    """The PostgreSQL server binaries or the ``postgres`` OS user are missing."""


def find_pg_bin() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding initdb and pg_ctl.

    Raises:
        PgUnavailable: no server binaries, or no ``postgres`` OS user to run them as.
    """
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: _version(p), reverse=True
    )
    if not candidates:
        raise PgUnavailable(
            "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb); apt-get install postgresql"
        )
    if shutil.which("runuser") is None:
        raise PgUnavailable("runuser is missing: cannot start PostgreSQL as the postgres user")
    try:
        import pwd

        pwd.getpwnam(PG_USER)
    except KeyError:
        raise PgUnavailable(f"no {PG_USER!r} OS user to run the PostgreSQL server as") from None
    return Path(candidates[0]).parent


def _version(initdb: str) -> float:
    try:
        return float(Path(initdb).parents[1].name)
    except ValueError:
        return 0.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgServer:
    """One private PostgreSQL cluster; see the module docstring.

    Args:
        bin_dir: directory of initdb/pg_ctl (default: :func:`find_pg_bin`).
        timeout_s: bound of every start/stop wait.
    """

    def __init__(self, bin_dir: Path | None = None, *, timeout_s: float = 60.0) -> None:
        self.bin_dir = bin_dir or find_pg_bin()
        self.timeout_s = timeout_s
        self.root = Path(tempfile.mkdtemp(prefix="speechtune-pg-", dir="/tmp"))
        self.data_dir = self.root / "data"
        self.log_file = self.root / "server.log"
        self.port = free_port()
        # Random per cluster; the characters a URL must escape (# / ? @ :) make every test that
        # uses it check that the URL reaches the driver intact. The random part is in every form
        # of the password (raw, percent-encoded): output that holds it has leaked the password.
        self.password_token = secrets.token_urlsafe(12)
        self.password = f"st-{self.password_token}#/?@:"
        self.running = False
        os.chmod(self.root, 0o755)
        shutil.chown(self.root, PG_USER, PG_USER)

    # -- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def start_new(cls, bin_dir: Path | None = None, *, timeout_s: float = 60.0) -> PgServer:
        """initdb + start a new cluster; on any failure everything started is removed again."""
        server = cls(bin_dir, timeout_s=timeout_s)
        try:
            server.initdb()
            server.start()
        except BaseException:
            server.close()
            raise
        return server

    def _as_pg(
        self, *argv: str, timeout_s: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = ["runuser", "-u", PG_USER, "--", *argv]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s or self.timeout_s, cwd=self.root
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc

    def initdb(self) -> None:
        """Create the cluster: password auth on 127.0.0.1 only, no fsync (a throw-away cluster)."""
        pwfile = self.root / "pwfile"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(self.password + "\n")
        shutil.chown(pwfile, PG_USER, PG_USER)
        try:
            self._as_pg(
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                PG_USER,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        # Only TCP from 127.0.0.1 and the cluster's own socket, both with the password.
        (self.data_dir / "pg_hba.conf").write_text(
            "local all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n"
        )
        conf = self.data_dir / "postgresql.conf"
        with open(conf, "a", encoding="utf-8") as fh:
            fh.write(
                "\n# speechtune test cluster\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\n"
                "max_connections = 200\n"
                # Durability against OS crashes is pointless for a throw-away cluster; a server
                # restart (what the tests inject) still loses nothing committed.
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            )

    def start(self) -> None:
        """Start the server and wait (bounded) until it accepts connections."""
        self._as_pg(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-w",
            "-t",
            str(int(self.timeout_s)),
            "start",
        )
        self.running = True
        self.wait_ready()

    def wait_ready(self) -> None:
        """Bounded wait until a real connection succeeds."""
        import psycopg

        deadline = time.monotonic() + self.timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(self.dsn("postgres"), connect_timeout=2):
                    return
            except psycopg.Error as exc:
                last = exc
                time.sleep(0.1)
        raise TimeoutError(
            f"PostgreSQL on port {self.port} not ready after {self.timeout_s:g} s: {last}; log: {self.log_tail()}"
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast`` ends sessions and checkpoints; ``immediate`` is a crash)."""
        if not self.running:
            return
        try:
            self._as_pg(
                str(self.bin_dir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-m",
                mode,
                "-w",
                "-t",
                str(int(self.timeout_s)),
                "stop",
            )
        except (RuntimeError, subprocess.TimeoutExpired):
            self._kill_postmaster()
        self.running = False

    def restart(self, down_s: float = 1.0, mode: str = "fast") -> None:
        """Stop the server, leave it down ``down_s`` seconds, start it again (same port and data)."""
        self.stop(mode)
        time.sleep(down_s)
        self.start()

    def _kill_postmaster(self) -> None:
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    def close(self) -> None:
        """Stop the server (however it is) and delete the cluster."""
        try:
            self.stop("fast")
        finally:
            self._kill_postmaster()
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- databases ---------------------------------------------------------------------------
    def dsn(self, database: str) -> str:
        """A libpq connection string (for psycopg directly), password included."""
        quoted = self.password.replace("\\", "\\\\").replace("'", "\\'")
        return (
            f"host=127.0.0.1 port={self.port} user={PG_USER} password='{quoted}' dbname={database}"
        )

    def url(self, database: str) -> str:
        """The SQLAlchemy/Optuna URL of ``database``, password included (percent-encoded)."""
        password = quote(self.password, safe="")
        return f"postgresql+psycopg://{PG_USER}:{password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` (a safe identifier) and return its Optuna storage URL."""
        import psycopg

        if not name.replace("_", "").isalnum():
            raise ValueError(f"database name must be alphanumeric/underscore, got {name!r}")
        with psycopg.connect(self.dsn("postgres"), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log_tail(self, n: int = 20) -> str:
        """The last ``n`` lines of the server log (for failure messages)."""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no server log)"


def pg_or_skip() -> PgServer:
    """Start a cluster for a test; skip when PostgreSQL is missing, unless CI requires it (then fail)."""
    from tests.helpers.services import (
        unavailable,  # pytest only here: the benchmark imports this module too
    )

    try:
        return PgServer.start_new()
    except PgUnavailable as exc:
        unavailable("PostgreSQL", exc)
