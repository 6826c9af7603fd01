"""run(cfg) end to end on a tiny model: every artefact, a rerun that skips what is complete and unchanged, a killed
run that a rerun finishes, a changed adapter that is re-exported, and the card that carries 05's table only when 05
scored this adapter."""
from __future__ import annotations

import json

import pytest

from nbutils import export as ex
from nbutils.export.card import adapter_key, front_matter_of

from .conftest import export_config, make_adapter


def metrics_json(adapter_dir, reports, fingerprint=None):
    reports.mkdir(parents=True, exist_ok=True)
    m = {"base": 0.2, "tuned": 0.3, "delta": 0.1, "delta_ci": [0.05, 0.15], "base_ci": [0.1, 0.3],
         "tuned_ci": [0.2, 0.4], "higher_is_better": True}
    report = {"n_examples": 40, "template": "alpaca", "split": "test", "generation": {"do_sample": False},
              "bootstrap": {"n": 1000, "confidence": 0.95}, "metrics": {"rougeL": m},
              "runtime": {"fingerprint": {"adapter": fingerprint or adapter_key(adapter_dir)}}}
    (reports / "metrics.json").write_text(json.dumps(report))


def test_export_writes_everything_and_a_rerun_skips_it(data_dir):
    metrics_json(data_dir / "models" / "adapter", data_dir / "reports")
    cfg = export_config(data_dir, gguf_types=["f16", "q8_0"], dataset_repo_id="me/arxiv-qa")
    r = ex.run(cfg, verbose=False)
    out = data_dir / "export"
    assert [a["name"] for a in r.artifacts] == ["merged", "gguf f16", "gguf q8_0", "Modelfile", "model card"]
    assert all(a["status"] == "written" for a in r.artifacts)
    name = "tiny-llama-arxiv-lora"
    assert (out / f"{name}-f16.gguf").exists() and (out / f"{name}-q8_0.gguf").exists()
    assert f"FROM ./{name}-q8_0.gguf" in (out / "Modelfile").read_text()
    card = (out / "README.md").read_text()
    meta = front_matter_of(out / "README.md")
    assert meta["library_name"] == "transformers" and meta["datasets"] == ["me/arxiv-qa"]
    assert "gguf" in meta["tags"] and meta["license"] == "other"   # a local base with no card: said so
    assert "| ROUGE-L" in card and "[+0.05, +0.15]" in card and "`lora_r` | `4`" in card
    assert f"ollama create {name} -f Modelfile" in card and str(out) not in card   # commands relative to the repo
    assert any("ollama create" in c for c in r.commands) and "Run it:" in r.summary()
    first_mtime = (out / f"{name}-q8_0.gguf").stat().st_mtime_ns

    again = ex.run(cfg, verbose=False)
    status = {a["name"]: a["status"] for a in again.artifacts}
    assert status["merged"] == status["gguf f16"] == status["gguf q8_0"] == "unchanged"
    assert (out / f"{name}-q8_0.gguf").stat().st_mtime_ns == first_mtime
    assert json.loads((out / "export.json").read_text())["result"]["artifacts"][0]["status"] == "unchanged"


def test_a_killed_export_is_finished_by_the_rerun_without_redoing_the_merge(data_dir, monkeypatch):
    import nbutils.export.gguf as g

    cfg = export_config(data_dir, gguf_types=["q8_0"])
    real = g.write_gguf

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(g, "write_gguf", killed)
    with pytest.raises(KeyboardInterrupt):
        ex.run(cfg, verbose=False)
    assert (data_dir / "export" / "merged").exists() and not list((data_dir / "export").glob("*.gguf"))
    monkeypatch.setattr(g, "write_gguf", real)
    r = ex.run(cfg, verbose=False)
    status = {a["name"]: a["status"] for a in r.artifacts}
    assert status == {"merged": "unchanged", "gguf q8_0": "written", "Modelfile": "written", "model card": "written"}


def test_a_retrained_adapter_is_exported_again_and_the_old_evaluation_is_not_published(data_dir, tiny_base):
    adapter = data_dir / "models" / "adapter"
    metrics_json(adapter, data_dir / "reports")
    cfg = export_config(data_dir, gguf_types=[])
    ex.run(cfg, verbose=False)
    make_adapter(tiny_base, adapter, seed=7)      # 04 ran again: new weights, 05 not rerun
    r = ex.run(cfg, verbose=False)
    assert r.artifact("merged")["status"] == "written"
    card = (data_dir / "export" / "README.md").read_text()
    assert "| ROUGE-L" not in card and "scored another adapter" in card
    assert any("scored another adapter" in n for n in r.notes)


def test_the_command_line_runs_the_export(data_dir, capsys):
    from nbutils.config import stage_main

    assert stage_main(ex.ExportConfig, ex.run, ["--data_dir", str(data_dir), "--gguf_types", "[]", "--ollama",
                                                "false"]) == 0
    out = capsys.readouterr().out
    assert "Export of" in out and "merged (written)" in out and "model card (written)" in out
    assert not (data_dir / "export" / "Modelfile").exists()
