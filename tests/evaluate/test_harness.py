"""05's general-ability check through lm-evaluation-harness, offline: tasks in lm-eval's own YAML format over local
JSON made here (multiple choice and generation), run by the real harness on base and tuned (the embedded
SmolLM2 with a LoRA adapter), in the template 04 trained with; the verdict logic; resume through lm-eval's cache."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from nbutils import evaluate as ev
from nbutils.evaluate import harness as hz
from nbutils.templates import alpaca_prompt
from tests.support.tiny_base import tiny_base as make_tiny_base

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'lm-eval>=0.4.13')")

COLOURS = [("the sky on a clear day", "blue"), ("fresh grass", "green"), ("a ripe tomato", "red"),
           ("snow", "white"), ("coal", "black"), ("a banana", "yellow")]


def write_local_tasks(folder: Path) -> Path:
    """Two lm-eval tasks over local JSON: `local_mc` (multiple choice, acc) and `local_gen` (generate_until,
    exact_match), as a user would write them for harness_include_path."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [c for _, c in COLOURS]
    mc = [{"question": f"What colour is {thing}?", "choices": names, "label": names.index(colour)}
          for thing, colour in COLOURS]
    gen = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(1, 6)]
    (folder / "mc.json").write_text(json.dumps(mc))
    (folder / "gen.json").write_text(json.dumps(gen))
    (folder / "local_mc.yaml").write_text(f"""task: local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / 'mc.json'}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    (folder / "local_gen.yaml").write_text(f"""task: local_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / 'gen.json'}
