"""nbutils.arxiv_ids: arXiv ids, file names and URLs."""
from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from nbutils.arxiv_ids import build_api_query, build_search_url, id_from_url, parse_arxiv_id, pdf_filename
from nbutils.scrape.store import pdf_path_for


def test_pdf_filenames_come_from_the_id_and_never_leave_the_folder(tmp_path):
    assert pdf_filename("2405.01234v2") == "2405.01234v2.pdf"
    assert pdf_filename("hep-th/9901001v1") == "hep-th_9901001v1.pdf"
    for hostile in ("../../etc/passwd", "2405.01234v1/../../x", "2405.01234v1;rm -rf ~", "", "a b"):
        with pytest.raises(ValueError, match="not an arXiv id"):
            pdf_filename(hostile)
    assert pdf_path_for(tmp_path, "cs/0501001v3").parent == tmp_path.resolve()


def test_ids_are_read_from_link_text_and_urls():
    assert parse_arxiv_id("arXiv:2405.17301") == "2405.17301"
    assert parse_arxiv_id("arXiv:2405.17301v3") == "2405.17301v3"
    assert parse_arxiv_id("see 2405.17301") is None
    assert id_from_url("https://arxiv.org/pdf/2405.17301v2") == "2405.17301v2"
    assert id_from_url("/pdf/hep-th/9901001.pdf") == "hep-th/9901001"
    assert id_from_url("https://arxiv.org/format/2405.17301") is None


def test_search_url_and_api_query_carry_query_dates_and_page_size():
    url = build_search_url("https://arxiv.org", "llm", "2024-04-18", "", 50)
    q = parse_qs(urlsplit(url).query, keep_blank_values=True)
    assert urlsplit(url).path == "/search/advanced"
    assert q["terms-0-term"] == ["llm"] and q["date-from_date"] == ["2024-04-18"]
    assert q["date-filter_by"] == ["date_range"] and q["size"] == ["50"]
    assert q["date-date_type"] == ["submitted_date"] and q["order"] == ["-announced_date_first"]
    assert build_api_query("llm", "2024-04-18", "2024-05-01") == \
        "all:llm AND submittedDate:[202404180000 TO 202405012359]"
