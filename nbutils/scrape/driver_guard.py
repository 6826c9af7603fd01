"""Run chromedriver so that it and the Chromium it starts die with the Python process that asked for them,
even when that process is killed with SIGKILL (no cleanup code of its own can run then).

    python driver_guard.py PARENT_PID /usr/bin/chromedriver --port=N ...

chromedriver runs in a process group of its own (Chromium and its helpers join it); the guard watches its
parent and kills the group when the parent is gone, when chromedriver exits, or on SIGTERM/SIGINT (Selenium's
`Service.stop`). Standalone on purpose: started by path, it imports nothing from nbutils.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 0.2
GRACE_S = 2.0


def group_running(pgid: int) -> bool:
    """Whether a process of the group still runs. Zombies do not count: Chromium's helpers, orphaned when
    chromedriver exits, wait for PID 1 to reap them, which in a container may take a while."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    if not Path("/proc/self/stat").exists():
        return True
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue
        if group == str(pgid) and state != "Z":
            return True
    return False


def kill_group(child: subprocess.Popen) -> None:
    """SIGTERM chromedriver's group (Chromium exits cleanly on it), then SIGKILL whatever is left after
    GRACE_S. chromedriver itself is reaped on the way, so its zombie does not count as left."""
    pgid = child.pid
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline:
        child.poll()
        if not group_running(pgid):
            return
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main(argv: list[str]) -> int:
    parent, command = int(argv[0]), argv[1:]
    child = subprocess.Popen(command, start_new_session=True)     # pgid == child.pid

    def stop(signum, frame):                                      # noqa: ARG001
        kill_group(child)
        child.wait()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while child.poll() is None and os.getppid() == parent:
        time.sleep(POLL_S)
    kill_group(child)
    return child.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
