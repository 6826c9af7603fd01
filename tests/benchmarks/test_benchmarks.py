"""benchmarks/ as a package: every script imports (no circle), the finetune cases are the stage's own config, and
the CPU-capable benchmarks run end to end at a tiny size and report what they measured."""
from __future__ import annotations

import dataclasses
import importlib
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULES = ["common", "finetune_speed", "finetune_check", "finetune_kernels", "finetune_fsdp", "generation_speed",
           "generate_speed", "generate_local", "parse_speed", "make_corpus", "unsloth_case", "cheap_draws",
           "judge_grounding", "batch_resume", "finetune_workloads", "quality", "export_roundtrip",
           "export_gpu", "harness_cost", "tracking_overhead"]


def test_every_script_is_in_the_package_and_imports_alone():
    """Each benchmark imports first, on its own (every benchmarks module dropped between them, so an import circle
    fails here whichever module it starts from); unsloth_case against a stand-in `unsloth` (Unsloth itself lives only
    in its own site folder on the GPU machine)."""
    on_disk = {p.stem for p in (REPO / "benchmarks").glob("*.py")} - {"__init__"}
    assert on_disk == set(MODULES)
    code = ("import importlib, sys, types\n"
            "sys.modules['unsloth'] = types.SimpleNamespace(FastLanguageModel=object)\n"
            f"for name in {MODULES!r}:\n"
            "    for m in [m for m in sys.modules if m == 'benchmarks' or m.startswith('benchmarks.')]:\n"
            "        del sys.modules[m]\n"
            "    importlib.import_module('benchmarks.' + name)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_finetune_cases_are_the_stages_own_config():
    """Every case is FinetuneConfig.from_params arguments plus the benchmark's documented keys; the original recipe
    is the stage's `original` profile, not a copy of its knobs."""
    from benchmarks.finetune_speed import BENCH_KEYS, CASES, split_case
    from nbutils.finetune import FinetuneConfig

    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    for name, case in CASES.items():
        params, bench = split_case(case)
        assert set(params) - {"profile"} <= fields, f"{name}: {set(params) - fields - {'profile'}}"
        assert set(bench) <= set(BENCH_KEYS)
        cfg = FinetuneConfig.from_params(**{"profile": "full", **params})   # values the stage accepts
        assert cfg.lora_dropout == case.get("lora_dropout", cfg.lora_dropout)
    assert CASES["original"]["profile"] == "original"
    original = FinetuneConfig.from_params(profile="original")
    assert (original.fuse_lora, original.packing, original.upcast_non_quantized) == (False, False, True)


def test_finetune_check_on_cpu_shows_packed_samples_isolated(tmp_path):
    from benchmarks import finetune_check

    out = tmp_path / "check.json"
    assert finetune_check.main(["--cpu", "--json", str(out)]) == 0
    import json

    res = json.loads(out.read_text())
    assert res["device"] == "cpu"
    assert res["sdpa_packed_vs_alone_max_abs_diff"] < 1e-4 < res["sdpa_concat_vs_alone_max_abs_diff"]


def test_generation_loop_on_cpu_at_tiny_size(tmp_path):
    """The original's one-at-a-time loop vs the batched path on a tiny random model: every variant generates the
    forced number of tokens and the speed-up is reported."""
    from benchmarks import common, generation_speed

    common.build_random_model("tiny", "cpu", tmp_path / "tiny")
    res = generation_speed.main(["loop", "--model", str(tmp_path / "tiny"), "--n-prompts", "4", "--original-n", "2",
                                 "--max-new-tokens", "3", "--batch-size", "2", "--min-prompt-len", "4",
                                 "--max-prompt-len", "9", "--lora-r", "2", "--threads", "1",
                                 "--json", str(tmp_path / "gen.json")])
    assert res["original"]["tokens"] == 2 * 3 and res["ours"]["tokens"] == 4 * 3
    assert res["ours"]["speedup_vs_original"] > 0
    assert (tmp_path / "gen.json").exists()


def test_parse_speed_on_two_small_papers(tmp_path, capsys):
    from benchmarks import parse_speed

    rows = parse_speed.main(["--corpus", str(tmp_path / "corpus"), "--papers", "2", "--pages", "4", "--repeat", "1",
                             "--workers", "1", "--skip-pypdf-variant"])
    (row,) = rows
    assert row["pages"] >= 4 and row["ours_pps"] > 0
    assert row["ours_quality"]["body_recall"] > 0.9
    assert "speed-up" in capsys.readouterr().out


def test_generate_speed_against_the_fake_server(tmp_path):
    """03's stage vs the original sequential loop against the local rate-limited fake server: all pages done, a
    rerun makes no calls."""
    from benchmarks import generate_speed

    out = generate_speed.main(["--pages", "6", "--baseline-pages", "2", "--latency", "0.05", "--rpm", "6000",
                               "--json", str(tmp_path / "g.json")])
    assert out["failed_pages"] == 0 and out["rerun_calls"] == 0 and out["speedup"] > 0


def test_unsloth_case_reads_the_shared_helpers(monkeypatch):
    monkeypatch.setitem(sys.modules, "unsloth", types.SimpleNamespace(FastLanguageModel=object))
    mod = importlib.import_module("benchmarks.unsloth_case")
    assert mod.TARGETS == importlib.import_module("nbutils.finetune.config").LORA_TARGETS
    assert pytest.raises(SystemExit, mod.main, ["--help"])


def test_judge_grounding_reports_calls_per_kept_triple_and_separation(tmp_path):
    """Issue 21's benchmark at a tiny size: the judge's calls per page vs per triple against the fake server, and
    (where the paperqa data set is there) the grounding score's AUC on swapped answers."""
    import json

    from benchmarks import judge_grounding

    out = tmp_path / "cost.json"
    assert judge_grounding.main(["--out", str(out), "judge-cost", "--pages", "3", "--words", "120"]) == 0
    cost = json.loads(out.read_text())
    assert cost["page"]["judge_calls"] == 3 and cost["triple"]["judge_calls"] == cost["triple"]["triples_parsed"] == 9
    assert cost["page"]["rerun_calls"] == 0 and cost["page"]["judge_tokens_per_kept_triple"] > 0
    if not judge_grounding.PAPERQA.exists():
        pytest.skip(f"no paperqa data set at {judge_grounding.PAPERQA}")
    out = tmp_path / "grounding.json"
    assert judge_grounding.main(["--out", str(out), "grounding", "--limit", "60"]) == 0
    res = json.loads(out.read_text())["paperqa"]["computer_vision"]
    assert res["n_true"] == 60 and res["idf"]["auc"] > 0.8 and res["idf"]["true_kept"] >= 0.95


@pytest.mark.slow
def test_batch_resume_kills_and_reruns_without_duplicates_or_losses():
    """Issue 21's batch benchmark at a tiny size: killed while waiting and between create and its reply, 0
    duplicates and 0 lost pages; the contrast without state files pays for every page twice."""
    from benchmarks import batch_resume

    rows = {r["kind"]: r for r in batch_resume.main(["--pages", "6", "--trials", "0"])}
    for kind in ("waiting", "create"):
        assert rows[kind]["duplicates"] == rows[kind]["lost_pages"] == rows[kind]["lost_judge"] == 0
        assert rows[kind]["resumed"] == 1
    assert rows["no-state"]["duplicates"] == 6


def test_tracking_overhead_times_each_integrations_log_call(tmp_path, embedded_model_path):
    """Issue 23's tracking benchmark at its smallest: every installed tracker's on_log timed after its set-up, and
    its share of a step reported."""
    # its own process, as it is run: the trackers keep process-wide state (W&B's settings, MLflow's experiment)
    out = subprocess.run([sys.executable, "-m", "benchmarks.tracking_overhead", "--cases", "", "--on-log-calls", "5",
                          "--tokenizer", str(embedded_model_path), "--out", str(tmp_path / "t.json")],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads((tmp_path / "t.json").read_text())
    assert res["on_log_ms"] and all(v > 0 for v in res["on_log_ms"].values())
    assert set(res["on_log_share_pct"]) == set(res["on_log_ms"]) and (tmp_path / "t.json").exists()


@pytest.mark.slow
def test_harness_cost_on_cpu_at_tiny_size(tmp_path, embedded_model_path):
    """Issue 23's harness benchmark on a tiny random model: 05 alone, then the lm-eval check on the same model, and
    the share it adds."""
    pytest.importorskip("lm_eval")
    from benchmarks import harness_cost

    res = harness_cost.main(["--tokenizer", str(embedded_model_path), "--examples", "2", "--max-new-tokens", "4",
                             "--task-scale", "0.02", "--out", str(tmp_path / "h.json")])
    assert res["at_cap"]["seconds_05_without_harness"] > 0 and res["seconds_harness"] > 0
    assert set(res["harness_tasks"]) == {"arc_like", "hellaswag_like", "mmlu_ml_like", "mmlu_ccs_like"}
    assert res["at_cap"]["added_pct"] > 0 and (tmp_path / "h.json").exists()
