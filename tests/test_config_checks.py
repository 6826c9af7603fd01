"""Issue 27: what a configuration refuses before anything is read, loaded or written (nbutils/config.py):
outputs that would overwrite data_dir or an input, numbers out of range, URLs with credentials."""
from __future__ import annotations

import pytest

from nbutils.config import ConfigValueError
from nbutils.finetune import FinetuneConfig
from nbutils.generate import GenerateConfig
from nbutils.parse import ParseConfig


# ---------------------------------------------------------------------------------------------- item 1
def test_generate_dataset_dir_equal_to_data_dir_is_refused_naming_both(tmp_path):
    with pytest.raises(ConfigValueError) as e:
        GenerateConfig.from_params(profile="demo", data_dir=str(tmp_path), dataset_dir=str(tmp_path))
    assert "dataset_dir" in str(e.value) and "data_dir" in str(e.value) and str(tmp_path) in str(e.value)


def test_finetune_output_dir_equal_to_or_containing_data_dir_is_refused(tmp_path):
    data = tmp_path / "data"
    for out in (data, tmp_path):
        with pytest.raises(ConfigValueError, match="output_dir=.*data_dir"):
            FinetuneConfig.from_params(profile="demo", data_dir=str(data), output_dir=str(out))


def test_finetune_output_dir_containing_the_local_base_model_is_refused(tmp_path):
    base = tmp_path / "data" / "models" / "base" / "m"
    base.mkdir(parents=True)
    with pytest.raises(ConfigValueError, match="output_dir=.* contains the input base_model"):
        FinetuneConfig.from_params(profile="demo", data_dir=str(tmp_path / "data"), base_model=str(base),
                                   output_dir=str(tmp_path / "data" / "models"))


# ---------------------------------------------------------------------------------------------- item 3
def test_parse_pages_path_equal_to_papers_path_is_refused(tmp_path):
    p = str(tmp_path / "papers.jsonl")
    with pytest.raises(ConfigValueError, match="pages_path=.* is the input papers_path"):
        ParseConfig.from_params(profile="demo", data_dir=str(tmp_path), papers_path=p, pages_path=p)


def test_generate_triples_path_equal_to_pages_path_is_refused(tmp_path):
    p = str(tmp_path / "pages.jsonl")
    with pytest.raises(ConfigValueError, match="triples_path=.* is the input pages_path"):
        GenerateConfig.from_params(profile="demo", data_dir=str(tmp_path), pages_path=p, triples_path=p)


def test_every_profile_fits_its_ranges_and_paths(tmp_path):
    from nbutils.config import PROFILES
    from nbutils.evaluate import EvaluateConfig
    from nbutils.scrape import ScrapeConfig

    for cls in (ScrapeConfig, ParseConfig, GenerateConfig, FinetuneConfig, EvaluateConfig):
        for profile in PROFILES:
            cls.from_params(profile=profile, data_dir=str(tmp_path))


# ---------------------------------------------------------------------------------------------- item 12
@pytest.mark.parametrize("cls,name,value", [
    (GenerateConfig, "window_chars", -1), (GenerateConfig, "max_pages", -1),
    (FinetuneConfig, "gradient_accumulation_steps", 0), (FinetuneConfig, "max_train_samples", -1),
    (ParseConfig, "workers", -2), (GenerateConfig, "temperature", -0.5)])
def test_numbers_out_of_range_are_refused_at_configuration(tmp_path, cls, name, value):
    with pytest.raises(ConfigValueError, match=rf"{name}={value}: must be"):
        cls.from_params(profile="demo", data_dir=str(tmp_path), **{name: value})


def test_every_range_error_is_reported_at_once(tmp_path):
    with pytest.raises(ConfigValueError) as e:
        GenerateConfig.from_params(profile="demo", data_dir=str(tmp_path), window_chars=-1, max_pages=-1)
    assert "window_chars=-1" in str(e.value) and "max_pages=-1" in str(e.value)


def test_range_is_shown_in_the_parameter_table():
    from nbutils.config import parameter_table

    row = next(r for r in parameter_table(GenerateConfig).splitlines() if r.startswith("| `window_chars`"))
    assert "(>= 0)" in row


# ---------------------------------------------------------------------------------------------- item 13
SECRET_URL = "http://alice:hunter2secret@127.0.0.1:9/v1"


def test_cfg_show_masks_credentials_in_a_url(tmp_path, capsys):
    cfg = GenerateConfig.from_params(profile="demo", data_dir=str(tmp_path), backend="openai", model="m",
                                     base_url=SECRET_URL)
    assert cfg.base_url == SECRET_URL          # the stage still gets the real value
    cfg.show()
    out = capsys.readouterr().out
    assert "hunter2secret" not in out and "127.0.0.1:9/v1" in out


def test_the_executed_notebook_and_run_json_hold_no_credentials(tmp_path):
    import nbformat

    from nbutils.runner import run_pipeline

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('data_dir = "data"\nprofile = "demo"\nbase_url = None')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("print('talking to', base_url)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    nbformat.write(nb, str(notebooks / "03_generate.ipynb"))
    result = run_pipeline(profile="demo", data_dir=tmp_path / "data", params={"base_url": SECRET_URL},
                          notebooks_dir=notebooks, run_dir=tmp_path / "run")
    executed = (tmp_path / "run" / "03_generate.ipynb").read_text()
    assert result.ok and "talking to" in executed and "127.0.0.1:9/v1" in executed
    assert "hunter2secret" not in executed
    assert "hunter2secret" not in (tmp_path / "run" / "run.json").read_text()
