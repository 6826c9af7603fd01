"""nbutils.scrape.records: the papers.jsonl record shape."""
from __future__ import annotations

from nbutils.scrape.records import parse_submitted


def test_submission_date_is_the_first_version():
    assert parse_submitted("Submitted 20 May, 2024; v1 submitted 2 May, 2024; originally announced May 2024.") \
        == "2024-05-02"
    assert parse_submitted("Submitted 7 June, 2024; originally announced June 2024.") == "2024-06-07"
    assert parse_submitted("") == ""
