"""A small Hugging Face Hub-compatible HTTP server for tests, on 127.0.0.1.

It implements what ``huggingface_hub`` (2.4) and ``datasets`` call when pushing, pulling and loading a dataset repo,
so tests run the real client end to end with no route to the real Hub: whoami, repo creation, repo info, preupload,
NDJSON commit, tree listing, paths-info, YAML validation and file resolve (HEAD and GET with ranges).

Authorization follows the Hub: a private repo is invisible without its owner's token (401 without a token, 404
with someone else's), writing needs a token with the "write" role (403 for a read token) in the owner's namespace
(403 otherwise). Every file is committed inline ("regular" upload mode) so no LFS or Xet path is involved.

Run standalone for manual poking: ``python tests/hub_server.py`` prints the endpoint and the test tokens.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

REPO_TYPES = ("models", "datasets", "spaces")


def git_blob_oid(content: bytes) -> str:
    """The git blob sha1 the Hub reports as a regular file's oid and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Commit:
    oid: str
    title: str
    date: str
    files: dict[str, bytes]


@dataclass
class Repo:
    repo_type: str  # "model" | "dataset" | "space"
    repo_id: str
    private: bool
    created_at: str
    commits: list[Commit] = field(default_factory=list)

    @property
    def owner(self) -> str:
        return self.repo_id.split("/", 1)[0]

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def commit_at(self, revision: str) -> Commit | None:
        if revision in ("main", "refs/heads/main", "HEAD"):
            return self.head
        for commit in self.commits:
            if commit.oid == revision:
                return commit
        return None


@dataclass
class Token:
    user: str
    role: str  # "read" | "write"


