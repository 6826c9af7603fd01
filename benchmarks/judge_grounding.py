"""Issue 21's measurements: the no-LLM grounding score on planted errors, and the judge's calls and tokens.

    python -m benchmarks.judge_grounding grounding [--demo-triples data/triples.jsonl --demo-pages data/pages.jsonl]
    python -m benchmarks.judge_grounding judge-cost [--pages 40]

`grounding`: real text and real model output with Outputs swapped. Cases:
- paperqa (../shared/datasets/paperqa, real arXiv abstracts and real LLM-written answers about those papers):
  the page is the paper's title + abstract (the only text of the paper there), the true Output is an answer
  written from that paper; the planted error is an answer about another paper of the same field.
- demo (`--demo-triples/--demo-pages`, a 03 run: real pages and the Outputs a real model wrote from them): the
  true Output against its own page, the planted error an Output of another paper's page, and (harder) of
  another page of the same paper.
For each unit (nbutils.generate.grounding: unigram content words, bigrams, their mean; ROUGE-L precision for
comparison) it reports the ROC AUC (true vs swapped) and, at the threshold that keeps >= 95 % of true
Outputs (their 5th percentile), the share of swapped Outputs flagged.

`judge-cost`: stage 03 with the judge on against the loopback fake server (real groq client), per page (one
judge call per page) and per triple: generation and judge calls and tokens per kept triple.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from nbutils.generate.grounding import Grounder

from .common import REPO

# the paperqa data set: $PAPERQA_DIR, else shared/datasets/paperqa beside the repository (or a folder above it)
PAPERQA = Path(os.environ.get("PAPERQA_DIR") or next(
    (p / "shared" / "datasets" / "paperqa" for p in REPO.parents if (p / "shared" / "datasets" / "paperqa").exists()),
    REPO.parent / "shared" / "datasets" / "paperqa"))


# ------------------------------------------------------------------------------------------- scoring
def roc_auc(pos: list[float], neg: list[float]) -> float:
    """P(a true Output scores above a swapped one), ties counted half (Mann-Whitney U / n_pos n_neg)."""
    ranked = sorted([(s, 1) for s in pos] + [(s, 0) for s in neg])
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        avg = (i + j + 1) / 2             # 1-based average rank of the tie group
        rank_sum += avg * sum(lbl for _, lbl in ranked[i:j])
        i = j
    n_pos, n_neg = len(pos), len(neg)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def at_keep(pos: list[float], neg: list[float], keep: float = 0.95) -> dict:
    """The highest threshold keeping >= `keep` of true Outputs (score >= t kept), and what it flags."""
    s = sorted(pos)
    t = s[int((1 - keep) * len(s))]      # at most 5 % of true scores lie strictly below it
    kept_true = sum(x >= t for x in pos) / len(pos)
    flagged = sum(x < t for x in neg) / len(neg)
    n = sorted(neg)
    t90 = n[min(len(n) - 1, int(0.9 * len(n)))]     # the lowest threshold flagging >= 90 % of swapped Outputs
    return {"threshold": round(t, 4), "true_kept": round(kept_true, 4), "swapped_flagged": round(flagged, 4),
            "threshold_flag90": round(t90, 4),
            "true_kept_at_flag90": round(sum(x >= t90 for x in pos) / len(pos), 4)}


def rouge_l_precision(output: str, page: str) -> float:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(page, output)["rougeL"].precision


def units(corpus: list[str]) -> dict:
    g = {u: Grounder(u, corpus=corpus) for u in ("idf", "unigram", "bigram", "mix")}
    out = {u: g[u].score for u in g}
    out["rougeL_precision"] = rouge_l_precision
    return out


def evaluate(pairs_true: list[tuple[str, str]], pairs_swapped: list[tuple[str, str]], corpus: list[str],
             skip: tuple = ()) -> dict:
    """Every unit on the same pairs; `corpus`: the case's pages (the idf unit's document frequencies)."""
    res = {"n_true": len(pairs_true), "n_swapped": len(pairs_swapped)}
    for name, fn in units(corpus).items():
        if name in skip:
            continue
        t0 = time.perf_counter()
        pos = [fn(o, p) for o, p in pairs_true]
        neg = [fn(o, p) for o, p in pairs_swapped]
        ms = (time.perf_counter() - t0) / (len(pos) + len(neg)) * 1000
        res[name] = {"auc": round(roc_auc(pos, neg), 4), **at_keep(pos, neg), "ms_per_triple": round(ms, 3),
                     "mean_true": round(sum(pos) / len(pos), 3), "mean_swapped": round(sum(neg) / len(neg), 3)}
    return res


def derange(items: list, key, rng: random.Random) -> list:
    """A partner for each item with a different key (another paper / page), drawn at random."""
    out = []
    for it in items:
        while True:
            other = rng.choice(items)
            if key(other) != key(it):
                out.append(other)
                break
    return out


# ------------------------------------------------------------------------------------------- cases
def paperqa_case(rng: random.Random, limit: int = 0) -> dict:
    """Both fields of paperqa (the first `limit` answers of each; 0 = all)."""
    results, all_pages, all_rows = {}, {}, []
    for field in ("computer_vision", "computational_biology"):
        meta = json.loads((PAPERQA / f"{field}_metadata.json").read_text())["papers"]
        pages = {m["file"]: f"{m['title']}. {m['abstract']}" for m in meta}
        rows = [r for r in json.loads((PAPERQA / f"{field}_questions.json").read_text())["questions"]
                if r["source_document"] in pages and r["answer"].strip()]
        rows = rows[:limit] if limit else rows
        results[field] = swap_case(rows, pages, rng)
        all_pages.update(pages)
        all_rows += rows
    # the planted error as stated: an Output moved to a page drawn at random from the whole corpus
    results["both_fields_any_paper"] = swap_case(all_rows, all_pages, rng)
    return results


def swap_case(rows: list[dict], pages: dict[str, str], rng: random.Random) -> dict:
    """Each answer against its own paper's page and against another paper's page (drawn from `rows`)."""
    true = [(r["answer"], pages[r["source_document"]]) for r in rows]
    other = derange(rows, lambda r: r["source_document"], rng)
    swapped = [(r["answer"], pages[o["source_document"]]) for r, o in zip(rows, other)]
    return evaluate(true, swapped, list(pages.values()))


def demo_case(triples_path: Path, pages_path: Path, window_chars: int, rng: random.Random) -> dict:
    """The Outputs of a 03 run against the pages (windows: `window_chars`, as that run cut them) they came from."""
    from nbutils.generate.jobs import select_pages
    from nbutils.io import read_jsonl

    pages, _ = select_pages(list(read_jsonl(pages_path)), 0, 200, window_chars)
    text = {(p["paper_id"], int(p["page"]), int(p.get("chunk", 0))): p["text"] for p in pages}
    rows = [t for t in read_jsonl(triples_path) if (t["paper_id"], t["page"], t["chunk"]) in text]
    ident = lambda t: (t["paper_id"], t["page"], t["chunk"])  # noqa: E731
    true = [(t["output"], text[ident(t)]) for t in rows]
    res = {"triples": len(rows), "pages": len({ident(t) for t in rows})}
    other = derange(rows, lambda t: t["paper_id"], rng)
    corpus = list(text.values())
    res["other_paper"] = evaluate(true, [(t["output"], text[ident(o)]) for t, o in zip(rows, other)], corpus)
    by_paper = defaultdict(list)
    for t in rows:
        by_paper[t["paper_id"]].append(t)
    same_true, same_swapped = [], []
    for t in rows:
        cands = [o for o in by_paper[t["paper_id"]] if ident(o) != ident(t)]
        if cands:
            same_true.append((t["output"], text[ident(t)]))
            same_swapped.append((t["output"], text[ident(rng.choice(cands))]))
    res["same_paper_other_page"] = evaluate(same_true, same_swapped, corpus)
    return res


def grounding_main(args) -> dict:
    rng = random.Random(args.seed)
    out = {"paperqa": paperqa_case(rng, args.limit)}
    if args.demo_triples:
        out["demo"] = demo_case(Path(args.demo_triples), Path(args.demo_pages), args.window_chars, rng)
    return out


# ------------------------------------------------------------------------------------------- judge cost
def judge_cost_main(args) -> dict:
    from nbutils.generate import GenerateConfig, run
    from nbutils.io import write_jsonl
    from tests.support.fake_llm_server import FakeLLMServer

    rng = random.Random(args.seed)
    vocab = [f"term{i}" for i in range(5000)]
    out = {}
    for mode in ("page", "triple"):
        with tempfile.TemporaryDirectory() as tmp, FakeLLMServer() as srv:
            os.environ.setdefault("GROQ_API_KEY", "gsk_bench_not_a_key")
            rows = [{"paper_id": f"2406.{i // 5:05d}v1", "page": i % 5 + 1, "chunk": 0,
                     "text": " ".join(rng.choice(vocab) for _ in range(args.words))} for i in range(args.pages)]
            write_jsonl(Path(tmp) / "pages.jsonl", rows)
            cfg = GenerateConfig.from_params(profile="full", data_dir=tmp, base_url=srv.url, rpm=0, tpm=0,
                                             workers=4, judge_mode=mode)
            t0 = time.perf_counter()
            r = run(cfg)
            wall = time.perf_counter() - t0
            rerun = run(cfg)
            kept = max(1, r.triples_kept)
            out[mode] = {"pages": args.pages, "triples_parsed": r.triples_parsed, "triples_kept": r.triples_kept,
                         "triples_judged": r.judge["triples_judged"],
                         "generation_calls": r.calls, "judge_calls": r.judge["calls"],
                         "calls_per_kept_triple": round((r.calls + r.judge["calls"]) / kept, 3),
                         "judge_calls_per_kept_triple": round(r.judge["calls"] / kept, 3),
                         "generation_tokens_per_kept_triple":
                             round((r.run_prompt_tokens + r.run_completion_tokens) / kept, 1),
                         "judge_tokens_per_kept_triple":
                             round((r.judge["prompt_tokens"] + r.judge["completion_tokens"]) / kept, 1),
                         "judge_prompt_tokens": r.judge["prompt_tokens"],
                         "judge_completion_tokens": r.judge["completion_tokens"],
                         "judge_cost_usd": r.judge["cost_usd"], "wall_s": round(wall, 2),
                         "rerun_calls": rerun.calls + rerun.judge["calls"]}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.judge_grounding", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("grounding")
    g.add_argument("--demo-triples")
    g.add_argument("--demo-pages")
    g.add_argument("--limit", type=int, default=0, help="paperqa answers per field (0: all)")
    g.add_argument("--window-chars", type=int, default=600, help="the window_chars of the run that made them")
    g.add_argument("--seed", type=int, default=0)
    j = sub.add_parser("judge-cost")
    j.add_argument("--pages", type=int, default=40)
    j.add_argument("--words", type=int, default=400)
    j.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    res = grounding_main(args) if args.cmd == "grounding" else judge_cost_main(args)
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
