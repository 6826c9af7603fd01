"""05_evaluate end to end (nbutils.evaluate.stage): a run from an original-format JSON is deterministic and
resumable, and a missing adapter is a clear error."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from nbutils import evaluate as ev


# ---------------------------------------------------------------- with the embedded model
def make_adapter(model_dir: Path, out: Path, seed: int = 0, scale: float = 0.05) -> Path:
    """A LoRA adapter on the embedded model with small random B weights (a stand-in for stage 04's output)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    (out / "train_log.json").write_text(json.dumps({"config": {"template": "alpaca"}}))
    return out


ORIGINAL_ROWS = [
    {"Instruction": "What does the paper propose?", "Input": "We propose a sparse attention method for long documents.",
     "Output": "It proposes a sparse attention method for long documents."},
    {"Instruction": "Summarise the main result.", "Input": "",
     "Output": "The method halves memory use while keeping accuracy."},
    {"Instruction": "Which dataset is used?", "Input": "Experiments use arXiv abstracts from 2020 to 2023.",
     "Output": "arXiv abstracts from 2020 to 2023."},
    {"Instruction": "What is LoRA?", "Input": "", "Output": "A low-rank adapter method for fine-tuning large models."},
    {"Instruction": "Name one limitation.", "Input": "The approach needs labelled data.",
     "Output": "It needs labelled data."},
]


@pytest.mark.slow
def test_original_json_end_to_end_is_deterministic_and_resumable(data_dir_with_model, embedded_model_path):
    d = data_dir_with_model
    (d / "arxiv_instruction_dataset.json").write_text(json.dumps(ORIGINAL_ROWS * 4))  # 20 rows -> 4 test rows
    make_adapter(embedded_model_path, d / "models" / "adapter")
    params = dict(max_examples=3, max_new_tokens=8, batch_size=2, n_bootstrap=200, threads=1)
    import torch

    threads = torch.get_num_threads()
    try:
        check_end_to_end(d, params)
    finally:
        torch.set_num_threads(threads)   # threads=1 is global to the process: give the other tests theirs back


def check_end_to_end(d: Path, params: dict) -> None:
    cfg = ev.EvaluateConfig.from_params(profile="demo", data_dir=str(d), **params)
    first = ev.run(cfg, verbose=False)   # loading the model itself (the CLI's path)
    reports = d / "reports"
    for name in ("metrics.json", "predictions.jsonl", "metrics_ci.png", "deltas_hist.png", "report.md"):
        assert (reports / name).stat().st_size > 0, name
    preds1 = (reports / "predictions.jsonl").read_text()
    rows = [json.loads(x) for x in preds1.splitlines()]
    assert len(rows) == 3 and first.report["n_examples"] == 3
    assert json.loads((reports / "metrics.json").read_text()) == json.loads(json.dumps(first.report, default=str))
    assert all({"prompt", "reference", "base", "tuned", "scores"} <= set(r) for r in rows)
    assert rows[0]["prompt"].startswith("Below is an instruction") and "### Response:" in rows[0]["prompt"]
    m = first.metrics
    assert set(m) >= {"rouge1", "rouge2", "rougeL", "bleu", "ref_nll", "ref_perplexity", "answer_words"}
    # the adapter really is switched off for the base model and on for the tuned one
    assert m["ref_nll"]["base"] != pytest.approx(m["ref_nll"]["tuned"], abs=1e-6)
    assert all(r["scores"]["base"]["new_tokens"] <= 8 for r in rows)
    report = (reports / "report.md").read_text()
    assert "| ROUGE-L F1 |" in report and "Largest gains" in report
    assert "(plain engine)" in report and first.report["generation"]["engine"]["path"] == "plain"   # CPU: plain

    table = first.table()
    assert list(table["metric"][:3]) == ["ROUGE-1 F1", "ROUGE-2 F1", "ROUGE-L F1"]
    assert {"base", "tuned", "delta", "delta_ci_low", "delta_ci_high", "tuned_better"} <= set(table.columns)
    assert "3 test examples" in first.summary() and "ROUGE-L F1" in first.summary()

    # resume: a second run reuses every cached prediction (no generate call at all); one model load for both
    # (the notebook's path: the model is loaded in its own cell and passed in)
    from nbutils.decoding.engine import Session

    model, tok = ev.load_model_with_adapter(cfg, verbose=False)
    calls = []
    real = Session.generate
    Session.generate = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        ev.run(cfg, model=model, tok=tok, verbose=False)
    finally:
        Session.generate = real
    assert calls == []
    assert (reports / "predictions.jsonl").read_text() == preds1

    # determinism: regenerate everything from scratch -> identical files
    cfg.resume = False
    second = ev.run(cfg, model=model, tok=tok, verbose=False)
    assert (reports / "predictions.jsonl").read_text() == preds1
    assert second.metrics == first.metrics


def test_missing_adapter_is_a_clear_error(tmp_path):
    (tmp_path / "arxiv_instruction_dataset.json").write_text(json.dumps(ORIGINAL_ROWS))
    with pytest.raises(FileNotFoundError, match="04_finetune"):
        ev.run(ev.EvaluateConfig.from_params(profile="demo", data_dir=str(tmp_path)), verbose=False)
