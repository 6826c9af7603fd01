"""nbutils.parse.clean: each cleaning rule on crafted text (normalisation, de-hyphenation, running lines,
the references cut) and each switchable."""
from __future__ import annotations

from nbutils.parse import clean_pages, cut_references, drop_running_lines, normalize_text, rejoin_hyphenated
from tests.support.pdfs import WORDS, body_lines


# ---------------------------------------------------------------- cleaning rules on crafted text
def test_normalize_expands_ligatures_and_tidies_whitespace():
    text, st = normalize_text("e\ufb03cient \ufb01ne-tuning\u00a0of  \ufb02ows \t\n\n\n\nnext\u200b line  ")
    assert text == "efficient fine-tuning of flows\n\nnext line"
    assert st["ligatures"] == 3 and st["whitespace_chars"] > 0


def test_normalize_keeps_math_symbols_that_nfkc_would_change():
    text, _ = normalize_text("x² ∈ ℝ and α ≤ β")
    assert text == "x² ∈ ℝ and α ≤ β"


def test_dehyphenate_rejoins_words_split_at_line_end():
    text, n = rejoin_hyphenated("we learn a represen-\ntation of text")
    assert text == "we learn a representation of text" and n == 1


def test_dehyphenate_keeps_real_compounds_and_capitalised_parts():
    text, n = rejoin_hyphenated("a state-of-the-art model. Our state-of-the-\nart model uses BERT-\nBased parts")
    assert "state-of-the-art model uses BERT-Based" in text and n == 2
    assert "theart" not in text


def test_dehyphenate_leaves_dashes_and_numbers_alone():
    text, n = rejoin_hyphenated("pages 10-\n12 and a list -\nitem")
    assert text == "pages 10-\n12 and a list -\nitem" and n == 0


def test_running_headers_and_page_numbers_dropped_tolerant_of_digits():
    pages = [f"Smith et al. 2024 - Page {i} of 4\n" + "\n".join(body_lines(i, 6)) + f"\nunique {WORDS[i]} line\n{i}"
             for i in range(1, 5)]
    pages[0] = "arXiv:2405.01234v2 [cs.CL] 3 May 2024\n" + pages[0]
    out, stats = drop_running_lines(pages, min_fraction=0.5, zone=3)
    for i, text in enumerate(out, 1):
        assert "Smith et al." not in text and "arXiv:" not in text
        assert not text.endswith(f"\n{i}") and f"unique {WORDS[i]} line" in text
    assert sum(s["page_number_lines"] for s in stats) == 4
    assert sum(s["header_lines"] for s in stats) == 4 + 1  # 4 headers + the arXiv stamp


def test_a_repeated_line_in_mid_page_is_kept():
    pages = ["top a\n" + "\n".join(body_lines(1, 4)) + "\nRepeated sentence here\n" + "\n".join(body_lines(2, 4)),
             "top b\n" + "\n".join(body_lines(3, 4)) + "\nRepeated sentence here\n" + "\n".join(body_lines(4, 4))]
    out, _ = drop_running_lines(pages, zone=2)
    assert all("Repeated sentence here" in p for p in out)


def test_references_and_everything_after_are_cut():
    pages = ["\n".join(body_lines(1, 20)), "\n".join(body_lines(2, 10)) + "\nReferences\n[1] A. B. Title. 2020.",
             "[2] C. D. Other. 2021.\nA Proofs\nthe appendix text"]
    out, removed = cut_references(pages)
    assert "References" not in out[1] and body_lines(2, 10)[-1] in out[1]
    assert out[2] == "" and removed[2] > 0 and removed[0] == 0


def test_keep_appendix_keeps_text_after_the_references():
    pages = ["\n".join(body_lines(1, 20)), "\n".join(body_lines(2, 10)) + "\n7 References\n[1] A. B. Title. 2020.",
             "[2] C. D. Other. 2021.\nA Proofs of the Theorems\nthe appendix text"]
    out, _ = cut_references(pages, keep_appendix=True)
    assert "[2]" not in out[2] and "A Proofs of the Theorems\nthe appendix text" == out[2]


def test_an_early_references_mention_such_as_a_contents_list_is_not_a_cut():
    pages = ["Contents\nIntroduction\nReferences\n" + "\n".join(body_lines(1, 30)), "\n".join(body_lines(2, 30))]
    out, removed = cut_references(pages)
    assert out == pages and sum(removed) == 0


def test_clean_pages_drops_short_pages_and_each_rule_can_be_switched_off():
    pages = ["\n".join(body_lines(i, 4)) + f"\nan ex-\nample {WORDS[i]}\n" + "\n".join(body_lines(i + 5, 4))
             for i in range(3)] + ["tiny"]
    kept, drops = clean_pages(pages, min_chars=100)
    assert [p["page"] for p in kept] == [1, 2, 3] and drops["pages_dropped_short"] == 1
    assert "example" in kept[0]["text"] and kept[0]["removed"]["hyphen_joins"] == 1
    kept_raw, _ = clean_pages(pages, normalize=False, drop_headers=False, drop_references=False,
                              dehyphenate=False, min_chars=0)
    assert [p["text"] for p in kept_raw] == pages and all(not p["removed"] for p in kept_raw)
