"""nbutils.scrape.store: paths read from papers.jsonl are data."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from nbutils.io import read_json, read_jsonl
from nbutils.scrape import ScrapeConfig, scrape
from nbutils.scrape.store import load_existing, place_under_id
from tests.support.hostile_servers import HostileServer, atom, atom_feed, pdf, small_pdf

PID = "2405.00001v1"


def cfg_for(data_dir: Path, **kw) -> ScrapeConfig:
    return ScrapeConfig.from_params(profile="demo", data_dir=str(data_dir), backend="api", delay_s=0.01, **kw)


def plant_outside_pdf(tmp_path: Path, record_id: str) -> tuple[Path, Path, bytes]:
    """data_dir/papers.jsonl naming ../outside/x.pdf (a valid PDF there); pdfs/ does not exist yet."""
    data_dir, outside = tmp_path / "data", tmp_path / "outside" / "x.pdf"
    outside.parent.mkdir()
    data = small_pdf("outside")
    outside.write_bytes(data)
    data_dir.mkdir()
    (data_dir / "papers.jsonl").write_text(json.dumps({"id": record_id, "pdf_path": "../outside/x.pdf"}) + "\n")
    return data_dir, outside, data


def test_a_recorded_path_outside_pdf_dir_is_ignored_and_the_paper_fetched_anew(tmp_path):
    data_dir, outside, data = plant_outside_pdf(tmp_path, PID)
    served = small_pdf("served")
    with HostileServer({f"/pdf/{PID}": pdf(served)}) as s:
        s.routes["/api/query"] = atom(atom_feed([(s.url(f"/abs/{PID}"), s.url(f"/pdf/{PID}"))]))
        cfg = cfg_for(data_dir)
        result = scrape(cfg, api_url=s.url("/api/query"))
    assert outside.read_bytes() == data                                   # untouched, not moved
    assert result.status[PID] == "downloaded"
    assert (data_dir / "pdfs" / f"{PID}.pdf").read_bytes() == served
    assert [r["pdf_path"] for r in read_jsonl(cfg.papers_path)] == [f"pdfs/{PID}.pdf"]
    warnings = read_json(cfg.report_path)["warnings"]
    assert warnings and "'../outside/x.pdf' is outside" in warnings[0]["reason"]


def test_an_outside_record_is_dropped_from_papers_jsonl_even_when_not_listed_again(tmp_path):
    data_dir, outside, _ = plant_outside_pdf(tmp_path, "2404.99999v1")
    with HostileServer({"/api/query": atom(atom_feed([]))}) as s:
        cfg = cfg_for(data_dir)
        scrape(cfg, api_url=s.url("/api/query"))
    assert list(read_jsonl(cfg.papers_path)) == [] and outside.exists()


@pytest.mark.parametrize("pdf_path", ["../outside/x.pdf", "/etc/hostname", "pdfs/../../outside/x.pdf"])
def test_place_under_id_never_moves_a_file_from_outside_pdf_dir(tmp_path, pdf_path):
    """The abs page taught the id its version: only a file already in pdfs/ is renamed; no crash without pdfs/."""
    data_dir, outside, data = plant_outside_pdf(tmp_path, "2405.00001")
    cfg = cfg_for(data_dir)
    rec = {"id": "2405.00001v2", "pdf_path": pdf_path}
    place_under_id(rec, cfg)
    assert outside.read_bytes() == data and not (data_dir / "pdfs").exists()
    assert rec["pdf_path"] == pdf_path
    existing, ignored = load_existing(cfg)
    assert existing == {} and ignored == [("2405.00001", "pdf_path '../outside/x.pdf' is outside "
                                                         f"{cfg.pdf_dir}: ignored")]


def test_a_symlink_in_pdf_dir_pointing_outside_is_not_trusted(tmp_path):
    data_dir, outside, _ = plant_outside_pdf(tmp_path, PID)
    (data_dir / "pdfs").mkdir()
    (data_dir / "pdfs" / f"{PID}.pdf").symlink_to(outside)
    (data_dir / "papers.jsonl").write_text(json.dumps({"id": PID, "pdf_path": f"pdfs/{PID}.pdf"}) + "\n")
    existing, ignored = load_existing(cfg_for(data_dir))
    assert existing == {} and "outside" in ignored[0][1]
