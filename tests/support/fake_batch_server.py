"""A loopback server speaking the files and batches endpoints of Groq (/openai/v1/...) and OpenAI (/v1/...), on top
of the fake chat server (fake_llm_server.py), so the real groq client and the OpenAI backend's httpx client drive it.

- POST .../files (multipart/form-data: `file`, `purpose=batch`) -> {"id": "file-N", "object": "file", ...}
- POST .../batches {input_file_id, endpoint, completion_window, metadata} -> a batch, status "validating"
- GET .../batches/{id}: each status check moves it on: validating -> in_progress (x `polls`) -> finalizing ->
  its planned end; GET .../batches lists them (with metadata)
- GET .../files/{id}/content: the input, output or error file (JSONL)

A batch's end is planned per submission (`plans`, one dict each, in order; then `default_plan`):
{"end": "completed"} every line answered by the chat fake's reply/judge functions; {"end": "expired", "answered":
0.5} the first half answered, the rest in the error file with code batch_expired; {"end": "failed"} validation
failed (no files); {"fail_lines": 2} the first 2 lines answered with status 500 in the error file (message
`fail_message`);
{"malformed_lines": 2} 2 garbage lines in the output file instead of the first 2 answers; {"drop_lines": 1} the
first line in neither file; {"polls": n} in_progress checks before it ends; {"hold": True} never ends.
`create_delay_s`: the batch is created at once but its reply comes that much later (a client killed meanwhile
never learns its id).

It records every submission (`submissions`: batch id and custom_ids) so tests count duplicates, and every file
it received (`uploads`) and every Authorization header value it saw (`auth_seen`).
"""
from __future__ import annotations

import json
import re
import time
from collections import Counter

from tests.support.fake_llm_server import FakeLLMServer


def multipart_parts(body: bytes, content_type: str) -> dict[str, bytes]:
    """name -> content of a multipart/form-data body."""
    m = re.search(r'boundary="?([^";]+)"?', content_type or "")
    if not m:
        return {}
    out = {}
    for part in body.split(b"--" + m.group(1).encode()):
        head, sep, content = part.partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]+)"', head)
        if sep and name:
            out[name.group(1).decode()] = content[:-2] if content.endswith(b"\r\n") else content
    return out


