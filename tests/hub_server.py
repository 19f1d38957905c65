"""A local stand-in for the Hugging Face Hub, read and write side, for tests that load and push models and datasets
by Hub id across a real network boundary (127.0.0.1) where the Hub itself is unreachable.

Point a client at it with ``HF_ENDPOINT=hub.endpoint``; huggingface_hub reads it once, at import
(huggingface_hub/constants.py), so set it in the environment of a fresh interpreter (a push from the test's own
interpreter: ``point_this_process_at``). Repos are folders,
``LocalHub(repos={"me/blocknet": folder}, datasets={...})``, each served at one commit (revision ``main`` or that
commit's hash) until a push adds commits (then every commit's hash is a revision).

What huggingface_hub 2.4 asks, and what the Hub answers (huggingface_hub/file_download.py
``get_hf_file_metadata``/``_get_metadata_or_catch_error``/``http_get``, hf_api.py ``model_info``,
utils/_http.py ``hf_raise_for_status``); ``{kind}`` is ``models`` or ``datasets``, and dataset repos' git paths
start with ``/datasets``:

* ``GET /api/{kind}/{repo}`` and ``/api/{kind}/{repo}/revision/{rev}``: the repo's info as JSON (``id``, ``sha``,
  ``siblings``, ``private``); ``repo_exists`` is this call.
* ``GET /api/{kind}/{repo}/tree/{rev}[/{folder}]`` (``?recursive=true``): the folder's entries (``type``, ``path``,
  ``oid``, ``size``, ``lfs``) in one page; what HfFileSystem's ``ls``/``glob`` read.
* ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: a regular (git) file answers 200 with ``ETag`` (its git blob id),
  ``X-Repo-Commit`` and ``Content-Length``. An LFS file (what the Hub's default .gitattributes tracks, see
  ``LFS_SUFFIXES``, and what was pushed as LFS) answers 302 to a storage host with ``X-Linked-Etag`` (its sha256),
  ``X-Linked-Size`` and ``X-Repo-Commit``: the client stops at a redirect off the Hub's origin, reads the metadata
  from it and downloads from ``Location`` without credentials. The storage host here is a second server on another
  port (another origin). No ``X-Xet-*`` headers, so the client takes the plain HTTP download path.
* ``GET /api/whoami-v2``: the token's user, their organizations and the token's role (``{"type": "user", "name":
  "me", "orgs": [...], "auth": {"accessToken": {"role": "write"}}}``: ``hub.orgs``, ``hub.role``); 401 without a
  token. A "read" token's writes answer 403, as the Hub's do.
* ``GET /api/agent-harnesses``: a registry huggingface_hub reads to fill in its User-Agent header; served empty.
* The write side (create, preupload, LFS batch and storage ``PUT``, commit): see tests/hub_write.py.
* Errors carry the Hub's ``X-Error-Code`` header (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``), from
  which the client raises RepositoryNotFoundError, RevisionNotFoundError and RemoteEntryNotFoundError; a missing
  file's 404 also carries ``X-Repo-Commit``, which the client uses to cache the file's absence.
* Tokens as the Hub checks them: a request whose ``Authorization`` is not ``Bearer hub.token`` answers 401
  "Invalid credentials in Authorization header" (the Hub does so on every route); a private repo answers 401
  ``RepoNotFound`` to a request without one, as if absent. The token is never printed or logged.

Every request is logged in ``hub.requests`` as ``(method, path)``; a path the Hub would serve but this stand-in
does not is logged in ``hub.unhandled`` too (and answers 501), so a test can assert that nothing went unanswered.
"""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

# what the Hub's default .gitattributes (written into every new repo) tracks with LFS
LFS_SUFFIXES = (".7z", ".arrow", ".bin", ".bz2", ".ckpt", ".ftz", ".gz", ".h5", ".joblib", ".mlmodel", ".model",
                ".msgpack", ".npy", ".npz", ".onnx", ".ot", ".parquet", ".pb", ".pickle", ".pkl", ".pt", ".pth",
                ".rar", ".safetensors", ".tar", ".tflite", ".tgz", ".wasm", ".xz", ".zip", ".zst")
