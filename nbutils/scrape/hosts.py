"""Where the scraper may go: http(s) on the listing's own host(s) and `allowed_hosts`, nothing else. Every
navigation, redirect, pagination step, abs page, API page and download passes `HostPolicy.check`."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..arxiv_ids import ARXIV_HOSTS
from .errors import ScrapeError

SCHEMES = ("http", "https")


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class HostPolicy:
    """The hosts a run may touch (arxiv.org's hosts come as a set: a listing on one may link the others)."""

    hosts: frozenset[str]

    @classmethod
    def for_sources(cls, *urls: str, extra: list[str] | tuple[str, ...] = ()) -> HostPolicy:
        hosts = {urlsplit(u).hostname for u in urls if u} | set(extra)
        if hosts & set(ARXIV_HOSTS):
            hosts |= set(ARXIV_HOSTS)
        return cls(frozenset(h.lower() for h in hosts if h))

    def problem(self, url: str) -> str | None:
        """Why `url` may not be loaded (None when it may)."""
        parts = urlsplit(url or "")
        if parts.scheme.lower() not in SCHEMES:
            return f"{url!r} is not an http(s) URL"
        host = (parts.hostname or "").lower()
        if host not in self.hosts:
            return f"{url} is on host {host!r}, not one of {sorted(self.hosts)}"
        return None

    def check(self, url: str, what: str = "") -> str:
        """`url` when it may be loaded; else ScrapeError('refused ...') naming what it was for."""
        problem = self.problem(url)
        if problem:
            raise ScrapeError(f"refused{' ' + what if what else ''}: {problem}")
        return url
