"""A small killable process pool: one file per worker at a time, a deadline per file, a memory cap per worker.

A file past its time limit, or whose worker dies (a parser crash, the memory cap), is reported as skipped and
a fresh worker takes the dead one's place. Workers die with the process that started them: on Linux the
kernel kills them when it goes (PR_SET_PDEATHSIG, so even `kill -9` of a notebook kernel leaves none
behind), and an idle worker also checks its parent once a second (other systems).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import faulthandler
import multiprocessing as mp
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from multiprocessing.connection import wait as _wait_any
from typing import Any

from .loaders import parse_file

_PR_SET_PDEATHSIG = 1


def _limit_memory(max_memory_mb: int) -> None:
    if max_memory_mb <= 0:
        return
    try:
        import resource

        with open("/proc/self/statm") as f:
            vsz = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = vsz + max_memory_mb * 2**20
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (OSError, ValueError, ImportError):
        pass  # not Linux: no limit, the timeout still applies


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent goes (Linux); exit now if it already has."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the once-a-second check below still ends an idle orphan
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


def _worker_main(conn, options: dict[str, Any], parent_pid: int) -> None:
    """Worker loop: receive a path, send back parse_file's result; stdout/stderr of C libraries silenced."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C / notebook interrupt goes to the parent
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    sys.stdout = sys.stderr = open(os.devnull, "w")  # a forked notebook kernel's streams are not ours to use
    faulthandler.disable()  # a parser crash is reported by the parent, not dumped into the notebook/pytest
    _limit_memory(int(options.get("max_memory_mb", 0)))
    while True:
        try:
            if not conn.poll(1.0):
                if os.getppid() != parent_pid:
                    return  # orphaned (no PR_SET_PDEATHSIG here): nobody will read our result
                continue
            path = conn.recv()
        except (EOFError, OSError):
            return
        if path is None:
            return
        conn.send(parse_file(path, options))


class _Worker:
    def __init__(self, ctx, options: dict[str, Any]):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, options, os.getpid()), daemon=True)
        self.proc.start()
        child.close()
        self.task: Any = None
        self.deadline = 0.0

    def stop(self, kill: bool = False) -> None:
        if kill and self.proc.is_alive():
            self.proc.kill()
        else:
            try:
                self.conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def _exit_detail(code: int | None, options: dict[str, Any]) -> tuple[str, str]:
    """Why a worker died. Under a memory limit PDFium aborts when an allocation fails, so a worker killed
    by SIGABRT/SIGSEGV/SIGBUS/SIGKILL is reported as out of memory (the detail says it is inferred)."""
    limit = int(options.get("max_memory_mb", 0))
    if code is not None and code < 0:
        try:
            sig = signal.Signals(-code).name
        except ValueError:
            sig = f"signal {-code}"
        if limit > 0 and -code in (signal.SIGKILL, signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS):
            return "out_of_memory", (f"the parser process died ({sig}), most likely on hitting the "
                                     f"{limit} MB memory limit")
        return "crashed", f"the parser process died ({sig})"
    return "crashed", f"the parser process exited with code {code}"


def run_pool(paths: Iterable[str], options: dict[str, Any], workers: int, timeout_s: float
             ) -> Iterator[tuple[str, dict[str, Any]]]:
    """Parse files in `workers` processes; yields (path, result) as each finishes. A file past `timeout_s`
    or whose worker dies gets a 'skipped' result and a fresh worker takes its place."""
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    todo = deque(paths)
    if not todo:
        return
    pool = [_Worker(ctx, options) for _ in range(max(1, min(workers, len(todo))))]
    try:
        while todo or any(w.task for w in pool):
            for w in pool:
                if w.task is None and todo:
                    w.task, w.deadline = todo.popleft(), time.monotonic() + timeout_s
                    w.conn.send(w.task)
            busy = [w for w in pool if w.task is not None]
            wait_s = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            _wait_any([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=wait_s + 0.01)
            for i, w in enumerate(pool):
                if w.task is None:
                    continue
                result = None
                if w.conn.poll():
                    try:
                        result = w.conn.recv()
                    except (EOFError, OSError):
                        result = None
                if result is not None:
                    path, w.task = w.task, None
                    yield path, result
                    continue
                if not w.proc.is_alive():
                    w.proc.join()
                    reason, detail = _exit_detail(w.proc.exitcode, options)
                elif time.monotonic() >= w.deadline:
                    reason, detail = "timeout", f"no result within the {timeout_s:g} s limit; the parser was stopped"
                else:
                    continue
                path = w.task
                w.task = None
                w.stop(kill=True)
                pool[i] = _Worker(ctx, options)
                yield path, {"status": "skipped", "reason": reason, "detail": detail, "warnings": {},
                             "seconds": round(timeout_s if reason == "timeout" else 0.0, 3)}
    finally:
        for w in pool:
            w.stop(kill=w.task is not None)