LFS_MIN_BYTES = 10 * 2**20  # the Hub takes larger files as LFS whatever their name
TOKEN = "hf_localhubwritetoken"  # what LocalHub accepts unless given another


def git_blob_id(data: bytes) -> str:
    """The id git gives a file's content: what the Hub sends as a regular file's ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str, size: int, sample: bytes) -> bool:
    """The Hub's upload mode for a file: LFS for tracked suffixes, large files and binary content (a NUL byte in
    the first 512 bytes, git's test for binary), a regular git blob otherwise."""
    return path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_BYTES or b"\0" in sample[:512]


class Repo:
    """A repo's commits: ``files`` ({path in repo: bytes}) and ``lfs`` (the paths stored as LFS) are the head's;
    a commit's hash comes from its parent and content, so it is stable."""

    def __init__(self, repo_id: str, files: dict[str, bytes], repo_type: str = "model", private: bool = False):
        self.repo_id, self.repo_type, self.private = repo_id, repo_type, private
        self.commits: dict[str, tuple[dict[str, bytes], set[str]]] = {}
        self.log: list[tuple[str, str]] = []  # (commit hash, summary), oldest first
        self.commit = ""
        self.add_commit(files, {p for p, data in files.items() if is_lfs(p, len(data), data)}, "Initial commit")

    @classmethod
    def from_folder(cls, repo_id: str, folder: Path, repo_type: str = "model") -> "Repo":
        return cls(repo_id, {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*"))
                             if p.is_file()}, repo_type)

    @property
    def files(self) -> dict[str, bytes]:
        return self.commits[self.commit][0]

    @property
    def lfs(self) -> set[str]:
        return self.commits[self.commit][1]

    def add_commit(self, files: dict[str, bytes], lfs: set[str], summary: str) -> str:
        digest = hashlib.sha1(f"{self.repo_type}/{self.repo_id}\0{self.commit}".encode())
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + git_blob_id(files[name]).encode())
        self.commit = digest.hexdigest()
        self.commits[self.commit] = dict(files), set(lfs) & set(files)
        self.log.append((self.commit, summary))
        return self.commit

    def oid(self, path: str) -> str:
        """What the Hub calls a file's oid: sha256 of an LFS file's content, the git blob id of a regular one."""
        data = self.files[path]
        return hashlib.sha256(data).hexdigest() if path in self.lfs else git_blob_id(data)

    def info(self, revision: str) -> dict:
        files = self.commits[self.commit if revision == "main" else revision][0]
        return {"id": self.repo_id, "author": self.repo_id.split("/")[0], "sha": self.commit if revision == "main"
                else revision, "private": self.private, "gated": False, "disabled": False, "tags": [],
                "lastModified": "2026-01-01T00:00:00.000Z", "siblings": [{"rfilename": name} for name in files],
                **({"modelId": self.repo_id, "library_name": "timm"} if self.repo_type == "model" else {})}


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, format, *args):  # the request log is hub.requests, not stderr
        pass

    def do_HEAD(self):
        self._answer(body=False)

    def do_GET(self):
        self._answer(body=True)

    do_POST = do_PUT = do_GET

    def _request_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0], 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        self.rfile.readline()  # the blank line after the last (empty) chunk
        return b"".join(chunks)

    def _answer(self, body: bool) -> None:
        url = urlsplit(self.path)
        path, hub = unquote(url.path), self.server.hub
        request = Request(self.command, path, {k: v[-1] for k, v in parse_qs(url.query).items()},
                          self.headers.get("Authorization"), self._request_body())
        with hub.lock:
            hub.requests.append((self.command, path))
        status, headers, content = hub.storage_answer(request) if self.server.storage else hub.hub_answer(request)
        if status == 501:
            with hub.lock:
                hub.unhandled.append((self.command, path))
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(content))}.items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(content)


