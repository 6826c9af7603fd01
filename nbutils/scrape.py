"""Stage 01: arXiv search results -> validated PDFs + papers.jsonl, politely and resumably.

Two backends give the same records (id with version, title, authors, abstract, submitted = v1 date,
categories, abs/pdf URLs):
- "selenium": a real headless Chromium reads arxiv.org search-result pages (`li.arxiv-result`) or `/list/`
  pages (`dl#articles`) and follows their pagination;
- "api": arXiv's export API (Atom XML, `search_query`, `start`/`max_results`).
Every request to a host waits `delay_s` after the previous one ended (never less than 3 s for non-loopback
hosts, per arXiv's terms), one at a time, with retries and backoff on 429/5xx honouring Retry-After.
PDFs come only from allowed hosts, are validated, written atomically and hashed; a rerun skips valid files.
"""
from __future__ import annotations

import dataclasses
import email.utils
import glob
import ipaddress
import json
import os
import re
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator
from urllib.parse import urlencode, urljoin, urlsplit

import requests
from tqdm.auto import tqdm

from . import __version__
from .config import StageConfig
from .io import append_jsonl, read_jsonl, sha256_file, write_json, write_jsonl

ARXIV_POLICY_DELAY_S = 3.0
ARXIV_PAGE_SIZES = (25, 50, 100, 200)
ARXIV_HOSTS = ("arxiv.org", "export.arxiv.org", "www.arxiv.org")
NEW_ID = r"\d{4}\.\d{4,5}(?:v\d+)?"
OLD_ID = r"[a-z][a-z\-]*(?:\.[A-Z]{2})?/\d{7}(?:v\d+)?"
ARXIV_ID_RE = re.compile(rf"(?:{NEW_ID}|{OLD_ID})")
RETRY_STATUSES = (429, 500, 502, 503, 504)
PDF_CONTENT_TYPES = ("application/pdf", "application/x-pdf", "application/octet-stream", "binary/octet-stream")
ATOM = {"a": "http://www.w3.org/2005/Atom", "arxiv": "http://arxiv.org/schemas/atom",
        "os": "http://a9.com/-/spec/opensearch/1.1/"}
CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--disable-extensions", "--disable-default-apps")
BLOCKED_ASSETS = ["*.css", "*.js", "*.png", "*.jpg", "*.gif", "*.svg", "*.ico", "*.woff", "*.woff2", "*.ttf"]


@dataclass
class ScrapeConfig(StageConfig):
    """Parameters of 01_scrape (PIPELINE.md names: search_url, backend, max_papers, delay_s)."""

    PROFILE_DEFAULTS: ClassVar[dict] = {
        "demo": {"site": "demo", "max_papers": 8, "delay_s": 0.2, "page_size": 3, "backoff_s": 0.5,
                 "max_wait_s": 10.0, "timeout_s": 20.0, "max_pdf_mb": 20.0},
        "full": {"site": "https://arxiv.org", "max_papers": 50, "delay_s": 3.0, "page_size": 50},
    }
    PATH_FIELDS: ClassVar[dict] = {"pdf_dir": "pdfs", "papers_path": "papers", "report_path": "scrape_report"}

    search_url: str = ""            # a search-result or /list/ page; built from query + dates when empty
    backend: str = "selenium"       # "selenium" (real browser) or "api" (export API, Atom)
    query: str = "llm"              # the original project's query, after the Llama 3 release
    date_from: str = "2024-04-18"   # submission date range, YYYY-MM-DD ("" = open)
    date_to: str = ""
    max_papers: int = 50
    delay_s: float = 3.0            # between requests; raised to 3 s for any non-loopback host
    page_size: int = 50             # results per page (arxiv.org accepts 25, 50, 100, 200)
    site: str = "https://arxiv.org"  # "demo": serve the bundled arXiv look-alike on 127.0.0.1
    api_url: str = "https://export.arxiv.org/api/query"
    allowed_hosts: list[str] = field(default_factory=list)   # extra hosts PDFs may come from
    download: bool = True
    max_retries: int = 4
    backoff_s: float = 5.0          # first wait after a 429/5xx without Retry-After; doubles each retry
    max_wait_s: float = 300.0       # a longer Retry-After gives up on that item instead of waiting
    timeout_s: float = 60.0
    max_pdf_mb: float = 50.0
    user_agent: str = (f"nbutils-arxiv-pipeline/{__version__} (research notebook series; "
                       f"one request per 3 s; python-requests, selenium)")
    browser_binary: str = "/usr/bin/chromium"
    driver_path: str = "/usr/bin/chromedriver"
    pdf_dir: str | None = None
    papers_path: str | None = None
    report_path: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backend not in ("selenium", "api"):
            raise ValueError(f"backend must be 'selenium' or 'api', not {self.backend!r}")
        if self.max_papers < 1:
            raise ValueError(f"max_papers must be >= 1, not {self.max_papers}")
        for name in ("date_from", "date_to"):
            value = getattr(self, name)
            if value:
                try:
                    date.fromisoformat(value)
                except ValueError:
                    raise ValueError(f"{name} must be YYYY-MM-DD, not {value!r}") from None


