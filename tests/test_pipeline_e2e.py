"""The whole demo: every stage notebook present, run by the runner on the demo profile, offline, on CPU."""
import json

import pytest

from nbutils.io import DataPaths, read_jsonl
from nbutils.runner import discover_notebooks, run_pipeline

EXPECTED = {  # stage -> files it must leave under data_dir
    "01_scrape": ["papers.jsonl", "pdfs"],
    "02_parse": ["pages.jsonl", "parse_report.json"],
    "03_generate": ["triples.jsonl", "arxiv_instruction_dataset.json", "dataset/dataset_dict.json"],
    "04_finetune": ["models/adapter/adapter_config.json", "models/adapter/train_log.json"],
    "05_evaluate": ["reports/metrics.json", "reports/report.md"],
}


@pytest.mark.slow
def test_demo_pipeline_runs_end_to_end(data_dir_with_model):
    stages = [p.stem for p in discover_notebooks()]
    if not stages:
        pytest.skip("no stage notebooks yet")
    result = run_pipeline(profile="demo", data_dir=data_dir_with_model)
    assert result.ok and [s.stage for s in result.stages] == stages
    for stage in stages:
        for rel in EXPECTED.get(stage, []):
            assert (data_dir_with_model / rel).exists(), f"{stage} did not write {rel}"
    paths = DataPaths(data_dir_with_model)
    if "01_scrape" in stages:
        papers = list(read_jsonl(paths.papers))
        assert papers and len({p["id"] for p in papers}) == len(papers)
    if "03_generate" in stages:
        assert json.loads(paths.instruction_json.read_text()), "demo dataset is empty"
    print({s.stage: round(s.seconds, 1) for s in result.stages})
