"""The stage pages' parameter tables, generated from the stage configs so they cannot drift.

Each stage has a page `docs/stages/<stage>.md` (e.g. docs/stages/04_finetune.md) holding a block
`<!-- params:04_finetune -->` ... `<!-- /params -->`: the table of that stage's config
(`nbutils.config.parameter_table`). `python -m nbutils docs` rewrites the blocks of every page; tests/test_docs.py
fails when one differs from the config. The README holds no table: it links the pages.
"""
from __future__ import annotations

import importlib
import re
from pathlib import Path

from .config import parameter_table
from .io import PROJECT_ROOT, atomic_write_text
from .runner import STAGE_CONFIGS, stage_config_class

README = PROJECT_ROOT / "README.md"
DOCS_DIR = PROJECT_ROOT / "docs"
STAGE_DOCS = DOCS_DIR / "stages"
# Steps with a parameter table but no notebook of their own (the export step runs at the end of 05):
# name -> (module, config class); the page is docs/stages/NN_<name>.md.
EXTRA_CONFIGS: dict[str, tuple[str, str]] = {"export": ("nbutils.export", "ExportConfig")}
DOC_CONFIGS = {**STAGE_CONFIGS, **EXTRA_CONFIGS}
BLOCK = re.compile(r"(<!-- params:(?P<stage>[\w]+) -->\n)(?P<body>.*?)(<!-- /params -->)", re.S)


def doc_config_class(stage: str):
    """The config class whose table a block `<!-- params:<stage> -->` holds."""
    if stage in EXTRA_CONFIGS:
        module, name = EXTRA_CONFIGS[stage]
        return getattr(importlib.import_module(module), name)
    return stage_config_class(stage)


def stage_pages(root: Path = STAGE_DOCS) -> list[Path]:
    """The stage pages, in order (docs/stages/NN_name.md)."""
    return sorted(Path(root).glob("*.md"))


def render_parameter_blocks(text: str) -> str:
    """`text` with every parameter block refilled from its stage's config."""
    def fill(m: re.Match) -> str:
        stage = m.group("stage")
        if stage not in DOC_CONFIGS:
            raise ValueError(f"a parameter block names an unknown stage {stage!r}; stages: {', '.join(DOC_CONFIGS)}")
        return m.group(1) + parameter_table(doc_config_class(stage)) + "\n" + m.group(4)

    return BLOCK.sub(fill, text)


def stages_with_blocks(text: str) -> list[str]:
    return [m.group("stage") for m in BLOCK.finditer(text)]


def write_tables(path: str | Path) -> bool:
    """Regenerate the blocks of one page in place; True when something changed."""
    p = Path(path)
    old = p.read_text(encoding="utf-8")
    new = render_parameter_blocks(old)
    if new != old:
        atomic_write_text(p, new)
    return new != old


def write_doc_tables(root: Path | None = None) -> list[Path]:
    """Regenerate every stage page's blocks (docs/stages/ unless `root` says); the pages that changed."""
    return [p for p in stage_pages(root or STAGE_DOCS) if write_tables(p)]
