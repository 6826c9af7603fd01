"""Stage 03 in batch mode (issue 21) against the loopback files+batches server, through the real groq client and
the OpenAI backend's httpx client: replies land in the same caches as the synchronous path, a killed run
resumes the batch it submitted (0 duplicate submissions, 0 lost pages), an expired or partly failed batch
resubmits only what is missing, unreadable result lines are counted and resubmitted, the cost is the batch
price, and no key reaches any file under data_dir."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nbutils.generate import GenerateConfig, run
from nbutils.io import PROJECT_ROOT, read_json, read_jsonl, write_jsonl
from tests.support.fake_batch_server import FakeBatchServer

KEY = "gsk_test_batch_key_0123456789"
N_PAGES = 6
PRICES = {"llama-3.3-70b-versatile": (1.0, 2.0)}


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("GROQ_API_KEY", KEY)
    monkeypatch.delenv("GROQ_BASE_URL", raising=False)
    rng = random.Random(0)
    vocab = [f"term{i}" for i in range(3000)]
    write_jsonl(tmp_path / "pages.jsonl", [
        {"paper_id": f"2405.{p:05d}v1", "page": pg, "chunk": 0, "text": " ".join(rng.choice(vocab) for _ in range(60))}
        for p in range(3) for pg in (1, 2)])
    return tmp_path


def params_for(data_dir, srv, **kw) -> dict:
    p = dict(profile="full", data_dir=str(data_dir), base_url=srv.url, batch=True, batch_poll_s=0.01, rpm=0, tpm=0,
             max_attempts=3, judge=False, prices=PRICES)
    p.update(kw)
    return p


def cfg_for(data_dir, srv, **kw) -> GenerateConfig:
    return GenerateConfig.from_params(**params_for(data_dir, srv, **kw))


def cached_keys(data_dir) -> list[str]:
    return [r["key"] for r in read_jsonl(Path(data_dir) / "cache" / "generate_replies.jsonl")]


def states(data_dir, stage="generate") -> list[dict]:
    return [read_json(p) for p in sorted((Path(data_dir) / "cache" / "batches").glob(f"{stage}-*.json"))]


def assert_no_key(data_dir) -> None:
    for p in Path(data_dir).rglob("*"):
        if p.is_file():
            assert KEY not in p.read_bytes().decode("utf-8", "replace"), p


# ------------------------------------------------------------------------------------------- the happy path
def test_generation_and_judge_through_batches_same_cache_batch_price(env):
    with FakeBatchServer() as srv:
        res = run(cfg_for(env, srv, judge=True))
        assert srv.count() == 0                                   # no synchronous chat request at all
        assert len(srv.submissions) == 2                          # one generation batch, one judge batch
        assert max(srv.submitted_counts().values()) == 1
        assert res.pages_selected == N_PAGES and not res.pages_failed and res.triples_kept > 0
        assert res.batch["batches_submitted"] == 1 and res.batch["replies"] == N_PAGES
        assert res.judge["batch"]["replies"] == N_PAGES and res.judge["triples_judged"] == res.triples_parsed
        # the batch price: half the list price of this run's tokens
        list_price = (res.run_prompt_tokens * 1.0 + res.run_completion_tokens * 2.0) / 1e6
        assert res.run_cost_usd == pytest.approx(list_price / 2) and res.run_cost_usd > 0
        j = res.judge
        assert j["cost_usd"] == pytest.approx((j["prompt_tokens"] + 2.0 * j["completion_tokens"]) / 1e6 / 2)
        assert "batch API" in res.summary() and "50 % of list price" in res.summary()
        assert res.dataset_cost_usd == pytest.approx(res.run_cost_usd)          # every cached reply: batch price
        assert j["dataset_cost_usd"] == pytest.approx(j["cost_usd"])
        # the synchronous path (and the judge) see the batch's replies: a rerun without batch makes no call
        again = run(cfg_for(env, srv, judge=True, batch=False))
        assert srv.count() == 0 and len(srv.submissions) == 2 and again.triples_kept == res.triples_kept
    assert [s["status"] for s in states(env)] == ["merged"] and states(env, "judge")[0]["status"] == "merged"
    report = read_json(env / "generate_report.json")
    assert report["batch"] == {} and report["pages_cached"] == N_PAGES     # the rerun's report: all from cache
    assert_no_key(env)


def test_openai_backend_batches_over_httpx(env, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeBatchServer() as srv:
        res = run(cfg_for(env, srv, backend="openai", model="served-model", base_url=srv.url + "/v1"))
        assert srv.count() == 0 and len(srv.submissions) == 1 and len(cached_keys(env)) == N_PAGES
        assert res.triples_kept > 0 and f"Bearer {KEY}" in srv.auth_seen
        line = json.loads(srv.uploads[0].decode().splitlines()[0])
        assert line["method"] == "POST" and line["url"] == "/v1/chat/completions"
        assert line["body"]["model"] == "served-model" and line["custom_id"] in cached_keys(env)
    assert_no_key(env)


def test_batch_needs_a_remote_backend():
    with pytest.raises(ValueError, match=r"batch=True needs backend \(or judge_backend\) groq or openai"):
        GenerateConfig.from_params(profile="demo", batch=True)
    GenerateConfig.from_params(profile="demo", batch=True, judge_backend="groq")   # the judge batches


# ------------------------------------------------------------------------------------------- only what is missing
@pytest.mark.parametrize("plan, reason", [({"end": "expired", "answered": 0.5}, "expired"),
                                          ({"fail_lines": 2}, "server"),
                                          ({"drop_lines": 1}, "missing"),
                                          ({"end": "failed"}, "batch_failed")])
def test_expired_or_partly_failed_batch_resubmits_only_the_missing(env, plan, reason):
    with FakeBatchServer(plans=[plan]) as srv:
        res = run(cfg_for(env, srv))
        first, second = srv.submissions
        missing = set(second["custom_ids"])
        answered = set(first["custom_ids"]) - missing
        assert missing and missing <= set(first["custom_ids"])
        assert all(c == 1 for k, c in srv.submitted_counts().items() if k in answered)   # never paid twice
        assert len(set(cached_keys(env))) == len(cached_keys(env)) == N_PAGES and not res.pages_failed
        assert res.batch["resubmitted"] == len(missing) and res.retried == {reason: len(missing)}
        assert res.calls == N_PAGES + len(missing)


def test_malformed_result_lines_are_counted_and_resubmitted(env):
    with FakeBatchServer(plans=[{"malformed_lines": 2}]) as srv:
        res = run(cfg_for(env, srv))
        assert len(srv.submissions) == 2 and len(srv.submissions[1]["custom_ids"]) == 2
        assert res.batch["bad_result_lines"] == {"result_line_not_json": 2}
        assert len(cached_keys(env)) == N_PAGES and not res.pages_failed
        assert "unreadable result lines" in res.summary()


def test_a_batch_failing_every_round_records_pages_failed_and_a_rerun_sends_them(env):
    with FakeBatchServer(default_plan={"end": "failed"}) as srv:
        res = run(cfg_for(env, srv, max_attempts=2))
        assert len(srv.submissions) == 2 and len(res.pages_failed) == N_PAGES
        assert res.pages_failed[0]["error"].startswith("batch_failed")
        assert not (env / "triples.jsonl").exists()
        srv.default_plan = {"end": "completed"}
        res = run(cfg_for(env, srv))
        assert len(srv.submissions) == 3 and not res.pages_failed and len(cached_keys(env)) == N_PAGES


def test_a_failed_line_echoing_the_key_is_reported_redacted(env):
    with FakeBatchServer(plans=[{"fail_lines": 1, "fail_message": f"bad request from key {KEY}"}]) as srv:
        res = run(cfg_for(env, srv, max_attempts=1))
        assert len(srv.submissions) == 1 and len(res.pages_failed) == 1
        assert res.pages_failed[0]["error"].startswith("server HTTP 500") and KEY not in res.pages_failed[0]["error"]
    assert_no_key(env)


def test_malformed_judge_verdicts_are_resubmitted_then_kept_as_malformed(env):
    with FakeBatchServer(judge=lambda body: "I think these are fine.") as srv:
        res = run(cfg_for(env, srv, judge=True, max_attempts=2))
        judge_batches = [s for s in srv.submissions if s["custom_ids"][0] not in cached_keys(env)]
        assert len(judge_batches) == 2                         # asked again once, then kept as malformed
        assert res.judge["triples_judged"] == 0 and res.judge["unjudged"] == {"malformed_verdict": res.triples_parsed}
        assert res.judge["batch"]["resubmitted"] == N_PAGES
        run(cfg_for(env, srv, judge=True, max_attempts=2))     # cached (malformed) verdicts: no new batch
        assert len(srv.submissions) == 3


# ------------------------------------------------------------------------------------------- resuming
def test_wait_limit_leaves_the_batch_and_a_rerun_collects_it_without_resubmitting(env):
    with FakeBatchServer(plans=[{"hold": True}]) as srv:
        res = run(cfg_for(env, srv, batch_wait_s=0.2))
        assert len(srv.submissions) == 1 and len(res.pages_failed) == N_PAGES and res.batch["pending"] == N_PAGES
        assert res.pages_failed[0]["error"].startswith("batch_pending") and "rerun" in res.pages_failed[0]["error"]
        [st] = states(env)
        assert st["batch_id"] == srv.submissions[0]["id"] and st["status"] == "in_progress"
        srv.batches[st["batch_id"]]["plan"] = {"end": "completed"}
        res = run(cfg_for(env, srv))
        assert len(srv.submissions) == 1 and res.batch["batches_resumed"] == 1 and res.batch["batches_submitted"] == 0
        assert not res.pages_failed and len(cached_keys(env)) == N_PAGES


def test_killed_between_create_and_saving_the_id_finds_the_batch_by_name(env, monkeypatch):
    from nbutils.llm import batch as batch_mod

    real_save = batch_mod.BatchStore.save

    def save_then_die(self, st):
        if st.batch_id:
            raise KeyboardInterrupt("killed right after batches.create")
        real_save(self, st)

    with FakeBatchServer() as srv:
        monkeypatch.setattr(batch_mod.BatchStore, "save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            run(cfg_for(env, srv))
        monkeypatch.setattr(batch_mod.BatchStore, "save", real_save)
        [st] = states(env)
        assert st["batch_id"] is None and st["file_id"]
        res = run(cfg_for(env, srv))
        assert len(srv.submissions) == 1 and res.batch["batches_resumed"] == 1
        assert len(cached_keys(env)) == N_PAGES and not res.pages_failed


CHILD = """
import json, sys
from nbutils.generate import GenerateConfig, run
run(GenerateConfig.from_params(**json.loads(sys.argv[1])))
"""


def run_child(params: dict) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(params)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_killed_process_resumes_its_batch_no_duplicate_no_lost_page(env):
    with FakeBatchServer(plans=[{"hold": True}]) as srv:
        child = run_child(params_for(env, srv, judge=True))
        deadline = time.monotonic() + 60
        while not (srv.status_checks >= 2 and states(env) and states(env)[0]["batch_id"]):
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)                      # the kernel dies while waiting
        child.wait()
        [bid] = [s["id"] for s in srv.submissions]
        srv.batches[bid]["plan"] = {"end": "completed"}
        res = run(cfg_for(env, srv, judge=True))
        gen_ids = [s for s in srv.submissions if s["id"] == bid]
        assert len(gen_ids) == 1 and len(srv.submissions) == 2     # the generation batch once, then the judge's
        assert max(srv.submitted_counts().values()) == 1          # 0 duplicate submissions
        assert sorted(set(cached_keys(env))) == sorted(srv.submissions[0]["custom_ids"])   # 0 lost pages
        assert res.batch["batches_resumed"] == 1 and not res.pages_failed and res.triples_kept > 0
    assert_no_key(env)