# ----------------------------------------------------------------------------------------------- ids, names
def parse_arxiv_id(text: str) -> str | None:
    """The arXiv id in 'arXiv:2405.01234v2', '2405.01234', 'hep-th/9901001', else None."""
    text = (text or "").strip()
    text = text[6:] if text.lower().startswith("arxiv:") else text
    return text if ARXIV_ID_RE.fullmatch(text) else None


def id_from_url(url: str) -> str | None:
    """The arXiv id in an /abs/ or /pdf/ URL (with or without .pdf), else None."""
    m = re.search(r"/(?:abs|pdf)/(.+)$", urlsplit(url or "").path)
    if not m:
        return None
    raw = m.group(1)
    return parse_arxiv_id(raw[:-4] if raw.endswith(".pdf") else raw)


def base_id(arxiv_id: str) -> str:
    return re.sub(r"v\d+$", "", arxiv_id)


def has_version(arxiv_id: str) -> bool:
    return bool(re.search(r"v\d+$", arxiv_id))


def pdf_filename(arxiv_id: str) -> str:
    """'2405.01234v2' -> '2405.01234v2.pdf'; 'hep-th/9901001v1' -> 'hep-th_9901001v1.pdf'. Refuses anything
    that is not an arXiv id, so no name from a page or a header can point outside pdfs/."""
    if not parse_arxiv_id(arxiv_id):
        raise ValueError(f"not an arXiv id: {arxiv_id!r}")
    return re.sub(r"[^A-Za-z0-9._-]", "_", arxiv_id.replace("/", "_")) + ".pdf"


def pdf_path_for(pdf_dir: str | os.PathLike, arxiv_id: str) -> Path:
    folder = Path(pdf_dir).resolve()
    path = (folder / pdf_filename(arxiv_id)).resolve()
    if path.parent != folder:
        raise ValueError(f"refusing file name for {arxiv_id!r}: it leaves {folder}")
    return path


# ----------------------------------------------------------------------------------------------- URLs
def build_search_url(base: str, query: str, date_from: str = "", date_to: str = "", size: int = 50) -> str:
    """arxiv.org advanced search (all fields, submission-date range, newest first) as a URL."""
    params = [("advanced", ""), ("terms-0-operator", "AND"), ("terms-0-term", query), ("terms-0-field", "all"),
              ("classification-physics_archives", "all"), ("classification-include_cross_list", "include"),
              ("date-year", ""), ("date-filter_by", "date_range" if (date_from or date_to) else "all_dates"),
              ("date-from_date", date_from), ("date-to_date", date_to), ("date-date_type", "submitted_date"),
              ("abstracts", "show"), ("size", str(size)), ("order", "-announced_date_first")]
    return f"{base.rstrip('/')}/search/advanced?{urlencode(params)}"


def build_api_query(query: str, date_from: str = "", date_to: str = "") -> str:
    """`all:llm AND submittedDate:[202404180000 TO 202611252359]` (an open end becomes 1991 / today)."""
    parts = [f"all:{term}" for term in query.split()]
    if date_from or date_to:
        lo = (date_from or "1991-01-01").replace("-", "") + "0000"
        hi = (date_to or date.today().isoformat()).replace("-", "") + "2359"
        parts.append(f"submittedDate:[{lo} TO {hi}]")
    return " AND ".join(parts)


def api_page_url(api_url: str, search_query: str, start: int, max_results: int) -> str:
    return f"{api_url}?" + urlencode({"search_query": search_query, "start": start, "max_results": max_results,
                                      "sortBy": "submittedDate", "sortOrder": "descending"})


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def arxiv_page_size(size: int, host: str) -> int:
    """arxiv.org only accepts 25/50/100/200 results per page: round up to the next (loopback: as asked)."""
    if is_loopback(host):
        return size
    return next((s for s in ARXIV_PAGE_SIZES if s >= size), ARXIV_PAGE_SIZES[-1])


def canonical_url(found: str, kind: str, arxiv_id: str) -> str:
    """`https://arxiv.org/{abs|pdf}/{id}` on the host the link was found on (arxiv hosts -> https://arxiv.org)."""
    parts = urlsplit(found)
    host = parts.netloc
    origin = "https://arxiv.org" if parts.hostname in ARXIV_HOSTS or not host else f"{parts.scheme}://{host}"
    return f"{origin}/{kind}/{arxiv_id}"


# ----------------------------------------------------------------------------------------------- politeness
class ScrapeError(Exception):
    """A per-item failure with a reason the report shows; the run goes on."""


@dataclass
class Throttle:
    """Spaces requests per host: each starts at least `delay` after the previous one to that host ended."""

    delay_s: float
    sleep: Callable[[float], None] = time.sleep
    last_end: dict[str, float] = field(default_factory=dict)
    count: int = 0

    def delay_for(self, host: str) -> float:
        return self.delay_s if is_loopback(host) else max(self.delay_s, ARXIV_POLICY_DELAY_S)

    def wait(self, url: str) -> None:
        host = urlsplit(url).hostname or ""
        last = self.last_end.get(host)
        if last is not None:
            remaining = self.delay_for(host) - (time.monotonic() - last)
            if remaining > 0:
                self.sleep(remaining)
        self.count += 1

    def done(self, url: str) -> None:
        self.last_end[urlsplit(url).hostname or ""] = time.monotonic()


