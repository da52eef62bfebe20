"""One run per folder at a time: an exclusive `flock` on `<run>/.lock`, held for the whole run.

The kernel drops a flock when its process ends, however it ends (SIGKILL included), so a lock left by a killed run
is free for the next one: no pid probing, no timeout to guess. The file holds who has it (pid, host, start time),
for the message a second run gets, and tells the next holder that a run died holding it. A run that finds the
folder in use stops at once (exit 2) rather than wait: two runs of one recipe would redo the same steps.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from compress.core.errors import CompressError

LOCK_FILE = ".lock"


def _holder(fd: int) -> str | None:
    """Who the lock file says holds (or held) it, in words; None when it names no one."""
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"null")
        return f"pid {record['pid']} on {record['host']}, started {record['started']}"
    except (ValueError, TypeError, KeyError):
        return None


def _same_file(fd: int, path: Path) -> bool:
    """The open lock file is still the one at `path`: a run that ends unlinks its file (or a run given bad input
    removes its whole folder), and a lock taken on the unlinked file would exclude no one."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _acquire(run_dir: Path) -> tuple[int, str | None]:
    path = run_dir / LOCK_FILE
    while True:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd) or "a run that has not recorded itself yet"
            os.close(fd)
            raise CompressError(f"{run_dir}: in use by another run ({holder}); one run per folder at a time: wait "
                                f"for it to end, or give this run another --out") from None
        except OSError as e:
            os.close(fd)
            raise CompressError(f"{run_dir}: cannot lock the run folder ({LOCK_FILE}): {e.strerror or e}") from None
        if _same_file(fd, path):
            return fd, _holder(fd)
        os.close(fd)


@contextmanager
def run_lock(run_dir: Path) -> Iterator[str | None]:
    """Hold `run_dir`'s lock (creating the folder) for the body; yields the holder a killed run left on record, if
    any. Exit 2 (CompressError) naming the holder when another live run has it."""
    fd, left = _acquire(run_dir)
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    try:
        yield left
    finally:
        path = run_dir / LOCK_FILE
        if _same_file(fd, path):  # not when the folder was discarded, and never another run's new file
            path.unlink()
        os.close(fd)  # releases the flock
