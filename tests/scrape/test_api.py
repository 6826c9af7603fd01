"""nbutils.scrape.api: recorded export-API answers; one bad Atom entry is skipped with its reason, the rest
kept."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from nbutils.io import read_json
from nbutils.scrape import ScrapeConfig, ScrapeError, scrape
from nbutils.scrape.api import parse_atom
from tests.support.hostile_servers import HostileServer, atom, atom_feed

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "arxiv_api"


def make_cfg(data_dir, **kw) -> ScrapeConfig:
    params = dict(delay_s=0.05, backoff_s=0.1, max_retries=2, max_wait_s=5.0, timeout_s=15.0)
    params.update(kw)
    return ScrapeConfig.from_params(profile="demo", data_dir=str(data_dir), **params)


def test_a_malformed_entry_id_is_skipped_and_the_page_kept(tmp_path):
    feed = atom_feed([("http://arxiv.org/abs/2405.00001v1", "http://arxiv.org/pdf/2405.00001v1"),
                      ("http://arxiv.org/abs/not-an-id!", "http://arxiv.org/pdf/x"),
                      ("http://arxiv.org/abs/2405.00003v2", "http://arxiv.org/pdf/2405.00003v2")])
    with HostileServer({"/api/query": atom(feed)}) as s:
        cfg = ScrapeConfig.from_params(profile="demo", data_dir=str(tmp_path), backend="api", download=False,
                                       delay_s=0.01)
        result = scrape(cfg, api_url=s.url("/api/query"))
    assert [r["id"] for r in result.records] == ["2405.00001v1", "2405.00003v2"]
    assert len(result.listing_failures) == 1
    failure = result.listing_failures[0]
    assert failure["id"] == "http://arxiv.org/abs/not-an-id!" and "no valid arXiv id" in failure["reason"]
    report = read_json(cfg.report_path)
    assert report["listed"] == 2 and report["counts"]["failed"] == 1


def test_a_page_of_only_bad_entries_does_not_end_the_paging():
    page = parse_atom(atom_feed([("http://arxiv.org/abs/bad", "")], total=5).decode())
    assert page.records == [] and page.entries == 1 and page.total == 5
    assert page.skipped == [("http://arxiv.org/abs/bad", "API entry 'http://arxiv.org/abs/bad' has no valid arXiv id")]


# ------------------------------------------------------------------------------------------ recorded answers
class Recorded(BaseHTTPRequestHandler):
    """Serves the recorded Atom answers by `start`; logs each query string."""

    log: list[dict] = []
    pages = {"0": "page1.xml", "2": "page2.xml"}

    def do_GET(self):  # noqa: N802
        q = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
        q["_ua"] = self.headers.get("User-Agent", "")
        type(self).log.append(q)
        name = "empty.xml" if "zzzz" in q.get("search_query", "") else self.pages.get(q.get("start"), "error.xml")
        body = (FIXTURES / name).read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/atom+xml; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture
def recorded_api():
    Recorded.log = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorded)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api/query"
    server.shutdown()
    server.server_close()


def test_api_backend_reads_recorded_atom_pages(tmp_path, recorded_api):
    cfg = make_cfg(tmp_path, backend="api", api_url=recorded_api, page_size=2, max_papers=10, download=False)
    result = scrape(cfg, api_url=recorded_api)
    assert [r["id"] for r in result.records] == ["2405.17301v2", "2405.08812v1", "cs/0501001v3"]
    first = result.records[0]
    assert first["title"] == "Sparse Mixtures of Adapters for Multilingual LLM Instruction Tuning"
    assert first["authors"] == ["Ana Lucía Pérez", "Ji-ho Park"]
    assert first["categories"] == ["cs.CL", "cs.LG"]          # primary category first
    assert first["submitted"] == "2024-05-27"                 # `published` = v1, not `updated`
    assert first["abstract"].startswith("We study how") and "\n" not in first["abstract"]
    assert first["abs_url"] == "https://arxiv.org/abs/2405.17301v2"
    assert first["pdf_url"] == "https://arxiv.org/pdf/2405.17301v2"
    assert [(q["start"], q["max_results"]) for q in Recorded.log] == [("0", "2"), ("2", "2")]
    assert Recorded.log[0]["sortBy"] == "submittedDate"
    assert "submittedDate:[20240418" in Recorded.log[0]["search_query"]
    assert Recorded.log[0]["_ua"].startswith("nbutils-arxiv-pipeline/")
    report = read_json(cfg.report_path)
    assert report["listed"] == 3 and report["pages"] == 2


def test_api_backend_empty_and_error_answers(tmp_path, recorded_api):
    result = scrape(make_cfg(tmp_path, backend="api", query="zzzz", download=False), api_url=recorded_api)
    assert result.records == [] and result.pages == 1
    with pytest.raises(ScrapeError, match="start must be non-negative"):
        parse_atom((FIXTURES / "error.xml").read_text())
