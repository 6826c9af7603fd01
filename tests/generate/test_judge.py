"""nbutils.generate.judge through stage 03, against the loopback fake server (the real groq client and the
OpenAI-compatible one): verdicts on the triples, drops by reason, cost, the judge's own cache, and every bad
input a reason in the report (never a crash, never a triple counted as judged that was not)."""
import json
import random
import threading

import pytest

from nbutils.generate import GenerateConfig, run
from nbutils.io import read_json, read_jsonl, write_jsonl
from tests.support.fake_llm_server import FakeLLMServer, judge_verdicts, judged_triples

N_PAPERS, PAGES = 3, 2
N_PAGES = N_PAPERS * PAGES


def three_kinds(body: dict) -> str:
    """Per page: a good triple, one whose Output the fake judge finds unsupported, one with a vague Instruction."""
    words = body["messages"][-1]["content"].split("Text:")[-1].split()
    a, b, c = (" ".join(words[i: i + 6]) for i in (0, 10, 20))
    return (f"Triple 1:\nInstruction: What does the page say about {a}?\nInput: \nOutput: It says {a}.\n\n"
            f"Triple 2:\nInstruction: Summarise the claim about {b}.\nInput: \n"
            f"Output: UNSUPPORTED the authors won a prize for {b}.\n\n"
            f"Triple 3:\nInstruction: VAGUE what does it show about {c}?\nInput: \nOutput: It shows {c}.")


def make_pages(data_dir, words=60, seed=0):
    rng = random.Random(seed)
    vocab = [f"term{i}" for i in range(3000)]
    rows = [{"paper_id": f"2405.{p:05d}v1", "page": pg, "chunk": 0, "text": " ".join(rng.choice(vocab) for _ in
                                                                                    range(words))}
            for p in range(N_PAPERS) for pg in range(1, PAGES + 1)]
    write_jsonl(data_dir / "pages.jsonl", rows)
    return rows


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("GROQ_API_KEY", "gsk_test_not_a_real_key")
    monkeypatch.delenv("GROQ_BASE_URL", raising=False)
    make_pages(tmp_path)
    return tmp_path


def cfg_for(data_dir, srv, **kw):
    params = dict(base_url=srv.url, rpm=0, tpm=0, workers=2, max_attempts=2, window_chars=0)
    params.update(kw)
    return GenerateConfig.from_params(profile="full", data_dir=str(data_dir), **params)


def verdict_server(judge=judge_verdicts, **kw) -> FakeLLMServer:
    return FakeLLMServer(reply=three_kinds, judge=judge, **kw)


# ------------------------------------------------------------------------------------------- the happy path
def test_full_profile_judges_filters_and_reports(env):
    with verdict_server() as srv:
        res = run(cfg_for(env, srv, prices={"llama-3.3-70b-versatile": (1.0, 2.0)}))
        assert srv.count(judge=True) == N_PAGES            # per page: one judge call for all its triples
    kept = list(read_jsonl(env / "triples.jsonl"))
    assert len(kept) == N_PAGES and all(t["judge_support"] == 5 and t["judge_clarity"] == 5 for t in kept)
    assert all(t["judge_note"] == "" and t["judge_reason"] and 0 <= t["grounding"] <= 1 for t in kept)
    dropped = list(read_jsonl(env / "triples_dropped.jsonl"))
    assert sorted({t["drop_reason"] for t in dropped}) == ["judge_unclear", "judge_unsupported"]
    unsupported = [t for t in dropped if t["drop_reason"] == "judge_unsupported"]
    assert all(t["judge_support"] == 1 and t["judge_claim"].startswith("UNSUPPORTED") for t in unsupported)
    report = read_json(env / "generate_report.json")
    assert report["drops"] == {"judge_unsupported": N_PAGES, "judge_unclear": N_PAGES}
    j = report["judge"]
    assert j["calls"] == N_PAGES and j["triples_judged"] == 3 * N_PAGES and j["unjudged"] == {}
    assert j["prompt_tokens"] > 0 and j["completion_tokens"] > 0 and j["price_known"]
    assert j["cost_usd"] == pytest.approx((j["prompt_tokens"] + 2 * j["completion_tokens"]) / 1e6)
    assert report["calls"] == N_PAGES                       # generation's own count is unchanged
    assert "judge groq:llama-3.3-70b-versatile" in res.summary()
    # the split holds only kept triples
    from datasets import load_from_disk
    dd = load_from_disk(str(env / "dataset"))
    assert len(dd["train"]) + len(dd["test"]) == N_PAGES