def user_agent(cfg: ScrapeConfig) -> str:
    """The configured User-Agent, plus a contact address from $ARXIV_CONTACT when set (arXiv likes one)."""
    contact = os.environ.get("ARXIV_CONTACT", "").strip()
    return f"{cfg.user_agent} mailto:{contact}" if contact else cfg.user_agent


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def retry_wait(cfg: ScrapeConfig, attempt: int, status: int, retry_after: str | None, url: str) -> float:
    """How long to wait before retry `attempt` (1-based); raises ScrapeError when retries are spent."""
    if attempt > cfg.max_retries:
        raise ScrapeError(f"HTTP {status} after {cfg.max_retries + 1} attempts")
    asked = retry_after_seconds(retry_after)
    if asked is not None and asked > cfg.max_wait_s:
        raise ScrapeError(f"HTTP {status}: server asked to wait {asked:.0f}s (> max_wait_s={cfg.max_wait_s:g})")
    wait = asked if asked is not None else cfg.backoff_s * 2 ** (attempt - 1)
    print(f"HTTP {status} from {url}: retry {attempt}/{cfg.max_retries} in {wait:.1f}s")
    return wait


class HttpClient:
    """requests with one pooled connection, the throttle, retries and a host allow-list on every hop."""

    def __init__(self, cfg: ScrapeConfig, throttle: Throttle, allowed_hosts: set[str]):
        self.cfg, self.throttle, self.allowed_hosts = cfg, throttle, allowed_hosts
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=1, pool_block=True)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = user_agent(cfg)

    def close(self) -> None:
        self.session.close()

    def check_host(self, url: str) -> None:
        host = urlsplit(url).hostname or ""
        if host not in self.allowed_hosts:
            raise ScrapeError(f"refused: {url} is on host {host!r}, not one of {sorted(self.allowed_hosts)}")

    def get(self, url: str, stream: bool = False, max_redirects: int = 5) -> requests.Response:
        """GET following redirects by hand (each hop must stay on an allowed host), retrying 429/5xx."""
        attempt = 0
        hops = 0
        while True:
            self.check_host(url)
            self.throttle.wait(url)
            try:
                resp = self.session.get(url, stream=stream, allow_redirects=False, timeout=self.cfg.timeout_s)
            except requests.RequestException as e:
                self.throttle.done(url)
                attempt += 1
                if attempt > self.cfg.max_retries:
                    raise ScrapeError(f"network error after {attempt} attempts: {type(e).__name__}: {e}") from e
                time.sleep(self.cfg.backoff_s * 2 ** (attempt - 1))
                continue
            if resp.is_redirect:
                resp.close()
                self.throttle.done(url)
                hops += 1
                if hops > max_redirects:
                    raise ScrapeError(f"more than {max_redirects} redirects")
                url = urljoin(url, resp.headers.get("Location", ""))
                continue
            if resp.status_code in RETRY_STATUSES:
                resp.close()
                self.throttle.done(url)
                attempt += 1
                time.sleep(retry_wait(self.cfg, attempt, resp.status_code, resp.headers.get("Retry-After"), url))
                continue
            if stream:
                return resp   # caller reads the body, then calls throttle.done
            self.throttle.done(url)
            if resp.status_code != 200:
                raise ScrapeError(f"HTTP {resp.status_code}")
            return resp


# ----------------------------------------------------------------------------------------------- PDFs
def pdf_problem(path: Path, max_bytes: int) -> str | None:
    """Why the file is not an acceptable PDF (None when it is): size, %PDF- magic, %%EOF end marker."""
    size = path.stat().st_size
    if size == 0:
        return "empty file"
    if size > max_bytes:
        return f"larger than the {max_bytes / 2**20:g} MB cap"
    with open(path, "rb") as f:
        head = f.read(5)
        f.seek(max(0, size - 2048))
        tail = f.read()
    if head != b"%PDF-":
        return f"not a PDF (starts with {head!r})"
    if b"%%EOF" not in tail:
        return "truncated PDF (no %%EOF end marker)"
    return None


def disposition_id(header: str | None, wanted_base: str) -> str | None:
    """The versioned id from Content-Disposition (arxiv.org sends `filename="2405.01234v2.pdf"`; old ids
    without their slash), only when it names this paper. Only the version number is taken from the header."""
    m = re.search(r'filename\*?=(?:UTF-8\'\')?"?([^";]+)"?', header or "")
    if not m:
        return None
    name = m.group(1).strip().removesuffix(".pdf").strip()
    named = re.fullmatch(r"(.+)v(\d+)", name)
    if not named or named.group(1) not in {wanted_base, wanted_base.replace("/", ""), wanted_base.replace("/", "_")}:
        return None
    return f"{wanted_base}v{int(named.group(2))}"


@dataclass
class Fetched:
    tmp: Path
    sha256: str
    n_bytes: int
    final_id: str


