"""House rules for every stage notebook: a plain-literal parameters cell first, data_dir/profile, no outputs,
no secrets, and the parameter names of docs/pipeline.md."""
import ast
import re

import nbformat
import pytest

from nbutils.runner import discover_notebooks

NOTEBOOKS = discover_notebooks()
REQUIRED = {  # docs/pipeline.md: names every run relies on
    "01_scrape": {"search_url", "backend", "max_papers", "delay_s"},
    "02_parse": set(),
    "03_generate": {"backend", "model", "base_url", "max_pages"},
    "04_finetune": {"base_model", "load_in_4bit", "max_steps"},
    "05_evaluate": {"base_model", "max_examples", "max_new_tokens"},
}
SECRET = re.compile(r"gsk_[A-Za-z0-9]{20,}|hf_[A-Za-z0-9]{30,}|sk-[A-Za-z0-9]{20,}")


def parameters_cell(nb):
    tagged = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{len(tagged)} cells tagged parameters"
    return tagged[0]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_holds_plain_literals(path):
    cell = parameters_cell(nbformat.read(str(path), as_version=4))
    assert "parameters" in cell.metadata.get("tags", [])
    values = {}
    for stmt in ast.parse(cell.source).body:
        assert isinstance(stmt, ast.Assign) and len(stmt.targets) == 1, f"not a plain assignment: {ast.unparse(stmt)}"
        values[stmt.targets[0].id] = ast.literal_eval(stmt.value)  # raises on anything but a literal
    assert values.get("data_dir") == "data" and values.get("profile") == "demo"
    missing = REQUIRED.get(path.stem, set()) - set(values)
    assert not missing, f"{path.name} lacks docs/pipeline.md parameters {sorted(missing)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_sees_every_parameter(path):
    """papermill's inspector skips lines it cannot parse (e.g. a comment holding ' = '); then `-p` on the
    runner would be refused for that name."""
    import papermill as pm

    cell = parameters_cell(nbformat.read(str(path), as_version=4))
    names = {stmt.targets[0].id for stmt in ast.parse(cell.source).body}
    assert set(pm.inspect_notebook(str(path))) == names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs_or_secrets(path):
    nb = nbformat.read(str(path), as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code")
    assert not SECRET.search("".join(c.source for c in nb.cells))
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_reach_the_config_once_and_match_its_fields(path):
    """Every parameters-cell name is a field of the stage's config, and `XConfig.from_notebook(globals())` takes
    exactly those names from the notebook (the cells before the config cell), nothing else."""
    from nbutils.runner import notebook_config_classes

    classes = notebook_config_classes(path.stem)   # the stage's config, then its sections' (05: ExportConfig)
    if not classes:
        pytest.skip("not a stage notebook")
    fields_ = set().union(*(c.field_names() for c in classes))
    nb = nbformat.read(str(path), as_version=4)
    cell = parameters_cell(nb)
    names = {t.id for node in ast.parse(cell.source).body for t in node.targets}
    assert names <= fields_, f"not {', '.join(c.__name__ for c in classes)} fields: {sorted(names - fields_)}"
    code = [c for c in nb.cells if c.cell_type == "code"]
    config_cell = next(c for c in code if "from_notebook(globals())" in c.source)
    assert "from_params" not in "".join(c.source for c in code), "parameters written out again"
    namespace: dict = {}
    for c in code[: code.index(config_cell)]:                  # the set-up cell (a no-op here) and the parameters
        exec(compile(c.source, path.name, "exec"), namespace)
    picked = {n for n in fields_ if n in namespace}
    assert picked == names, f"taken from outside the parameters cell: {sorted(picked - names)}"
    for c in classes:
        mine = names & set(c.field_names())
        cfg = c.from_notebook({**namespace, "data_dir": "/tmp/nb-data"})
        assert cfg.to_dict() == c.from_params(profile=namespace["profile"], data_dir="/tmp/nb-data",
                                              **{n: namespace[n] for n in mine - {"profile", "data_dir"}}).to_dict()
