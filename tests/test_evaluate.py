"""05_evaluate: metrics against hand-computed values, the paired bootstrap, batching helpers, the teacher-forced
NLL against the model's own loss, and an end-to-end run from an original-format JSON (deterministic, resumable)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nbutils import evaluate as ev


# ---------------------------------------------------------------- configuration
def test_eval_config_field_defaults_are_the_full_recipe_and_demo_overrides_them():
    full, demo = ev.EvaluateConfig(), ev.EvaluateConfig.from_params(profile="demo")
    assert full.profile == "full" and full.base_model == "meta-llama/Meta-Llama-3-8B"
    assert (full.max_new_tokens, full.batch_size, full.n_bootstrap, full.max_prompt_tokens) == (512, 64, 10000, 2048)
    assert ev.EvaluateConfig.from_params(profile="full").to_dict() == full.to_dict()
    assert demo.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (demo.max_examples, demo.max_new_tokens, demo.batch_size, demo.n_bootstrap, demo.max_prompt_tokens) == (
        12, 40, 12, 1000, 1024)


def test_print_config_parses_values_by_type_and_refuses_a_bad_one(capsys):
    from nbutils.config import stage_main

    assert stage_main(ev.EvaluateConfig, ev.run, ["--print-config", "--do_sample", "True", "--max_new_tokens", "7",
                                              "--load_in_4bit", "none"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert (cfg["do_sample"], cfg["max_new_tokens"], cfg["load_in_4bit"], cfg["profile"]) == (True, 7, None, "demo")
    assert stage_main(ev.EvaluateConfig, ev.run, ["--print-config", "--judge_backend", "grok"]) == 2
    assert "judge_backend='grok'" in capsys.readouterr().err


# ---------------------------------------------------------------- metrics by hand
def test_shipped_rouge_module_loads_offline_and_matches_hand_computed_values():
    import evaluate as hf_evaluate

    rouge = hf_evaluate.load(str(ev.ROUGE_METRIC_DIR))
    out = rouge.compute(predictions=["the cat sat", "a b c", "x y"], references=["the cat sat on the mat", "a b c", "p q"],
                        use_aggregator=False)
    # "the cat sat" vs "the cat sat on the mat": unigrams P=3/3 R=3/6 -> F=2/3; bigrams P=2/2 R=2/5 -> F=4/7;
    # LCS = 3 -> same as ROUGE-1.
    assert out["rouge1"] == pytest.approx([2 / 3, 1.0, 0.0])
    assert out["rouge2"] == pytest.approx([4 / 7, 1.0, 0.0])
    assert out["rougeL"] == pytest.approx([2 / 3, 1.0, 0.0])
    agg = rouge.compute(predictions=["the cat sat", "a b c"], references=["the cat sat on the mat", "a b c"])
    assert agg["rouge1"] == pytest.approx((2 / 3 + 1) / 2)


def test_rouge_scores_uses_stemming():
    s = ev.rouge_scores(["models learned"], ["model learning"])
    assert s["rouge1"] == pytest.approx([1.0])


def test_corpus_bleu_from_summed_stats_equals_sacrebleu():
    import sacrebleu

    hyps = ["the cat is on the mat", "there is a dog in the garden today", "completely unrelated words"]
    refs = ["the cat sat on the mat", "a dog is in the garden today", "nothing in common here"]
    stats = ev.bleu_stats(hyps, refs)
    assert stats.shape == (3, 10)
    ours = ev.corpus_bleu_from_stats(stats.sum(0))[0]
    assert ours == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert ev.corpus_bleu_from_stats(ev.bleu_stats(["a b c d e"], ["a b c d e"]).sum(0))[0] == pytest.approx(100.0)
    # a subset's summed stats give that subset's corpus BLEU (what the bootstrap relies on)
    assert ev.corpus_bleu_from_stats(stats[:2].sum(0))[0] == pytest.approx(
        sacrebleu.corpus_bleu(hyps[:2], [refs[:2]]).score)


# ---------------------------------------------------------------- bootstrap
def test_paired_bootstrap_ci_contains_true_difference_and_is_not_degenerate():
    rng = np.random.default_rng(0)
    n, true_delta = 400, 0.05
    base = rng.uniform(0.1, 0.6, n)                     # examples differ a lot in difficulty...
    tuned = base + true_delta + rng.normal(0, 0.05, n)  # ...the paired difference is what matters
    out = ev.paired_bootstrap([ev.mean_spec("score", base, tuned)], n_boot=2000, seed=1)["score"]
    lo, hi = out["delta_ci"]
    assert lo < true_delta < hi
    assert 0.002 < hi - lo < 0.03                       # paired: far narrower than the per-model spread
    assert out["delta"] == pytest.approx(float(np.mean(tuned - base)))
    assert out["p_not_better"] < 0.01
    b_lo, b_hi = out["base_ci"]
    assert b_lo < base.mean() < b_hi and b_hi - b_lo > hi - lo
    again = ev.paired_bootstrap([ev.mean_spec("score", base, tuned)], n_boot=2000, seed=1)["score"]
    assert again == out                                 # seeded


def test_paired_bootstrap_no_difference_gives_ci_around_zero():
    rng = np.random.default_rng(3)
    base = rng.uniform(0, 1, 300)
    tuned = base + rng.normal(0, 0.1, 300)
    lo, hi = ev.paired_bootstrap([ev.mean_spec("s", base, tuned)], n_boot=1000, seed=2)["s"]["delta_ci"]
    assert lo < 0 < hi


def test_ratio_spec_bootstraps_token_weighted_nll():
    rng = np.random.default_rng(5)
    ntok = rng.integers(5, 50, 300).astype(float)
    base_nll = ntok * rng.normal(2.0, 0.2, 300)
    tuned_nll = ntok * rng.normal(1.5, 0.2, 300)
    m = ev.paired_bootstrap([ev.ratio_spec("nll", base_nll, ntok, tuned_nll, ntok)], n_boot=1000, seed=0)["nll"]
    assert m["base"] == pytest.approx(base_nll.sum() / ntok.sum())
    lo, hi = m["delta_ci"]
    assert lo < -0.5 + 0.05 and hi > -0.5 - 0.05 and hi < 0          # true difference -0.5, clearly lower
    assert m["p_not_better"] == 0.0                                  # lower is better for NLL


# ---------------------------------------------------------------- batching helpers
def test_left_pad_and_stop_handling():
    ids, mask = ev.left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert ev.cut_at_stop([4, 9, 2, 2, 2], [2]) == ([4, 9], True)
    assert ev.cut_at_stop([4, 9, 3], [2]) == ([4, 9, 3], False)
    batches = ev.length_sorted_batches([3, 10, 1, 9, 4], batch_size=2)
    assert batches == [[1, 3], [4, 0], [2]]


def test_clean_answer_cuts_the_next_alpaca_section():
    assert ev.clean_answer(" It works.\n\n### Instruction:\nNext one") == "It works."
    assert ev.clean_answer("plain answer  ") == "plain answer"


def test_prediction_cache_survives_a_torn_line(tmp_path):
    path = tmp_path / "c.jsonl"
    c = ev.PredictionCache(path)
    c.add([{"key": "a", "text": "x"}])
    with open(path, "a") as f:
        f.write('{"key": "b", "te')                      # a killed writer
    c2 = ev.PredictionCache(path)
    assert c2.get("a")["text"] == "x" and c2.get("b") is None
    c2.add([{"key": "b", "text": "y"}])
    assert ev.PredictionCache(path).get("b")["text"] == "y"


# ---------------------------------------------------------------- with the embedded model
@pytest.fixture(scope="module")
def small_lm(embedded_model_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_model_path)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(embedded_model_path, dtype=torch.float32).eval()
    return model, tok


def test_reference_nll_matches_the_models_own_loss(small_lm):
    import torch

    model, tok = small_lm
    prompts = ["### Instruction:\nName a colour.\n\n### Response:\n", "Q: What is two plus two, exactly?\nA:"]
    refs = ["Blue is a colour.", "Four."]
    nll, ntok = ev.reference_nll(model, tok, prompts, refs, batch_size=2)
    for p, r, got, n in zip(prompts, refs, nll, ntok):
        p_ids = tok(p)["input_ids"]
        a_ids = tok(r, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + a_ids])
        labels = ids.clone()
        labels[0, :len(p_ids)] = -100
        with torch.inference_mode():
            loss = model(input_ids=ids, labels=labels).loss.item()  # mean over the answer tokens
        assert n == len(a_ids)
        assert got / n == pytest.approx(loss, rel=1e-4, abs=1e-4)


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


def test_references_from_the_original_json_come_without_its_wrapping_quotes_and_trailing_markup(tmp_path, capsys):
    rows = [{"Instruction": f'"What is claim {i}?"', "Input": "", "Output": f'"Claim {i} holds."\n\n**'}
            for i in range(10)]
    (tmp_path / "arxiv_instruction_dataset.json").write_text(json.dumps(rows))
    examples = ev.load_eval_examples(ev.EvaluateConfig.from_params(profile="demo", data_dir=str(tmp_path)))
    assert "cleaned 20 of 30 fields" in capsys.readouterr().out
    numbers = [e["instruction"].split()[-1].rstrip("?") for e in examples]
    assert [e["output"] for e in examples] == [f"Claim {n} holds." for n in numbers]
    assert all(not e["instruction"].startswith('"') for e in examples)


# ---------------------------------------------------------------- LLM-as-judge through nbutils.llm backends
class ScriptedJudge:
    """A Backend (nbutils.llm protocol) whose verdict is a function of the prompt; counts its calls."""

    name, model, supports_json_mode, batch_size = "scripted", "judge-1", False, 1

    def __init__(self, decide):
        self.decide, self.calls = decide, 0

    def complete(self, messages, *, max_tokens=512, temperature=0.0, json_mode=False):
        from nbutils.llm import Completion

        self.calls += 1
        return Completion(text=self.decide(messages[-1]["content"]))


def _answer(prompt: str, letter: str) -> str:
    return prompt.split(f"Answer {letter}:\n", 1)[1].split("\n\n", 1)[0]


def test_judge_asks_both_orders_and_scores_the_tuned_preference(tmp_path):
    rows = [{"id": i, "instruction": f"q{i}", "input": ""} for i in range(4)]
    refs = [f"right answer {i}" for i in range(4)]
    base, tuned = [f"wrong {i}" for i in range(4)], list(refs)
    # a fair judge: picks the answer equal to the reference, wherever it stands
    fair = ScriptedJudge(lambda p: "A" if _answer(p, "A") == p.split("Reference answer:\n")[1].split("\n\n")[0] else "B")
    judged = ev.judge_pairwise(rows, refs, base, tuned, fair, tmp_path / "judge.jsonl", workers=1)
    assert fair.calls == 8                                    # two orders per example
    assert [j["tuned_pref"] for j in judged] == [1.0] * 4 and all(j["consistent"] for j in judged)
    m = ev.judge_metrics(judged, n_boot=200, seed=0, confidence=0.95)["judge_preference"]
    assert m["tuned"] == 1.0 and m["base"] == 0.0 and m["order_consistency"] == 1.0
    # a position-biased judge (always "A") cancels out: no preference, never order-consistent
    biased = ScriptedJudge(lambda p: "A")
    judged = ev.judge_pairwise(rows, refs, base, tuned, biased, tmp_path / "biased.jsonl", workers=1)
    assert [j["tuned_pref"] for j in judged] == [0.5] * 4 and not any(j["consistent"] for j in judged)
    # verdicts are cached: a rerun makes no call
    again = ScriptedJudge(lambda p: "B")
    assert ev.judge_pairwise(rows, refs, base, tuned, again, tmp_path / "judge.jsonl", workers=1) is not None
    assert again.calls == 0


def test_parse_verdict():
    assert ev.parse_verdict("B") == "B"
    assert ev.parse_verdict("Answer A is better.") == "A"
    assert ev.parse_verdict("tie") == "TIE"
    assert ev.parse_verdict("neither") is None


# ---------------------------------------------------------------- the adapter must fit the named base (issue 17, 9)
def tiny_llama(folder: Path, hidden: int) -> Path:
    """A one-layer random Llama saved as a Hugging Face folder (a stand-in base model, no tokenizer needed)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def tiny_adapter(base_dir: Path, out: Path, recorded_base: str | None = None) -> Path:
    """A LoRA adapter trained (= initialised) on `base_dir`, with 04's train_log.json naming its base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    get_peft_model(model, lora).save_pretrained(out)
    name = recorded_base or str(base_dir)
    (out / "train_log.json").write_text(json.dumps({"base_model": name, "base_model_path": str(base_dir),
                                                    "config": {"template": "alpaca"}}))
    return out


def test_an_adapter_trained_on_another_base_is_refused_naming_both(tmp_path):
    trained = tiny_llama(tmp_path / "org" / "tiny-base", 32)
    other = tiny_llama(tmp_path / "other" / "tiny-instruct", 32)   # same shapes: PEFT alone would load it
    adapter = tiny_adapter(trained, tmp_path / "adapter")
    cfg = ev.EvaluateConfig.from_params(profile="demo", data_dir=str(tmp_path), base_model=str(other),
                                    adapter_dir=str(adapter))
    with pytest.raises(ev.AdapterBaseMismatch, match="was trained on") as e:
        ev.load_model_with_adapter(cfg, verbose=False)
    assert str(trained) in str(e.value) and str(other) in str(e.value)
    # the same base under another name (a hub id vs its local copy, a moved data_dir) is accepted
    cfg.base_model = str(trained)
    model, _ = load_without_tokenizer(cfg)
    assert model.active_adapter == "default"


def test_an_adapter_whose_shapes_do_not_fit_gets_a_clear_message_not_a_size_mismatch_dump(tmp_path):
    trained = tiny_llama(tmp_path / "a" / "tiny", 32)
    wider = tiny_llama(tmp_path / "b" / "tiny", 48)          # same folder name, other shapes
    adapter = tiny_adapter(trained, tmp_path / "adapter")
    cfg = ev.EvaluateConfig.from_params(profile="demo", data_dir=str(tmp_path), base_model=str(wider),
                                    adapter_dir=str(adapter))
    with pytest.raises(ev.AdapterBaseMismatch, match="does not fit base_model") as e:
        load_without_tokenizer(cfg)
    msg = str(e.value)
    assert str(wider) in msg and str(trained) in msg and msg.count("size mismatch") <= 1


def load_without_tokenizer(cfg):
    """load_model_with_adapter for the tiny bases, which ship no tokenizer (the check happens before it)."""
    from unittest import mock

    with mock.patch("nbutils.evaluate.model.load_tokenizer_for_eval", return_value=None):
        return ev.load_model_with_adapter(cfg, verbose=False)