def fetch_pdf(client: HttpClient, url: str, arxiv_id: str, pdf_dir: Path, max_bytes: int) -> Fetched:
    """Download to a temp file in pdf_dir (size-capped), validate it, resolve the version; caller renames."""
    resp = client.get(url, stream=True)
    tmp = None
    try:
        if resp.status_code != 200:
            raise ScrapeError(f"HTTP {resp.status_code}")
        ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype not in PDF_CONTENT_TYPES:
            raise ScrapeError(f"served {ctype or 'no content type'}, not a PDF")
        declared = int(resp.headers.get("Content-Length") or 0)
        if declared > max_bytes:
            raise ScrapeError(f"{declared / 2**20:.1f} MB is over the {max_bytes / 2**20:g} MB cap")
        pdf_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=pdf_dir, prefix=".download.", suffix=".tmp")
        tmp = Path(name)
        n = 0
        with os.fdopen(fd, "wb") as f:
            for block in resp.iter_content(1 << 16):
                n += len(block)
                if n > max_bytes:
                    raise ScrapeError(f"over the {max_bytes / 2**20:g} MB cap")
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        if declared and n != declared:
            raise ScrapeError(f"got {n} of {declared} bytes")
        problem = pdf_problem(tmp, max_bytes)
        if problem:
            raise ScrapeError(problem)
        final_id = arxiv_id if has_version(arxiv_id) else (
            disposition_id(resp.headers.get("Content-Disposition"), arxiv_id) or arxiv_id)
        return Fetched(tmp, sha256_file(tmp), n, final_id)
    except requests.RequestException as e:
        if tmp:
            tmp.unlink(missing_ok=True)
        raise ScrapeError(f"download interrupted: {type(e).__name__}") from e
    except BaseException:
        if tmp:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        resp.close()
        client.throttle.done(url)


# ----------------------------------------------------------------------------------------------- records
def blank_record() -> dict[str, Any]:
    return {"id": "", "title": "", "authors": [], "abstract": "", "submitted": "", "categories": [],
            "abs_url": "", "pdf_url": "", "pdf_path": None, "sha256": None}


def clean(text: str) -> str:
    return re.sub(r"\s+", " ", text or "").strip()


def parse_submitted(text: str) -> str:
    """'Submitted 20 May, 2024; v1 submitted 2 May, 2024; ...' -> '2024-05-02' (v1 date, as the API's
    `published`); '' when absent."""
    text = clean(text)
    m = re.search(r"v1 submitted (\d{1,2} \w+,? \d{4})", text) or re.search(r"Submitted (\d{1,2} \w+,? \d{4})", text)
    if not m:
        return ""
    for fmt in ("%d %B, %Y", "%d %B %Y", "%d %b, %Y", "%d %b %Y"):
        try:
            return datetime.strptime(m.group(1), fmt).date().isoformat()
        except ValueError:
            continue
    return ""


def record_from_listing(raw: dict[str, Any]) -> dict[str, Any]:
    """A browser-extracted result (search or /list/ markup) as a papers.jsonl record; raises ScrapeError
    naming the entry when it carries no usable arXiv id."""
    pid = parse_arxiv_id(raw.get("abs_text", "")) or id_from_url(raw.get("abs_href", "")) \
        or id_from_url(raw.get("pdf_href", ""))
    if not pid:
        shown = clean(raw.get("abs_text", "")) or raw.get("abs_href", "") or clean(raw.get("title", ""))[:60]
        raise ScrapeError(f"listing entry {shown!r} has no valid arXiv id")
    if not raw.get("pdf_href"):
        raise ScrapeError(f"{pid}: no 'pdf' link in its listing entry")
    rec = blank_record()
    rec.update(
        id=pid, title=clean(raw.get("title", "")).removeprefix("Title:").strip(),
        authors=[clean(a) for a in raw.get("authors", []) if clean(a)],
        abstract=clean(re.sub(r"[\u25b3\u25bd]\s*(Less|More)\s*$", "", clean(raw.get("abstract", ""))))
        .removeprefix("Abstract:").strip(),
        submitted=parse_submitted(raw.get("submitted_text", "")),
        categories=[c for c in (clean(x) for x in raw.get("categories", []))
                    if re.fullmatch(r"[a-z\-]+(\.[A-Za-z\-]+)?", c)],
        abs_url=raw.get("abs_href") or "", pdf_url=raw["pdf_href"],
    )
    return rec


def canonicalise(rec: dict[str, Any]) -> dict[str, Any]:
    rec["abs_url"] = canonical_url(rec["abs_url"] or rec["pdf_url"], "abs", rec["id"])
    rec["pdf_url"] = canonical_url(rec["pdf_url"], "pdf", rec["id"])
    return rec


# ----------------------------------------------------------------------------------------------- browser
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


