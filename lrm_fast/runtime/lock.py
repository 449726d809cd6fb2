"""An exclusive lock on an output directory, held while a run (or an evaluation) writes into it.

Two processes writing one run directory mix their metrics, overwrite each other's summaries and delete
each other's checkpoint staging directories. The lock is `flock` on DIR/.lock: the kernel releases it when
the holding process ends in any way (SIGKILL included), so a dead run never leaves a stale lock behind.
The file keeps the last holder's pid, host and start time for the error message.

Simplification: flock works between processes of one host and on most local and cluster file systems,
but not across hosts on NFS mounts without lock support; two nodes writing one directory there are not
stopped.
"""

import fcntl
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".lock"


class DirectoryInUse(RuntimeError):
    """Another live process holds the directory."""


@contextmanager
def directory_lock(directory: Path, purpose: str):
    """Hold DIRECTORY/.lock for the block; raise DirectoryInUse at once if another process holds it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    handle = path.open("a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise DirectoryInUse(
            f"{directory} is in use by another {purpose} ({holder}): wait for it to end, or choose another "
            "directory"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {started}\n")
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
