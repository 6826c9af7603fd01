"""The face every stage shows: `run(cfg)` returns a result that can show itself."""
from __future__ import annotations

import html
from typing import Any


class StageResult:
    """Base of every stage's result. `summary()` is one short paragraph; `rows()` one dict per item
    (paper, PDF, page, metric...); `table()` those rows as a DataFrame, which a notebook renders."""

    def summary(self) -> str:
        raise NotImplementedError

    def rows(self) -> list[dict[str, Any]]:
        return []

    def table(self):
        import pandas as pd

        return pd.DataFrame(self.rows())

    def _repr_markdown_(self) -> str:
        """The summary as notebook Markdown, HTML-escaped: it may quote a server's error or a paper's title."""
        return html.escape(self.summary(), quote=False)

    def __str__(self) -> str:
        return self.summary()
