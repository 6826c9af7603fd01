"""The docs cannot drift: the stage pages' parameter tables are generated from the configs (nbutils.docs), every
relative link of the README and docs/ resolves, and the README stays short."""
import re
from pathlib import Path

import pytest

from nbutils.docs import (
    DOC_CONFIGS,
    DOCS_DIR,
    README,
    STAGE_DOCS,
    render_parameter_blocks,
    stage_pages,
    stages_with_blocks,
    write_doc_tables,
)

README_MAX_LINES = 250
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS_DIR.rglob("*.md"))]


def test_every_stage_has_one_parameter_table_on_its_own_page():
    blocks = {p.stem: stages_with_blocks(p.read_text(encoding="utf-8")) for p in stage_pages()}
    assert sorted(s for found in blocks.values() for s in found) == sorted(DOC_CONFIGS)
    for page, found in blocks.items():
        assert all(page == s or page.endswith(f"_{s}") for s in found), f"docs/stages/{page}.md holds {found}"


def test_the_readme_holds_no_parameter_table():
    assert stages_with_blocks(README.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("page", stage_pages(), ids=lambda p: p.name)
def test_stage_page_tables_equal_the_configs(page):
    text = page.read_text(encoding="utf-8")
    assert render_parameter_blocks(text) == text, f"{page.name} differs from the configs: run `python -m nbutils docs`"


def test_a_changed_default_shows_up_and_the_command_rewrites_it(tmp_path):
    page = stage_pages()[0]
    text = page.read_text(encoding="utf-8")
    stage = stages_with_blocks(text)[0]
    tampered = text.replace(f"<!-- params:{stage} -->\n", f"<!-- params:{stage} -->\n| stale row |\n", 1)
    assert tampered != text and render_parameter_blocks(tampered) == text
    (tmp_path / page.name).write_text(tampered, encoding="utf-8")
    assert write_doc_tables(tmp_path) == [tmp_path / page.name]
    assert (tmp_path / page.name).read_text(encoding="utf-8") == text
    assert write_doc_tables(tmp_path) == []


def test_an_unknown_stage_in_a_block_is_named():
    with pytest.raises(ValueError, match="unknown stage 'nope'"):
        render_parameter_blocks("<!-- params:nope -->\n<!-- /params -->")


def relative_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)   # code blocks hold no links
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", text, re.M)}


def broken_links(path: Path) -> list[str]:
    broken = []
    for t in relative_links(path) + [f"{path.name}{a}" for a in re.findall(r"\]\((#[^)\s]+)\)", path.read_text())]:
        file, _, anchor = t.partition("#")
        target = path.parent / file
        if not target.exists() or (anchor and target.suffix == ".md" and anchor not in anchors(target)):
            broken.append(t)
    return broken


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(README.parent)))
def test_every_relative_link_resolves(path):
    broken = broken_links(path)
    assert not broken, f"{path.relative_to(README.parent)} links to missing files or headings: {broken}"


def test_the_link_check_sees_a_broken_link(tmp_path):
    page = tmp_path / "x.md"
    page.write_text("[ok](x.md) [gone](missing.md#a) [web](https://example.org) [here](#top)\n", encoding="utf-8")
    assert relative_links(page) == ["x.md", "missing.md#a"]
    page.write_text("# A heading, here\n[ok](#a-heading-here) [gone](#nowhere) [file](x.md#nowhere)\n", encoding="utf-8")
    assert broken_links(page) == ["x.md#nowhere", "x.md#nowhere"]


def test_the_readme_stays_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES}): move detail to docs/"


def test_every_stage_page_is_linked_from_the_readme():
    text = README.read_text(encoding="utf-8")
    missing = [p.name for p in stage_pages() if f"docs/stages/{p.name}" not in text]
    assert not missing, f"README.md does not link {missing}"
    assert STAGE_DOCS.is_dir()


def test_the_docs_command_rewrites_the_stage_pages(tmp_path, monkeypatch, capsys):
    import shutil

    import nbutils.docs
    from nbutils.__main__ import main

    pages = tmp_path / "stages"
    shutil.copytree(STAGE_DOCS, pages)
    monkeypatch.setattr(nbutils.docs, "STAGE_DOCS", pages)
    assert main(["docs"]) == 0
    assert "tables already up to date" in capsys.readouterr().out   # the committed pages are as generated
    page = stage_pages(pages)[-1]
    page.write_text(page.read_text(encoding="utf-8").replace("| parameter |", "| stale |", 1), encoding="utf-8")
    assert main(["docs"]) == 0
    assert f"tables updated in {page.name}" in capsys.readouterr().out
    assert page.read_text(encoding="utf-8") == (STAGE_DOCS / page.name).read_text(encoding="utf-8")


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(README.parent)))
def test_named_files_and_commands_exist(path):
    """Every `nbutils/...py`, `tests/...py` and `python -m benchmarks.<name>` / `nbutils.<stage>` the docs name exists."""
    root = README.parent
    text = path.read_text(encoding="utf-8")
    files = set(re.findall(r"\b((?:nbutils|tests|benchmarks)/[\w/]+\.(?:py|sh|md))", text))
    modules = set(re.findall(r"python -m ((?:benchmarks|nbutils)(?:\.\w+)+)", text))
    missing = [f for f in files if not (root / f).exists()]
    for m in modules:
        module = root / m.replace(".", "/")
        if not (module.with_suffix(".py").exists() or (module / "__main__.py").exists()):
            missing.append(m)
    assert not missing, f"{path.relative_to(root)} names what does not exist: {sorted(missing)}"
