"""02_parse benchmark: the original project's one-by-one PyPDFLoader loop vs nbutils.parse, same corpus, one run.

The corpus is SYNTHETIC (benchmarks.make_corpus: deterministic reportlab arXiv-like papers, ~40 files /
~700 pages, two columns, ligatures, hyphenation, running headers, page numbers, references), because no real
arXiv PDF is reachable here. Its ground truth lets us score text quality, not only speed:
  body recall  = share of the true body words (multiset) found in the output
  noise        = share of output words that are not body words (headers, page numbers, references,
                 appendix, broken hyphen halves, ligature glyphs)

    .venv/bin/python -m benchmarks.parse_speed [--corpus /tmp/arxiv_like_corpus] [--repeat 2] [--workers 0]

Wall time is what a user waits; CPU time (this process + its worker processes) is also printed, because
other jobs may share the cores and inflate wall time.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

from nbutils.io import read_jsonl
from nbutils.parse import ParseConfig, run

from .make_corpus import make_corpus


def cpu_seconds() -> float:
    """User+system CPU of this process and of its reaped children (the parser workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def original_loop(pdfs: list[Path]) -> tuple[dict[str, list[str]], int]:
    """The original project's method: PyPDFLoader(path).load() for each file, one after the other."""
    from langchain_community.document_loaders import PyPDFLoader

    texts, n = {}, 0
    for path in pdfs:
        docs = PyPDFLoader(str(path)).load()
        texts[path.stem] = [d.page_content for d in docs]
        n += len(docs)
    return texts, n


def ours(pdf_dir: Path, loader: str, workers: int) -> tuple[dict[str, list[str]], int, dict]:
    """nbutils.parse on a fresh data_dir whose pdfs/ is the corpus."""
    with tempfile.TemporaryDirectory(prefix="bench_parse_") as tmp:
        (Path(tmp) / "pdfs").symlink_to(pdf_dir, target_is_directory=True)
        cfg = ParseConfig.from_params(profile="full", data_dir=tmp, loader=loader, workers=workers)
        result = run(cfg, progress=False)
        texts: dict[str, list[str]] = {}
        for r in read_jsonl(cfg.pages_path):
            texts.setdefault(r["paper_id"], []).append(r["text"])
    pages = sum(f.get("pages_total", 0) for f in result.files.values())
    return texts, pages, result.totals


def score(texts: dict[str, list[str]], truth: dict[str, dict]) -> dict[str, float]:
    """Multiset word overlap with the true body text, over all papers."""
    hit = body = out = 0
    for pid, t in truth.items():
        want = Counter(t["body"])
        got = Counter(" ".join(texts.get(pid, [])).split())
        hit += sum((want & got).values())
        body += sum(want.values())
        out += sum(got.values())
    return {"body_recall": hit / body, "noise": 1 - hit / out if out else 0.0, "words_out": out}


def timed(fn, *args):
    c0, t0 = cpu_seconds(), time.perf_counter()
    res = fn(*args)
    return res, time.perf_counter() - t0, cpu_seconds() - c0


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default=os.path.join(tempfile.gettempdir(), "arxiv_like_corpus"))
    ap.add_argument("--papers", type=int, default=40)
    ap.add_argument("--pages", type=int, default=700)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0, help="0 = one per CPU core")
    ap.add_argument("--skip-pypdf-variant", action="store_true", help="don't also time ours with loader=pypdf")
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args(argv)

    corpus = Path(a.corpus)
    pdfs = make_corpus(corpus, a.papers, a.pages)
    truth = json.loads((corpus / "truth.json").read_text())
    logging.getLogger("pypdf").setLevel(logging.ERROR)  # the original printed them; here they'd only add noise
    warnings.simplefilter("ignore")
    print(f"corpus: {len(pdfs)} synthetic arXiv-like PDFs in {corpus}; cores: {os.cpu_count()}; "
          f"load average at start: {os.getloadavg()[0]:.1f}")

    rows = []
    for rep in range(1, a.repeat + 1):
        (base_texts, base_pages), bw, bc = timed(original_loop, pdfs)
        (our_texts, our_pages, summ), ow, oc = timed(ours, corpus, "pypdfium2", a.workers)
        row = {"run": rep, "pages": base_pages, "baseline_wall_s": bw, "baseline_cpu_s": bc,
               "ours_wall_s": ow, "ours_cpu_s": oc, "baseline_pps": base_pages / bw, "ours_pps": our_pages / ow,
               "ratio_wall": (our_pages / ow) / (base_pages / bw),
               "ratio_cpu": (our_pages / oc) / (base_pages / bc),
               "baseline_quality": score(base_texts, truth), "ours_quality": score(our_texts, truth),
               "ours_pages_kept": summ["pages_kept"], "ours_skipped": summ["skipped"]}
        if not a.skip_pypdf_variant:
            (pv_texts, pv_pages, _), pw, pc = timed(ours, corpus, "pypdf", a.workers)
            row.update(ours_pypdf_pps=pv_pages / pw, ours_pypdf_ratio_wall=(pv_pages / pw) / (base_pages / bw),
                       ours_pypdf_quality=score(pv_texts, truth))
        row["load_avg_end"] = os.getloadavg()[0]
        rows.append(row)
        q0, q1 = row["baseline_quality"], row["ours_quality"]
        print(f"\nrun {rep}: {base_pages} pages (ours parsed {our_pages}, kept {summ['pages_kept']}, "
              f"skipped files {summ['skipped']})")
        print(f"  original PyPDFLoader loop : {bw:6.2f} s wall  {bc:6.2f} s CPU  {base_pages / bw:7.1f} pages/s  "
              f"body recall {q0['body_recall']:.3f}  noise {q0['noise']:.3f}")
        print(f"  nbutils.parse (pypdfium2) : {ow:6.2f} s wall  {oc:6.2f} s CPU  {our_pages / ow:7.1f} pages/s  "
              f"body recall {q1['body_recall']:.3f}  noise {q1['noise']:.3f}")
        if "ours_pypdf_pps" in row:
            q2 = row["ours_pypdf_quality"]
            print(f"  nbutils.parse (pypdf)     :                           {row['ours_pypdf_pps']:7.1f} pages/s  "
                  f"body recall {q2['body_recall']:.3f}  noise {q2['noise']:.3f}  "
                  f"(x{row['ours_pypdf_ratio_wall']:.2f}: parallelism alone)")
        print(f"  speed-up: x{row['ratio_wall']:.2f} pages/s (wall), x{row['ratio_cpu']:.2f} pages per CPU-second; "
              f"load average now {row['load_avg_end']:.1f}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
