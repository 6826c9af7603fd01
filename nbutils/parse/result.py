"""What a parse run reports: totals over the per-file entries, and the result object the notebook shows."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io import read_jsonl
from ..result import StageResult


def summarize(files: dict[str, dict], seconds: float, parsed: int, reused: int) -> dict[str, Any]:
    """Totals over the per-file entries of parse_report.json (its `summary`)."""
    ok = [f for f in files.values() if f["status"] == "ok"]
    removed: Counter[str] = Counter()
    for f in ok:
        removed.update(f.get("removed", {}))
    pages_parsed = sum(f.get("pages_total", 0) for f in files.values() if f.get("parsed_in_last_run"))
    return {
        "files": len(files), "ok": len(ok), "skipped": len(files) - len(ok),
        "skipped_by_reason": dict(Counter(f["reason"] for f in files.values() if f["status"] != "ok")),
        "pages_total": sum(f.get("pages_total", 0) for f in ok),
        "pages_kept": sum(f.get("pages_kept", 0) for f in ok),
        "pages_dropped_references": sum(f.get("pages_dropped_references", 0) for f in ok),
        "pages_dropped_short": sum(f.get("pages_dropped_short", 0) for f in ok),
        "records": sum(f.get("records", 0) for f in ok),
        "chars_kept": sum(f.get("chars_kept", 0) for f in ok),
        "removed": dict(removed),
        "warnings": sum(sum(f.get("warnings", {}).values()) for f in files.values()),
        "parsed_this_run": parsed, "reused": reused, "seconds_this_run": round(seconds, 2),
        "pages_per_s_this_run": round(pages_parsed / seconds, 1) if seconds > 0 and pages_parsed else None,
    }


@dataclass
class ParseResult(StageResult):
    """The run's parse_report.json: `files` (paper_id -> entry) and `totals` (its summary)."""

    report: dict[str, Any] = field(default_factory=dict)

    @property
    def files(self) -> dict[str, dict]:
        return self.report.get("files", {})

    @property
    def totals(self) -> dict[str, Any]:
        return self.report.get("summary", {})

    def summary(self) -> str:
        s = self.totals
        if not s.get("files"):
            return f"no PDFs in {self.report.get('pdf_dir')}: run 01_scrape first, or put PDFs there"
        return "\n".join([
            f"{s['files']} PDFs: {s['ok']} ok, {s['skipped']} skipped {s['skipped_by_reason'] or ''}",
            f"pages: {s['pages_total']} in ok files -> {s['pages_kept']} kept "
            f"({s['pages_dropped_references']} references/after, {s['pages_dropped_short']} too short); "
            f"{s['records']} records, {s['chars_kept']:,} chars",
            f"this run: parsed {s['parsed_this_run']}, reused {s['reused']} unchanged, "
            f"{s['seconds_this_run']} s, {s['pages_per_s_this_run'] or '-'} pages/s; "
            f"{s['warnings']} parser warnings captured (per file in the report)"])

    def rows(self) -> list[dict[str, Any]]:
        """One row per PDF, skipped ones first: status, reason, pages, kept, records, warnings, detail."""
        rows = [{"paper_id": pid, "file": f.get("file", ""), "status": f["status"], "reason": f.get("reason", ""),
                 "pages": f.get("pages_total"), "kept": f.get("pages_kept"), "records": f.get("records"),
                 "warnings": sum(f.get("warnings", {}).values()), "seconds": f.get("seconds"),
                 "detail": f.get("detail", "")} for pid, f in self.files.items()]
        return sorted(rows, key=lambda r: (r["status"] == "ok", r["paper_id"]))

    def removed_chars(self) -> dict[str, int]:
        """Characters each cleaning rule removed over all ok files (a rejoined word loses '-' and a newline)."""
        r = self.totals.get("removed", {})
        return {"references (and after)": r.get("reference_chars", 0),
                "running headers / page numbers": r.get("header_chars", 0),
                "whitespace": r.get("whitespace_chars", 0),
                "line-end hyphens": 2 * r.get("hyphen_joins", 0)}

    def cleaning_events(self) -> dict[str, int]:
        """How many times each rule fired over all ok files."""
        r = self.totals.get("removed", {})
        return {"hyphenated words rejoined": r.get("hyphen_joins", 0), "ligatures expanded": r.get("ligatures", 0),
                "header/footer lines dropped": r.get("header_lines", 0),
                "page-number lines dropped": r.get("page_number_lines", 0),
                "pages dropped (references)": self.totals.get("pages_dropped_references", 0),
                "pages dropped (too short)": self.totals.get("pages_dropped_short", 0)}


def page_lengths(pages_path: str | Path) -> list[int]:
    """Characters per record of pages.jsonl (the notebook's histogram)."""
    return [r["n_chars"] for r in read_jsonl(pages_path)]
