"""A local Hugging Face Hub on 127.0.0.1 speaking the endpoints huggingface_hub's create_repo and create_commit /
upload_folder use (LFS "basic" transfer; set HF_HUB_DISABLE_XET so the client does not take the Xet path):

    POST /api/repos/create                          -> {"url": ...}           (records name, organization, visibility)
    POST /api/validate-yaml                         -> {}                     (README.md front matter parsed as YAML)
    POST /api/models/{repo}/preupload/{rev}         -> per file "lfs" (large or binary) or "regular"
    POST /{repo}.git/info/lfs/objects/batch         -> an upload href per object on this server
    PUT  /lfs/{oid}                                 -> the bytes, checked against the sha256 oid
    POST /api/models/{repo}/commit/{rev}            -> NDJSON header/file/lfsFile lines -> {"commitUrl", "commitOid"}

Every call must carry `Authorization: Bearer <token>`; `repos[repo_id]` holds what was committed (path -> bytes)."""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LFS_THRESHOLD = 10_000


class FakeHub:
    def __init__(self, token: str = "hf_test_token"):
        self.token = token
        self.repos: dict[str, dict] = {}         # repo_id -> {"private": bool, "files": {path: bytes}, "commits": []}
        self.lfs: dict[str, bytes] = {}
        self.calls: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def reply(self, code: int, obj) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def authorised(self) -> bool:
                if self.path.startswith("/lfs/"):
                    return True        # a pre-signed upload URL, as on the real Hub
                if self.headers.get("Authorization") != f"Bearer {hub.token}":
                    self.reply(401, {"error": "Invalid credentials in Authorization header"})
                    return False
                return True

            def do_PUT(self):
                hub.calls.append(("PUT", self.path))
                data = self.body()
                oid = self.path.rsplit("/", 1)[-1]
                if hashlib.sha256(data).hexdigest() != oid:
                    return self.reply(400, {"error": "sha256 mismatch"})
                hub.lfs[oid] = data
                self.reply(200, {})

            def do_POST(self):
                hub.calls.append(("POST", self.path))
                if not self.authorised():
                    return
                raw = self.body()
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    req = json.loads(raw)
                    repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
                    hub.repos.setdefault(repo_id, {"private": req.get("visibility") == "private" or
                                                   bool(req.get("private")), "files": {}, "commits": []})
                    return self.reply(200, {"url": f"http://{self.headers['Host']}/{repo_id}", "name": repo_id})
                if path == "/api/validate-yaml":
                    import yaml

                    content = json.loads(raw)["content"]
                    m = re.match(r"^---\n(.*?)\n---\n", content, re.DOTALL)
                    try:
                        yaml.safe_load(m.group(1) if m else "")
                    except yaml.YAMLError as e:
                        return self.reply(400, {"errors": [{"message": str(e)}]})
                    return self.reply(200, {})
                m = re.match(r"^/api/models/(.+)/preupload/[^/]+$", path)
                if m:
                    files = json.loads(raw)["files"]
                    out = []
                    for f in files:
                        sample = base64.b64decode(f["sample"])
                        binary = b"\x00" in sample
                        out.append({"path": f["path"], "shouldIgnore": False, "oid": None,
                                    "uploadMode": "lfs" if f["size"] > LFS_THRESHOLD or binary else "regular"})
                    return self.reply(200, {"files": out})
                m = re.match(r"^/(.+)\.git/info/lfs/objects/batch$", path)
                if m:
                    req = json.loads(raw)
                    host = self.headers["Host"]
                    objs = [{"oid": o["oid"], "size": o["size"],
                             "actions": {"upload": {"href": f"http://{host}/lfs/{o['oid']}"}}}
                            for o in req["objects"]]
                    return self.reply(200, {"transfer": "basic", "objects": objs})
                m = re.match(r"^/api/models/(.+)/commit/[^/]+$", path)
                if m:
                    repo = hub.repos.get(m.group(1))
                    if repo is None:
                        return self.reply(404, {"error": "Repository not found"})
                    commit = {"files": {}}
                    for line in raw.decode().splitlines():
                        item = json.loads(line)
                        v = item["value"]
                        if item["key"] == "header":
                            commit["summary"] = v.get("summary")
                        elif item["key"] == "file":
                            commit["files"][v["path"]] = base64.b64decode(v["content"])
                        elif item["key"] == "lfsFile":
                            if v["oid"] not in hub.lfs:
                                return self.reply(400, {"error": f"LFS object {v['oid']} was never uploaded"})
                            commit["files"][v["path"]] = hub.lfs[v["oid"]]
                    repo["commits"].append(commit)
                    repo["files"].update(commit["files"])
                    oid = hashlib.sha1(json.dumps(sorted(commit["files"])).encode()).hexdigest()
                    return self.reply(200, {"commitUrl": f"http://{self.headers['Host']}/{m.group(1)}/commit/{oid}",
                                            "commitOid": oid, "pullRequestUrl": None})
                self.reply(404, {"error": f"no fake for POST {path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