class Browser:
    """Headless Debian Chromium through Selenium (no driver download: explicit Service path, SE_OFFLINE)."""

    def __init__(self, cfg: ScrapeConfig, throttle: Throttle):
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service

        for what, path in (("browser", cfg.browser_binary), ("chromedriver", cfg.driver_path)):
            if not Path(path).exists():
                raise RuntimeError(f"{what} not found at {path}: install Debian `chromium chromium-driver` "
                                   f"(`make setup` does) or set browser_binary/driver_path")
        os.environ.setdefault("SE_OFFLINE", "true")
        opts = Options()
        for flag in CHROME_FLAGS:
            opts.add_argument(flag)
        opts.add_argument(f"--user-agent={user_agent(cfg)}")
        opts.binary_location = cfg.browser_binary
        opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
        self.cfg, self.throttle = cfg, throttle
        self.driver = webdriver.Chrome(options=opts, service=Service(executable_path=cfg.driver_path))
        self.driver.set_page_load_timeout(cfg.timeout_s)
        self.driver.execute_cdp_cmd("Network.enable", {})
        self.driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": BLOCKED_ASSETS})  # pages only

    def close(self) -> None:
        self.driver.quit()

    def last_document_response(self) -> tuple[int, dict[str, str]]:
        """HTTP status and headers of the last document the browser loaded (from the performance log)."""
        status, headers = 0, {}
        for entry in self.driver.get_log("performance"):
            msg = json.loads(entry["message"])["message"]
            if msg.get("method") == "Network.responseReceived" and msg["params"].get("type") == "Document":
                resp = msg["params"]["response"]
                status, headers = int(resp.get("status", 0)), {k.lower(): v for k, v in resp["headers"].items()}
        return status, headers

    def load(self, url: str) -> None:
        """Open url politely; retries 429/5xx like HttpClient; raises ScrapeError for other failures."""
        from selenium.common.exceptions import WebDriverException

        attempt = 0
        while True:
            self.throttle.wait(url)
            try:
                self.driver.get(url)
            except WebDriverException as e:   # timeouts, connection refused, DNS ...
                attempt += 1
                if attempt > self.cfg.max_retries:
                    raise ScrapeError(f"browser could not load {url}: {e.msg or type(e).__name__}") from e
                time.sleep(self.cfg.backoff_s * 2 ** (attempt - 1))
                continue
            finally:
                self.throttle.done(url)
            status, headers = self.last_document_response()
            if status in RETRY_STATUSES:
                attempt += 1
                time.sleep(retry_wait(self.cfg, attempt, status, headers.get("retry-after"), url))
                continue
            if status and status != 200:
                raise ScrapeError(f"HTTP {status} for {url}")
            return

    def read_listing(self, url: str) -> dict[str, Any]:
        self.load(url)
        return self.driver.execute_script(EXTRACT_JS)

    def read_abs(self, url: str) -> dict[str, Any]:
        self.load(url)
        return self.driver.execute_script(ABS_JS)


def listing_pages(browser: Browser, url: str, max_pages: int = 1000) -> Iterator[dict[str, Any]]:
    """Each page of a search or /list/ listing, following its pagination."""
    seen: set[str] = set()
    while url and url not in seen and len(seen) < max_pages:
        seen.add(url)
        page = browser.read_listing(url)
        if page["kind"] == "unknown" and not page["empty"]:
            raise ScrapeError(f"{url}: neither arXiv search results (li.arxiv-result) nor a /list/ page "
                              f"(dl#articles) nor an empty-result message; has the markup changed?")
        yield page
        url = page.get("next")


def apply_abs(rec: dict[str, Any], info: dict[str, Any]) -> None:
    """Fill the version (last [vN] of the submission history) and v1 date from an abs page."""
    versions = [int(m.group(1)) for v in info.get("versions", []) if (m := re.fullmatch(r"\[v(\d+)\]", v.strip()))]
    if versions and not has_version(rec["id"]):
        rec["id"] = f"{rec['id']}v{max(versions)}"
    if not rec["submitted"]:
        m = re.search(r"\[v1\]\s*\w{3}, (\d{1,2} \w{3} \d{4})", info.get("history", ""))
        if m:
            rec["submitted"] = datetime.strptime(m.group(1), "%d %b %Y").date().isoformat()
    if not rec["abstract"]:
        rec["abstract"] = clean(info.get("abstract", "")).removeprefix("Abstract:").strip()
    if not rec["categories"]:
        rec["categories"] = re.findall(r"\(([a-z\-]+(?:\.[A-Za-z\-]+)?)\)", info.get("subjects", ""))


