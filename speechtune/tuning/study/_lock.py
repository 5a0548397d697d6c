"""One ``speechtune tune`` at a time per run directory: an ``fcntl.flock`` on ``RUN_DIR/tune.lock``.

Two drivers on one study each run the trials they count as missing, so together they overshoot
``--n-trials`` (and both re-queue the same killed trials). The lock belongs to an open file, so
the kernel drops it when its process dies, however it dies: a killed driver never blocks the
next one, which takes the lock over (logged). The file's text (``pid 1234 host h since ...``)
names the holder for the refusal and for a person looking at the directory; the lock itself is
what counts. ``speechtune worker`` processes, which join a shared study on purpose, take no lock.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import socket
import time
from datetime import datetime
from pathlib import Path
from types import TracebackType

log = logging.getLogger("speechtune.tuning")

#: The lock file in the run directory.
LOCK_FILE = "tune.lock"

_HOLDER = re.compile(r"pid (?P<pid>\d+) host (?P<host>\S+) since (?P<since>\S+)")

#: Seconds to wait for a holder that has just taken the lock to write its name.
_NAME_WAIT_S = 1.0


class RunDirBusyError(RuntimeError):
    """Another live process holds the run directory's lock."""


class RunDirLock:
    """The lock of one run directory (a context manager; :meth:`acquire` never waits).

    Args:
        run_dir: the run directory (created if missing).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None
        self._tried = False

    @property
    def held(self) -> bool:
        """True between :meth:`acquire` and :meth:`release`."""
        return self._fd is not None

    def acquire(self) -> RunDirLock:
        """Take the lock, or refuse at once.

        Returns:
            This lock, held (also where the file system cannot lock: logged, and not held).

        Raises:
            RunDirBusyError: a live process holds it; the message names its pid and host.
        """
        self._tried = True
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirBusyError(self._busy_message()) from None
            # A file system without locks (some network mounts): run unguarded rather than not at all.
            log.warning(
                "cannot lock %s (%s): a second `speechtune tune` on this run directory would not be refused",
                self.path,
                exc.strerror,
            )
            return self
        previous = _holder(os.pread(fd, 4096, 0).decode(errors="replace"))
        if previous is not None:
            log.info(
                "run directory %s: taking over the lock of process %s on %s, which is gone",
                self.run_dir,
                previous["pid"],
                previous["host"],
            )
        since = datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} host {socket.gethostname()} since {since}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock back (idempotent); the file stays, emptied."""
        fd, self._fd = self._fd, None
        self._tried = False
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # no holder named once nobody holds it
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _busy_message(self) -> str:
        holder = None
        deadline = time.monotonic() + _NAME_WAIT_S
        while holder is None and time.monotonic() < deadline:
            try:
                holder = _holder(self.path.read_text(errors="replace"))
            except OSError:
                holder = None
            if holder is None:
                time.sleep(0.05)  # the holder took the lock and is writing its name
        who = (
            f"pid {holder['pid']} on {holder['host']} (since {holder['since']})"
            if holder is not None
            else "another process"
        )
        return (
            f"run directory {self.run_dir} is in use by `speechtune tune` {who}: wait for it to "
            f"end or stop it, or use another --run-dir (lock: {self.path})"
        )

    def __enter__(self) -> RunDirLock:
        if not self._tried:  # `with RunDirLock(d):`; after an explicit acquire(), as it left it
            self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _holder(text: str) -> dict[str, str] | None:
    match = _HOLDER.search(text)
    return match.groupdict() if match else None
