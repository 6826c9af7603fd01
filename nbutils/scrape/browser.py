"""A real headless Chromium through Selenium (Debian chromium + chromedriver, nothing downloaded at run time).
Every load passes the host check before it starts, and the redirect chain and final address after it;
Chromium itself resolves only the allowed hosts; the driver runs under driver_guard.py, so a kill -9 of
this process leaves no Chromium behind."""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from .config import ScrapeConfig
from .errors import ScrapeError
from .hosts import HostPolicy
from .http import RETRY_STATUSES, Throttle, retry_wait, user_agent

CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--disable-extensions", "--disable-default-apps")
BLOCKED_ASSETS = ["*.css", "*.js", "*.png", "*.jpg", "*.gif", "*.svg", "*.ico", "*.woff", "*.woff2", "*.ttf"]
DRIVER_GUARD = Path(__file__).with_name("driver_guard.py")

EXTRACT_JS = r"""
const text = e => e ? e.textContent : '';
const out = {kind: 'unknown', results: [], next: null, empty: false};
const lis = document.querySelectorAll('li.arxiv-result');
if (lis.length) {
  out.kind = 'search';
  for (const li of lis) {
    const links = Array.from(li.querySelectorAll('p.list-title a'));
    const absA = links.find(a => /\/abs\//.test(a.getAttribute('href') || ''));
    const pdfA = links.find(a => a.textContent.trim().toLowerCase() === 'pdf');
    const sub = Array.from(li.querySelectorAll('p.is-size-7')).map(p => p.textContent).find(t => /Submitted/.test(t));
    out.results.push({abs_href: absA ? absA.href : '', abs_text: text(absA), pdf_href: pdfA ? pdfA.href : '',
      title: text(li.querySelector('p.title')), authors: Array.from(li.querySelectorAll('p.authors a')).map(text),
      abstract: text(li.querySelector('span.abstract-full') || li.querySelector('p.abstract')),
      submitted_text: sub || '',
      categories: Array.from(li.querySelectorAll('div.tags span.tag[data-tooltip]')).map(text)});
  }
  const nx = document.querySelector('a.pagination-next');
  if (nx && nx.getAttribute('href') && !nx.classList.contains('is-invisible')) out.next = nx.href;
} else if (document.querySelector('dl#articles dt')) {
  out.kind = 'list';
  for (const dt of document.querySelectorAll('dl#articles dt')) {
    let dd = dt.nextElementSibling; while (dd && dd.tagName !== 'DD') dd = dd.nextElementSibling;
    const links = Array.from(dt.querySelectorAll('a'));
    const absA = links.find(a => /\/abs\//.test(a.getAttribute('href') || ''));
    const pdfA = links.find(a => a.textContent.trim().toLowerCase() === 'pdf');
    const subj = dd ? text(dd.querySelector('.list-subjects')) : '';
    out.results.push({abs_href: absA ? absA.href : '', abs_text: text(absA), pdf_href: pdfA ? pdfA.href : '',
      title: dd ? text(dd.querySelector('.list-title')) : '',
      authors: dd ? Array.from(dd.querySelectorAll('.list-authors a')).map(text) : [],
      abstract: dd ? text(dd.querySelector('p.mathjax')) : '', submitted_text: '',
      categories: Array.from(subj.matchAll(/\(([a-z\-]+(?:\.[A-Za-z\-]+)?)\)/g)).map(m => m[1])});
  }
  const cur = document.querySelector('div.paging span');
  const nx = cur && cur.nextElementSibling;
  if (nx && nx.tagName === 'A') out.next = nx.href;
} else {
  const body = document.body ? document.body.innerText : '';
  out.empty = /produced no results|returned no results|no results found|No updates for this time period/i.test(body);
}
return out;
"""

ABS_JS = r"""
const hist = document.querySelector('div.submission-history');
const versions = hist ? Array.from(hist.querySelectorAll('strong')).map(s => s.textContent) : [];
const subj = document.querySelector('td.subjects');
return {title: document.title, history: hist ? hist.innerText : '', versions: versions,
  abstract: (document.querySelector('blockquote.abstract') || {}).textContent || '',
  subjects: subj ? subj.textContent : '',
  citation_date: (document.querySelector('meta[name=citation_date]') || {content: ''}).content};
"""


@dataclass
class Navigation:
    """One page load as the browser saw it: every URL the main frame was sent to, the last status/headers."""

    hops: list[str] = field(default_factory=list)
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    error: str = ""


def resolver_rules(policy: HostPolicy) -> str:
    """Chromium's own allow-list: every other host name and IP address fails to resolve, so no frame, redirect
    or script of a page can make the browser contact it."""
    return "--host-resolver-rules=MAP * ~NOTFOUND, " + ", ".join(f"EXCLUDE {h}" for h in sorted(policy.hosts))


