"""nbutils.scrape.browser: a kill -9 of the scraping process leaves no chromedriver or Chromium behind.
Slow: starts a real Chromium."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
HOLD_A_BROWSER = """
import json, sys, time
from nbutils.scrape import ScrapeConfig
from nbutils.scrape.browser import Browser
from nbutils.scrape.hosts import HostPolicy
from nbutils.scrape.http import Throttle

cfg = ScrapeConfig.from_params(profile="demo", data_dir=sys.argv[1])
browser = Browser(cfg, Throttle(0.1), HostPolicy.for_sources("http://127.0.0.1/"))
browser.driver.get("about:blank")
print("ready", flush=True)
time.sleep(300)
"""


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def crashpad_of(children: list[psutil.Process]) -> list[psutil.Process]:
    """Chromium's crash handler daemonises (parent 1); it is found by the browser's profile folder."""
    dirs = {a.split("=", 1)[1] for c in children for a in safe_cmdline(c) if a.startswith("--user-data-dir=")}
    return [p for p in psutil.process_iter() if "crashpad" in p.name()
            and any(d in " ".join(safe_cmdline(p)) for d in dirs)]


def safe_cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


@pytest.mark.slow
def test_kill_9_of_the_scraper_leaves_no_browser_behind(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-c", HOLD_A_BROWSER, str(tmp_path)], stdout=subprocess.PIPE, env=env,
                            text=True)
    children: list[psutil.Process] = []
    try:
        assert proc.stdout.readline().strip() == "ready"
        children = psutil.Process(proc.pid).children(recursive=True)
        children += crashpad_of(children)
        names = [c.name() for c in children]
        assert "chromedriver" in names and any("chrom" in n and n != "chromedriver" for n in names), names
        proc.kill()                                                # SIGKILL: no cleanup code of ours runs
        proc.wait()
        deadline = time.monotonic() + 10
        while alive(children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert alive(children) == [], [(p.pid, p.name()) for p in alive(children)]
    finally:
        for p in alive(children):                                  # only what this test started
            p.kill()
        if proc.poll() is None:
            proc.kill()
