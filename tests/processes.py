"""Process helpers shared by the multi-process tests: a free port for a rendezvous, and whether a process
has ended."""

import os
import socket
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gone(pid: int, within_s: float = 10.0) -> bool:
    """Whether process `pid` ends within `within_s` seconds."""
    deadline = time.time() + within_s
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A zombie child of a dead parent is reaped by init: its /proc entry says so until then.
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists() and stat.read_text().split(") ")[1].startswith("Z"):
            return True
        time.sleep(0.1)
    return False