def test_thresholds_are_parameters(env):
    with verdict_server() as srv:
        res = run(cfg_for(env, srv, min_support=0, min_clarity=0))
    assert res.triples_kept == 3 * N_PAGES and "judge_unsupported" not in res.drops
    assert all(t["judge_support"] is not None for t in read_jsonl(env / "triples.jsonl"))


def test_per_triple_mode_makes_one_call_per_triple(env):
    with verdict_server() as srv:
        res = run(cfg_for(env, srv, judge_mode="triple"))
        assert srv.count(judge=True) == 3 * N_PAGES
    assert res.judge["triples_judged"] == 3 * N_PAGES and res.triples_kept == N_PAGES


def test_judge_off_keeps_everything_unjudged(env):
    with verdict_server() as srv:
        res = run(cfg_for(env, srv, judge=False))
        assert srv.count(judge=True) == 0
    assert res.triples_kept == 3 * N_PAGES and res.judge["enabled"] is False
    assert all(t["judge_support"] is None and t["judge_note"] == "not_judged"
               for t in read_jsonl(env / "triples.jsonl"))


# ------------------------------------------------------------------------------------------- cache
def test_rerun_zero_calls_new_model_or_prompt_judges_again(env, monkeypatch):
    with verdict_server() as srv:
        cfg = cfg_for(env, srv)
        run(cfg)
        first = (env / "triples.jsonl").read_bytes()
        n = srv.count()
        res = run(cfg)
        assert srv.count() == n and res.judge["calls"] == 0 and res.judge["cached"] == N_PAGES
        assert (env / "triples.jsonl").read_bytes() == first
        res = run(cfg_for(env, srv, judge_model="another-judge"))       # a new judge model: judged again
        assert srv.count(judge=False) == N_PAGES and srv.count(judge=True) == 2 * N_PAGES
        assert res.calls == 0 and res.judge["calls"] == N_PAGES and res.judge["model"] == "another-judge"
        import nbutils.generate.judge as judge_mod
        monkeypatch.setattr(judge_mod, "JUDGE_USER", judge_mod.JUDGE_USER + "\nBe brief.")
        res = run(cfg)                                                  # a new judge prompt: judged again
        assert res.judge["calls"] == N_PAGES and srv.count(judge=False) == N_PAGES


