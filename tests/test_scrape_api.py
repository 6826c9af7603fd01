"""nbutils.scrape.api: one bad Atom entry is skipped with its reason, the rest kept (issue 17, item 6)."""
from __future__ import annotations

from hostile_servers import HostileServer, atom, atom_feed
from nbutils.io import read_json
from nbutils.scrape import ScrapeConfig, scrape
from nbutils.scrape.api import parse_atom


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
