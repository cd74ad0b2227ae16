"""A small Hugging Face Hub emulation on 127.0.0.1, for testing the real huggingface_hub client.

It serves what ``hf_hub_download`` asks for (``HEAD``/``GET /{repo}/resolve/{revision}/{file}`` with the headers
the client needs: ``X-Repo-Commit``, ``ETag``, ``Content-Length``, ``Accept-Ranges``/``Range``; ``X-Error-Code`` on
404s) and what ``HfApi.create_repo`` + ``upload_folder`` send (``POST /api/repos/create``, ``/api/validate-yaml``,
``/api/models/{repo}/preupload/{rev}``, ``/api/models/{repo}/commit/{rev}``). Files are committed in the regular
(inline base64) upload mode, which the server chooses in its preupload answer, so no LFS/Xet storage is needed.

Dataset repositories (``/datasets/{repo}/resolve/...``, what ``repo_type="dataset"`` asks for) are served from the
same ``repos`` as model repositories (:func:`serve_dataset` commits one in the Hub's webdataset layout).

Every request is logged in ``server.requests``; ``server.drop[filename] = n`` makes the next ``n`` GETs of that file
send half of the body and then close the connection (``n = -1``: every GET); ``server.etags[filename]`` publishes
another ETag (sha256) for a file than its content's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    private: bool = False


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""


class HubServer:
    """The emulated Hub. Use ``with HubServer() as hub:`` or the ``hub`` fixture."""

    def __init__(self, token: str | None = None) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self.drop: dict[str, int] = {}
        self.etags: dict[str, str] = {}  # filename -> the ETag to publish instead of the content's sha256
        self.token = token  # when set, write endpoints need "Authorization: Bearer <token>"
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- content ---------------------------------------------------------------------------------

    def commit(self, repo_id: str, files: dict[str, bytes], message: str = "commit", branch: str = "main") -> str:
        """Add a commit with ``files`` on top of ``branch`` (created if needed); returns its 40-hex hash."""
        with self._lock:
            repo = self.repos.setdefault(repo_id, Repo())
            parent = repo.refs.get(branch)
            content = dict(repo.commits[parent]) if parent else {}
            content.update(files)
            digest = hashlib.sha1(repr((repo_id, parent, message, sorted(content.items()))).encode()).hexdigest()
            repo.commits[digest] = content
            repo.refs[branch] = digest
            return digest

    def file_requests(self, filename: str, method: str | None = None) -> list[Request]:
        return [
            r
            for r in self.requests
            if "/resolve/" in r.path and r.path.endswith("/" + filename) and (method is None or r.method == method)
        ]

    # -- life cycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        hub = self

        class Handler(_Handler):
            server_state = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    server_state: HubServer
    protocol_version = "HTTP/1.0"  # one request per connection: simple and what a dropped body looks like

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    # -- helpers ---------------------------------------------------------------------------------

    def _log(self, body: bytes = b"") -> None:
        hub = self.server_state
        with hub._lock:
            hub.requests.append(
                Request(
                    self.command,
                    unquote(urlsplit(self.path).path),
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
            )

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        self._json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message, **(headers or {})})

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _authorised(self) -> bool:
        token = self.server_state.token
        if token is None or self.headers.get("Authorization") == f"Bearer {token}":
            return True
        self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
        return False

    # -- downloads -------------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self._log()
        self._resolve()

    def do_GET(self) -> None:
        self._log()
        path = unquote(urlsplit(self.path).path)
        if path.startswith("/api/models/"):
            self._model_info(path)
        else:
            self._resolve()

    def _resolve(self) -> None:
        hub = self.server_state
        parts = unquote(urlsplit(self.path).path).strip("/").split("/")
        if parts[:1] == ["datasets"]:  # dataset repos: /datasets/{repo}/resolve/{revision}/{file}
            parts = parts[1:]
        if len(parts) < 5 or parts[2] != "resolve":
            self._error(404, "NotFound", f"no route for {self.path}")
            return
        repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        repo = hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return
        commit = repo.refs.get(revision, revision if revision in repo.commits else None)
        if commit is None:
            self._error(404, "RevisionNotFound", "Invalid rev id")
            return
        content = repo.commits[commit].get(filename)
        if content is None:
            self._error(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": commit})
            return
        headers = {
            "X-Repo-Commit": commit,
            "ETag": f'"{hub.etags.get(filename) or hashlib.sha256(content).hexdigest()}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        start = 0
        status = 200
        range_header = self.headers.get("Range")
        if self.command == "GET" and range_header and range_header.startswith("bytes="):
            start = int(range_header[len("bytes=") :].split("-")[0] or 0)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(content) - 1}/{len(content)}"
        body = content[start:]
        headers["Content-Length"] = str(len(body))
        if self.command == "GET":
            with hub._lock:
                remaining = hub.drop.get(filename, 0)
                if remaining > 0:
                    hub.drop[filename] = remaining - 1
            if remaining != 0:
                # Promise the whole body, send half of it, hang up.
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
        self._send(status, body, headers)

    def _model_info(self, path: str) -> None:
        parts = path.strip("/").split("/")  # api/models/org/name[/revision/rev]
        repo_id = "/".join(parts[2:4])
        repo = self.server_state.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return
        rev = parts[5] if len(parts) > 5 and parts[4] == "revision" else "main"
        commit = repo.refs.get(rev, rev if rev in repo.commits else None)
        if commit is None:
            self._error(404, "RevisionNotFound", "Invalid rev id")
            return
        files = [{"rfilename": name} for name in sorted(repo.commits[commit])]
        self._json(200, {"id": repo_id, "modelId": repo_id, "sha": commit, "private": repo.private, "siblings": files})

    # -- uploads ---------------------------------------------------------------------------------

    def do_POST(self) -> None:
        body = self._body()
        self._log(body)
        hub = self.server_state
        path = unquote(urlsplit(self.path).path)
        if not self._authorised():
            return
        if path == "/api/repos/create":
            payload = json.loads(body)
            repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
            with hub._lock:
                if repo_id in hub.repos:  # the Hub answers 409 with the repo's url
                    message = "You already created this model repo"
                    self._json(409, {"error": message, "url": f"{hub.url}/{repo_id}"}, {"X-Error-Message": message})
                    return
                hub.repos[repo_id] = Repo(
                    private=payload.get("visibility") == "private" or bool(payload.get("private"))
                )
            self._json(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})
            return
        if path == "/api/validate-yaml":
            self._json(200, {"errors": [], "warnings": []})
            return
        parts = path.strip("/").split("/")  # api/models/org/name/(preupload|commit)/rev
        if len(parts) == 6 and parts[:2] == ["api", "models"] and parts[4] in ("preupload", "commit"):
            repo_id, action, revision = "/".join(parts[2:4]), parts[4], parts[5]
            if repo_id not in hub.repos:
                self._error(404, "RepoNotFound", "Repository not found")
                return
            if action == "preupload":
                files = json.loads(body)["files"]
                answer = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
                self._json(200, {"files": answer, "commitOid": hub.repos[repo_id].refs.get(revision)})
            else:
                self._commit(repo_id, revision, body)
            return
        self._error(404, "NotFound", f"no route for POST {path}")

    def _commit(self, repo_id: str, revision: str, body: bytes) -> None:
        hub = self.server_state
        files: dict[str, bytes] = {}
        message = ""
        for line in body.decode().splitlines():
            item = json.loads(line)
            if item["key"] == "header":
                message = item["value"]["summary"]
            elif item["key"] == "file":
                value = item["value"]
                files[value["path"]] = base64.b64decode(value["content"])
            else:
                self._error(400, "BadRequest", f"unsupported commit operation {item['key']}")
                return
        oid = hub.commit(repo_id, files, message=message, branch=revision)
        self._json(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None})


class ArchiveServer:
    """A plain HTTP file server on 127.0.0.1 (public dataset archives): ``files[path] = bytes``; ``Range`` requests
    answered with 206; ``drop[path] = n`` cuts the next ``n`` GETs halfway (``-1``: every GET); ``requests`` logs
    ``(method, path, headers)``."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drop: dict[str, int] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                path = unquote(urlsplit(self.path).path)
                server.requests.append((self.command, path, {k.lower(): v for k, v in self.headers.items()}))
                content = server.files.get(path)
                if content is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start, status = 0, 200
                range_header = self.headers.get("Range")
                if range_header and range_header.startswith("bytes="):
                    start, status = int(range_header[6:].split("-")[0] or 0), 206
                body = content[start:]
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
                self.end_headers()
                if self.command == "HEAD":
                    return
                remaining = server.drop.get(path, 0)
                if remaining > 0:
                    server.drop[path] = remaining - 1
                self.wfile.write(body[: len(body) // 2] if remaining else body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def archives() -> Iterator[ArchiveServer]:
    """A running :class:`ArchiveServer`."""
    server = ArchiveServer()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def running_hub(token: str | None = None) -> Iterator[HubServer]:
    server = HubServer(token=token).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Iterator[HubServer]:
    """A running emulated Hub; huggingface_hub points at it (HF_ENDPOINT) with an empty cache of its own."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    with running_hub(token="hf_test_token") as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(cache))
        monkeypatch.setenv("HF_TOKEN", "hf_test_token")
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        # What constants computed from HF_ENDPOINT at import time (as in a fresh process with HF_ENDPOINT set).
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        yield server