class HubState:
    """Repos, tokens and test switches shared by the handler threads."""

    def __init__(self, storage_dir: Path, tokens: dict[str, Token]) -> None:
        self.storage_dir = Path(storage_dir)
        self.tokens = tokens
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lock = threading.RLock()
        self.drop_next_commits = 0  # > 0: the server cuts the connection in the middle of that many commits
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, authorization header) seen

    def find(self, repo_type: str, repo_id: str) -> Repo | None:
        return self.repos.get((repo_type, repo_id))

    def persist(self, repo: Repo) -> None:
        """Mirror the head of a repo into the storage folder, so a test can look at what was pushed."""
        root = self.storage_dir / f"{repo.repo_type}s" / repo.repo_id
        for path, content in repo.head.files.items():
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None,
                 headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.extra = extra or {}
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HubServer

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output quiet
        return

    # -- plumbing ---------------------------------------------------------------------------------------------
    @property
    def state(self) -> HubState:
        return self.server.state

    def _body(self) -> bytes:
        return self._request_body

    def _read_request_body(self) -> None:
        # Read the whole body before answering, even an error, so a kept-alive connection stays in step.
        length = int(self.headers.get("Content-Length") or 0)
        self._request_body = self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json", head_only: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head_only and body:
            self.wfile.write(body)

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _error(self, error: HubError, head_only: bool = False) -> None:
        headers = {"X-Error-Message": error.message}
        if error.code:
            headers["X-Error-Code"] = error.code
        headers.update(error.headers)
        body = json.dumps({"error": error.message, **error.extra}).encode()
        self._send(error.status, body, headers, head_only=head_only)

    def _token(self) -> Token | None:
        """The caller's token; an unknown token is refused outright, as the Hub does."""
        header = self.headers.get("Authorization") or ""
        if not header:
            return None
        if not header.startswith("Bearer "):
            raise HubError(401, "Invalid credentials in Authorization header")
        token = self.state.tokens.get(header[len("Bearer "):].strip())
        if token is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return token

    def _readable(self, repo_type: str, repo_id: str) -> Repo:
        token = self._token()
        repo = self.state.find(repo_type, repo_id)
        if repo is None or (repo.private and (token is None or token.user != repo.owner)):
            # The Hub answers 401 to anonymous callers and 404 to other users, never revealing a private repo.
            status = 401 if token is None else 404
            raise HubError(status, "Repository not found", "RepoNotFound")
        return repo

    def _writable(self, repo_type: str, repo_id: str) -> Repo:
        token = self._token()
        if token is None:
            raise HubError(401, "You must be authenticated to write to a repo", "RepoNotFound")
        repo = self._readable(repo_type, repo_id)
        if token.user != repo.owner:
            raise HubError(403, f"You don't have the rights to write to {repo_id}.")
        if token.role != "write":
            raise HubError(403, "This token has read access only: it cannot write to a repo.")
        return repo

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        path = split.path
        query = parse_qs(split.query)
        with self.state.lock:
            self.state.requests.append((method, path, self.headers.get("Authorization")))
        head_only = method == "HEAD"
        self._read_request_body()
        try:
            for pattern, handler_name, methods in _ROUTES:
                match = pattern.fullmatch(path)
                if match and method in methods:
                    getattr(self, handler_name)(method, query, **match.groupdict())
                    return
            raise HubError(404, f"No route for {method} {path}")
        except HubError as error:
            self._error(error, head_only=head_only)
        except _DropConnection:
            self.close_connection = True

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # -- routes -----------------------------------------------------------------------------------------------
    def whoami(self, method: str, query: dict) -> None:
        token = self._token()
        if token is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        self._json(200, {"type": "user", "name": token.user, "fullname": token.user.title(), "orgs": [],
                         "auth": {"type": "access_token",
                                  "accessToken": {"displayName": "test", "role": token.role}}})

    def validate_yaml(self, method: str, query: dict) -> None:
        content = json.loads(self._body() or b"{}").get("content", "")
        match = re.match(r"^---\n(.*?)\n---", content, re.S)
        if match:
            try:
                yaml.safe_load(match.group(1))
            except yaml.YAMLError as error:
                self._json(400, {"errors": [{"message": f"invalid YAML: {error}"}], "warnings": []})
                return
        self._json(200, {"errors": [], "warnings": []})

    def create_repo(self, method: str, query: dict) -> None:
        payload = json.loads(self._body() or b"{}")
        token = self._token()
        if token is None:
            raise HubError(401, "You must be authenticated to create a repo")
        namespace = payload.get("organization") or token.user
        repo_type = payload.get("type") or "model"
        repo_id = f"{namespace}/{payload['name']}"
        if namespace != token.user:
            raise HubError(403, f'You don\'t have the rights to create a {repo_type} under the namespace "{namespace}"')
        if token.role != "write":
            raise HubError(403, "This token has read access only: it cannot create a repo.")
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        url = self.server.endpoint + ("" if repo_type == "model" else f"/{repo_type}s") + f"/{repo_id}"
        with self.state.lock:
            if self.state.find(repo_type, repo_id) is not None:
                raise HubError(409, f"You already created this {repo_type} repo", extra={"url": url})
            now = _now()
            repo = Repo(repo_type, repo_id, private, now)
            repo.commits.append(Commit(_oid(repo_id, "initial", now), "initial commit", now, {
                ".gitattributes": b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"}))
            self.state.repos[(repo_type, repo_id)] = repo
            self.state.persist(repo)
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def repo_info(self, method: str, query: dict, rtype: str, repo_id: str, revision: str | None = None) -> None:
        repo = self._readable(rtype[:-1], repo_id)
        commit = repo.commit_at(unquote(revision)) if revision else repo.head
        if commit is None:
            raise HubError(404, "Invalid rev id", "RevisionNotFound")
        card = _card_data(commit.files.get("README.md"))
        self._json(200, {
            "_id": _oid(repo_id), "id": repo_id, "author": repo.owner, "sha": commit.oid, "private": repo.private,
            "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [], "createdAt": repo.created_at,
            "lastModified": commit.date, "cardData": card, "usedStorage": sum(map(len, commit.files.values())),
            "siblings": [{"rfilename": path} for path in sorted(commit.files)],
        })

    def preupload(self, method: str, query: dict, rtype: str, repo_id: str, revision: str) -> None:
        repo = self._writable(rtype[:-1], repo_id)
        payload = json.loads(self._body() or b"{}")
        head = repo.head.files
        files = [{"path": item["path"], "uploadMode": "regular", "shouldIgnore": False,
                  "oid": git_blob_oid(head[item["path"]]) if item["path"] in head else None}
                 for item in payload.get("files", [])]
        self._json(200, {"files": files, "commitOid": repo.head.oid})

    def commit(self, method: str, query: dict, rtype: str, repo_id: str, revision: str) -> None:
        repo = self._writable(rtype[:-1], repo_id)
        with self.state.lock:
            drop = self.state.drop_next_commits > 0
            if drop:
                self.state.drop_next_commits -= 1
        if drop:
            # Vanish without an answer: to the client this is a connection dropped in the middle of the commit.
            raise _DropConnection()
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        header = next((line["value"] for line in lines if line["key"] == "header"), {})
        with self.state.lock:
            parent = repo.head
            if header.get("parentCommit") and header["parentCommit"] != parent.oid:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(parent.files)
            for line in lines:
                key, value = line["key"], line.get("value", {})
                if key == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    if value["path"] not in files:
                        raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                    files.pop(value["path"])
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: c for p, c in files.items() if not p.startswith(prefix)}
                elif key in ("lfsFile", "deletedEntries"):
                    raise HubError(400, f"This test server does not accept {key} operations.")
            now = _now()
            commit = Commit(_oid(repo_id, parent.oid, now, header.get("summary", "")), header.get("summary", ""),
                            now, files)
            repo.commits.append(commit)
            self.state.persist(repo)
        prefix = "" if repo.repo_type == "model" else f"/{repo.repo_type}s"
        self._json(200, {"success": True, "commitOid": commit.oid, "pullRequestUrl": None,
                         "commitUrl": f"{self.server.endpoint}{prefix}/{repo_id}/commit/{commit.oid}"})

    def tree(self, method: str, query: dict, rtype: str, repo_id: str, revision: str, subpath: str | None = None
             ) -> None:
        repo = self._readable(rtype[:-1], repo_id)
        commit = repo.commit_at(unquote(revision))
        if commit is None:
            raise HubError(404, "Invalid rev id", "RevisionNotFound")
        base = unquote(subpath or "").strip("/")
        recursive = (query.get("recursive") or ["false"])[0].lower() in ("1", "true")
        entries = _list_tree(commit, base, recursive)
        if base and not entries and base not in commit.files:
            raise HubError(404, f"{base} does not exist", "EntryNotFound")
        self._json(200, entries)

    def paths_info(self, method: str, query: dict, rtype: str, repo_id: str, revision: str) -> None:
        repo = self._readable(rtype[:-1], repo_id)
        commit = repo.commit_at(unquote(revision))
        if commit is None:
            raise HubError(404, "Invalid rev id", "RevisionNotFound")
        body = self._body().decode()
        form = parse_qs(body) if "application/json" not in (self.headers.get("Content-Type") or "") else {
            "paths": json.loads(body).get("paths", [])}
        entries = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in commit.files:
                entries.append(_file_entry(commit, path))
            elif any(p.startswith(path + "/") for p in commit.files) or path == "":
                entries.append(_folder_entry(commit, path))
        self._json(200, entries)

    def resolve(self, method: str, query: dict, prefix: str | None, repo_id: str, revision: str, filepath: str
                ) -> None:
        repo_type = (prefix or "models/")[:-2]
        repo = self._readable(repo_type, repo_id)
        commit = repo.commit_at(unquote(revision))
        if commit is None:
            raise HubError(404, "Invalid rev id", "RevisionNotFound")
        filepath = unquote(filepath)
        headers = {"X-Repo-Commit": commit.oid}
        if filepath not in commit.files:
            raise _EntryNotFound(headers)
        content = commit.files[filepath]
        headers.update({"ETag": f'"{git_blob_oid(content)}"', "Accept-Ranges": "bytes",
                        "Content-Disposition": f'inline; filename="{filepath.rsplit("/", 1)[-1]}"'})
        status, body = 200, content
        range_header = self.headers.get("Range")
        if range_header and method == "GET":
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip())
            if match:
                start_text, end_text = match.groups()
                if start_text == "":
                    start, end = max(len(content) - int(end_text), 0), len(content) - 1
                else:
                    start = int(start_text)
                    end = min(int(end_text), len(content) - 1) if end_text else len(content) - 1
                if start >= len(content):
                    self._send(416, b"", {"Content-Range": f"bytes */{len(content)}", **headers})
                    return
                body = content[start:end + 1]
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
        self._send(status, body, headers, content_type="application/octet-stream", head_only=method == "HEAD")


class _DropConnection(Exception):
    """Raised by a handler to close the socket without answering."""


class _EntryNotFound(HubError):
    """A missing file: the answer still names the commit, as the client caches the miss by commit."""

    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__(404, "Entry not found", "EntryNotFound", headers)


_REPO = r"(?P<repo_id>[\w.-]+/[\w.-]+)"
_RTYPE = r"(?P<rtype>models|datasets|spaces)"
_ROUTES: list[tuple[re.Pattern[str], str, tuple[str, ...]]] = [
    (re.compile(r"/api/whoami-v2"), "whoami", ("GET",)),
    (re.compile(r"/api/validate-yaml"), "validate_yaml", ("POST",)),
    (re.compile(r"/api/repos/create"), "create_repo", ("POST",)),
    (re.compile(rf"/api/{_RTYPE}/{_REPO}/preupload/(?P<revision>[^/]+)"), "preupload", ("POST",)),
    (re.compile(rf"/api/{_RTYPE}/{_REPO}/commit/(?P<revision>[^/]+)"), "commit", ("POST",)),
    (re.compile(rf"/api/{_RTYPE}/{_REPO}/paths-info/(?P<revision>[^/]+)"), "paths_info", ("POST",)),
    (re.compile(rf"/api/{_RTYPE}/{_REPO}/tree/(?P<revision>[^/]+)(?:/(?P<subpath>.*))?"), "tree", ("GET",)),
    (re.compile(rf"/api/{_RTYPE}/{_REPO}/revision/(?P<revision>[^/]+)"), "repo_info", ("GET",)),
    (re.compile(rf"/api/{_RTYPE}/{_REPO}"), "repo_info", ("GET",)),
    (re.compile(rf"/(?P<prefix>datasets/|spaces/)?{_REPO}/resolve/(?P<revision>[^/]+)/(?P<filepath>.+)"), "resolve",
     ("GET", "HEAD")),
]


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _oid(*parts: str) -> str:
    return hashlib.sha1(json.dumps([*parts, time.time_ns()]).encode()).hexdigest()


def _card_data(readme: bytes | None) -> dict | None:
    if not readme:
        return None
    match = re.match(r"^---\n(.*?)\n---", readme.decode("utf-8", "replace"), re.S)
    try:
        return yaml.safe_load(match.group(1)) if match else None
    except yaml.YAMLError:
        return None


def _last_commit(commit: Commit) -> dict[str, str]:
    return {"id": commit.oid, "title": commit.title, "date": commit.date}


def _file_entry(commit: Commit, path: str) -> dict[str, Any]:
    content = commit.files[path]
    return {"type": "file", "path": path, "size": len(content), "oid": git_blob_oid(content),
            "lastCommit": _last_commit(commit)}


def _folder_entry(commit: Commit, path: str) -> dict[str, Any]:
    return {"type": "directory", "path": path, "size": 0, "oid": hashlib.sha1(path.encode()).hexdigest(),
            "lastCommit": _last_commit(commit)}


def _list_tree(commit: Commit, base: str, recursive: bool) -> list[dict[str, Any]]:
    prefix = base + "/" if base else ""
    files, folders = [], set()
    for path in sorted(commit.files):
        if not path.startswith(prefix):
            continue
        rest = path[len(prefix):].split("/")
        for depth in range(1, len(rest)):
            if recursive or depth == 1:
                folders.add(prefix + "/".join(rest[:depth]))
        if recursive or len(rest) == 1:
            files.append(_file_entry(commit, path))
    return [_folder_entry(commit, folder) for folder in sorted(folders)] + files


class HubServer(ThreadingHTTPServer):
    """The server: ``HubServer(storage_dir, tokens)``, then ``start()`` / ``stop()``; ``endpoint`` is its URL."""

    daemon_threads = True

    def __init__(self, storage_dir: Path, tokens: dict[str, Token]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = HubState(storage_dir, tokens)
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and close kept-alive connections too, so clients see the Hub go down."""
        self.shutdown()
        self.server_close()
        with self._connections_lock:
            for connection in list(self._connections):
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def files(self, repo_id: str, repo_type: str = "dataset") -> dict[str, bytes]:
        repo = self.state.find(repo_type, repo_id)
        return dict(repo.head.files) if repo else {}

    def commits(self, repo_id: str, repo_type: str = "dataset") -> list[Commit]:
        repo = self.state.find(repo_type, repo_id)
        return list(repo.commits) if repo else []


if __name__ == "__main__":
    import tempfile

    demo_tokens = {"hf_test_write": Token("alice", "write"), "hf_test_read": Token("alice", "read")}
    hub = HubServer(Path(tempfile.mkdtemp(prefix="hub-")), demo_tokens).start()
    print(f"HF_ENDPOINT={hub.endpoint}  tokens: {', '.join(f'{k} ({v.user}, {v.role})' for k, v in demo_tokens.items())}")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.stop()


# -- a ready-made Hub for tests: alice (write and read tokens) and bob (write) ---------------------------------

ALICE_WRITE = "hf_alicewrite0123456789"
ALICE_READ = "hf_aliceread0123456789"
BOB_WRITE = "hf_bobwrite0123456789ab"


def start_test_hub(storage, monkeypatch) -> HubServer:
    """Start a server with alice's and bob's tokens and point huggingface_hub at it for this test."""
    import huggingface_hub.constants as hub_constants

    server = HubServer(storage, {ALICE_WRITE: Token("alice", "write"), ALICE_READ: Token("alice", "read"),
                                 BOB_WRITE: Token("bob", "write")}).start()
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    # The client reads these once at import; a test run may have set offline mode or a login cache.
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_TOKEN_PATH", str(storage.parent / "no-login" / "token"))
    return server
