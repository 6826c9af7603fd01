"""nbutils.llm.batch on its own: the JSONL it writes, the result files it reads (every odd line a reason, never a
crash), its state files, and a batch the provider no longer knows."""
import json

from nbutils.llm import Completion, LLMError, make_backend
from nbutils.llm.batch import BatchSettings, BatchStore, batch_api, parse_results, request_lines, send_batched
from tests.support.fake_batch_server import FakeBatchServer

OK_BODY = {"id": "c1", "object": "chat.completion", "model": "m", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 7, "completion_tokens": 2}}


def line(**kw) -> str:
    return json.dumps(kw)


def test_request_lines_are_the_documented_shape():
    data = request_lines("m", {"k1": [{"role": "user", "content": "x"}]}, {"max_tokens": 5, "temperature": 0.0,
                                                                          "json_mode": True})
    [rec] = [json.loads(x) for x in data.decode().splitlines()]
    assert rec == {"custom_id": "k1", "method": "POST", "url": "/v1/chat/completions",
                   "body": {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5,
                            "temperature": 0.0, "response_format": {"type": "json_object"}}}


def test_parse_results_sorts_every_line():
    text = "\n".join([
        line(custom_id="ok", response={"status_code": 200, "body": OK_BODY}, error=None),
        line(custom_id="rate", response={"status_code": 429, "body": {"error": {"message": "slow down"}}}),
        line(custom_id="exp", response=None, error={"code": "batch_expired", "message": "window over"}),
        line(custom_id="nochoice", response={"status_code": 200, "body": {"choices": []}}),
        line(custom_id="auth", response={"status_code": 401, "body": {"error": {"message": "bad key"}}}),
        "{torn", line(response={"status_code": 200, "body": OK_BODY}), "[1, 2]", ""])
    got, bad = parse_results(text, "m")
    assert isinstance(got["ok"], Completion) and got["ok"].text == "hi" and got["ok"].prompt_tokens == 7
    assert {k: v.kind for k, v in got.items() if isinstance(v, LLMError)} == {
        "rate": "rate_limit", "exp": "expired", "nochoice": "empty", "auth": "auth"}
    assert bad == {"result_line_not_json": 1, "result_line_without_custom_id": 2}


def test_unreadable_state_file_is_ignored_with_a_message(tmp_path, capsys):
    (tmp_path / "generate-abc.json").write_text("{not json")
    store = BatchStore(tmp_path, "generate")
    st = store.new(["k"], "groq", "m", 1)
    store.save(st)
    assert [s.name for s in store.load()] == [st.name]
    assert "generate-abc.json unreadable" in capsys.readouterr().out


def test_a_batch_the_provider_forgot_is_submitted_again(tmp_path, monkeypatch):
    monkeypatch.setenv("GROQ_API_KEY", "gsk_x")
    store = BatchStore(tmp_path, "generate")
    st = store.new(["k1"], "groq", "m", 1)
    st.batch_id, st.file_id, st.status = "batch_gone", "file_gone", "in_progress"
    store.save(st)
    with FakeBatchServer() as srv:
        api = batch_api(make_backend("groq", "m", srv.url))
        got = {}
        out = send_batched(api, BatchSettings(str(tmp_path), poll_s=0.01), "generate", "groq", "m",
                           {"k1": [{"role": "user", "content": "Text: a b c"}]},
                           {"max_tokens": 5, "temperature": 0.0, "json_mode": False},
                           on_reply=lambda k, r: got.setdefault(k, r), on_error=lambda k, e: None)
        assert list(got) == ["k1"] and out.resumed == 1 and out.submitted == 1 and out.resubmitted == 1
    assert [s.status for s in store.load()] == ["lost", "merged"]


def test_an_output_file_gone_resubmits_its_requests(tmp_path, monkeypatch):
    monkeypatch.setenv("GROQ_API_KEY", "gsk_x")
    with FakeBatchServer() as srv:
        api = batch_api(make_backend("groq", "m", srv.url))
        real_content = api.content
        gone = []

        def content(fid):
            if not gone:                     # the first output file was deleted by the provider
                gone.append(fid)
                srv.files.pop(fid)
            return real_content(fid)

        api.content = content
        got = {}
        out = send_batched(api, BatchSettings(str(tmp_path), poll_s=0.01), "generate", "groq", "m",
                           {"k1": [{"role": "user", "content": "Text: a b c"}]},
                           {"max_tokens": 5, "temperature": 0.0, "json_mode": False},
                           on_reply=lambda k, r: got.update({k: r}), on_error=lambda k, e: None)
        assert list(got) == ["k1"] and out.submitted == 2 and out.bad_lines == {"result_file_gone": 1}