# ----------------------------------------------------------------------------------------------- API backend
def parse_atom(xml_text: str) -> tuple[list[dict[str, Any]], int]:
    """Records and opensearch:totalResults of one export-API answer; an API error entry raises."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as e:
        raise ScrapeError(f"export API answered something that is not Atom XML ({e})") from e
    total = int(root.findtext("os:totalResults", "0", ATOM) or 0)
    records = []
    for entry in root.findall("a:entry", ATOM):
        entry_id = entry.findtext("a:id", "", ATOM).strip()
        if "/api/errors" in entry_id:
            raise ScrapeError(f"export API error: {clean(entry.findtext('a:summary', '', ATOM))}")
        pid = id_from_url(entry_id)
        if not pid:
            raise ScrapeError(f"API entry {entry_id!r} has no valid arXiv id")
        links = entry.findall("a:link", ATOM)
        pdf = next((l.get("href", "") for l in links if l.get("title") == "pdf"), "")
        alt = next((l.get("href", "") for l in links if l.get("rel") == "alternate"), entry_id)
        primary = entry.find("arxiv:primary_category", ATOM)
        cats = [c.get("term", "") for c in entry.findall("a:category", ATOM)]
        if primary is not None and primary.get("term") in cats:
            cats.remove(primary.get("term"))
            cats.insert(0, primary.get("term"))
        rec = blank_record()
        rec.update(id=pid, title=clean(entry.findtext("a:title", "", ATOM)),
                   authors=[clean(a.findtext("a:name", "", ATOM)) for a in entry.findall("a:author", ATOM)],
                   abstract=clean(entry.findtext("a:summary", "", ATOM)),
                   submitted=entry.findtext("a:published", "", ATOM).strip()[:10],
                   categories=[c for c in cats if c], abs_url=alt, pdf_url=pdf or alt.replace("/abs/", "/pdf/"))
        records.append(rec)
    return records, total


def api_records(client: HttpClient, cfg: ScrapeConfig, api_url: str) -> Iterator[list[dict[str, Any]]]:
    """Pages of records from the export API until max_papers or the end of the results."""
    search_query = build_api_query(cfg.query, cfg.date_from, cfg.date_to)
    start = 0
    while start < cfg.max_papers:
        n = min(cfg.page_size, cfg.max_papers - start)
        records, total = parse_atom(client.get(api_page_url(api_url, search_query, start, n)).text)
        yield records
        start += n
        if not records or start >= total:
            return


# ----------------------------------------------------------------------------------------------- the stage
@dataclass
class ScrapeResult:
    """What a run found and did (also written to scrape_report.json)."""

    records: list[dict[str, Any]] = field(default_factory=list)     # listed papers, in listing order
    status: dict[str, str] = field(default_factory=dict)            # id -> downloaded | skipped | failed
    reasons: dict[str, str] = field(default_factory=dict)           # id -> why (skipped / failed)
    listing_failures: list[dict[str, str]] = field(default_factory=list)
    pages: int = 0
    requests: int = 0
    elapsed_s: float = 0.0
    source: str = ""

    def counts(self) -> dict[str, int]:
        out = {"downloaded": 0, "skipped": 0, "failed": 0}
        for s in self.status.values():
            out[s] = out.get(s, 0) + 1
        out["failed"] += len(self.listing_failures)
        return out

    def report(self, cfg: ScrapeConfig) -> dict[str, Any]:
        cfg_dict = {k: v for k, v in cfg.to_dict().items()}
        by = lambda s: [r["id"] for r in self.records if self.status.get(r["id"]) == s]  # noqa: E731
        return {
            "backend": cfg.backend, "source": self.source, "finished": datetime.now(timezone.utc).isoformat(),
            "elapsed_s": round(self.elapsed_s, 2), "pages": self.pages, "requests": self.requests,
            "listed": len(self.records), "counts": self.counts(),
            "downloaded": by("downloaded"),
            "skipped": [{"id": i, "reason": self.reasons.get(i, "")} for i in by("skipped")],
            "failed": [{"id": r["id"], "url": r["pdf_url"], "reason": self.reasons.get(r["id"], "")}
                       for r in self.records if self.status.get(r["id"]) == "failed"] + self.listing_failures,
            "config": cfg_dict,
        }


def load_existing(papers_path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """papers.jsonl as {id: record}; a later line for the same id wins."""
    return {r["id"]: r for r in read_jsonl(papers_path) if r.get("id")}


def version_of(arxiv_id: str) -> int:
    m = re.search(r"v(\d+)$", arxiv_id)
    return int(m.group(1)) if m else 0


def find_existing(rec: dict[str, Any], existing: dict[str, dict[str, Any]], cfg: ScrapeConfig) -> dict | None:
    """A previous record for this paper whose PDF is still on disk, valid and unchanged (sha256); else a valid
    `pdfs/<id>.pdf` left without a record (papers.jsonl lost), described from the file itself."""
    want = rec["id"]
    max_bytes = int(cfg.max_pdf_mb * 2**20)
    candidates = [r for r in existing.values()
                  if r["id"] == want or (not has_version(want) and base_id(r["id"]) == want)]
    for old in sorted(candidates, key=lambda r: version_of(r["id"]), reverse=True):
        path = Path(cfg.data_dir) / (old.get("pdf_path") or "")
        if old.get("pdf_path") and path.is_file() and not pdf_problem(path, max_bytes) \
                and (not old.get("sha256") or sha256_file(path) == old["sha256"]):
            return old
    stem = pdf_filename(want)[:-4]
    on_disk = [Path(cfg.pdf_dir) / f"{stem}.pdf"] if has_version(want) else \
        sorted(Path(cfg.pdf_dir).glob(f"{glob.escape(stem)}v*.pdf"), key=lambda p: version_of(p.stem), reverse=True)
    for path in on_disk:
        pid = want if has_version(want) else f"{want}v{version_of(path.stem)}"
        if version_of(pid) and path.is_file() and parse_arxiv_id(pid) and not pdf_problem(path, max_bytes):
            return {"id": pid, "pdf_path": os.path.relpath(path, cfg.data_dir), "sha256": sha256_file(path)}
    return None


def remove_stale_downloads(pdf_dir: str | os.PathLike) -> None:
    """Temp files of a download that was killed mid-way (atomic writes leave nothing else behind)."""
    for tmp in Path(pdf_dir).glob(".download.*.tmp"):
        tmp.unlink(missing_ok=True)


def download_one(client: HttpClient, rec: dict[str, Any], cfg: ScrapeConfig) -> dict[str, Any]:
    """Fetch, validate and atomically place one PDF; returns the completed record (raises ScrapeError)."""
    pdf_dir = Path(cfg.pdf_dir)
    fetched = fetch_pdf(client, rec["pdf_url"], rec["id"], pdf_dir, int(cfg.max_pdf_mb * 2**20))
    try:
        rec["id"] = fetched.final_id
        dest = pdf_path_for(pdf_dir, rec["id"])
        os.chmod(fetched.tmp, 0o644)          # mkstemp makes 0600; a PDF is for everyone to read
        os.replace(fetched.tmp, dest)
    except BaseException:
        fetched.tmp.unlink(missing_ok=True)
        raise
    rec["pdf_path"] = os.path.relpath(dest, cfg.data_dir)
    rec["sha256"] = fetched.sha256
    return rec


def place_under_id(rec: dict[str, Any], cfg: ScrapeConfig) -> None:
    """Rename a downloaded PDF when its id learnt its version later (abs page), so file stem == id."""
    if not rec["pdf_path"]:
        return
    current = Path(cfg.data_dir) / rec["pdf_path"]
    wanted = pdf_path_for(cfg.pdf_dir, rec["id"])
    if current.resolve() != wanted and current.exists():
        os.replace(current, wanted)
        rec["pdf_path"] = os.path.relpath(wanted, cfg.data_dir)


def allowed_hosts_for(cfg: ScrapeConfig, *urls: str) -> set[str]:
    hosts = {urlsplit(u).hostname for u in urls if u} | set(cfg.allowed_hosts)
    if hosts & set(ARXIV_HOSTS):
        hosts |= set(ARXIV_HOSTS)
    return {h for h in hosts if h}


def list_with_browser(browser: Browser, url: str, cfg: ScrapeConfig, result: ScrapeResult) -> list[dict]:
    """Records from a search or /list/ listing, deduplicated by id, at most max_papers."""
    records: dict[str, dict] = {}
    pages = listing_pages(browser, url)
    with tqdm(desc="listing pages", unit="page") as bar:
        while len(records) < cfg.max_papers:
            try:
                page = next(pages)
            except StopIteration:
                break
            except ScrapeError as e:
                listing_failed(result, url, e)
                break
            result.pages += 1
            bar.update(1)
            add_listing_entries(page["results"], records, cfg, result)
    return list(records.values())


def add_listing_entries(entries: list[dict], records: dict[str, dict], cfg: ScrapeConfig,
                        result: ScrapeResult) -> None:
    """Turn one page's raw entries into records (first occurrence of a paper wins) up to max_papers."""
    for raw in entries:
        try:
            rec = record_from_listing(raw)
        except ScrapeError as e:
            result.listing_failures.append({"id": clean(raw.get("abs_text", "")), "url": raw.get("pdf_href", ""),
                                            "reason": str(e)})
            print(f"skipping a listing entry: {e}")
            continue
        if base_id(rec["id"]) not in {base_id(i) for i in records}:
            records[rec["id"]] = rec
        if len(records) >= cfg.max_papers:
            return