def guarded_service(driver_path: str):
    """A Selenium Service that starts chromedriver through driver_guard.py (POSIX), else a plain one."""
    from selenium.webdriver.chrome.service import Service

    if os.name != "posix":
        return Service(executable_path=driver_path)

    class GuardedService(Service):
        def command_line_args(self) -> list[str]:
            return [str(DRIVER_GUARD), str(os.getpid()), driver_path] + super().command_line_args()

    return GuardedService(executable_path=sys.executable)


class Browser:
    """Headless Debian Chromium through Selenium (explicit driver path, SE_OFFLINE: no driver download)."""

    def __init__(self, cfg: ScrapeConfig, throttle: Throttle, policy: HostPolicy):
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options

        for what, path in (("browser", cfg.browser_binary), ("chromedriver", cfg.driver_path)):
            if not Path(path).exists():
                raise RuntimeError(f"{what} not found at {path}: install Debian `chromium chromium-driver` "
                                   f"(`make setup` does) or set browser_binary/driver_path")
        os.environ.setdefault("SE_OFFLINE", "true")
        opts = Options()
        for flag in CHROME_FLAGS:
            opts.add_argument(flag)
        opts.add_argument(f"--user-agent={user_agent(cfg)}")
        opts.add_argument(resolver_rules(policy))
        opts.binary_location = cfg.browser_binary
        opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
        self.cfg, self.throttle, self.policy = cfg, throttle, policy
        self.driver = webdriver.Chrome(options=opts, service=guarded_service(cfg.driver_path))
        self.driver.set_page_load_timeout(cfg.timeout_s)
        self.driver.execute_cdp_cmd("Network.enable", {})
        self.driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": BLOCKED_ASSETS})  # pages only

    def close(self) -> None:
        self.driver.quit()

    def navigation(self) -> Navigation:
        """What the main frame's document requests did since the last call, from Chromium's performance log
        (events arrive in no fixed order, hence two passes)."""
        events = [json.loads(e["message"])["message"] for e in self.driver.get_log("performance")]
        nav, frame, requests = Navigation(), None, set()
        for msg in events:
            params = msg.get("params", {})
            if params.get("type") != "Document":
                continue
            frame = frame or params.get("frameId")
            if params.get("frameId") != frame:
                continue
            method = msg.get("method")
            if method == "Network.requestWillBeSent":
                requests.add(params.get("requestId"))
                nav.hops.append(params["request"]["url"])
            elif method == "Network.responseReceived":
                resp = params["response"]
                nav.status, nav.headers = int(resp.get("status", 0)), {k.lower(): v for k, v in resp["headers"].items()}
            elif method == "Network.loadingFailed":
                nav.error = params.get("errorText", "failed")
        for msg in events:   # redirect targets, also those Chromium refused to follow (file://: ERR_UNSAFE_REDIRECT)
            params = msg.get("params", {})
            if msg.get("method") == "Network.responseReceivedExtraInfo" and params.get("requestId") in requests:
                location = {k.lower(): v for k, v in params.get("headers", {}).items()}.get("location")
                if location:
                    nav.hops.append(location)
        return nav

    def refuse_off_host(self, url: str, what: str, hops: list[str]) -> None:
        """ScrapeError when the load went (or was sent) off the allowed hosts on the way or at the end."""
        for hop in hops:
            problem = self.policy.problem(urljoin(url, hop))
            if problem:
                raise ScrapeError(f"refused {what}: {url} redirected to {problem}")

    def load(self, url: str, what: str = "page") -> None:
        """Open url politely after the host check; retries 429/5xx like HttpClient; raises ScrapeError for
        other failures and for a redirect off the allowed hosts (the page is then not read)."""
        from selenium.common.exceptions import WebDriverException

        self.policy.check(url, what)
        attempt = 0
        while True:
            self.throttle.wait(url)
            self.driver.get_log("performance")        # drop what earlier loads left, so navigation() sees this one
            try:
                self.driver.get(url)
            except WebDriverException as e:   # timeouts, connection refused, a host the resolver rules refuse ...
                self.refuse_off_host(url, what, self.navigation().hops)
                attempt += 1
                if attempt > self.cfg.max_retries:
                    raise ScrapeError(f"browser could not load {url}: {e.msg or type(e).__name__}") from e
                time.sleep(self.cfg.backoff_s * 2 ** (attempt - 1))
                continue
            finally:
                self.throttle.done(url)
            nav = self.navigation()
            self.refuse_off_host(url, what, nav.hops + [self.driver.current_url])
            if nav.error:
                raise ScrapeError(f"browser could not load {url}: {nav.error}")
            if nav.status in RETRY_STATUSES:
                attempt += 1
                time.sleep(retry_wait(self.cfg, attempt, nav.status, nav.headers.get("retry-after"), url))
                continue
            if nav.status and nav.status != 200:
                raise ScrapeError(f"HTTP {nav.status} for {url}")
            return

    def read_listing(self, url: str, what: str = "listing page") -> dict[str, Any]:
        self.load(url, what)
        return self.driver.execute_script(EXTRACT_JS)

    def read_abs(self, url: str) -> dict[str, Any]:
        self.load(url, "abs page")
        return self.driver.execute_script(ABS_JS)
