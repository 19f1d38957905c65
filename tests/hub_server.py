"""A local stand-in for the read side of the Hugging Face Hub, for tests that load models by Hub id across a real
network boundary (127.0.0.1) where the Hub itself is unreachable.

Point a client at it with ``HF_ENDPOINT=hub.endpoint``; huggingface_hub reads it once, at import
(huggingface_hub/constants.py), so set it in the environment of a fresh interpreter. Model repos are folders,
``LocalHub(repos={"me/blocknet": folder})``, served at one commit (revision ``main`` or that commit's hash).

What huggingface_hub 2.4 asks, and what the Hub answers (huggingface_hub/file_download.py
``get_hf_file_metadata``/``_get_metadata_or_catch_error``/``http_get``, hf_api.py ``model_info``,
utils/_http.py ``hf_raise_for_status``):

* ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}``: the repo's info as JSON (``id``, ``sha``,
  ``siblings``); ``repo_exists`` is this call.
* ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: a regular (git) file answers 200 with ``ETag`` (its git blob id),
  ``X-Repo-Commit`` and ``Content-Length``. An LFS file (``*.safetensors``, as the Hub's default .gitattributes
  tracks them) answers 302 to a storage host with ``X-Linked-Etag`` (its sha256), ``X-Linked-Size`` and
  ``X-Repo-Commit``: the client stops at a redirect off the Hub's origin, reads the metadata from it and downloads
  from ``Location`` without credentials. The storage host here is a second server on another port (another origin).
  No ``X-Xet-*`` headers, so the client takes the plain HTTP download path.
* ``GET /api/agent-harnesses``: a registry huggingface_hub reads to fill in its User-Agent header; served empty.
* Errors carry the Hub's ``X-Error-Code`` header (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``), from
  which the client raises RepositoryNotFoundError, RevisionNotFoundError and RemoteEntryNotFoundError; a missing
  file's 404 also carries ``X-Repo-Commit``, which the client uses to cache the file's absence.

Every request is logged in ``hub.requests`` as ``(method, path)``; a path the Hub would serve but this stand-in
does not is logged in ``hub.unhandled`` too (and answers 501), so a test can assert that nothing went unanswered.
"""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".msgpack")  # Hub .gitattributes


def git_blob_id(data: bytes) -> str:
    """The id git gives a file's content: what the Hub sends as a regular file's ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Repo:
    """A folder's files at one commit: {path in repo: bytes}, the commit hash (from the content, so stable)."""

    def __init__(self, repo_id: str, folder: Path):
        self.repo_id = repo_id
        self.files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*"))
                      if p.is_file()}
        digest = hashlib.sha1(repo_id.encode())
        for name, data in self.files.items():
            digest.update(name.encode() + b"\0" + git_blob_id(data).encode())
        self.commit = digest.hexdigest()

    def info(self) -> dict:
        return {"id": self.repo_id, "modelId": self.repo_id, "author": self.repo_id.split("/")[0], "sha": self.commit,
                "private": False, "gated": False, "disabled": False, "library_name": "timm", "tags": ["timm"],
                "lastModified": "2026-01-01T00:00:00.000Z",
                "siblings": [{"rfilename": name} for name in self.files]}


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, format, *args):  # the request log is hub.requests, not stderr
        pass

    def do_HEAD(self):
        self._answer(body=False)

    def do_GET(self):
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        hub = self.server.hub
        with hub.lock:
            hub.requests.append((self.command, path))
        status, headers, content = (hub.storage_answer(path) if self.server.storage else hub.hub_answer(path))
        if status == 501:
            with hub.lock:
                hub.unhandled.append((self.command, path))
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(content))}.items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(content)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, hub: "LocalHub", storage: bool):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hub, self.storage = hub, storage


def _error(status: int, code: str | None, message: str, **headers: str) -> tuple[int, dict, bytes]:
    content = json.dumps({"error": message}).encode()
    extra = {"X-Error-Code": code} if code else {}
    return status, {"Content-Type": "application/json", **extra, "X-Error-Message": message, **headers}, content


class LocalHub:
    """Start with ``start()`` (or as a context manager), stop with ``stop()``; ``endpoint`` is the HF_ENDPOINT."""

    def __init__(self, repos: dict[str, Path]):
        self.repos = {repo_id: Repo(repo_id, folder) for repo_id, folder in repos.items()}
        self.blobs = {hashlib.sha256(data).hexdigest(): data for repo in self.repos.values()
                      for data in repo.files.values()}
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self._servers: list[_Server] = []
        self.endpoint = self.storage_endpoint = ""  # HF_ENDPOINT, and the storage host LFS files redirect to

    def start(self) -> "LocalHub":
        self._servers = [_Server(self, storage=False), _Server(self, storage=True)]
        for server in self._servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()
        # kept after stop(): clients pointed there then meet a closed port, as with the Hub out of reach
        self.endpoint, self.storage_endpoint = (f"http://127.0.0.1:{s.server_address[1]}" for s in self._servers)
        return self

    def stop(self) -> None:
        """Stop serving (idempotent)."""
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers = []

    def __enter__(self) -> "LocalHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _find(self, owner: str, name: str, revision: str) -> tuple[Repo | None, tuple | None]:
        repo = self.repos.get(f"{owner}/{name}")
        if repo is None:
            return None, _error(404, "RepoNotFound", "Repository not found")
        if revision not in ("main", repo.commit):
            return None, _error(404, "RevisionNotFound", "Invalid rev id: " + revision)
        return repo, None

    def hub_answer(self, path: str) -> tuple[int, dict, bytes]:
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) in (4, 6) and (len(parts) == 4 or parts[4] == "revision"):
            repo, error = self._find(parts[2], parts[3], parts[5] if len(parts) == 6 else "main")
            return error or (200, {"Content-Type": "application/json"}, json.dumps(repo.info()).encode())
        if parts == ["api", "agent-harnesses"]:  # what huggingface_hub tags its User-Agent from, once a day; empty
            return 200, {"Content-Type": "application/json"}, b'{"standardEnvVars": [], "harnesses": {}}'
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, error = self._find(parts[0], parts[1], parts[3])
            return error or self._resolve(repo, "/".join(parts[4:]))
        return _error(501, None, f"not served by this stand-in: {path}")

    def _resolve(self, repo: Repo, filename: str) -> tuple[int, dict, bytes]:
        data = repo.files.get(filename)
        if data is None:
            return _error(404, "EntryNotFound", f"{filename} does not exist on main", **{"X-Repo-Commit": repo.commit})
        if filename.endswith(LFS_SUFFIXES):
            sha256 = hashlib.sha256(data).hexdigest()
            return 302, {"Location": f"{self.storage_endpoint}/blobs/{sha256}", "X-Repo-Commit": repo.commit,
                         "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(data)),
                         "ETag": f'"{git_blob_id(data)}"'}, b""
        return 200, {"ETag": f'"{git_blob_id(data)}"', "X-Repo-Commit": repo.commit,
                     "Content-Type": "application/octet-stream"}, data

    def storage_answer(self, path: str) -> tuple[int, dict, bytes]:
        sha256 = path.removeprefix("/blobs/")
        if sha256 not in self.blobs:
            return 404, {"Content-Type": "text/plain"}, b"NoSuchKey"
        return 200, {"ETag": f'"{sha256}"', "Content-Type": "application/octet-stream"}, self.blobs[sha256]
