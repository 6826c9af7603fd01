"""What an export made (also written to export_dir/export.json): each artefact with its path, size, whether this run
wrote it or found it complete and unchanged, the checks' figures, the commands to run it, the Hub push."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..result import StageResult


@dataclass
class ExportResult(StageResult):
    """`artifacts`: one dict per output (name, path, status "written" | "unchanged" | "skipped", bytes, seconds)."""

    export_dir: str
    base_model: str
    template: str
    artifacts: list[dict] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    room: dict[str, Any] = field(default_factory=dict)
    evaluation: str = ""
    hub: dict[str, Any] | None = None
    seconds: float = 0.0

    def artifact(self, name: str) -> dict | None:
        return next((a for a in self.artifacts if a["name"] == name), None)

    def path(self, name: str) -> str | None:
        a = self.artifact(name)
        return a["path"] if a else None

    def rows(self) -> list[dict[str, Any]]:
        return [{"artifact": a["name"], "status": a["status"], "MB": round(a.get("bytes", 0) / 1e6, 1),
                 "seconds": a.get("seconds"), "path": a["path"]} for a in self.artifacts]

    def summary(self) -> str:
        done = ", ".join(f"{a['name']} ({a['status']})" for a in self.artifacts) or "nothing"
        lines = [f"Export of {self.base_model} + adapter (template {self.template!r}) in {self.export_dir}: {done}; "
                 f"{self.seconds:.1f} s.", *self.notes, f"Model card evaluation: {self.evaluation}."]
        if self.hub:
            lines.append(f"Pushed to {self.hub['repo_url']} ({'private' if self.hub['private'] else 'public'}), "
                         f"commit {str(self.hub['commit'])[:12]}, {len(self.hub['files'])} files.")
        if self.commands:
            lines += ["Run it:", *(f"  {c}" for c in self.commands)]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)
