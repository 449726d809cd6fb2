"""The run-directory lock (lrm_fast/runtime/lock.py): one holder at a time, released however it ends."""

import re
import subprocess
import sys

import pytest

from lrm_fast.runtime.lock import LOCK_NAME, DirectoryInUse, directory_lock


def test_a_second_holder_is_refused_while_the_first_holds(tmp_path):
    with directory_lock(tmp_path, "evaluation"):
        holder = (tmp_path / LOCK_NAME).read_text()
        assert holder.startswith("pid ")
        message = re.escape(f"in use by another evaluation ({holder.strip()})")
        refused = pytest.raises(DirectoryInUse, match=message)
        with refused, directory_lock(tmp_path, "evaluation"):
            pass
    with directory_lock(tmp_path, "evaluation"):  # released at the end of the block
        pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    code = (
        "import os, signal, sys\n"
        "from lrm_fast.runtime.lock import directory_lock\n"
        f"with directory_lock({str(tmp_path)!r}, 'run'):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == -9
    assert (tmp_path / LOCK_NAME).exists()
    with directory_lock(tmp_path, "run"):
        pass
