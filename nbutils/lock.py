"""One lock per data_dir: two stages (or two runners) writing the same data_dir at once duplicate pages and tear
folders apart, so every stage's `run` and the runner hold `<data_dir>/.nbutils.lock` while they work.

The lock is an OS lock (`flock`) on that file, so it dies with its process: a lock left by a killed run is
taken over at once (the file still names the dead pid; it is simply rewritten). The file says who holds it
(pid and command), and a refusal names both. A run's own children (the notebooks the runner executes, the
processes `accelerate launch` starts) inherit the holder's token through the environment and pass through.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .io import resolve_data_dir

LOCK_FILE = ".nbutils.lock"
TOKEN_ENV = "NBUTILS_LOCK_TOKEN"   # set by the holder for its children: "<lock file>=<token>"

_held: dict[str, int] = {}        # lock file -> depth, in this process
_guard = threading.Lock()


class DataDirBusy(RuntimeError):
    """Another process works on this data_dir: names it (pid, command, since) and the lock file."""


def lock_path(data_dir: str | os.PathLike) -> Path:
    return resolve_data_dir(data_dir) / LOCK_FILE


def read_holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def _inherited(path: Path) -> bool:
    """This process was started by the holder (the token it put in the environment is in the file)."""
    env = os.environ.get(TOKEN_ENV, "")
    where, _, token = env.rpartition("=")
    return bool(token) and where == str(path) and read_holder(path).get("token") == token


def describe(holder: dict) -> str:
    if not holder:
        return "another process"
    return f"pid {holder.get('pid')} ({holder.get('command', '?')}, since {holder.get('since', '?')})"


@contextlib.contextmanager
def data_dir_lock(data_dir: str | os.PathLike, command: str = "") -> Iterator[Path]:
    """Hold the data_dir's lock for the block; DataDirBusy when a live process holds it. Reentrant within a
    process, and passed through by the holder's children."""
    from datetime import UTC, datetime

    path = lock_path(data_dir)
    key = str(path)
    with _guard:
        if _held.get(key):
            _held[key] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield path
        finally:
            with _guard:
                _held[key] -= 1
        return
    if _inherited(path):
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(path)
            raise DataDirBusy(f"{path.parent} is in use by {describe(holder)}: wait for it to finish (or stop "
                              f"it), then rerun. Lock file: {path}") from None
        token = uuid.uuid4().hex
        holder = {"pid": os.getpid(), "command": command or " ".join(sys.argv)[:200], "token": token,
                  "since": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        previous = os.environ.get(TOKEN_ENV)
        os.environ[TOKEN_ENV] = f"{path}={token}"
        with _guard:
            _held[key] = 1
        try:
            yield path
        finally:
            with _guard:
                _held.pop(key, None)
            if previous is None:
                os.environ.pop(TOKEN_ENV, None)
            else:
                os.environ[TOKEN_ENV] = previous
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def locked_stage(command: str) -> Callable:
    """Decorator for a stage's `run(cfg)`: the whole run holds cfg.data_dir's lock."""
    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(cfg: Any, *args: Any, **kwargs: Any) -> Any:
            with data_dir_lock(cfg.data_dir, command):
                return fn(cfg, *args, **kwargs)
        return run
    return wrap


__all__ = ["DataDirBusy", "LOCK_FILE", "data_dir_lock", "lock_path", "locked_stage", "read_holder"]
