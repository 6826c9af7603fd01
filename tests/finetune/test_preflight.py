"""Issue 27 item 14: what 04 and 05 name before (or instead of) a raw library error: a model folder cut short or
without a tokenizer (with the folder), a split no row of which fits max_length (before the model loads)."""
from __future__ import annotations

import json

import pytest

from nbutils.models import load_causal_lm, load_tokenizer


def test_a_truncated_safetensors_is_named_with_its_folder(tmp_path, embedded_model_path):
    from nbutils.models import ModelLoadError

    folder = tmp_path / "my-model"
    folder.mkdir()
    for f in embedded_model_path.iterdir():
        if f.suffix != ".safetensors":
            (folder / f.name).symlink_to(f)
    weights = next(embedded_model_path.glob("*.safetensors"))
    with open(weights, "rb") as src:
        (folder / weights.name).write_bytes(src.read(weights.stat().st_size // 3))
    with pytest.raises(ModelLoadError) as e:
        load_causal_lm(str(folder), device="cpu")
    assert str(folder) in str(e.value) and "cut short" in str(e.value)


def test_a_missing_tokenizer_is_named_with_its_folder(tmp_path, embedded_model_path):
    from nbutils.models import ModelLoadError

    folder = tmp_path / "weights-only"
    folder.mkdir()
    (folder / "config.json").write_text((embedded_model_path / "config.json").read_text())
    with pytest.raises(ModelLoadError) as e:
        load_tokenizer(str(folder))
    assert str(folder) in str(e.value) and "no tokenizer" in str(e.value)


def test_rows_all_longer_than_max_length_stop_before_the_model_loads(data_dir_with_model, monkeypatch):
    from nbutils.finetune import FinetuneConfig
    from nbutils.finetune import train as train_mod

    rows = [{"paper_id": f"p{i % 4}", "page": i, "instruction": "Summarise this. " * 40,
             "input": "word " * 300, "output": "Short."} for i in range(12)]
    (data_dir_with_model / "triples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def must_not_load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(train_mod, "load_model_for_training", must_not_load)
    cfg = FinetuneConfig.from_params(profile="demo", data_dir=str(data_dir_with_model), max_length=32)
    with pytest.raises(ValueError, match="max_length=32"):
        train_mod.train(cfg, verbose=False)
