"""The README's parameter tables, generated from the stage configs so they cannot drift.

In README.md a block `<!-- params:04_finetune -->` ... `<!-- /params -->` holds the table of that stage's config
(`nbutils.config.parameter_table`). `python -m nbutils docs` rewrites the blocks; tests/test_docs.py fails when
one differs from the config.
"""
from __future__ import annotations

import re
from pathlib import Path

from .config import parameter_table
from .io import PROJECT_ROOT, atomic_write_text
from .runner import STAGE_CONFIGS, stage_config_class

# Steps with a parameter table but no notebook of their own (the export step runs at the end of 05).
EXTRA_CONFIGS = {"export": ("nbutils.export", "ExportConfig")}
DOC_CONFIGS = {**STAGE_CONFIGS, **EXTRA_CONFIGS}


def doc_config_class(stage: str):
    if stage in EXTRA_CONFIGS:
        import importlib

        module, name = EXTRA_CONFIGS[stage]
        return getattr(importlib.import_module(module), name)
    return stage_config_class(stage)

README = PROJECT_ROOT / "README.md"
BLOCK = re.compile(r"(<!-- params:(?P<stage>[\w]+) -->\n)(?P<body>.*?)(<!-- /params -->)", re.S)


def render_parameter_blocks(text: str) -> str:
    """`text` with every parameter block refilled from its stage's config."""
    def fill(m: re.Match) -> str:
        stage = m.group("stage")
        if stage not in DOC_CONFIGS:
            raise ValueError(f"README block names an unknown stage {stage!r}; stages: {', '.join(DOC_CONFIGS)}")
        return m.group(1) + parameter_table(doc_config_class(stage)) + "\n" + m.group(4)

    return BLOCK.sub(fill, text)


def stages_with_blocks(text: str) -> list[str]:
    return [m.group("stage") for m in BLOCK.finditer(text)]


def write_readme_tables(path: str | Path = README) -> bool:
    """Regenerate the blocks in place; True when something changed."""
    p = Path(path)
    old = p.read_text(encoding="utf-8")
    new = render_parameter_blocks(old)
    if new != old:
        atomic_write_text(p, new)
    return new != old
