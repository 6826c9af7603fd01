"""nbutils.scrape.stage end to end against the bundled arXiv look-alike (nbutils.demo_site, with the fault
switches of tests/support/fake_arxiv.py): both backends, download faults, reruns, the demo profile."""
from __future__ import annotations

from pathlib import Path

import pytest

from nbutils.demo_site import DemoSite, load_corpus
from nbutils.io import read_json, read_jsonl, sha256_file
from nbutils.scrape import ScrapeConfig, scrape
from nbutils.scrape.download import pdf_problem
from tests.support.fake_arxiv import ExtraEntry, FaultySite

CORPUS = load_corpus()          # newest first, as the site lists them
DELAY = 0.3


@pytest.fixture(scope="session")
def pdf_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("demo_site_cache")


def make_cfg(data_dir, **kw) -> ScrapeConfig:
    params = dict(delay_s=0.05, backoff_s=0.1, max_retries=2, max_wait_s=5.0, timeout_s=15.0)
    params.update(kw)
    return ScrapeConfig.from_params(profile="demo", data_dir=str(data_dir), **params)


def page_records(records):
    return [{k: v for k, v in r.items() if k not in ("pdf_path", "sha256")} for r in records]


def test_a_failing_listing_is_reported_not_raised(tmp_path, pdf_cache):
    with FaultySite(cache_dir=pdf_cache, page_faults={"/api": "500"}) as site:
        cfg = make_cfg(tmp_path, backend="api")
        result = scrape(cfg, api_url=site.api_url())
        assert site.hits("/api/") == 3                              # 1 + max_retries
    assert result.records == [] and "HTTP 500 after 3 attempts" in result.listing_failures[0]["reason"]
    assert read_json(cfg.report_path)["counts"]["failed"] == 1


# ------------------------------------------------------------------------------------------ downloads and faults
def test_download_faults_are_reported_and_the_batch_goes_on(tmp_path, pdf_cache):
    ids = [p.base_id for p in CORPUS]
    faults = dict(zip(ids, ["404", "500", "429_once", "not_pdf", "truncated", "redirect_offsite"]))
    with FaultySite(cache_dir=pdf_cache, pdf_faults=faults, retry_after_s=1) as site:
        cfg = make_cfg(tmp_path, backend="api", page_size=10, max_papers=10)
        result = scrape(cfg, api_url=site.api_url())
        status = {r["id"].split("v")[0]: (result.status[r["id"]], result.reasons.get(r["id"], ""))
                  for r in result.records}
        assert status[ids[0]] == ("failed", "HTTP 404")
        assert status[ids[1]][0] == "failed" and "HTTP 500 after 3 attempts" in status[ids[1]][1]
        assert status[ids[2]][0] == "downloaded"                 # 429 once, then served
        assert status[ids[3]][0] == "failed" and "text/html, not a PDF" in status[ids[3]][1]
        assert status[ids[4]][0] == "failed" and "truncated" in status[ids[4]][1]
        assert status[ids[5]][0] == "failed" and "offsite.invalid" in status[ids[5]][1]
        pdf_hits = [r for r in site.requests if r.path.startswith(f"/pdf/{ids[2]}")]
        assert [r.status for r in pdf_hits] == [429, 200]
        assert pdf_hits[1].t - pdf_hits[0].t >= 1.0            # Retry-After: 1 honoured
        assert sum(r.path.startswith(f"/pdf/{ids[1]}") for r in site.requests) == 3
    fine = [CORPUS[2].id] + [p.id for p in CORPUS[6:]]                     # papers without a fault
    assert sorted(p.name for p in Path(cfg.pdf_dir).iterdir()) == sorted(f"{i}.pdf" for i in fine)  # no temp files
    report = read_json(cfg.report_path)
    assert report["counts"] == {"downloaded": len(fine), "skipped": 0, "failed": 5}
    assert {f["reason"] for f in report["failed"]} >= {"HTTP 404"}
    assert sorted(r["id"] for r in read_jsonl(cfg.papers_path)) == sorted(fine)


def test_hostile_names_oversize_and_html_labelled_pdf(tmp_path, pdf_cache):
    ids = [p.base_id for p in CORPUS]
    faults = dict(zip(ids, ["hostile_name", "oversize", "html_as_pdf", "503_once", "redirect_same_host"]))
    with FaultySite(cache_dir=pdf_cache, pdf_faults=faults, oversize_mb=1.5, content_disposition=False) as site:
        cfg = make_cfg(tmp_path, backend="api", page_size=10, max_papers=5, max_pdf_mb=1.0)
        result = scrape(cfg, api_url=site.api_url())
    by = {r["id"]: (result.status[r["id"]], result.reasons.get(r["id"], "")) for r in result.records}
    assert by[CORPUS[0].id][0] == "downloaded"                     # Content-Disposition name ignored
    assert (Path(cfg.pdf_dir) / f"{CORPUS[0].id}.pdf").exists()
    assert not list(tmp_path.rglob("evil*")) and not Path("/tmp/evil v9.pdf").exists()
    assert by[CORPUS[1].id][0] == "failed" and "cap" in by[CORPUS[1].id][1]
    assert by[CORPUS[2].id][0] == "failed" and "not a PDF" in by[CORPUS[2].id][1]
    assert by[CORPUS[3].id][0] == "downloaded" and by[CORPUS[4].id][0] == "downloaded"
    assert {p.name for p in Path(cfg.pdf_dir).iterdir()} == {f"{CORPUS[i].id}.pdf" for i in (0, 3, 4)}


