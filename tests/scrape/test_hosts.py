"""nbutils.scrape.hosts: every navigation, redirect, pagination step, abs page and download stays on the
allowed hosts, http(s) only. The browser tests are slow (a real Chromium)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from nbutils.demo_site import DemoSite
from nbutils.io import read_json, read_jsonl, sha256_file
from nbutils.scrape import ScrapeConfig, ScrapeError, scrape
from nbutils.scrape.hosts import HostPolicy
from tests.support.hostile_servers import (
    HostileServer,
    atom,
    atom_feed,
    page,
    pdf,
    redirect,
    search_page,
    search_result,
    small_pdf,
)

PID = "2405.00001"


def make_cfg(data_dir, **kw) -> ScrapeConfig:
    params = dict(delay_s=0.01, backoff_s=0.1, max_retries=1, max_wait_s=5.0, timeout_s=10.0)
    params.update(kw)
    return ScrapeConfig.from_params(profile="demo", data_dir=str(data_dir), **params)


def test_the_policy_allows_http_on_the_listing_hosts_only():
    policy = HostPolicy.for_sources("http://127.0.0.1:8000/search", extra=["mirror.example"])
    assert policy.check("http://127.0.0.1:9/pdf/x") and policy.check("https://mirror.example/x")
    for url, why in [("file:///etc/passwd", "not an http(s) URL"), ("http://127.0.0.2:8000/x", "'127.0.0.2'"),
                     ("javascript:alert(1)", "not an http(s) URL"), ("ftp://127.0.0.1/x", "not an http(s) URL"),
                     ("http://localhost:8000/x", "'localhost'")]:
        with pytest.raises(ScrapeError, match="refused next page: .*" + why.replace("(", r"\(").replace(")", r"\)")):
            policy.check(url, "next page")
    assert HostPolicy.for_sources("https://export.arxiv.org/api/query").check("https://arxiv.org/pdf/1")


def test_api_entries_linking_off_host_or_to_files_are_refused_not_fetched(tmp_path):
    with HostileServer(host="127.0.0.2") as other, HostileServer() as s:
        other.routes[f"/pdf/{PID}v1"] = pdf(small_pdf())
        s.routes["/api/query"] = atom(atom_feed([(other.url(f"/abs/{PID}v1"), other.url(f"/pdf/{PID}v1")),
                                                 ("file:///etc/abs/2405.00002v1", "file:///etc/pdf/2405.00002v1")]))
        result = scrape(make_cfg(tmp_path, backend="api"), api_url=s.url("/api/query"))
    assert other.paths == []
    assert "refused PDF" in result.reasons[f"{PID}v1"] and "127.0.0.2" in result.reasons[f"{PID}v1"]
    assert "file:///etc/pdf/2405.00002v1" in result.reasons["2405.00002v1"]
    assert "not an http(s) URL" in result.reasons["2405.00002v1"]


# ------------------------------------------------------------------------------------------ the browser (slow)
def local_file_listing(tmp_path: Path) -> Path:
    """A local HTML file in arXiv search markup, as a hostile "next" link would point at."""
    local = tmp_path / "local.html"
    local.write_text("<html><head><title>LOCAL FILE</title></head><body>" + search_page([search_result(
        "http://127.0.0.1:1/abs/2405.00009", "http://127.0.0.1:1/pdf/2405.00009", "2405.00009",
        "LOCAL FILE TITLE")]) + "</body></html>")
    return local


@pytest.mark.slow
def test_next_links_to_a_file_or_another_address_and_an_off_host_abs_page_are_refused(tmp_path):
    local = local_file_listing(tmp_path)
    with HostileServer(host="127.0.0.2") as other, HostileServer() as s:
        other.routes["/search"] = page(search_page([search_result(
            other.url("/abs/2405.00008"), other.url("/pdf/2405.00008"), "2405.00008", "OTHER ADDRESS")]))
        other.routes[f"/abs/{PID}"] = page("<div class='submission-history'><strong>[v7]</strong></div>")
        s.routes[f"/pdf/{PID}"] = pdf(small_pdf())           # no Content-Disposition: the version needs the abs page
        s.routes["/search"] = page(search_page(
            [search_result(other.url(f"/abs/{PID}"), s.url(f"/pdf/{PID}"), PID, "Page one")], local.as_uri())
            + f'<iframe src="{other.url("/search")}"></iframe><img src="{other.url("/pixel.gif")}">')
        s.routes["/search2"] = page(search_page(
            [search_result(s.url("/abs/2405.00002"), s.url("/pdf/2405.00002"), "2405.00002", "Page two")],
            other.url("/search")))
        file_run = scrape(make_cfg(tmp_path / "a"), search_url=s.url("/search"))
        other_run = scrape(make_cfg(tmp_path / "b", download=False), search_url=s.url("/search2"))
    assert other.paths == []                                          # 127.0.0.2 never contacted
    assert [r["title"] for r in file_run.records] == ["Page one"]
    assert file_run.status[PID] == "downloaded"
    [stop] = file_run.listing_failures
    assert "refused next page" in stop["reason"] and local.as_uri() in stop["reason"]
    [abs_note] = file_run.warnings
    assert "refused abs page" in abs_note["reason"] and "127.0.0.2" in abs_note["reason"]
    stored = (tmp_path / "a" / "papers.jsonl").read_text()
    assert "LOCAL FILE" not in stored and "OTHER ADDRESS" not in stored
    assert [r["title"] for r in other_run.records] == ["Page two"]
    assert "refused next page" in other_run.listing_failures[0]["reason"]
    assert "127.0.0.2" in other_run.listing_failures[0]["reason"]


@pytest.mark.slow
def test_a_redirect_off_the_allowed_hosts_is_not_read(tmp_path):
    local = local_file_listing(tmp_path)
    with HostileServer(host="127.0.0.2") as other, HostileServer() as s:
        other.routes["/search"] = page(search_page([search_result(
            other.url("/abs/2405.00008"), other.url("/pdf/2405.00008"), "2405.00008", "OTHER ADDRESS")]))
        s.routes["/search"] = redirect(other.url("/search"))
        s.routes["/to-file"] = redirect(local.as_uri())
        to_other = scrape(make_cfg(tmp_path / "a"), search_url=s.url("/search"))
        to_file = scrape(make_cfg(tmp_path / "b"), search_url=s.url("/to-file"))
    assert to_other.records == [] and to_file.records == []
    assert "redirected to" in to_other.listing_failures[0]["reason"]
    assert "127.0.0.2" in to_other.listing_failures[0]["reason"]
    assert "refused listing page" in to_file.listing_failures[0]["reason"]
    assert not (tmp_path / "a" / "papers.jsonl").exists() or list(read_jsonl(tmp_path / "a" / "papers.jsonl")) == []


@pytest.mark.slow
def test_an_unversioned_record_pointing_outside_is_not_moved_in_by_the_abs_step(tmp_path):
    """A record escaping data_dir: papers.jsonl names ../outside/x.pdf for an id without version, the listing shows it,
    the abs page gives the version: nothing is moved from outside data_dir (and no crash without pdfs/)."""
    data_dir, outside = tmp_path / "data", tmp_path / "outside" / "x.pdf"
    outside.parent.mkdir()
    data_dir.mkdir()
    with DemoSite(cache_dir=tmp_path / "cache") as site:
        paper = site.papers[0]
        outside.write_bytes(site.pdf_paths[paper.base_id].read_bytes())
        (data_dir / "papers.jsonl").write_text(json.dumps({"id": paper.base_id, "pdf_path": "../outside/x.pdf",
                                                          "sha256": sha256_file(outside)}))
        cfg = make_cfg(data_dir, max_papers=1, download=False)
        result = scrape(cfg, search_url=site.search_url("llm"))
    assert outside.exists() and not (data_dir / "pdfs").exists()
    assert result.status[paper.id] == "skipped" and result.reasons[paper.id] == "download=False"
    assert "outside" in read_json(cfg.report_path)["warnings"][0]["reason"]