test_split: test
output_type: generate_until
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: true
""")
    return folder


ROWS = [{"Instruction": f"What does paper {i} propose?", "Input": "", "Output": f"Method number {i}."}
        for i in range(5)]


def make_adapter(model_dir: Path, out: Path, scale: float = 0.2) -> Path:
    """A LoRA adapter on `model_dir` with random B weights (stands in for 04's), trained with alpaca."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    (out / "train_log.json").write_text(json.dumps({"config": {"template": "alpaca"}}))
    return out


def lm_eval_result(values: dict[str, tuple[float, float]], metric: str = "acc", n: int = 100) -> dict:
    """The shape of simple_evaluate's answer for tasks -> (value, stderr)."""
    return {"results": {t: {"alias": t, f"{metric},none": v, f"{metric}_stderr,none": s}
                        for t, (v, s) in values.items()},
            "higher_is_better": {t: {metric: True} for t in values},
            "n-samples": {t: {"original": n, "effective": n} for t in values}}


def test_a_drop_beyond_the_interval_is_named_and_one_within_it_is_not():
    base = lm_eval_result({"arc_easy": (0.70, 0.02), "hellaswag": (0.50, 0.02)})
    tuned = lm_eval_result({"arc_easy": (0.60, 0.02), "hellaswag": (0.48, 0.02)})
    tasks = hz.compare(base, tuned, 0.95)
    assert tasks["arc_easy"]["dropped"] and not tasks["hellaswag"]["dropped"]
    lo, hi = tasks["hellaswag"]["delta_ci"]
    assert lo < -0.02 < hi and hi - lo == pytest.approx(2 * 1.96 * (2 * 0.02 ** 2) ** 0.5, rel=1e-3)
    line = hz.verdict_line(tasks, 0.95)
    assert "arc_easy (acc 0.700 -> 0.600)" in line and "hellaswag" not in line.split("on ")[1].split(";")[0]
    same = hz.compare(base, base, 0.95)
    assert "no task dropped" in hz.verdict_line(same, 0.95)
    md = hz.harness_markdown({"tasks": tasks, "verdict": line, "lm_eval_version": "0.4.13", "template": "alpaca",
                              "limit": 100, "confidence": 0.95})
    assert "| arc_easy | acc | 100 | 0.7000 ± 0.0200 | 0.6000 ± 0.0200 | -0.1000 |" in md and "**yes**" in md


def test_the_headline_metric_prefers_acc_norm_and_reads_the_none_filter():
    r = {"alias": "x", "acc,none": 0.5, "acc_stderr,none": 0.1, "acc_norm,none": 0.6, "acc_norm_stderr,none": 0.1}
    assert hz.headline(r) == "acc_norm"
    assert hz.metric_value(r, "acc_norm") == (0.6, 0.1)
    assert hz.metric_value({"exact_match,strict-match": 0.3, "exact_match_stderr,strict-match": "N/A"},
                           "exact_match") == (0.3, None)


def test_alpaca_template_renders_lm_evals_turns_as_the_training_prompt():
    msgs = [{"role": "system", "content": "The following are questions about colours."},
            {"role": "user", "content": "Question: What colour is snow?\nAnswer:"}]
    assert hz.alpaca_from_messages(msgs) == alpaca_prompt(
        "The following are questions about colours.\n\nQuestion: What colour is snow?\nAnswer:")
    prefix = hz.alpaca_from_messages(msgs + [{"role": "assistant", "content": "The answer is"}],
                                     add_generation_prompt=False)
    assert prefix.endswith("### Response:\nThe answer is")


@pytest.mark.slow  # the unknown name makes lm-eval index its thousands of task YAMLs (~30 s here)
def test_an_unknown_task_and_a_missing_folder_stop_before_any_work(tmp_path):
    cfg = ev.EvaluateConfig.from_params(profile="demo", data_dir=str(tmp_path), harness_tasks=["local_mc", "local_gen"],
                                    harness_include_path=str(write_local_tasks(tmp_path / "tasks")))
    assert set(hz.prepare_harness(cfg).all_tasks) == {"local_mc", "local_gen"}   # only the folder indexed
    cfg.harness_tasks = ["local_mcq"]
    with pytest.raises(ValueError, match="knows no task.*'local_mcq'.*harness_include_path"):
        hz.prepare_harness(cfg)
    cfg.harness_include_path = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        hz.prepare_harness(cfg)
    assert ev.EvaluateConfig.from_params(profile="demo").harness_tasks == []        # off in demo (no local data)
    assert "arc_easy" in ev.EvaluateConfig.from_params(profile="full").harness_tasks


@pytest.fixture(scope="module")
def tiny_base(embedded_model_path, tmp_path_factory) -> Path:
    return make_tiny_base(tmp_path_factory.mktemp("base") / "tiny-smol", embedded_model_path)


def test_templated_lm_gives_lm_eval_the_training_template(tiny_base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    model = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    turn = [{"role": "user", "content": "Q: What is 2 plus 2?\nA:"}]
    assert hz.make_lm(model, tok, "alpaca", 2).apply_chat_template(turn) == alpaca_prompt(turn[0]["content"])
    chat = hz.make_lm(model, tok, "chat", 2).apply_chat_template(turn)
    assert chat == tok.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)   # what 04 trained on
    assert "<|im_start|>assistant" in chat


@pytest.mark.slow
def test_harness_runs_base_and_tuned_offline_reports_and_resumes(tmp_path, tiny_base, monkeypatch):
    d = tmp_path
    (d / "arxiv_instruction_dataset.json").write_text(json.dumps(ROWS * 4))
    make_adapter(tiny_base, d / "models" / "adapter")
    tasks = write_local_tasks(d / "tasks")
    cfg = ev.EvaluateConfig.from_params(profile="demo", data_dir=str(d), base_model=str(tiny_base), max_examples=2,
                                    max_new_tokens=4, batch_size=2,
                                    n_bootstrap=100, harness_tasks=["local_mc", "local_gen"], harness_limit=4,
                                    harness_include_path=str(tasks))
    model, tok = ev.load_model_with_adapter(cfg, verbose=False)
    first = ev.run(cfg, model=model, tok=tok, verbose=False)
    h = first.report["harness"]
    assert set(h["tasks"]) == {"local_mc", "local_gen"}
    mc, gen = h["tasks"]["local_mc"], h["tasks"]["local_gen"]
    assert (mc["metric"], gen["metric"]) == ("acc", "exact_match") and mc["n"] == gen["n"] == 4
    assert mc["base_stderr"] is not None and 0 <= mc["base"] <= 1 and 0 <= mc["tuned"] <= 1
    assert h["template"] == "alpaca" and first.report["runtime"]["seconds_harness"] > 0
    for variant in ("base", "tuned"):
        raw = json.loads((d / "reports" / "harness" / f"{variant}.json").read_text())
        assert raw["results"]["local_mc"]["acc,none"] == h["tasks"]["local_mc"][variant]
    report = (d / "reports" / "report.md").read_text()
    assert "## General ability (lm-evaluation-harness)" in report and "| local_mc | acc | 4 |" in report
    assert h["verdict"] in report and h["verdict"] in first.summary()
    saved = json.loads((d / "reports" / "metrics.json").read_text())
    assert saved["harness"]["tasks"]["local_gen"]["metric"] == "exact_match"

    # the adapter really is off for the base: lm-eval's loglikelihoods differ between the two variants
    import sqlite3

    cache = d / "cache" / "eval"
    dbs = {p.name.split("-")[1]: p for p in cache.glob("harness-*_rank0.db")}
    assert set(dbs) == {"base", "tuned"}
    rows = {v: dict(sqlite3.connect(p).execute("select key, value from unnamed").fetchall()) for v, p in dbs.items()}
    assert rows["base"].keys() == rows["tuned"].keys() and rows["base"] != rows["tuned"]

    # resume: every request answered from lm-eval's cache, no model call
    from lm_eval.models.huggingface import HFLM

    def refuse(*a, **k):
        raise AssertionError("the model was called again")

    monkeypatch.setattr(HFLM, "loglikelihood", refuse)
    monkeypatch.setattr(HFLM, "generate_until", refuse)
    second = ev.run(cfg, model=model, tok=tok, verbose=False)
    assert second.report["harness"]["tasks"] == h["tasks"]
