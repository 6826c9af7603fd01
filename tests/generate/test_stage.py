"""Stage 03 end to end against a loopback Groq-compatible server (real groq client), cache/resume, outputs."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nbutils.generate import BUILTIN_PROMPTS, GenerateConfig, load_cache, load_prompt, run
from nbutils.io import PROJECT_ROOT, read_json, read_jsonl, write_jsonl
from tests.support.fake_llm_server import FakeLLMServer

N_PAPERS, PAGES_PER_PAPER = 5, 4


def make_pages(data_dir: Path, n_papers=N_PAPERS, pages=PAGES_PER_PAPER, seed=0) -> list[dict]:
    rng = random.Random(seed)
    vocab = [f"term{i}" for i in range(5000)]
    rows = [{"paper_id": f"2405.{p:05d}v1", "page": pg, "chunk": 0,
             "text": " ".join(rng.choice(vocab) for _ in range(80)), "n_chars": 0, "removed": {},
             "source_sha256": ""} for p in range(n_papers) for pg in range(1, pages + 1)]
    write_jsonl(data_dir / "pages.jsonl", rows)
    return rows


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("GROQ_API_KEY", "gsk_test_not_a_real_key")
    monkeypatch.delenv("GROQ_BASE_URL", raising=False)
    make_pages(tmp_path)
    return tmp_path


def cfg_for(data_dir, srv, **kw):
    params = dict(base_url=srv.url, rpm=0, tpm=0, workers=4, max_attempts=3, window_chars=0,
                  judge=False)   # generation alone here; the judge: tests/generate/test_judge.py
    params.update(kw)
    return GenerateConfig.from_params(profile="full", data_dir=str(data_dir), **params)


def test_outputs_follow_the_contract_and_split_by_paper(env):
    with FakeLLMServer() as srv:
        res = run(cfg_for(env, srv, test_size=0.4, prices={"llama-3.3-70b-versatile": (1.0, 2.0)}))
    triples = list(read_jsonl(env / "triples.jsonl"))
    assert len(triples) == N_PAPERS * PAGES_PER_PAPER * 3 == res.triples_kept
    assert set(triples[0]) >= {"paper_id", "page", "chunk", "instruction", "input", "output", "model",
                               "prompt_version", "cache_key", "prompt_tokens", "completion_tokens"}
    assert triples[0]["prompt_version"] == BUILTIN_PROMPTS["original"].version
    assert triples[0]["model"] == "llama-3.3-70b-versatile"
    original = read_json(env / "arxiv_instruction_dataset.json")
    assert len(original) == len(triples) and set(original[0]) == {"Instruction", "Input", "Output"}
    from datasets import load_from_disk
    dd = load_from_disk(str(env / "dataset"))
    train, test = set(dd["train"]["paper_id"]), set(dd["test"]["paper_id"])
    assert train and test and not train & test and len(train | test) == N_PAPERS
    assert len(dd["train"]) + len(dd["test"]) == len(triples)
    # accounting: tokens per call summed, cost from the price table
    assert res.run_prompt_tokens > 0 and res.run_completion_tokens > 0
    assert res.run_cost_usd == pytest.approx((res.run_prompt_tokens + 2 * res.run_completion_tokens) / 1e6)
    assert res.triples_per_page == pytest.approx(3.0)
    report = read_json(env / "generate_report.json")
    assert report["triples_kept"] == len(triples) and report["calls"] == N_PAPERS * PAGES_PER_PAPER


def test_rerun_reparses_from_cache_with_zero_calls(env):
    with FakeLLMServer() as srv:
        cfg = cfg_for(env, srv)
        run(cfg)
        first = (env / "triples.jsonl").read_bytes()
        calls = srv.count()
        res = run(cfg)
        assert srv.count() == calls
    assert res.calls == 0 and res.pages_cached == N_PAPERS * PAGES_PER_PAPER
    assert (env / "triples.jsonl").read_bytes() == first


def test_rerun_needs_no_key_when_everything_is_cached(env, monkeypatch):
    with FakeLLMServer() as srv:
        cfg = cfg_for(env, srv)
        run(cfg)
    monkeypatch.delenv("GROQ_API_KEY")
    assert run(cfg).triples_kept == N_PAPERS * PAGES_PER_PAPER * 3


def test_page_failing_for_good_is_recorded_and_retried_next_run(env):
    with FakeLLMServer(script=[{"status": 500, "message": "overloaded"}] * 3) as srv:
        cfg = cfg_for(env, srv, workers=1, max_attempts=3)
        res = run(cfg)
        assert len(res.pages_failed) == 1
        failed = res.pages_failed[0]
        assert failed["paper_id"] == "2405.00000v1" and failed["page"] == 1
        assert "server HTTP 500" in failed["error"] and failed["attempts"] == 3
        assert res.triples_kept == (N_PAPERS * PAGES_PER_PAPER - 1) * 3
        before = srv.count()
        res2 = run(cfg)
        assert srv.count() == before + 1 and not res2.pages_failed
        assert res2.triples_kept == N_PAPERS * PAGES_PER_PAPER * 3


def test_refusals_and_echoes_are_counted_not_kept(env):
    replies = iter(["Please provide the text you want triples for.",
                    "I'm sorry, I cannot help with that.",
                    "Triple 1:\nInstruction: [instruction]\nInput: [input]\nOutput: [output]"])

    def reply(body):
        try:
            return next(replies)
        except StopIteration:
            from tests.support.fake_llm_server import default_reply
            return default_reply(body)

    with FakeLLMServer(reply=reply) as srv:
        res = run(cfg_for(env, srv, workers=1))
    assert res.replies_without_triples == {"asks_for_text": 1, "refusal": 1, "template_echo": 1}
    assert res.triples_kept == (N_PAPERS * PAGES_PER_PAPER - 3) * 3


def test_near_duplicates_across_pages_are_dropped_and_counted(env):
    def reply(body):
        return ("Triple 1:\nInstruction: Summarise the key idea of this page in one sentence.\nInput: \n"
                "Output: " + body["messages"][-1]["content"][-60:])

    with FakeLLMServer(reply=reply) as srv:
        res = run(cfg_for(env, srv))
    assert res.triples_kept == 1
    assert res.drops == {"near_duplicate_instruction": N_PAPERS * PAGES_PER_PAPER - 1}


def test_json_mode_sends_response_format_and_validates(env):
    def reply(body):
        words = body["messages"][-1]["content"].split()[-20:]
        return json.dumps({"triples": [{"instruction": f"Explain {' '.join(words[i:i + 5])}.", "input": "",
                                        "output": " ".join(words[i + 5:i + 10])} for i in (0, 10)]})

    with FakeLLMServer(reply=reply) as srv:
        res = run(cfg_for(env, srv, prompt="json"))
        assert all(r["response_format"] == {"type": "json_object"} for r in srv.requests)
    assert res.triples_kept == N_PAPERS * PAGES_PER_PAPER * 2
    assert res.prompt_version.startswith("json@")


def test_prompt_file_overrides_the_template_and_its_version(env, tmp_path):
    pf = tmp_path / "my_prompt_v2.txt"
    pf.write_text("Write triples in the Triple N format.\n\nText:\n{text}")
    with FakeLLMServer() as srv:
        run(cfg_for(env, srv))
        base = srv.count()
        res = run(cfg_for(env, srv, prompt_file=str(pf)))
        assert srv.count() == base + N_PAPERS * PAGES_PER_PAPER     # a new prompt is a new cache key
    assert res.prompt_version.startswith("my_prompt_v2@")
    assert {t["prompt_version"] for t in read_jsonl(env / "triples.jsonl")} == {res.prompt_version}
    bad = tmp_path / "bad.txt"
    bad.write_text("no placeholder here")
    with pytest.raises(ValueError, match="placeholder"):
        load_prompt(prompt_file=str(bad))


def test_torn_cache_tail_is_repaired_and_only_that_page_recalled(env):
    with FakeLLMServer() as srv:
        cfg = cfg_for(env, srv)
        run(cfg)
        lines = cfg.cache_path.read_text().splitlines(keepends=True)
        cfg.cache_path.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])   # killed mid-write
        before = srv.count()
        res = run(cfg)
        assert srv.count() == before + 1
    assert res.triples_kept == N_PAPERS * PAGES_PER_PAPER * 3
    assert len(load_cache(cfg.cache_path)) == N_PAPERS * PAGES_PER_PAPER


KILL_SCRIPT = """
import sys
from nbutils.generate import GenerateConfig, run
cfg = GenerateConfig.from_params(profile="full", data_dir=sys.argv[1], base_url=sys.argv[2], rpm=0, tpm=0, workers=2,
                                 judge=False)
