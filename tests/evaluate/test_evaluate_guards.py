"""Issue 27 items 7 and 8: text from the dataset is escaped where a notebook renders it; the predictions cache is
keyed by the base weights themselves (nbutils/evaluate/)."""
from __future__ import annotations

import os

from nbutils.evaluate.report import examples_markdown

HOSTILE = '<img src=x onerror="alert(1)"><script>alert(2)</script>'


def example(i: int, delta: float) -> dict:
    s = {"rougeL": 0.5}
    return {"id": i, "paper_id": "p<b>1</b>", "instruction": HOSTILE, "input": HOSTILE, "reference": HOSTILE,
            "base": HOSTILE, "tuned": HOSTILE, "scores": {"base": s, "tuned": s}, "delta_rougeL": delta}


def test_examples_markdown_escapes_dataset_and_model_text():
    md = examples_markdown([example(0, 0.1), example(1, -0.1)], n_show=1)
    assert "<script>" not in md and "<img" not in md and "<b>" not in md
    assert "&lt;script&gt;" in md and "&lt;img" in md


def test_a_stage_summary_renders_escaped():
    from nbutils.result import StageResult

    class R(StageResult):
        def summary(self) -> str:
            return f"first failure: {HOSTILE}"

    assert "<script>" not in R()._repr_markdown_() and "&lt;script&gt;" in R()._repr_markdown_()


def test_the_predictions_cache_key_changes_when_the_weights_change(tmp_path):
    from nbutils.evaluate import EvaluateConfig
    from nbutils.evaluate.model import model_fingerprint

    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text('{"model_type": "llama"}')
    (base / "model.safetensors").write_bytes(b"old weights")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"a")
    cfg = EvaluateConfig.from_params(profile="demo", data_dir=str(tmp_path), base_model=str(base),
                                 adapter_dir=str(adapter))
    before = model_fingerprint(cfg)
    (base / "model.safetensors").write_bytes(b"new weights, same config.json")
    os.utime(base / "model.safetensors", ns=(1, 10**18))
    assert model_fingerprint(cfg)["base"] != before["base"]
