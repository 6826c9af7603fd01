"""nbutils.generate.jobs: pages are selected round-robin over papers with each skip counted, and long pages
are cut into windows at sentence ends."""
from nbutils.generate import select_pages


def test_select_pages_round_robin_over_papers_and_skips_counted():
    pages = [{"paper_id": p, "page": i, "text": "x" * 300} for p in ("a", "b", "c") for i in (1, 2, 3)]
    pages += [{"paper_id": "a", "page": 1, "text": "x" * 300},       # duplicate
              {"paper_id": "d", "page": 1, "text": "short"},          # too short
              {"paper_id": "", "page": 1, "text": "x" * 300}]         # no provenance
    out, skipped = select_pages(pages, max_pages=4, min_chars=200)
    assert [(p["paper_id"], p["page"]) for p in out] == [("a", 1), ("b", 1), ("c", 1), ("a", 2)]
    assert skipped == {"duplicate_page": 1, "page_too_short": 1, "no_paper_id": 1, "over_max_pages": 5}


def test_window_chars_cuts_long_pages_at_sentences():
    text = " ".join(f"Sentence number {i} says something about attention." for i in range(40))
    pages = [{"paper_id": "a", "page": 1, "chunk": 0, "text": text}]
    out, _ = select_pages(pages, window_chars=300, min_chars=10)
    assert len(out) > 5 and [p["chunk"] for p in out] == list(range(len(out)))
    assert all(len(p["text"]) <= 300 for p in out)
    assert " ".join(p["text"] for p in out) == " ".join(text.split())      # nothing lost
    assert all(p["text"].endswith(".") for p in out)