def test_rerun_after_losing_papers_jsonl_trusts_valid_files_on_disk(tmp_path, pdf_cache):
    with DemoSite(cache_dir=pdf_cache) as site:
        cfg = make_cfg(tmp_path, backend="api", max_papers=3)
        first = scrape(cfg, api_url=site.api_url())
        Path(cfg.papers_path).unlink()
        (Path(cfg.pdf_dir) / ".download.abc.tmp").write_bytes(b"%PDF-half")     # a killed download
        hits = site.hits("/pdf/")
        again = scrape(cfg, api_url=site.api_url())
        assert site.hits("/pdf/") == hits
    assert first.counts()["downloaded"] == 3 and again.counts() == {"downloaded": 0, "skipped": 3, "failed": 0}
    assert {r["id"]: r["sha256"] for r in read_jsonl(cfg.papers_path)} == \
        {r["id"]: r["sha256"] for r in first.records}
    assert not list(Path(cfg.pdf_dir).glob(".download.*"))


# ------------------------------------------------------------------------------------------ the browser (slow: ~40 s)
@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, pdf_cache):
    """One Selenium run over the search pages (2 results a page, absolute links), max_papers=5."""
    data_dir = tmp_path_factory.mktemp("scrape_demo")
    with DemoSite(cache_dir=pdf_cache, page_size=2) as site:
        cfg = make_cfg(data_dir, delay_s=DELAY, max_papers=5)
        result = scrape(cfg, search_url=site.search_url("llm", date_from="2024-04-18"))
        first_requests = list(site.requests)
        yield site, cfg, result, first_requests


@pytest.mark.slow
def test_selenium_follows_pagination_up_to_max_papers(demo_run):
    site, cfg, result, requests_ = demo_run
    assert [r["id"] for r in result.records] == [p.id for p in CORPUS[:5]]       # versions resolved
    assert sum(r.path.startswith("/search/") for r in requests_) == 3            # pages 1-3 of 2
    assert not any(r.path.startswith("/abs/") for r in requests_)   # versions from Content-Disposition
    rec = result.records[0]
    paper = CORPUS[0]
    assert rec["title"] == paper.title and rec["authors"] == list(paper.authors)
    assert rec["abstract"] == paper.abstract and rec["submitted"] == paper.submitted
    assert rec["categories"] == list(paper.categories)
    assert rec["pdf_url"] == f"{site.base_url}/pdf/{paper.id}"
    revised = next(p for p in CORPUS[:5] if p.version > 1)            # listed without a version
    versioned = next(r for r in result.records if r["id"] == revised.id)
    assert versioned["id"].endswith(f"v{revised.version}") and versioned["submitted"] == revised.submitted


@pytest.mark.slow
def test_downloads_are_valid_hashed_and_listed(demo_run):
    site, cfg, result, _ = demo_run
    papers = list(read_jsonl(cfg.papers_path))
    assert len(papers) == 5 and len({p["id"] for p in papers}) == 5
    for p in papers:
        path = Path(cfg.data_dir) / p["pdf_path"]
        assert p["pdf_path"] == f"pdfs/{p['id']}.pdf"
        assert sha256_file(path) == p["sha256"] and pdf_problem(path, 1 << 24) is None
    report = read_json(cfg.report_path)
    assert report["counts"] == {"downloaded": 5, "skipped": 0, "failed": 0}


@pytest.mark.slow
def test_every_request_waits_the_delay(demo_run):
    _, _, _, requests_ = demo_run
    times = [r.t for r in requests_]
    assert len(times) >= 8
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) >= DELAY - 0.01, gaps
    assert all("nbutils-arxiv-pipeline" in r.user_agent for r in requests_)