def test_judge_on_another_backend_and_model(env, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with verdict_server() as srv:
        res = run(cfg_for(env, srv, judge_backend="openai", judge_model="judge-7b",
                          judge_base_url=srv.url + "/v1"))
        judge_reqs = [r for r in srv.requests if r["judge"]]
    assert {r["model"] for r in judge_reqs} == {"judge-7b"} and {r["path"] for r in judge_reqs} == \
        {"/v1/chat/completions"}
    assert res.judge["backend"] == "openai" and res.judge["triples_judged"] == 3 * N_PAGES
    assert all(r["response_format"] == {"type": "json_object"} for r in judge_reqs)


def test_judge_replies_are_redacted_in_its_cache(env):
    def leaky(body):
        out = json.loads(judge_verdicts(body))
        out["verdicts"][0]["reason"] = "your key gsk_test_not_a_real_key is fine"
        return json.dumps(out)

    with verdict_server(judge=leaky) as srv:
        run(cfg_for(env, srv))
    assert "gsk_test_not_a_real_key" not in (env / "cache" / "judge_verdicts.jsonl").read_text()
    assert "gsk_test_not_a_real_key" not in (env / "triples.jsonl").read_text()


# ------------------------------------------------------------------------------------------- bad input
def test_verdict_for_a_nonexistent_triple_and_a_missing_one(env):
    def wrong_ids(body):
        out = json.loads(judge_verdicts(body))
        out["verdicts"][1]["id"] = 99                      # triple 2 gets no verdict; 99 does not exist
        return json.dumps(out)

    with verdict_server(judge=wrong_ids) as srv:
        res = run(cfg_for(env, srv))
    j = res.judge
    assert j["problems"]["verdict_for_unknown_triple"] == N_PAGES
    assert j["unjudged"] == {"no_verdict": N_PAGES} and j["triples_judged"] == 2 * N_PAGES
    rows = list(read_jsonl(env / "triples.jsonl"))
    unjudged = [t for t in rows if t["judge_support"] is None]
    assert len(unjudged) == N_PAGES and all(t["judge_note"] == "no_verdict" for t in unjudged)
    assert all("UNSUPPORTED" in t["output"] for t in unjudged)       # kept: not judged, not counted as judged


def test_scores_out_of_range_are_not_verdicts(env):
    def out_of_range(body):
        out = json.loads(judge_verdicts(body))
        out["verdicts"][0]["support"] = 7
        out["verdicts"][2]["clarity"] = 0
        return json.dumps(out)

    with verdict_server(judge=out_of_range) as srv:
        res = run(cfg_for(env, srv))
    assert res.judge["problems"]["score_out_of_range"] == 2 * N_PAGES
    assert res.judge["unjudged"] == {"score_out_of_range": 2 * N_PAGES}
    assert res.judge["triples_judged"] == N_PAGES


def test_refusing_judge_is_a_reason_and_drop_unjudged_drops(env):
    refuse = lambda body: "I'm sorry, but I can't help with evaluating this content."  # noqa: E731
    with verdict_server(judge=refuse) as srv:
        res = run(cfg_for(env, srv))
        assert srv.count(judge=True) == N_PAGES           # a refusal is an answer: not retried
        assert res.judge["problems"]["judge_refused"] == N_PAGES and res.judge["triples_judged"] == 0
        assert res.judge["unjudged"] == {"judge_refused": 3 * N_PAGES} and res.triples_kept == 3 * N_PAGES
        res = run(cfg_for(env, srv, drop_unjudged=True))
        assert srv.count(judge=True) == N_PAGES           # cached: no second call
    assert res.triples_kept == 0 and res.drops == {"unjudged": 3 * N_PAGES} and not res.outputs_replaced


def test_page_too_long_for_the_judge_is_cut_and_said(env):
    with verdict_server() as srv:
        res = run(cfg_for(env, srv, judge_max_input_chars=100))
        sent = [r for r in srv.requests if r["judge"]]
    assert res.judge["problems"]["page_cut_for_judge"] == N_PAGES
    kept = list(read_jsonl(env / "triples.jsonl"))
    assert kept and all(t["judge_note"] == "cut_page" and t["judge_support"] == 5 for t in kept)
    assert len(sent) == N_PAGES


def test_malformed_verdict_is_retried_then_kept_as_a_reason(env):
    lock, seen = threading.Lock(), set()

    def flaky(body):           # the first judge reply of each page is not JSON; the retry is fine
        page = body["messages"][-1]["content"]
        with lock:
            first = page not in seen
            seen.add(page)
        return "Sure! Here are my verdicts: support high" if first else judge_verdicts(body)

    with verdict_server(judge=flaky) as srv:
        res = run(cfg_for(env, srv, workers=1))
    assert res.judge["retried"] == {"malformed": N_PAGES} and res.judge["triples_judged"] == 3 * N_PAGES
    good = sum(r["completion_tokens"] for r in read_jsonl(env / "cache" / "judge_verdicts.jsonl"))
    assert res.judge["completion_tokens"] > good          # the malformed replies' tokens are counted too
    (env / "cache" / "judge_verdicts.jsonl").unlink()

    with verdict_server(judge=lambda body: '{"verdicts": "none"}') as srv:   # always malformed
        res = run(cfg_for(env, srv, max_attempts=2))
        assert srv.count(judge=True) == 2 * N_PAGES
        assert res.judge["unjudged"] == {"malformed_verdict": 3 * N_PAGES}
        assert res.judge["problems"]["malformed_verdict"] == N_PAGES and not res.judge["failed"]
        again = run(cfg_for(env, srv, max_attempts=2))
        assert srv.count(judge=True) == 2 * N_PAGES and again.judge["calls"] == 0   # paid once, kept


def test_judge_failing_over_http_is_recorded_and_retried_next_run(env):
    state = {"fail": True}

    def down(body):
        if state["fail"]:
            return ""          # an empty reply: retried, then the call fails
        return judge_verdicts(body)

    with verdict_server(judge=down) as srv:
        res = run(cfg_for(env, srv))
        assert len(res.judge["failed"]) == N_PAGES and res.judge["unjudged"] == {"judge_failed": 3 * N_PAGES}
        assert res.triples_kept == 3 * N_PAGES              # kept unjudged (drop_unjudged is False)
        state["fail"] = False
        res = run(cfg_for(env, srv))
    assert res.judge["calls"] == N_PAGES and res.judge["triples_judged"] == 3 * N_PAGES


def test_fake_server_sees_every_triple_of_a_page_in_one_request(env):
    bodies = []

    def spy(body):
        bodies.append(body)
        return judge_verdicts(body)

    with verdict_server(judge=spy) as srv:
        run(cfg_for(env, srv))
    assert len(bodies) == N_PAGES and all(len(judged_triples(b)) == 3 for b in bodies)
    assert all(b["temperature"] == 0.0 for b in bodies)


# ------------------------------------------------------------------------------------------- demo
@pytest.mark.slow
def test_demo_judges_with_the_embedded_model_and_drops_nothing_on_its_scores(data_dir_with_model):
    """The demo's judge path end to end on the real 135M model. Generation's replies are put in its cache
    first (their keys computed by the stage's own make_jobs), so the test does not hang on whether the 135M
    generator happens to write a parseable triple; the judge's calls are real."""
    from nbutils.generate import make_jobs, select_pages
    from nbutils.io import append_jsonl

    text = ("Low-rank adaptation freezes the pretrained weights and learns two small matrices per layer. "
            "With rank 16 on all linear layers it matched full fine-tuning while training 0.6 percent of the "
            "parameters. Adapting only the attention queries and values lost three points of accuracy.")
    write_jsonl(data_dir_with_model / "pages.jsonl", [{"paper_id": f"2405.{p:05d}v1", "page": 1, "chunk": 0,
                                                       "text": f"Paper {p}. {text}"} for p in range(2)])
    cfg = GenerateConfig.from_params(profile="demo", data_dir=str(data_dir_with_model), judge_max_tokens=24,
                                     batch_size=2, threads=1)
    pages, _ = select_pages(list(read_jsonl(cfg.pages_path)), cfg.max_pages, cfg.min_page_chars, cfg.window_chars)
    for n, job in enumerate(make_jobs(pages, cfg, cfg.template())):
        reply = (f"Triple 1:\nInstruction: What rank matched full fine-tuning in paper {n}?\nInput: \n"
                 f"Output: Rank 16 on all linear layers, in paper {n}.")
        append_jsonl(cfg.cache_path, [{"key": job.key, "paper_id": job.paper_id, "page": job.page, "chunk": 0,
                                       "model": cfg.model_name, "prompt_version": cfg.template().version,
                                       "params": cfg.request_params(), "reply": reply, "finish_reason": "stop"}])
    import torch
    threads = torch.get_num_threads()
    try:
        res = run(cfg)
        again = run(cfg)
    finally:
        torch.set_num_threads(threads)
    j = res.judge
    assert res.calls == 0 and j["backend"] == "local" and j["requests"] == 2 and j["calls"] == 2
    assert j["triples_judged"] + sum(j["unjudged"].values()) == 2          # each either judged or said why
    assert "scores mean nothing" in res.summary()
    assert res.triples_kept >= 1 and not {"judge_unsupported", "judge_unclear", "unjudged"} & set(res.drops)
    assert again.calls == 0 and again.judge["calls"] == 0                 # verdicts (even malformed) cached


def test_notebook_views_histograms_cost_and_an_escaped_table_of_drops(env):
    from nbutils.generate import dropped_table, judge_cost, plot_scores

    def markup(body):
        return three_kinds(body).replace("UNSUPPORTED the authors", "UNSUPPORTED <script>alert(1)</script> the authors")

    with verdict_server() as srv:
        cfg = cfg_for(env, srv, prices={"llama-3.3-70b-versatile": (1.0, 2.0)})
        srv.reply = markup
        res = run(cfg)
    figs = plot_scores(cfg, path_prefix=env / "plots" / "scores")
    assert len(figs) == 4 and (env / "plots" / "scores_grounding.png").exists()
    html = dropped_table(cfg, n=50).data
    assert "&lt;script&gt;" in html and "<script>" not in html and html.count("judge_unsupported") == N_PAGES
    cost = judge_cost(res)
    assert f"{'judge':12}{N_PAGES:>8}" in cost and "per kept triple" in cost


def test_a_judge_that_cannot_run_says_so_and_loses_no_generation(env, monkeypatch):
    with pytest.raises(ValueError, match="judge_model is needed"):
        GenerateConfig.from_params(profile="full", data_dir=str(env), judge_backend="openai")
    from nbutils.llm import LLMError

    with verdict_server(script=[]) as srv:
        cfg = cfg_for(env, srv, judge_backend="openai", judge_model="m")   # no base_url for the judge's backend
        monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
        with pytest.raises(LLMError, match=r"the judge \(openai:m\) cannot run: .*needs base_url"):
            run(cfg)
        n = srv.count(judge=False)
        assert n == N_PAGES
        res = run(cfg_for(env, srv))                 # fixed: generation comes from the cache
        assert srv.count(judge=False) == n and res.judge["triples_judged"] == 3 * N_PAGES


def test_parse_verdicts_names_each_problem():
    from nbutils.generate import parse_verdicts

    v = parse_verdicts('```json\n{"verdicts": [{"id": "1", "support": "4", "clarity": 5.0}, {"id": 2, "support": 3},'
                       ' {"id": 2, "support": 5, "clarity": 5}, {"id": 7, "support": 5, "clarity": 5}, "x",'
                       ' {"id": 3, "support": true, "clarity": 5}]}\n```', [1, 2, 3])
    assert v.by_id[1]["support"] == 4 and v.by_id[1]["clarity"] == 5
    assert v.by_id[2] == {"invalid": "missing_score"} and v.by_id[3] == {"invalid": "score_out_of_range"}
    assert v.problems == {"missing_score": 1, "duplicate_verdict": 1, "verdict_for_unknown_triple": 1,
                          "verdict_not_an_object": 1, "score_out_of_range": 1}
    assert parse_verdicts("I cannot help with that.", [1]).refused
    assert parse_verdicts("{not json", [1]).malformed and parse_verdicts('{"a": 1}', [1]).malformed
    one = parse_verdicts('{"support": 2, "clarity": 4, "unsupported_claim": "x", "reason": "' + "r" * 500 + '"}', [1])
    assert one.by_id[1]["claim"] == "x" and len(one.by_id[1]["reason"]) <= 301     # per-triple mode: no id needed