run(cfg)
"""


def test_killed_run_resumes_without_loss_or_duplicates(env):
    make_pages(env, n_papers=6, pages=5)
    n_pages = 30
    with FakeLLMServer(latency_s=0.15) as srv:
        cfg = cfg_for(env, srv, workers=2)
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(env), srv.url], cwd=PROJECT_ROOT,
                                env={**os.environ, "TQDM_DISABLE": "1"}, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not cfg.cache_path.exists() or
                                               len(cfg.cache_path.read_text().splitlines()) < 8):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        cached_at_kill = len(load_cache(cfg.cache_path))
        assert 8 <= cached_at_kill < n_pages and not (env / "triples.jsonl").exists()
        calls_before = srv.count()
        res = run(cfg)
        # only the missing pages (plus what was in flight at the kill) were requested again
        assert srv.count() - calls_before == n_pages - cached_at_kill
        assert calls_before <= cached_at_kill + 2 + 1
    triples = list(read_jsonl(env / "triples.jsonl"))
    keys = [(t["paper_id"], t["page"], t["instruction"]) for t in triples]
    assert len(keys) == len(set(keys)) == n_pages * 3 == res.triples_kept
    assert {(t["paper_id"], t["page"]) for t in triples} == {(f"2405.{p:05d}v1", pg) for p in range(6)
                                                            for pg in range(1, 6)}
    cache_keys = [r["key"] for r in read_jsonl(cfg.cache_path)]
    assert len(cache_keys) == len(set(cache_keys)) == n_pages


def test_missing_pages_file_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="02_parse"):
        run(GenerateConfig.from_params(profile="full", data_dir=str(tmp_path)))


@pytest.mark.slow
def test_local_backend_generates_with_the_embedded_model(data_dir_with_model):
    make_pages(data_dir_with_model, n_papers=2, pages=1)
    cfg = GenerateConfig.from_params(profile="demo", data_dir=str(data_dir_with_model), max_tokens=16,
                                     batch_size=2, threads=1)
    import torch
    threads = torch.get_num_threads()
    try:
        res = run(cfg)          # threads=1 keeps it fast on a busy 2-core box
    finally:
        torch.set_num_threads(threads)   # do not leak into other tests of the session
    assert res.calls == 2 and not res.pages_failed
    recs = list(load_cache(cfg.cache_path).values())
    assert all(r["reply"].startswith(BUILTIN_PROMPTS["demo"].reply_prefix) for r in recs)
    assert all(0 < r["completion_tokens"] <= 16 and r["prompt_tokens"] > 0 for r in recs)
    assert run(cfg).calls == 0


def test_reply_cut_by_the_token_limit_keeps_whole_sentences(env):
    from nbutils.generate import trim_unfinished
    assert trim_unfinished("The cache stores keys and values. It al") == "The cache stores keys and values."
    assert trim_unfinished("No full stop at all here") == "No full stop at all here"
    with FakeLLMServer(script=[{"content": "Triple 1:\nInstruction: What does the cache store?\nInput:\n"
                                           "Output: It stores the keys and values of past tokens. It also"}]) as srv:
        cfg = cfg_for(env, srv, workers=1)
        run(cfg)
    lines = [l for l in cfg.cache_path.read_text().splitlines() if "It also" in l]
    assert len(lines) == 1
    # the fake server says finish_reason "stop": mark the record as cut and rebuild from the cache
    cfg.cache_path.write_text(cfg.cache_path.read_text().replace('"finish_reason": "stop", "latency_s"', '"finish_reason": "length", "latency_s"', 1))
    run(cfg)
    outs = [t["output"] for t in read_jsonl(env / "triples.jsonl") if t["instruction"] == "What does the cache store?"]
    assert outs == ["It stores the keys and values of past tokens."]


def test_the_api_key_never_lands_in_data_dir(env):
    with FakeLLMServer() as srv:
        run(cfg_for(env, srv))
    leaked = [p for p in env.rglob("*") if p.is_file() and b"gsk_test_not_a_real_key" in p.read_bytes()]
    assert (env / "triples.jsonl").exists() and not leaked


# ---------------------------------------------------------------- faults that must not lose or leak work
def test_empty_replies_are_retried_and_never_cached_as_answers(env):
    n = N_PAPERS * PAGES_PER_PAPER
    with FakeLLMServer(script=[{"content": ""}, {"content": "  \n "}] * 3) as srv:
        cfg = cfg_for(env, srv, workers=1, max_attempts=3)
        res = run(cfg)
        assert srv.count() == n + 4                       # 6 empty replies: 2 pages failed after 3 tries each
        assert res.retried == {"empty": 4} and len(res.pages_failed) == 2
        assert all(f["error"].startswith("empty") for f in res.pages_failed)
        assert all(r["reply"].strip() for r in read_jsonl(cfg.cache_path))
        before = srv.count()
        res2 = run(cfg)
        assert srv.count() - before == 2 and res2.calls == 2 and not res2.pages_failed
    assert res2.triples_kept == n * 3


def test_a_blank_reply_cached_by_an_older_version_is_called_again(env):
    with FakeLLMServer() as srv:
        cfg = cfg_for(env, srv)
        run(cfg)
        recs = list(read_jsonl(cfg.cache_path))
        recs[0]["reply"] = "   "
        write_jsonl(cfg.cache_path, recs)
        before = srv.count()
        res = run(cfg)
        assert srv.count() - before == 1 and res.triples_kept == N_PAPERS * PAGES_PER_PAPER * 3


def test_a_retry_after_of_an_hour_does_not_hang_the_stage(env, capsys):
    with FakeLLMServer(script=[{"status": 429, "retry_after": "3600"}] * 50) as srv:
        t0 = time.monotonic()
        res = run(cfg_for(env, srv, workers=2, max_wait_s=30))
        assert time.monotonic() - t0 < 20
        assert srv.count() <= 2                          # only those in flight when the first 429 came
    assert len(res.pages_failed) == N_PAPERS * PAGES_PER_PAPER
    assert all("wait_too_long" in f["error"] for f in res.pages_failed)
    out = capsys.readouterr().out
    assert "asked to wait 3600 s" in out and "max_wait_s=30" in out


def _outputs(env: Path) -> dict[str, bytes]:
    files = [env / "triples.jsonl", env / "arxiv_instruction_dataset.json"]
    files += sorted((env / "dataset").rglob("*"))
    return {str(p.relative_to(env)): p.read_bytes() for p in files if p.is_file()}


def test_a_run_where_every_page_fails_keeps_all_outputs_in_sync(env, capsys):
    with FakeLLMServer() as srv:
        run(cfg_for(env, srv))
    first = _outputs(env)
    assert len(first) > 3
    with FakeLLMServer(script=[{"status": 400, "message": "model `llama-4-typo` does not exist"}] * 20) as srv:
        res = run(cfg_for(env, srv, model="llama-4-typo"))
    assert len(res.pages_failed) == N_PAPERS * PAGES_PER_PAPER and not res.outputs_replaced
    assert _outputs(env) == first                        # triples.jsonl, the JSON and dataset/ all untouched
    assert "left as they were" in capsys.readouterr().out and "left as they were" in res.summary()
    assert read_json(env / "generate_report.json")["outputs_replaced"] is False
    with FakeLLMServer() as srv:                         # once the model works, all three move together
        res = run(cfg_for(env, srv, model="llama-4-fixed"))
    triples = list(read_jsonl(env / "triples.jsonl"))
    from datasets import load_from_disk
    dd = load_from_disk(str(env / "dataset"))
    assert res.outputs_replaced and {t["model"] for t in triples} == {"llama-4-fixed"}
    assert len(triples) == len(read_json(env / "arxiv_instruction_dataset.json")) == len(dd["train"]) + len(dd["test"])


def test_secrets_echoed_by_the_server_never_land_anywhere(env, capsys):
    key = os.environ["GROQ_API_KEY"]

    def reply(body):          # a 200 whose content echoes the key
        from tests.support.fake_llm_server import default_reply
        return default_reply(body) + f"\n(debug: your key is {key})"

    with FakeLLMServer(reply=reply, script=[{"status": 400, "echo_headers": True}] * 3) as srv:
        res = run(cfg_for(env, srv, workers=1))
    assert len(res.pages_failed) == 3 and "you sent" in res.pages_failed[0]["error"]
    printed = capsys.readouterr()
    leaked = [p for p in env.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    assert not leaked and key not in res.summary() and key not in printed.out + printed.err
    assert key not in res.table().to_string()
    assert any("[REDACTED]" in r["reply"] for r in read_jsonl(env / "cache" / "generate_replies.jsonl"))