@pytest.mark.slow
def test_rerun_skips_valid_pdfs_and_replaces_a_damaged_one(demo_run):
    site, cfg, _, _ = demo_run
    damaged = Path(cfg.pdf_dir) / f"{CORPUS[1].id}.pdf"
    damaged.write_bytes(damaged.read_bytes()[:500])
    before = site.hits("/pdf/")
    result = scrape(cfg, search_url=site.search_url("llm", date_from="2024-04-18"))
    assert result.counts() == {"downloaded": 1, "skipped": 4, "failed": 0}
    assert site.hits("/pdf/") - before == 1
    assert pdf_problem(damaged, 1 << 24) is None
    assert len(list(read_jsonl(cfg.papers_path))) == 5


@pytest.mark.slow
def test_both_backends_give_the_same_records(tmp_path, pdf_cache):
    with DemoSite(cache_dir=pdf_cache, page_size=4) as site:
        url = site.search_url("llm", date_from="2024-05-01")
        web = scrape(make_cfg(tmp_path / "web", download=False, max_papers=10), search_url=url)
        api = scrape(make_cfg(tmp_path / "api", backend="api", download=False, max_papers=10, page_size=4,
                              date_from="2024-05-01"), api_url=site.api_url())
    expected = [p.id for p in CORPUS if p.submitted >= "2024-05-01"]
    assert [r["id"] for r in web.records] == expected
    assert page_records(web.records) == page_records(api.records)


@pytest.mark.slow
def test_relative_links_and_list_pages(tmp_path, pdf_cache):
    with FaultySite(cache_dir=pdf_cache, page_size=3, link_style="relative") as site:
        search = scrape(make_cfg(tmp_path / "s", max_papers=2), search_url=site.search_url("llm"))
        listing = scrape(make_cfg(tmp_path / "l", max_papers=10), search_url=site.list_url("cs.CL", show=4))
        assert 'href="/pdf/' in site_page(site, "/search/?query=llm")
    assert search.counts()["downloaded"] == 2
    in_cl = [p for p in CORPUS if "cs.CL" in p.categories]
    assert listing.pages == 2
    assert [r["id"] for r in listing.records] == [p.id for p in in_cl]
    assert listing.counts()["downloaded"] == len(in_cl)
    assert all(r["submitted"] and r["categories"] and r["abstract"] for r in listing.records)


def site_page(site: DemoSite, path: str) -> str:
    import requests
    return requests.get(site.base_url + path, timeout=10).text


@pytest.mark.slow
def test_empty_results_page(tmp_path, pdf_cache):
    with DemoSite(cache_dir=pdf_cache) as site:
        result = scrape(make_cfg(tmp_path), search_url=site.search_url("nosuchtopicxyz"))
    assert result.records == [] and result.pages == 1
    assert read_json(Path(tmp_path) / "scrape_report.json")["listed"] == 0


@pytest.mark.slow
def test_duplicates_hostile_ids_and_a_429_listing_page(tmp_path, pdf_cache):
    hostile = ExtraEntry(base_id="../../../tmp/evil", submitted="2024-06-30")
    with FaultySite(cache_dir=pdf_cache, page_size=3, duplicate_ids=True, extra_entries=[hostile],
                  page_faults={"/search": "429_once"}, retry_after_s=1,
                  pdf_faults={CORPUS[3].base_id: "hostile_name"}) as site:
        cfg = make_cfg(tmp_path, max_papers=20)
        result = scrape(cfg, search_url=site.search_url("llm"))
        searches = [r for r in site.requests if r.path.startswith("/search")]
        abs_pages = [r.path for r in site.requests if r.path.startswith("/abs/")]
    assert abs_pages == [f"/abs/{CORPUS[3].base_id}"]          # hostile Content-Disposition ignored -> abs page
    assert (Path(cfg.pdf_dir) / f"{CORPUS[3].id}.pdf").exists()
    assert [r.status for r in searches][:2] == [429, 200] and searches[1].t - searches[0].t >= 1.0
    ids = [r["id"] for r in result.records]
    assert ids == [p.id for p in CORPUS] and len(set(ids)) == len(ids)
    assert len(result.listing_failures) == 1 and "no valid arXiv id" in result.listing_failures[0]["reason"]
    assert not list(Path(tmp_path).rglob("evil*"))
    papers = list(read_jsonl(cfg.papers_path))
    assert len(papers) == len(CORPUS) == len({p["id"] for p in papers})
    assert read_json(cfg.report_path)["counts"]["failed"] == 1


@pytest.mark.slow
def test_demo_profile_serves_its_own_site_and_gets_every_paper(tmp_path):
    from nbutils.scrape import run

    cfg = ScrapeConfig.from_params(profile="demo", data_dir=str(tmp_path))
    result = run(cfg)
    assert result.counts() == {"downloaded": len(CORPUS), "skipped": 0, "failed": 0}
    assert len(list((tmp_path / "cache" / "demo_site").glob("*.pdf"))) == len(CORPUS)
    report = read_json(cfg.report_path)
    assert report["config"]["search_url"].startswith("http://127.0.0.1:")
    assert report["elapsed_s"] < 60

