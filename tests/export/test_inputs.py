"""The clear refusals, before anything is written: no adapter, an adapter of another base, a missing base, an
architecture GGUF cannot take, no disk space (with the numbers)."""
from __future__ import annotations

import json

import pytest

from nbutils import export as ex
from nbutils.export.inputs import check_room, gather_inputs

from .conftest import export_config, make_adapter


def test_no_adapter_names_the_folder_and_stage_04(tmp_path):
    with pytest.raises(ex.NoAdapter, match=r"no PEFT adapter in .*adapter.*04_finetune"):
        ex.run(export_config(tmp_path))
    assert not (tmp_path / "export").exists()


def test_an_adapter_of_another_base_is_refused_naming_both(data_dir, tiny_base):
    with pytest.raises(ex.AdapterOfAnotherBase) as e:
        ex.run(export_config(data_dir, base_model="meta-llama/Meta-Llama-3-8B"))
    assert "Meta-Llama-3-8B" in str(e.value) and str(tiny_base) in str(e.value)
    assert not (data_dir / "export").exists()


def test_an_adapter_whose_shapes_do_not_fit_the_base_is_refused(tmp_path, tiny_base):
    cfg = json.loads((tiny_base / "config.json").read_text())
    make_adapter(tiny_base, tmp_path / "models" / "adapter")
    # same folder name (so the name check passes), wider layers: the adapter's A/B shapes do not fit
    wide = tmp_path / "wide" / "tiny-llama"
    wide.mkdir(parents=True)
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg.update(hidden_size=96, intermediate_size=160)
    AutoModelForCausalLM.from_config(LlamaConfig(**{k: v for k, v in cfg.items() if k != "architectures"})) \
        .save_pretrained(str(wide))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (wide / f).write_bytes((tiny_base / f).read_bytes())
    with pytest.raises(ex.AdapterOfAnotherBase, match="does not fit"):
        ex.run(export_config(tmp_path, base_model=str(wide), gguf_types=[]))
    assert not (tmp_path / "export" / "merged").exists()


def test_a_missing_base_says_what_to_pass(tmp_path, tiny_base):
    make_adapter(tiny_base, tmp_path / "models" / "adapter", base_name="someone/not-here")
    log = tmp_path / "models" / "adapter" / "train_log.json"
    data = json.loads(log.read_text())
    data["base_model_path"] = str(tmp_path / "gone")
    log.write_text(json.dumps(data))
    cfg = tmp_path / "models" / "adapter" / "adapter_config.json"
    ac = json.loads(cfg.read_text())
    ac["base_model_name_or_path"] = "someone/not-here"
    cfg.write_text(json.dumps(ac))
    with pytest.raises(ex.MissingBase, match=r"someone/not-here.*base_model="):
        ex.run(export_config(tmp_path))


def test_an_architecture_gguf_cannot_take_is_refused_before_the_merge(tmp_path, tiny_base):
    base = tmp_path / "gpt2ish"
    base.mkdir()
    for f in tiny_base.iterdir():
        (base / f.name).write_bytes(f.read_bytes())
    conf = json.loads((base / "config.json").read_text())
    conf["architectures"] = ["FalconForCausalLM"]
    (base / "config.json").write_text(json.dumps(conf))
    make_adapter(tiny_base, tmp_path / "models" / "adapter", base_name=str(base))
    with pytest.raises(ex.UnsupportedArchitecture) as e:
        ex.run(export_config(tmp_path, base_model=str(base)))
    assert "FalconForCausalLM" in str(e.value) and "convert_hf_to_gguf.py" in str(e.value)
    assert "gguf_types=[]" in str(e.value)
    assert not (tmp_path / "export" / "merged").exists()


def test_llama31_rope_scaling_is_refused_with_the_converter_command(tmp_path, tiny_base):
    base = tmp_path / "rope"
    base.mkdir()
    for f in tiny_base.iterdir():
        (base / f.name).write_bytes(f.read_bytes())
    conf = json.loads((base / "config.json").read_text())
    conf["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}
    (base / "config.json").write_text(json.dumps(conf))
    make_adapter(tiny_base, tmp_path / "models" / "adapter", base_name=str(base))
    with pytest.raises(ex.UnsupportedArchitecture, match="llama3"):
        ex.run(export_config(tmp_path, base_model=str(base)))


def test_no_disk_space_fails_with_the_numbers_and_writes_nothing(data_dir, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(ex.NotEnoughSpace) as e:
        ex.run(export_config(data_dir))
    msg = str(e.value)
    assert "GB are free" in msg and "merged" in msg and "gguf q8_0" in msg and "gguf_types" in msg
    assert not (data_dir / "export" / "merged").exists()


def test_check_room_counts_8b_as_16_gb_and_memory_separately(tmp_path):
    needs = {"merged": 2.0 * 8e9}
    with pytest.raises(ex.NotEnoughSpace, match=r"needs 17\.6 GB \(merged 16\.0 GB, \+10 %\), 10\.0 GB are free"):
        check_room(tmp_path, needs, 0, disk_free=10 * 10**9, memory_free=10**12)
    with pytest.raises(ex.NotEnoughSpace, match=r"merging needs about 16\.0 GB, 8\.0 GB are available"):
        check_room(tmp_path, needs, 16e9, disk_free=10**12, memory_free=8 * 10**9)
    assert check_room(tmp_path, needs, 1e9, disk_free=10**12, memory_free=10**12)["disk_needed_gb"] == 17.6


def test_inputs_record_the_template_and_count_parameters_from_headers(data_dir, tiny_base):
    inputs = gather_inputs(export_config(data_dir))
    assert inputs.template == "alpaca" and inputs.base_path == tiny_base
    from transformers import AutoModelForCausalLM

    n = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(str(tiny_base)).parameters())
    assert inputs.n_params == n
