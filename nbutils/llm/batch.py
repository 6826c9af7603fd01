"""The providers' batch APIs (Groq and OpenAI: about half the price, results within a completion window).

Requests are written as JSONL (one `{"custom_id", "method", "url", "body"}` line each, custom_id = the request's
cache key), uploaded with `files.create(purpose="batch")`, submitted with `batches.create(input_file_id,
endpoint="/v1/chat/completions", completion_window)`, polled with `batches.retrieve` (backoff, a progress bar)
and read back with `files.content` (output file: one `{"custom_id", "response": {"status_code", "body"}}` line per
answered request; error file: the failed and expired ones). Groq goes through its own client (the backend's
`groq.Groq`), the OpenAI-compatible backend through its httpx client against `{base_url}/files` and `/batches`.

What was submitted is kept in `<state_dir>/<stage>-<name>.json` (written atomically before and after each
step): a killed run resumes waiting for the batch it already paid for. A state whose batch id was not saved
(killed between create and save) is found again by its `metadata.nbutils_batch` name. When a batch ends, its
replies go to the caller (the same cache the synchronous path fills) and only the requests still missing
(expired, failed lines, malformed or absent lines) are submitted again, up to `max_attempts` rounds a run.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..io import atomic_write_bytes, read_json, sha256_text, write_json
from .base import RETRYABLE, Completion, LLMError, Messages
from .remote import _classify_status, _completion_from_dict, _request_body, _short

BATCH_BACKENDS = ("groq", "openai")
ENDPOINT = "/v1/chat/completions"
TERMINAL = ("completed", "expired", "failed", "cancelled")
RESUBMIT = RETRYABLE | {"expired", "missing", "batch_failed"}   # worth another round; the rest go to on_error
PENDING = "batch_pending"        # still running when batch_wait_s ran out: a rerun resumes waiting
MAX_POLL_S = 600.0
MAX_POLL_ERRORS = 20
FILE_TIMEOUT_S = 300.0           # per batch API call (an upload or an output file can be large)


# ------------------------------------------------------------------------------------------- the provider
class BatchAPI:
    """The files and batches endpoints of one provider, through the backend's own client. Errors are LLMErrors
    (classified like a chat request's)."""

    def upload(self, data: bytes, filename: str) -> str: ...
    def create(self, file_id: str, window: str, metadata: dict) -> dict: ...
    def retrieve(self, batch_id: str) -> dict: ...
    def find(self, name: str) -> dict | None: ...
    def content(self, file_id: str) -> str: ...


class GroqBatchAPI(BatchAPI):
    """groq.Groq: files.create / batches.create / batches.retrieve / batches.list / files.content."""

    def __init__(self, backend):
        g = self._g = backend._groq
        # its own client: the chat client's per-request deadline (and any reply-size cap) would cut a large
        # upload or output file; the SDK retries reads and uploads itself, never create
        self.client = g.Groq(api_key=backend.client.api_key, base_url=str(backend.client.base_url),
                             timeout=FILE_TIMEOUT_S, max_retries=2)

    def _call(self, fn: Callable[[], Any]) -> Any:
        g = self._g
        try:
            return fn()
        except g.APITimeoutError as e:
            raise LLMError("timeout", str(e)) from e
        except g.APIConnectionError as e:
            raise LLMError("connection", str(e)) from e
        except g.APIStatusError as e:
            raise _classify_status(e.status_code, _short(e.message), None) from e
        except (ValueError, g.APIResponseValidationError) as e:
            raise LLMError("malformed", f"batch API reply is not valid ({e})") from e

    @staticmethod
    def _dict(obj: Any) -> dict:
        return obj.model_dump() if hasattr(obj, "model_dump") else dict(obj)

    def upload(self, data: bytes, filename: str) -> str:
        out = self._call(lambda: self.client.files.create(file=(filename, data), purpose="batch"))
        if not getattr(out, "id", None):
            raise LLMError("malformed", "file upload answered without an id")
        return out.id

    def create(self, file_id: str, window: str, metadata: dict) -> dict:
        once = self.client.with_options(max_retries=0)    # a retried create could submit the batch twice
        return self._dict(self._call(lambda: once.batches.create(
            input_file_id=file_id, endpoint=ENDPOINT, completion_window=window, metadata=metadata)))

    def retrieve(self, batch_id: str) -> dict:
        return self._dict(self._call(lambda: self.client.batches.retrieve(batch_id)))

    def find(self, name: str) -> dict | None:
        listed = self._dict(self._call(lambda: self.client.batches.list()))
        return _named(listed.get("data") or [], name)

    def content(self, file_id: str) -> str:
        return self._call(lambda: self.client.files.content(file_id).read()).decode("utf-8", "replace")


class OpenAIBatchAPI(BatchAPI):
    """OpenAI's REST endpoints through the backend's httpx client: POST {base_url}/files (multipart), POST
    /batches, GET /batches/{id}, GET /batches, GET /files/{id}/content."""

    def __init__(self, backend):
        hx = self._hx = backend._httpx
        self.base = backend.base_url
        auth = {k: v for k, v in backend.client.headers.items() if k.lower() == "authorization"}
        self.client = hx.Client(timeout=FILE_TIMEOUT_S, headers=auth)   # no chat deadline on large files

    def _req(self, method: str, path: str, **kw) -> Any:
        hx = self._hx
        try:
            r = self.client.request(method, f"{self.base}{path}", **kw)
        except hx.TimeoutException as e:
            raise LLMError("timeout", str(e)) from e
        except hx.TransportError as e:
            raise LLMError("connection", str(e)) from e
        if r.status_code >= 400:
            raise _classify_status(r.status_code, _short(r.text), None)
        return r

    def _json(self, method: str, path: str, **kw) -> dict:
        try:
            data = self._req(method, path, **kw).json()
        except ValueError as e:
            raise LLMError("malformed", f"batch API reply is not JSON ({e})") from e
        if not isinstance(data, dict):
            raise LLMError("malformed", "batch API reply is not a JSON object")
        return data

    def upload(self, data: bytes, filename: str) -> str:
        out = self._json("POST", "/files", files={"file": (filename, data, "application/jsonl")},
                         data={"purpose": "batch"})
        if not out.get("id"):
            raise LLMError("malformed", "file upload answered without an id")
        return out["id"]

    def create(self, file_id: str, window: str, metadata: dict) -> dict:
        return self._json("POST", "/batches", json={"input_file_id": file_id, "endpoint": ENDPOINT,
                                                    "completion_window": window, "metadata": metadata})

    def retrieve(self, batch_id: str) -> dict:
        return self._json("GET", f"/batches/{batch_id}")

    def find(self, name: str) -> dict | None:
        return _named(self._json("GET", "/batches", params={"limit": 100}).get("data") or [], name)

    def content(self, file_id: str) -> str:
        return self._req("GET", f"/files/{file_id}/content").content.decode("utf-8", "replace")


def _named(batches: list, name: str) -> dict | None:
    for b in batches:
        b = b if isinstance(b, dict) else GroqBatchAPI._dict(b)
        if (b.get("metadata") or {}).get("nbutils_batch") == name:
            return b
    return None


def batch_api(backend) -> BatchAPI:
    """The batch endpoints of `backend` (a judge's checking wrapper is looked through)."""
    inner = getattr(backend, "inner", backend)
    if inner.name == "groq":
        return GroqBatchAPI(inner)
    if inner.name == "openai":
        return OpenAIBatchAPI(inner)
    raise LLMError("config", f"batch mode needs backend groq or openai, not {inner.name}")


# ------------------------------------------------------------------------------------------- files
def request_lines(model: str, requests: dict[str, Messages], params: dict) -> bytes:
    """The batch input file: one chat-completion request per line, custom_id = its cache key."""
    return "".join(json.dumps({"custom_id": key, "method": "POST", "url": ENDPOINT,
                               "body": _request_body(model, msgs, **params)}, ensure_ascii=False) + "\n"
                   for key, msgs in requests.items()).encode("utf-8")


def parse_results(text: str, model: str) -> tuple[dict[str, Completion | LLMError], Counter]:
    """An output or error file -> custom_id -> Completion (a 200 with a usable body) or LLMError; and the lines
    that could not be read at all, counted by reason. Never raises."""
    out: dict[str, Completion | LLMError] = {}
    bad: Counter = Counter()
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            bad["result_line_not_json"] += 1
            continue
        cid = rec.get("custom_id") if isinstance(rec, dict) else None
        if not isinstance(cid, str) or not cid:
            bad["result_line_without_custom_id"] += 1
            continue
        out[cid] = _result(rec, model)
    return out, bad


def _result(rec: dict, model: str) -> Completion | LLMError:
    resp = rec.get("response") if isinstance(rec.get("response"), dict) else {}
    err = rec.get("error")
    status = resp.get("status_code")
    if err or status != 200:
        info = err if isinstance(err, dict) else {}
        body = resp.get("body") if isinstance(resp.get("body"), dict) else {}
        info = info or (body.get("error") if isinstance(body.get("error"), dict) else {})
        msg = _short(info.get("message") or info or f"status {status}")
        if info.get("code") == "batch_expired":
            return LLMError("expired", f"not run before the batch expired ({msg})")
        if isinstance(status, int):
            return _classify_status(status, msg, None)
        return LLMError("server", f"failed in the batch: {msg}")
    try:
        return _completion_from_dict(resp.get("body"), model, 0.0, {})
    except LLMError as e:
        return e


# ------------------------------------------------------------------------------------------- state
@dataclass
class BatchState:
    """One submitted batch, as kept under state_dir."""

    stage: str
    name: str                      # sha of the stage and its custom_ids: the file name and metadata.nbutils_batch
    keys: list[str]
    backend: str = ""
    model: str = ""
    file_id: str | None = None
    batch_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    status: str = "new"            # new, uploaded, <the provider's status>, merged, lost
    round: int = 1
    created: float = 0.0
    counts: dict = field(default_factory=dict)
    merged: dict = field(default_factory=dict)    # what merging it gave: replies, resubmitted, failed, bad lines

    @property
    def done(self) -> bool:
        return self.status in ("merged", "lost")


class BatchStore:
    """The state files of one stage's batches (atomic writes; never a key in them)."""

    def __init__(self, state_dir: str | Path, stage: str):
        self.dir, self.stage = Path(state_dir), stage

    def path(self, st: BatchState) -> Path:
        return self.dir / f"{st.stage}-{st.name}.json"

    def save(self, st: BatchState) -> None:
        write_json(self.path(st), asdict(st))

    def load(self) -> list[BatchState]:
        out = []
        for p in sorted(self.dir.glob(f"{self.stage}-*.json")):
            try:
                out.append(BatchState(**read_json(p)))
            except (ValueError, TypeError, OSError) as e:
                print(f"batch state {p.name} unreadable ({e}): ignored; its requests are sent again if missing")
        return sorted(out, key=lambda s: s.created)

    def new(self, keys: list[str], backend: str, model: str, rnd: int) -> BatchState:
        name = sha256_text(self.stage, *sorted(keys), str(time.time()))[:16]
        return BatchState(self.stage, name, list(keys), backend, model, round=rnd, created=time.time())


# ------------------------------------------------------------------------------------------- the loop
@dataclass
class BatchSettings:
    state_dir: str
    window: str = "24h"
    poll_s: float = 30.0
    wait_s: float = 0.0            # 0: wait until every batch ends
    max_attempts: int = 3          # rounds a request may be submitted in, this run
    discount: float = 0.5


@dataclass
class BatchOutcome:
    """What `send_batched` did (the report's `batch` part)."""

    submitted: int = 0             # batches created this run
    resumed: int = 0               # batches found under state_dir and waited for instead of submitted again
    requests_submitted: int = 0
    replies: int = 0
    resubmitted: int = 0           # requests sent again after an expired / partly failed batch
    failed: int = 0
    pending: int = 0               # still running when wait_s ran out
    bad_lines: dict = field(default_factory=dict)
    statuses: dict = field(default_factory=dict)   # batch id -> last status
    polls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retried: Counter = field(default_factory=Counter)


def send_batched(api: BatchAPI, bs: BatchSettings, stage: str, backend_name: str, model: str,
                 pending: dict[str, Messages], params: dict, *,
                 on_reply: Callable[[str, Completion], dict | None], on_error: Callable[[str, LLMError], None],
                 check: Callable[[Messages, Completion], Completion] | None = None, desc: str = "") -> BatchOutcome:
    """Send `pending` (cache key -> messages) through the batch API, resuming batches kept under
    `bs.state_dir`; each reply goes to `on_reply`, each request that stays failed to `on_error`."""
    from tqdm.auto import tqdm

    store = BatchStore(bs.state_dir, stage)
    out = BatchOutcome()
    todo = dict(pending)
    attempts: Counter = Counter()
    active = _resume(api, store, todo, out)
    attempts.update(k for st in active for k in st.keys if k in todo)
    bar = tqdm(total=len(pending), desc=f"{desc or stage} batch ({backend_name}:{model})", unit="request")
    t0 = time.monotonic()
    try:
        rnd = 1
        while True:
            covered = {k for st in active for k in st.keys}
            fresh = [k for k in todo if k not in covered]
            if fresh:
                attempts.update(fresh)
                active.append(_submit(api, store, bs, backend_name, model, {k: todo[k] for k in fresh}, params,
                                      rnd, out))
            if not active:
                break
            ended = _wait(api, store, bs, active, out, bar, t0)
            if not ended:          # wait_s ran out: the rest stays under state_dir for a rerun
                for st in active:
                    for k in st.keys:
                        if k in todo:
                            out.pending += 1
                            on_error(k, LLMError(PENDING, f"batch {st.batch_id} still {st.status} after "
                                                          f"batch_wait_s={bs.wait_s:g}: rerun to collect it (it is "
                                                          "not submitted again)", attempts=0))
                break
            for st in ended:
                active.remove(st)
                _merge(api, store, st, todo, attempts, bs, out, bar, on_reply, on_error, check)
            rnd += 1
    finally:
        bar.close()
    return out


def _resume(api: BatchAPI, store: BatchStore, todo: dict, out: BatchOutcome) -> list[BatchState]:
    """Batches an earlier run submitted for requests still wanted: waited for, not submitted again."""
    live = []
    for st in store.load():
        if st.done:
            continue
        if not any(k in todo for k in st.keys):
            continue                       # asks for nothing wanted now (cached, or another config's): left as is
        if not st.batch_id and st.file_id:  # killed between create and save: ask the provider by name
            found = api.find(st.name)
            if found:
                st.batch_id, st.status = found["id"], found.get("status", "validating")
                store.save(st)
        if not st.batch_id:
            st.status = "lost"              # never submitted: its requests go into a new batch
            store.save(st)
            continue
        out.resumed += 1
        out.statuses[st.batch_id] = st.status
        live.append(st)
    return live


def _submit(api: BatchAPI, store: BatchStore, bs: BatchSettings, backend_name: str, model: str,
            requests: dict[str, Messages], params: dict, rnd: int, out: BatchOutcome) -> BatchState:
    st = store.new(list(requests), backend_name, model, rnd)
    data = request_lines(model, requests, params)
    atomic_write_bytes(store.dir / f"{stage_file(st)}.input.jsonl", data)
    store.save(st)
    st.file_id = api.upload(data, f"{stage_file(st)}.jsonl")
    st.status = "uploaded"
    store.save(st)
    created = api.create(st.file_id, bs.window, {"nbutils_batch": st.name, "stage": st.stage})
    if not created.get("id"):
        raise LLMError("malformed", "batch create answered without an id")
    st.batch_id, st.status = created["id"], created.get("status") or "validating"
    store.save(st)
    out.submitted += 1
    out.requests_submitted += len(requests)
    out.statuses[st.batch_id] = st.status
    return st


def stage_file(st: BatchState) -> str:
    return f"{st.stage}-{st.name}"


def _wait(api: BatchAPI, store: BatchStore, bs: BatchSettings, active: list[BatchState], out: BatchOutcome,
          bar, t0: float) -> list[BatchState]:
    """Poll the active batches (backoff from poll_s, x1.5 up to 10 min) until at least one ends; [] when
    wait_s runs out first."""
    delay = max(0.01, bs.poll_s)
    errors = 0
    while True:
        ended = []
        for st in active:
            try:
                info = api.retrieve(st.batch_id)
            except LLMError as e:
                if e.kind == "not_found":    # the provider no longer knows it: its requests are sent again
                    print(f"batch {st.batch_id} unknown to the provider ({e}): its missing requests are "
                          "submitted again")
                    info = {"status": "lost"}
                elif e.fatal:
                    raise
                else:
                    out.retried[e.kind] += 1
                    errors += 1
                    if errors > MAX_POLL_ERRORS:
                        raise LLMError(e.kind, f"{errors} status checks in a row failed, last: {e}; the batch "
                                               "is kept: rerun to resume waiting") from e
                    continue
            errors = 0
            out.polls += 1
            st.counts = dict(info.get("request_counts") or {})
            st.status = info.get("status") or st.status
            st.output_file_id = info.get("output_file_id") or st.output_file_id
            st.error_file_id = info.get("error_file_id") or st.error_file_id
            out.statuses[st.batch_id] = st.status
            if st.status in TERMINAL or st.status == "lost":
                ended.append(st)
            else:
                store.save(st)
        done = sum(int(st.counts.get("completed") or 0) + int(st.counts.get("failed") or 0) for st in active)
        bar.set_postfix(batches=",".join(f"{st.status}" for st in active), in_batch_done=done, refresh=False)
        bar.refresh()
        if ended:
            return ended
        if bs.wait_s and time.monotonic() - t0 + delay > bs.wait_s:
            return []
        time.sleep(delay)
        delay = min(delay * 1.5, max(bs.poll_s, MAX_POLL_S))


def _merge(api: BatchAPI, store: BatchStore, st: BatchState, todo: dict, attempts: Counter, bs: BatchSettings,
           out: BatchOutcome, bar, on_reply, on_error, check) -> None:
    """An ended batch's replies to the caller; the requests still missing back into `todo` (another round) or to
    on_error. The state is marked merged only after every reply was handed over (a kill in between re-reads the
    files and hands over only what the cache still lacks)."""
    results: dict[str, Completion | LLMError] = {}
    bad: Counter = Counter()
    for fid in (st.error_file_id, st.output_file_id):   # the output file's line wins
        if not fid:
            continue
        try:
            text = api.content(fid)
        except LLMError as e:
            if e.kind != "not_found":   # a passing fault: the run stops, the state stays, a rerun reads it again
                raise
            print(f"batch {st.batch_id}: its file {fid} is gone ({e}): its requests are submitted again")
            bad["result_file_gone"] += 1
            continue
        got, b = parse_results(text, st.model)
        results.update(got)
        bad.update(b)
    why_missing = {"expired": ("expired", "not run before the batch expired"),
                   "failed": ("batch_failed", "the batch failed validation"),
                   "cancelled": ("batch_failed", "the batch was cancelled"),
                   "lost": ("missing", "the batch is unknown to the provider")}.get(
        st.status, ("missing", "no line for it in the batch's output or error file"))
    replies = resubmitted = failed = 0
    for key in st.keys:
        if key not in todo:
            continue
        res = results.get(key) or LLMError(*why_missing)
        if isinstance(res, Completion) and not res.text.strip():
            res = LLMError("empty", "the reply's content is empty")
        if isinstance(res, Completion) and check is not None:
            try:
                res = check(todo[key], res)
            except LLMError as e:
                res = e
        if isinstance(res, Completion):
            res.attempts, res.batch_id = attempts[key] or 1, st.batch_id
            out.prompt_tokens += res.prompt_tokens
            out.completion_tokens += res.completion_tokens
            extra = on_reply(key, res)
            del todo[key]
            replies += 1
            bar.update(1)
            if isinstance(extra, dict) and extra:
                bar.set_postfix(**extra, refresh=False)
            continue
        if res.kind in RESUBMIT and attempts[key] < bs.max_attempts:
            rep = getattr(res, "reply", None)   # a paid-for reply the check refused (the last one: the caller's)
            if rep is not None:
                out.prompt_tokens += rep.prompt_tokens
                out.completion_tokens += rep.completion_tokens
            out.retried[res.kind] += 1
            resubmitted += 1
            continue                             # stays in todo: the next round submits it again
        res.attempts = attempts[key] or 1
        on_error(key, res)
        del todo[key]
        failed += 1
        bar.update(1)
    out.replies += replies
    out.resubmitted += resubmitted
    out.failed += failed
    for k, v in bad.items():
        out.bad_lines[k] = out.bad_lines.get(k, 0) + v
    st.merged = {"status": st.status, "replies": replies, "resubmitted": resubmitted, "failed": failed,
                 "bad_lines": dict(bad)}
    if st.status != "lost":
        st.status = "merged"
    store.save(st)


__all__ = ["BATCH_BACKENDS", "BatchAPI", "GroqBatchAPI", "OpenAIBatchAPI", "BatchSettings", "BatchState",
           "BatchStore", "BatchOutcome", "batch_api", "request_lines", "parse_results", "send_batched", "PENDING"]