def listing_failed(result: ScrapeResult, url: str, error: Exception) -> None:
    """A listing page that could not be read ends the listing; what was found so far is still fetched."""
    result.listing_failures.append({"id": "", "url": url, "reason": f"listing stopped: {error}"})
    print(f"listing stopped after {result.pages} page(s): {error}")


def list_with_api(client: HttpClient, cfg: ScrapeConfig, api_url: str, result: ScrapeResult) -> list[dict]:
    """Records from the export API, deduplicated by id, at most max_papers."""
    records: dict[str, dict] = {}
    try:
        for page in tqdm(api_records(client, cfg, api_url), desc="API pages", unit="page"):
            result.pages += 1
            for rec in page:
                records.setdefault(rec["id"], rec)
    except ScrapeError as e:
        listing_failed(result, api_url, e)
    return list(records.values())[: cfg.max_papers]


def scrape(cfg: ScrapeConfig, search_url: str = "", api_url: str = "") -> ScrapeResult:
    """Run the stage against `search_url` (selenium) or `api_url` (api); writes pdfs/, papers.jsonl, report."""
    t0 = time.monotonic()
    result = ScrapeResult()
    throttle = Throttle(cfg.delay_s)
    host = urlsplit(search_url or cfg.search_url or cfg.site).hostname or ""
    search_url = search_url or cfg.search_url or build_search_url(
        cfg.site, cfg.query, cfg.date_from, cfg.date_to, arxiv_page_size(cfg.page_size, host))
    api_url = api_url or cfg.api_url
    result.source = api_url if cfg.backend == "api" else search_url
    client = HttpClient(cfg, throttle, allowed_hosts_for(cfg, result.source))
    browser = Browser(cfg, throttle) if cfg.backend == "selenium" else None
    try:
        if browser:
            records = list_with_browser(browser, search_url, cfg, result)
        else:
            records = list_with_api(client, cfg, api_url, result)
        result.records = [canonicalise(r) for r in records]
        print(f"listed {len(records)} paper(s) from {result.pages} page(s) of {result.source}")
        fetch_all(cfg, client, browser, result)
    finally:
        client.close()
        if browser:
            browser.close()
    result.requests = throttle.count
    result.elapsed_s = time.monotonic() - t0
    write_json(cfg.report_path, result.report(cfg))
    return result