class Request:
    """What the routes read of a request: method, path (unquoted), query, the Authorization header, the body."""

    def __init__(self, method: str, path: str, query: dict, authorization: str | None, body: bytes):
        self.method, self.path, self.query, self.authorization, self.body = method, path, query, authorization, body
        self.parts = path.strip("/").split("/")

    def json(self) -> dict:
        return json.loads(self.body or b"{}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, hub: "LocalHub", storage: bool):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hub, self.storage = hub, storage


def error(status: int, code: str | None, message: str, **headers: str) -> tuple[int, dict, bytes]:
    """An answer as the Hub words its errors: the message in ``X-Error-Message`` and the JSON body's ``error``."""
    content = json.dumps({"error": message}).encode()
    extra = {"X-Error-Code": code} if code else {}
    return status, {"Content-Type": "application/json", **extra, "X-Error-Message": message, **headers}, content


def answer_json(value) -> tuple[int, dict, bytes]:
    return 200, {"Content-Type": "application/json"}, json.dumps(value).encode()


class LocalHub:
    """Start with ``start()`` (or as a context manager), stop with ``stop()``; ``endpoint`` is the HF_ENDPOINT, and
    ``token`` the one token it accepts. ``refuse`` = {route: HTTP status} makes a write route fail (routes:
    tests/hub_write.py ``ROUTES``)."""

    def __init__(self, repos: dict[str, Path] | None = None, datasets: dict[str, Path] | None = None,
                 token: str = TOKEN):
        self.repos = {("model", repo_id): Repo.from_folder(repo_id, folder) for repo_id, folder in
                      (repos or {}).items()}
        self.repos |= {("dataset", repo_id): Repo.from_folder(repo_id, folder, "dataset") for repo_id, folder in
                       (datasets or {}).items()}
        self.blobs = {hashlib.sha256(data).hexdigest(): data for repo in self.repos.values()
                      for data in repo.files.values()}
        self.token, self.refuse = token, {}
        self.role, self.orgs = "write", ()  # the token's role, the organizations its user belongs to
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

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo | None:
        return self.repos.get((repo_type, repo_id))

    def find(self, request: Request, repo_type: str, repo_id: str, revision: str) -> tuple[Repo | None, tuple | None]:
        """(the repo, None), or (None, the Hub's answer: not found, or private to a request without a token)."""
        repo = self.repo(repo_id, repo_type)
        if repo is None:
            return None, error(404, "RepoNotFound", "Repository not found")
        if repo.private and request.authorization is None:
            return None, error(401, "RepoNotFound", "Repository not found")
        if revision != "main" and revision not in repo.commits:
            return None, error(404, "RevisionNotFound", "Invalid rev id: " + revision)
        return repo, None

    def hub_answer(self, request: Request) -> tuple[int, dict, bytes]:
        import hub_write  # it builds on this module's Repo and answers

        if request.authorization not in (None, f"Bearer {self.token}"):
            return error(401, None, "Invalid credentials in Authorization header")
        parts = request.parts
        if request.method in ("POST", "PUT"):
            if self.role == "read":
                return error(403, None, "You don't have the rights to write to this repository with a read token")
            return hub_write.hub_answer(self, request)
        if parts[0] == "api" and parts[1:2] in (["models"], ["datasets"]) and len(parts) >= 4:
            return self._api(request, parts[1][:-1], "/".join(parts[2:4]), parts[4:])
        if parts == ["api", "whoami-v2"]:  # the token's owner; a wrong token was refused above
            return answer_json({"type": "user", "name": "me", "orgs": [{"type": "org", "name": o} for o in self.orgs],
                                "auth": {"type": "access_token", "accessToken": {"role": self.role}}}) \
                if request.authorization else \
                error(401, None, "Invalid credentials in Authorization header")
        if parts == ["api", "agent-harnesses"]:  # what huggingface_hub tags its User-Agent from, once a day; empty
            return answer_json({"standardEnvVars": [], "harnesses": {}})
        repo_type, parts = ("dataset", parts[1:]) if parts[0] == "datasets" else ("model", parts)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, failed = self.find(request, repo_type, "/".join(parts[:2]), parts[3])
            return failed or self._resolve(repo, parts[3], "/".join(parts[4:]))
        return error(501, None, f"not served by this stand-in: {request.path}")

    def _api(self, request: Request, repo_type: str, repo_id: str, rest: list[str]) -> tuple[int, dict, bytes]:
        revision = rest[1] if len(rest) >= 2 and rest[0] in ("revision", "tree") else "main"
        if rest and not (rest[0] == "revision" and len(rest) == 2 or rest[0] == "tree" and len(rest) >= 2):
            return error(501, None, f"not served by this stand-in: {request.path}")
        repo, failed = self.find(request, repo_type, repo_id, revision)
        if failed:
            return failed
        if rest and rest[0] == "tree":
            return answer_json(tree(repo, revision, "/".join(rest[2:]), request.query.get("recursive") == "true"))
        return answer_json(repo.info(revision))

    def _resolve(self, repo: Repo, revision: str, filename: str) -> tuple[int, dict, bytes]:
        commit = repo.commit if revision == "main" else revision
        files, lfs = repo.commits[commit]
        data = files.get(filename)
        if data is None:
            return error(404, "EntryNotFound", f"{filename} does not exist on {revision}", **{"X-Repo-Commit": commit})
        if filename in lfs:
            sha256 = hashlib.sha256(data).hexdigest()
            return 302, {"Location": f"{self.storage_endpoint}/blobs/{sha256}", "X-Repo-Commit": commit,
                         "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(data)),
                         "ETag": f'"{git_blob_id(data)}"'}, b""
        return 200, {"ETag": f'"{git_blob_id(data)}"', "X-Repo-Commit": commit,
                     "Content-Type": "application/octet-stream"}, data

    def storage_answer(self, request: Request) -> tuple[int, dict, bytes]:
        if request.method == "PUT":
            import hub_write

            return hub_write.storage_put(self, request)
        sha256 = request.path.removeprefix("/blobs/")
        if sha256 not in self.blobs:
            return 404, {"Content-Type": "text/plain"}, b"NoSuchKey"
        return 200, {"ETag": f'"{sha256}"', "Content-Type": "application/octet-stream"}, self.blobs[sha256]


def tree(repo: Repo, revision: str, folder: str, recursive: bool) -> list[dict]:
    """The entries under ``folder`` as the Hub's tree API lists them (folders first, then files)."""
    files, lfs = repo.commits[repo.commit if revision == "main" else revision]
    prefix = folder.strip("/") + "/" if folder.strip("/") else ""
    folders, entries = set(), []
    for path in sorted(p for p in files if p.startswith(prefix)):
        below = path[len(prefix):].split("/")
        folders.update(prefix + "/".join(below[:i]) for i in range(1, len(below) if recursive else min(2, len(below))))
        if recursive or len(below) == 1:
            data = files[path]
            entries.append({"type": "file", "path": path, "size": len(data), "oid": git_blob_id(data)} | (
                {"lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}}
                if path in lfs else {}))
    return [{"type": "directory", "path": p, "oid": hashlib.sha1(p.encode()).hexdigest(), "size": 0}
            for p in sorted(folders)] + entries


def point_this_process_at(hub: LocalHub, monkeypatch, home: Path) -> None:
    """Point huggingface_hub in this interpreter at ``hub`` (what ``HF_ENDPOINT`` does at import: HfApi objects made
    from now on use it), online, xet off (tests/hub_write.py), and with no token anywhere (the token file looked for
    in the empty folder ``home``): tests pass ``hub.token`` or set ``HF_TOKEN``. Loads by Hub id go through a fresh
    interpreter instead: huggingface_hub fixes their URL template at import."""
    import huggingface_hub.constants as constants

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    for name, value in {"ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": False, "HF_HUB_DISABLE_XET": True,
                        "HF_TOKEN_PATH": str(home / "token")}.items():
        monkeypatch.setattr(constants, name, value)