class FakeBatchServer(FakeLLMServer):
    def __init__(self, plans: list[dict] | None = None, default_plan: dict | None = None,
                 create_delay_s: float = 0.0, **kw):
        super().__init__(**kw)
        self.create_delay_s = create_delay_s
        self.plans = list(plans or [])
        self.default_plan = default_plan or {"end": "completed"}
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.submissions: list[dict] = []      # {"id", "custom_ids"}
        self.uploads: list[bytes] = []
        self.auth_seen: set[str] = set()
        self.status_checks = 0
        self._n = 0

    # ------------------------------------------------------------------ accounting
    def submitted_counts(self) -> Counter:
        """custom_id -> how many batches it was submitted in."""
        with self.lock:
            return Counter(c for s in self.submissions for c in s["custom_ids"])

    def _id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n:04d}"

    def _add_file(self, data: bytes, prefix: str = "file") -> str:
        fid = self._id(prefix)
        self.files[fid] = data
        return fid

    # ------------------------------------------------------------------ batch life
    def _create(self, body: dict) -> tuple[int, dict]:
        with self.lock:
            data = self.files.get(body.get("input_file_id") or "")
            if data is None:
                return 404, {"error": {"message": f"file {body.get('input_file_id')} not found"}}
            lines = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
            bid = self._id("batch")
            plan = dict(self.plans.pop(0) if self.plans else self.default_plan)
            b = {"id": bid, "object": "batch", "endpoint": body.get("endpoint"), "input_file_id": body["input_file_id"],
                 "completion_window": body.get("completion_window"), "created_at": int(time.time()),
                 "status": "validating", "metadata": body.get("metadata"), "output_file_id": None,
                 "error_file_id": None, "request_counts": {"total": len(lines), "completed": 0, "failed": 0}}
            self.batches[bid] = {"obj": b, "lines": lines, "plan": plan, "checks": 0}
            self.submissions.append({"id": bid, "custom_ids": [x["custom_id"] for x in lines]})
            return 200, b

    def _retrieve(self, bid: str) -> tuple[int, dict]:
        with self.lock:
            self.status_checks += 1
            rec = self.batches.get(bid)
            if rec is None:
                return 404, {"error": {"message": f"batch {bid} not found"}}
            b, plan = rec["obj"], rec["plan"]
            if b["status"] in ("completed", "expired", "failed", "cancelled") or plan.get("hold"):
                if plan.get("hold") and b["status"] == "validating":
                    b["status"] = "in_progress"
                return 200, b
            rec["checks"] += 1
            polls = plan.get("polls", 1)
            if rec["checks"] == 1:
                b["status"] = "in_progress"
            elif rec["checks"] <= 1 + polls:
                b["status"] = "in_progress"
                b["request_counts"]["completed"] = len(rec["lines"]) * (rec["checks"] - 1) // (polls + 1)
            elif rec["checks"] == 2 + polls:
                b["status"] = "finalizing"
            else:
                self._finish(rec)
            return 200, b

    def _finish(self, rec: dict) -> None:
        b, plan, lines = rec["obj"], rec["plan"], rec["lines"]
        end = plan.get("end", "completed")
        if end == "failed":
            b.update(status="failed", errors={"object": "list", "data": [{"code": "invalid_request", "line": 1,
                                                                           "message": "planned failure"}]})
            return
        answered = len(lines) if end == "completed" else int(len(lines) * plan.get("answered", 0.5))
        out, err = [], []
        for i, line in enumerate(lines):
            cid = line["custom_id"]
            if i >= answered:
                err.append({"id": f"req_{i}", "custom_id": cid, "response": None,
                            "error": {"code": "batch_expired", "message": "This request could not be executed "
                                                                          "before the completion window expired."}})
            elif i < plan.get("drop_lines", 0):
                continue
            elif i < plan.get("fail_lines", 0):
                err.append({"id": f"req_{i}", "custom_id": cid, "response": {
                    "status_code": 500, "request_id": f"r{i}",
                    "body": {"error": {"message": plan.get("fail_message", "internal error")}}},
                    "error": None})
            elif i < plan.get("malformed_lines", 0):
                out.append("{not json at all")
                continue
            else:
                out.append({"id": f"req_{i}", "custom_id": cid, "response": {
                    "status_code": 200, "request_id": f"r{i}", "body": self._completion(line["body"])},
                    "error": None})
        text = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in out)
        b["output_file_id"] = self._add_file(text.encode(), "file_out") if out else None
        etext = "".join(json.dumps(x) + "\n" for x in err)
        b["error_file_id"] = self._add_file(etext.encode(), "file_err") if err else None
        b["request_counts"] = {"total": len(lines), "completed": sum(1 for x in out if not isinstance(x, str)),
                               "failed": len(err)}
        b["status"] = "expired" if end == "expired" else "completed"
        b["completed_at" if end == "completed" else "expired_at"] = int(time.time())

    # ------------------------------------------------------------------ HTTP
    def _handler(self):
        server = self
        Base = super()._handler()

        class Handler(Base):
            def handle(self):
                try:
                    super().handle()
                except ConnectionResetError:     # a client killed mid-request (the restart tests): not news
                    pass

            def _json(self, status: int, obj) -> None:
                self._send(status, json.dumps(obj).encode())

            def _route(self) -> str:
                path = self.path.split("?")[0].rstrip("/")
                server.auth_seen.add(self.headers.get("Authorization") or "")
                return re.sub(r"^(/openai)?/v1", "", path)

            def do_GET(self):  # noqa: N802
                route = self._route()
                if route == "/batches":
                    with server.lock:
                        data = [r["obj"] for r in server.batches.values()]
                    return self._json(200, {"object": "list", "data": data})
                m = re.fullmatch(r"/batches/([\w-]+)", route)
                if m:
                    return self._json(*server._retrieve(m.group(1)))
                m = re.fullmatch(r"/files/([\w-]+)/content", route)
                if m:
                    data = server.files.get(m.group(1))
                    if data is None:
                        return self._json(404, {"error": {"message": "file not found"}})
                    return self._send(200, data, ctype="application/octet-stream")
                return self._json(404, {"error": {"message": "unknown route"}})

            def do_POST(self):  # noqa: N802
                route = self._route()
                if route not in ("/files", "/batches"):
                    return super().do_POST()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if route == "/files":
                    parts = multipart_parts(body, self.headers.get("Content-Type", ""))
                    if parts.get("purpose") != b"batch" or "file" not in parts:
                        return self._json(400, {"error": {"message": "need multipart file and purpose=batch"}})
                    with server.lock:
                        server.uploads.append(parts["file"])
                        fid = server._add_file(parts["file"])
                    return self._json(200, {"id": fid, "object": "file", "bytes": len(parts["file"]),
                                            "created_at": int(time.time()), "filename": "batch.jsonl",
                                            "purpose": "batch"})
                try:
                    payload = json.loads(body or b"{}")
                except ValueError:
                    return self._json(400, {"error": {"message": "body is not JSON"}})
                status, obj = server._create(payload)
                if server.create_delay_s:          # created, but the client hears of it only later (or never)
                    time.sleep(server.create_delay_s)
                return self._json(status, obj)

        return Handler


__all__ = ["FakeBatchServer", "multipart_parts"]