def fetch_all(cfg: ScrapeConfig, client: HttpClient, browser: Browser | None, result: ScrapeResult) -> None:
    """Download (or skip) every listed paper; append each finished record to papers.jsonl as it lands,
    then rewrite papers.jsonl deduplicated by id."""
    existing = load_existing(cfg.papers_path)
    remove_stale_downloads(cfg.pdf_dir)
    for rec in tqdm(result.records, desc="PDFs", unit="pdf"):
        listed_id = rec["id"]
        try:
            old = find_existing(rec, existing, cfg)
            if old:
                rec.update(id=old["id"], pdf_path=old["pdf_path"], sha256=old["sha256"])
                for key in ("title", "authors", "abstract", "submitted", "categories"):
                    rec[key] = rec[key] or old.get(key, rec[key])
                result.status[rec["id"]], result.reasons[rec["id"]] = "skipped", "already downloaded and valid"
            elif not cfg.download:
                result.status[rec["id"]], result.reasons[rec["id"]] = "skipped", "download=False"
            else:
                download_one(client, rec, cfg)
                result.status[rec["id"]] = "downloaded"
        except (ScrapeError, ValueError) as e:
            result.status[rec["id"]], result.reasons[rec["id"]] = "failed", str(e)
            print(f"{listed_id}: failed: {e}")
        if browser and (not has_version(rec["id"]) or not rec["submitted"]):
            try:
                apply_abs(rec, browser.read_abs(rec["abs_url"]))
            except ScrapeError as e:
                print(f"{listed_id}: abs page not read: {e}")
            if rec["id"] != listed_id:
                for d in (result.status, result.reasons):
                    if listed_id in d:
                        d[rec["id"]] = d.pop(listed_id)
            place_under_id(rec, cfg)
        canonicalise(rec)
        if rec["pdf_path"]:
            append_jsonl(cfg.papers_path, [rec])
    merged = load_existing(cfg.papers_path)
    write_jsonl(cfg.papers_path, merged.values())


def run_scrape(cfg: ScrapeConfig) -> ScrapeResult:
    """The notebook's call: scrape cfg.site, or, when it is "demo", serve the bundled arXiv look-alike on
    127.0.0.1 for the duration of the run (its PDFs rendered once into data_dir/cache/demo_site)."""
    if cfg.site != "demo":
        return scrape(cfg)
    from .demo_site import DemoSite

    with DemoSite(cache_dir=cfg.paths.cache / "demo_site", page_size=cfg.page_size) as site:
        print(f"demo arXiv site: {len(site.papers)} papers at {site.base_url}")
        search_url = cfg.search_url or site.search_url(cfg.query, cfg.date_from, cfg.date_to, cfg.page_size)
        cfg = dataclasses.replace(cfg, search_url=search_url, api_url=site.api_url())
        return scrape(cfg)


def papers_table(result: ScrapeResult):
    """A DataFrame of what was listed: id, title, first author, submitted, outcome, reason."""
    import pandas as pd

    rows = [{"id": r["id"], "title": r["title"][:70],
             "authors": (r["authors"][0] + (" et al." if len(r["authors"]) > 1 else "")) if r["authors"] else "",
             "submitted": r["submitted"], "categories": " ".join(r["categories"]),
             "outcome": result.status.get(r["id"], ""), "reason": result.reasons.get(r["id"], "")}
            for r in result.records]
    rows += [{"id": f["id"], "title": "", "authors": "", "submitted": "", "categories": "", "outcome": "failed",
              "reason": f["reason"]} for f in result.listing_failures]
    return pd.DataFrame(rows)


def summary(result: ScrapeResult) -> str:
    c = result.counts()
    lines = [f"{len(result.records)} listed from {result.pages} page(s) in {result.elapsed_s:.1f}s "
             f"({result.requests} requests): {c['downloaded']} downloaded, {c['skipped']} skipped, "
             f"{c['failed']} failed"]
    lines += [f"  failed {r['id']}: {result.reasons.get(r['id'])}" for r in result.records
              if result.status.get(r["id"]) == "failed"]
    lines += [f"  failed listing entry {f['id']!r}: {f['reason']}" for f in result.listing_failures]
    return "\n".join(lines)
