"""What a run found and did: shown by the notebook (summary, table) and written to scrape_report.json."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..result import StageResult
from .config import ScrapeConfig
from .errors import redact, say


@dataclass
class ScrapeResult(StageResult):
    """Listed papers in listing order, each one's outcome (downloaded | skipped | failed) and reason."""

    records: list[dict[str, Any]] = field(default_factory=list)
    status: dict[str, str] = field(default_factory=dict)            # id -> downloaded | skipped | failed
    reasons: dict[str, str] = field(default_factory=dict)           # id -> why (skipped / failed)
    listing_failures: list[dict[str, str]] = field(default_factory=list)   # entries or pages not read
    warnings: list[dict[str, str]] = field(default_factory=list)    # done anyway, but something was refused
    pages: int = 0
    requests: int = 0
    elapsed_s: float = 0.0
    source: str = ""

    def counts(self) -> dict[str, int]:
        out = {"downloaded": 0, "skipped": 0, "failed": 0}
        for s in self.status.values():
            out[s] = out.get(s, 0) + 1
        out["failed"] += len(self.listing_failures)
        return out

    def listing_failed(self, url: str, error: Exception) -> None:
        """A listing page that could not be read ends the listing; what was found so far is still fetched."""
        self.listing_failures.append({"id": "", "url": redact(url), "reason": redact(f"listing stopped: {error}")})
        say(f"listing stopped after {self.pages} page(s): {error}")

    def entry_failed(self, entry_id: str, url: str, error: Exception) -> None:
        """One listing entry skipped with its reason; the rest of the listing is kept."""
        self.listing_failures.append({"id": redact(entry_id), "url": redact(url), "reason": redact(str(error))})
        say(f"skipping a listing entry: {error}")

    def warn(self, item_id: str, reason: str) -> None:
        self.warnings.append({"id": item_id, "reason": redact(reason)})
        say(f"{item_id}: {reason}")

    def rows(self) -> list[dict[str, Any]]:
        """One row per listed paper (id, title, first author, submitted, categories, outcome, reason), then
        one per listing entry that could not be read."""
        rows = [{"id": r["id"], "title": r["title"][:70],
                 "authors": (r["authors"][0] + (" et al." if len(r["authors"]) > 1 else "")) if r["authors"] else "",
                 "submitted": r["submitted"], "categories": " ".join(r["categories"]),
                 "outcome": self.status.get(r["id"], ""), "reason": redact(self.reasons.get(r["id"], ""))}
                for r in self.records]
        rows += [{"id": f["id"], "title": "", "authors": "", "submitted": "", "categories": "", "outcome": "failed",
                  "reason": f["reason"]} for f in self.listing_failures]
        return rows

    def summary(self) -> str:
        c = self.counts()
        lines = [f"{len(self.records)} listed from {self.pages} page(s) in {self.elapsed_s:.1f}s "
                 f"({self.requests} requests): {c['downloaded']} downloaded, {c['skipped']} skipped, "
                 f"{c['failed']} failed"]
        lines += [f"  failed {r['id']}: {self.reasons.get(r['id'])}" for r in self.records
                  if self.status.get(r["id"]) == "failed"]
        lines += [f"  failed listing entry {f['id']!r}: {f['reason']}" for f in self.listing_failures]
        lines += [f"  note {w['id']}: {w['reason']}" for w in self.warnings]
        return redact("\n".join(lines))

    def report(self, cfg: ScrapeConfig) -> dict[str, Any]:
        """scrape_report.json: counts, the lists with reasons, the resolved config (secrets redacted)."""
        by = lambda s: [r["id"] for r in self.records if self.status.get(r["id"]) == s]  # noqa: E731
        return {
            "backend": cfg.backend, "source": redact(self.source),
            "finished": datetime.now(UTC).isoformat(),
            "elapsed_s": round(self.elapsed_s, 2), "pages": self.pages, "requests": self.requests,
            "listed": len(self.records), "counts": self.counts(),
            "downloaded": by("downloaded"),
            "skipped": [{"id": i, "reason": redact(self.reasons.get(i, ""))} for i in by("skipped")],
            "failed": [{"id": r["id"], "url": redact(r["pdf_url"]), "reason": redact(self.reasons.get(r["id"], ""))}
                       for r in self.records if self.status.get(r["id"]) == "failed"] + self.listing_failures,
            "warnings": self.warnings,
            "config": {k: redact(v) if isinstance(v, str) else v for k, v in cfg.to_dict().items()},
        }
