"""A grounding score with no LLM: how much of a triple's Output is in the page it was made from.

The unit (chosen by measurement, benchmarks/judge_grounding.py, figures in benchmarks/RESULTS.md) is the
content word: the Output's words lower-cased and Porter-stemmed, stop words left out, numbers kept whole
("1.3", "16"); the score is the share of those word occurrences that also occur anywhere in the page (token
precision of the Output against the page), each word weighted by its inverse document frequency over the
run's pages ("idf": a rare term such as "LoRA" counts more than "model", which every page of a field holds).
1.0: every content word of the Output is on the page; 0.0: none is.
An Output with no content word at all ("Yes.") scores 1.0: there is nothing in it the page could fail to hold.

    g = Grounder("idf", corpus=page_texts)
    g.score("LoRA freezes the model.", page_text)          # 1.0 when every content word is on the page

Other units are there to be compared (`unit=`): "unigram" (the same, unweighted), "bigram" (share of the
Output's adjacent stemmed word pairs found in the page) and "mix" (unigram and bigram averaged).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from functools import lru_cache

UNITS = ("idf", "unigram", "bigram", "mix")

# English function words (a short list: the score is about content, and a long list would hide little more).
STOP_WORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below between
both but by can could did do does doing down during each either etc few for from further had has have having he
her here hers him his how however i if in into is it its itself just may me might more most must my no nor not
now of off on once only or other our ours out over own per same she should so some such than that the their
theirs them then there these they this those through thus to too under until up upon us very via was we were
what when where whether which while who whom whose why will with within without would yet you your
""".split())

_TOKEN = re.compile(r"\d+(?:[.,]\d+)*%?|[^\W\d_]+", re.UNICODE)


@lru_cache(maxsize=1)
def _stemmer():
    from nltk.stem.porter import PorterStemmer  # nltk comes with rouge_score (already a dependency)

    return PorterStemmer()


@lru_cache(maxsize=200_000)
def _stem(word: str) -> str:
    return _stemmer().stem(word) if len(word) > 3 else word


def tokens(text: str) -> list[str]:
    """Lower-cased, stemmed words and whole numbers of `text`, in order (stop words included)."""
    return [_stem(w) if not w[0].isdigit() else w.rstrip("%") for w in _TOKEN.findall((text or "").lower())]


def content_tokens(text: str) -> list[str]:
    return [t for t in tokens(text) if t not in STOP_WORDS and (len(t) > 1 or t.isdigit())]


def _bigrams(toks: list[str]) -> list[tuple[str, str]]:
    return list(zip(toks, toks[1:]))


class Grounder:
    """Scores Outputs against pages; a page's tokens are computed once however many triples it has."""

    def __init__(self, unit: str = "idf", corpus: list[str] | None = None):
        if unit not in UNITS:
            raise ValueError(f"unknown grounding unit {unit!r}: expected one of {', '.join(UNITS)}")
        self.unit = unit
        self._pages: dict[str, tuple[frozenset, frozenset]] = {}
        self._df: Counter = Counter()
        self._n_docs = 0
        for page in corpus or ():
            self._df.update(self._page(page)[0])
            self._n_docs += 1

    def idf(self, word: str) -> float:
        """Smoothed inverse document frequency over the corpus' pages (1.0 for every word without a corpus)."""
        if not self._n_docs:
            return 1.0
        return math.log((self._n_docs + 1) / (self._df.get(word, 0) + 1)) + 1.0

    def _page(self, page: str) -> tuple[frozenset, frozenset]:
        got = self._pages.get(page)
        if got is None:
            toks = tokens(page)
            got = (frozenset(toks), frozenset(_bigrams(toks)))
            if len(self._pages) > 10_000:
                self._pages.clear()
            self._pages[page] = got
        return got

    def unigram(self, output: str, page: str) -> float:
        words = content_tokens(output)
        if not words:
            return 1.0
        on_page = self._page(page)[0]
        return sum(w in on_page for w in words) / len(words)

    def idf_weighted(self, output: str, page: str) -> float:
        words = content_tokens(output)
        if not words:
            return 1.0
        on_page = self._page(page)[0]
        weights = [self.idf(w) for w in words]
        return sum(wt for w, wt in zip(words, weights) if w in on_page) / sum(weights)

    def bigram(self, output: str, page: str) -> float:
        pairs = _bigrams(tokens(output))
        if not pairs:
            return self.unigram(output, page)
        on_page = self._page(page)[1]
        return sum(p in on_page for p in pairs) / len(pairs)

    def score(self, output: str, page: str) -> float:
        if self.unit == "idf":
            s = self.idf_weighted(output, page)
        elif self.unit == "unigram":
            s = self.unigram(output, page)
        elif self.unit == "bigram":
            s = self.bigram(output, page)
        else:
            s = (self.unigram(output, page) + self.bigram(output, page)) / 2
        return round(s, 4)


def grounding_score(output: str, page: str, unit: str = "unigram") -> float:
    """One Output against one page (see the module's docstring); for many, keep one Grounder."""
    return Grounder(unit).score(output, page)


__all__ = ["Grounder", "grounding_score", "tokens", "content_tokens", "UNITS", "STOP_WORDS"]
