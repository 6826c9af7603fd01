"""A failure with a reason the report shows, and the one way the stage writes text: secrets redacted."""
from __future__ import annotations

from ..redact import redact


class ScrapeError(Exception):
    """A per-item failure with a reason the report shows; the run goes on."""


def say(text: str) -> None:
    """Print one line of progress or failure, redacted."""
    print(redact(text))
