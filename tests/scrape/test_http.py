"""nbutils.scrape.http and download: throttle and Retry-After, a time limit on the whole request, gzip-encoded
PDFs and gzip bombs."""
from __future__ import annotations

import time
from pathlib import Path

from nbutils.io import read_jsonl
from nbutils.scrape import ScrapeConfig, scrape
from nbutils.scrape.http import Throttle, retry_after_seconds
from tests.support.hostile_servers import HostileServer, atom, atom_feed, drip, gzipped_pdf, pdf, send, small_pdf

PID, PID2 = "2405.00001v1", "2405.00002v1"     # the scraper fetches <origin>/pdf/<id>


def make_cfg(data_dir, **kw) -> ScrapeConfig:
    params = dict(backend="api", delay_s=0.01, backoff_s=0.1, max_retries=2, max_wait_s=5.0, timeout_s=10.0)
    params.update(kw)
    return ScrapeConfig.from_params(profile="demo", data_dir=str(data_dir), **params)


def listing(server: HostileServer, *ids: str) -> str:
    """The server's export API lists `ids`, each with its abs and pdf link on the server; returns the API URL."""
    server.routes["/api/query"] = atom(atom_feed([(server.url(f"/abs/{i}"), server.url(f"/pdf/{i}")) for i in ids]))
    return server.url("/api/query")


def test_a_dripping_pdf_fails_at_max_request_s_not_when_the_server_finishes(tmp_path):
    """1 byte every 0.2 s for 100 bytes (20 s) never trips the 1 s read timeout; the 2 s limit on the whole
    request ends it, names the limit, and the next paper is still fetched."""
    with HostileServer({f"/pdf/{PID}": drip(small_pdf()[:100], 0.2), f"/pdf/{PID2}": pdf(small_pdf())}) as s:
        cfg = make_cfg(tmp_path, timeout_s=1.0, max_request_s=2.0)
        t0 = time.monotonic()
        result = scrape(cfg, api_url=listing(s, PID, PID2))
        took = time.monotonic() - t0
    assert took < 6, took
    assert result.status[PID] == "failed" and "max_request_s=2" in result.reasons[PID]
    assert result.status[PID2] == "downloaded"
    assert not list(Path(cfg.pdf_dir).glob(".download.*"))            # the partial file is gone


def test_a_dripping_answer_head_is_cut_too(tmp_path):
    """The status line and headers dripped byte by byte: the listing request ends at max_request_s."""
    with HostileServer({"/api/query": drip(atom_feed([]), 0.2, "application/atom+xml", headers_too=True)}) as s:
        cfg = make_cfg(tmp_path, timeout_s=1.0, max_request_s=2.0, download=False)
        t0 = time.monotonic()
        result = scrape(cfg, api_url=s.url("/api/query"))
        took = time.monotonic() - t0
    assert took < 6, took
    assert len(result.listing_failures) == 1 and "max_request_s=2" in result.listing_failures[0]["reason"]


def test_a_gzip_encoded_pdf_is_decoded_and_kept(tmp_path):
    data = small_pdf("gzip")
    with HostileServer({f"/pdf/{PID}": gzipped_pdf(data)}) as s:
        cfg = make_cfg(tmp_path)
        result = scrape(cfg, api_url=listing(s, PID))
    assert result.status[PID] == "downloaded", result.reasons
    assert (Path(cfg.pdf_dir) / f"{PID}.pdf").read_bytes() == data
    assert [r["id"] for r in read_jsonl(cfg.papers_path)] == [PID]


def test_retry_after_reads_seconds_and_http_dates():
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0   # in the past
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None


def test_throttle_never_goes_below_three_seconds_for_arxiv():
    slept = []
    t = Throttle(0.1, sleep=slept.append)
    assert t.delay_for("arxiv.org") == 3.0 and t.delay_for("export.arxiv.org") == 3.0
    assert t.delay_for("127.0.0.1") == 0.1
    t.wait("https://arxiv.org/a")
    t.done("https://arxiv.org/a")
    t.wait("https://arxiv.org/b")
    assert len(slept) == 1 and 2.9 < slept[0] <= 3.0


def test_a_long_retry_after_fails_the_item_instead_of_waiting(tmp_path):
    def busy(h):
        send(h, 429, b"slow down", "text/plain", {"Retry-After": "3600"})

    with HostileServer({f"/pdf/{PID}": busy, f"/pdf/{PID2}": pdf(small_pdf())}) as s:
        t0 = time.monotonic()
        result = scrape(make_cfg(tmp_path, max_wait_s=5.0), api_url=listing(s, PID, PID2))
    assert time.monotonic() - t0 < 5
    assert result.reasons[PID] == "HTTP 429: server asked to wait 3600s (> max_wait_s=5)"
    assert result.status[PID2] == "downloaded"


def test_a_gzip_bomb_is_stopped_at_the_size_cap_after_decoding(tmp_path):
    bomb = small_pdf()[:-6] + b"\n" * (3 * 2**20) + b"%%EOF\n"           # 3 MB that gzip packs into a few KB
    with HostileServer({f"/pdf/{PID}": gzipped_pdf(bomb)}) as s:
        cfg = make_cfg(tmp_path, max_pdf_mb=1.0)
        result = scrape(cfg, api_url=listing(s, PID))
    assert result.status[PID] == "failed" and "over the 1 MB cap" in result.reasons[PID]
    assert not list(Path(cfg.pdf_dir).iterdir())
