"""The papermill runner on small notebooks made here (the real stage notebooks run in test_pipeline_e2e.py)."""
import json

import nbformat
import pytest

from nbutils.config import parse_literal
from nbutils.runner import StageFailed, discover_notebooks, match_stage, parameters_for, run_pipeline, select_stages


def make_notebook(path, body: str, params: str = 'data_dir = "data"\nprofile = "demo"\n'):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# toy"), cell, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))


def marker(name):
    return ("import pathlib\n"
            f"pathlib.Path(data_dir, '{name}.done').write_text(profile + ' ' + str(globals().get('n')))\n")


@pytest.fixture
def toy_series(tmp_path):
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    make_notebook(nbdir / "01_first.ipynb", marker("01"))
    make_notebook(nbdir / "02_second.ipynb", marker("02"),
                  params='data_dir = "data"\nprofile = "demo"\nn = None\n')
    make_notebook(nbdir / "03_third.ipynb", marker("03"))
    return nbdir


def test_discovery_and_stage_selection(toy_series):
    nbs = discover_notebooks(toy_series)
    assert [p.stem for p in nbs] == ["01_first", "02_second", "03_third"]
    assert [p.stem for p in select_stages(nbs, start="02")] == ["02_second", "03_third"]
    assert [p.stem for p in select_stages(nbs, only=["third", "1"])] == ["01_first", "03_third"]
    with pytest.raises(ValueError, match="no stage '07'"):
        match_stage("07", [p.stem for p in nbs])


def test_parameter_typing_and_routing():
    assert [parse_literal(v) for v in ("3", "0.5", "True", "None", "api", "[1, 2]")] == [3, 0.5, True, None, "api", [1, 2]]
    assert parameters_for("03_generate", {"backend", "model"}, {"backend": "x", "01.backend": "api"}) == {"backend": "x"}
    assert parameters_for("01_scrape", {"backend"}, {"01.backend": "api"}) == {"backend": "api"}


def test_runs_all_stages_in_order_and_injects_parameters(toy_series, tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    res = run_pipeline(profile="full", data_dir=data, params={"n": 7}, notebooks_dir=toy_series)
    assert [s.status for s in res.stages] == ["ok", "ok", "ok"]
    assert (data / "02.done").read_text() == "full 7"
    assert (data / "01.done").read_text() == "full None"  # n only goes where it is declared
    assert sorted(p.name for p in res.run_dir.glob("*.ipynb")) == ["01_first.ipynb", "02_second.ipynb", "03_third.ipynb"]
    summary = json.loads((res.run_dir / "run.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["01_first", "02_second", "03_third"]


def test_from_skips_earlier_stages(toy_series, tmp_path):
    res = run_pipeline(data_dir=tmp_path, start="02", notebooks_dir=toy_series)
    assert [s.stage for s in res.stages] == ["02_second", "03_third"]
    assert not (tmp_path / "01.done").exists() and (tmp_path / "03.done").exists()


def test_failing_stage_is_reported_with_its_cell_and_stops_the_run(toy_series, tmp_path, capsys):
    make_notebook(toy_series / "02_second.ipynb", "x = 1\nraise ValueError('pages.jsonl is empty')")
    with pytest.raises(StageFailed, match=r"stage 02_second failed in cell In \[3\] \(cell #4\): ValueError: pages.jsonl is empty"):
        run_pipeline(data_dir=tmp_path, notebooks_dir=toy_series)
    out = capsys.readouterr().out
    assert "02_second FAILED" in out and "executed notebook" in out
    assert (tmp_path / "01.done").exists() and not (tmp_path / "03.done").exists()


def test_unknown_parameter_is_refused_before_anything_runs(toy_series, tmp_path):
    with pytest.raises(ValueError, match="no selected notebook has a parameter 'max_stepz'"):
        run_pipeline(data_dir=tmp_path, params={"max_stepz": 3}, notebooks_dir=toy_series)
    assert not list(tmp_path.glob("*.done"))


def test_cli_exit_codes(toy_series, tmp_path, monkeypatch):
    from nbutils import __main__ as cli
    from nbutils import runner

    monkeypatch.setattr(runner, "NOTEBOOKS_DIR", toy_series)
    monkeypatch.setattr(runner.run_pipeline, "__defaults__",
                        tuple(toy_series if d == runner.NOTEBOOKS_DIR or str(d).endswith("notebooks") else d
                              for d in runner.run_pipeline.__defaults__))
    assert cli.main(["run", "--data-dir", str(tmp_path), "--only", "01"]) == 0
    assert cli.main(["run", "--data-dir", str(tmp_path), "-p", "nope", "1"]) == 2


@pytest.fixture
def stage_named_series(tmp_path):
    """Toy notebooks named like the real stages, so the runner types their values by the stage configs."""
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    make_notebook(nbdir / "01_scrape.ipynb", marker("01"),
                  params='data_dir = "data"\nprofile = "demo"\nmax_papers = None\n')
    make_notebook(nbdir / "04_finetune.ipynb", marker("04"),
                  params='data_dir = "data"\nprofile = "demo"\nlearning_rate = None\nmax_steps = None\n')
    return nbdir


@pytest.mark.parametrize("key,text,msg", [
    ("learning_rate", "2e-3x", "04_finetune: learning_rate='2e-3x': expected float"),
    ("max_steps", "abc", "04_finetune: max_steps='abc': expected int"),
    ("max_papers", "abc", "01_scrape: max_papers='abc': expected int"),
])
def test_a_mistyped_value_stops_the_run_before_any_stage(stage_named_series, tmp_path, key, text, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(")):
        run_pipeline(data_dir=tmp_path, params={key: parse_literal(text)}, raw={key: text},
                     notebooks_dir=stage_named_series)
    assert not list(tmp_path.glob("*.done")) and not (tmp_path / "runs").exists()


def test_values_reach_the_stage_typed_by_its_config(stage_named_series, tmp_path):
    make_notebook(stage_named_series / "04_finetune.ipynb",
                  "import pathlib\npathlib.Path(data_dir, 'lr').write_text(repr(learning_rate))",
                  params='data_dir = "data"\nprofile = "demo"\nlearning_rate = None\n')
    run_pipeline(data_dir=tmp_path, params={"learning_rate": 1}, raw={"learning_rate": "1"}, only=["04"],
                 notebooks_dir=stage_named_series)
    assert (tmp_path / "lr").read_text() == "1.0"  # a float, as FinetuneConfig declares


@pytest.mark.parametrize("key", ["data_dir", "profile", "04.data_dir"])
def test_runner_owned_parameters_cannot_be_overridden_with_p(stage_named_series, tmp_path, key):
    with pytest.raises(ValueError, match=f"-p {key}: .* is the runner's own; use --"):
        run_pipeline(data_dir=tmp_path, params={key: "/elsewhere"}, notebooks_dir=stage_named_series)
