"""The write side of tests/hub_server.py's LocalHub: what huggingface_hub 2.4's ``create_repo``, ``create_commit``
and ``upload_folder`` ask (hf_api.py, _commit_api.py ``_fetch_upload_modes``/``_upload_files``/``_send_commit``,
lfs.py), answered as the Hub answers. A push's new commit is the repo's head at once, so a load by Hub id after it
reads what was pushed.

* ``POST /api/repos/create`` (``name``, ``organization``, ``type``, ``visibility``): a new repo with the Hub's
  default ``.gitattributes`` as its first commit; an existing one answers 409 with its ``url``, which
  ``exist_ok=True`` takes as success.
* ``POST /api/validate-yaml``: the card's front matter, checked as YAML before anything is uploaded.
* ``POST /api/{kind}/{repo}/preupload/{rev}``: each file's upload mode as the Hub decides it (hub_server
  ``is_lfs``: LFS for the suffixes its .gitattributes tracks, large and binary files; regular otherwise) and the
  oid of the file already there, from which the client skips unchanged files.
* ``POST /{repo}.git/info/lfs/objects/batch`` (``/datasets/{repo}.git/...`` for datasets), the git-lfs batch API:
  ``basic`` transfer, an upload ``href`` on the storage host (another origin, no credentials, as the Hub's
  presigned URLs) and a ``verify`` href on the Hub; objects already stored get no actions. The storage ``PUT``
  checks the content against its sha256; ``.../objects/verify`` checks that it arrived.
* ``POST /api/{kind}/{repo}/commit/{rev}``: the NDJSON commit (header, base64 regular files, LFS pointers to
  stored objects, deleted files and folders) becomes the new head; its answer names the commit.

Never xet: huggingface_hub 2.4 uploads through xet whenever the ``hf_xet`` package is importable, whatever the
server says (``_upload_files`` consults no server field), so clients pushing here set ``HF_HUB_DISABLE_XET=1``;
without it they ask ``/api/{kind}/{repo}/xet-write-token/{rev}``, which is left unhandled (501).
Every write route but validate-yaml and the storage ``PUT`` wants ``Authorization: Bearer <token>`` (401 without,
as the Hub). ``hub.refuse`` = {route: HTTP status} makes a route fail as a broken Hub would (routes: ``ROUTES``).
"""
from __future__ import annotations

import base64
import hashlib
import json

import yaml
from hub_server import LFS_SUFFIXES, LocalHub, Repo, Request, answer_json, error, is_lfs

ROUTES = ("create", "preupload", "lfs-batch", "upload", "verify", "commit")  # what LocalHub.refuse can fail
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES).encode()


def hub_answer(hub: LocalHub, request: Request) -> tuple[int, dict, bytes]:
    """The Hub origin's POST routes."""
    parts = request.parts
    if parts == ["api", "validate-yaml"]:
        return validate_yaml(request.json()["content"])
    if request.authorization is None:  # every write route: a token, checked against hub.token upstream
        return error(401, None, "You must be authenticated to access this endpoint")
    if parts == ["api", "repos", "create"]:
        return refused(hub, "create") or create_repo(hub, request.json())
    if parts[0] == "api" and parts[1:2] in (["models"], ["datasets"]) and len(parts) == 6 and \
            parts[4] in ("preupload", "commit"):
        repo, failed = hub.find(request, parts[1][:-1], "/".join(parts[2:4]), parts[5])
        route = preupload if parts[4] == "preupload" else commit
        return failed or refused(hub, parts[4]) or route(hub, repo, request)
    repo_type, lfs_parts = ("dataset", parts[1:]) if parts[0] == "datasets" else ("model", parts)
    if len(lfs_parts) == 6 and lfs_parts[1].endswith(".git") and lfs_parts[2:5] == ["info", "lfs", "objects"]:
        repo_id = lfs_parts[0] + "/" + lfs_parts[1].removesuffix(".git")
        repo, failed = hub.find(request, repo_type, repo_id, "main")
        if lfs_parts[5] == "batch":
            return failed or refused(hub, "lfs-batch") or lfs_batch(hub, repo, request.json())
        if lfs_parts[5] == "verify":
            return failed or refused(hub, "verify") or lfs_verify(hub, request.json())
    return error(501, None, f"not served by this stand-in: {request.path}")


def refused(hub: LocalHub, route: str) -> tuple | None:
    status = hub.refuse.get(route)
    return status and error(status, None, f"Internal Error - {route} refused by the test")


def repo_url(hub: LocalHub, repo: Repo) -> str:
    return f"{hub.endpoint}/{'datasets/' if repo.repo_type == 'dataset' else ''}{repo.repo_id}"


def validate_yaml(content: str) -> tuple[int, dict, bytes]:
    front = content.split("---\n")[1] if content.startswith("---\n") and content.count("---\n") >= 2 else ""
    try:
        yaml.safe_load(front)
    except yaml.YAMLError as e:
        return 400, {"Content-Type": "application/json"}, json.dumps({"errors": [{"message": str(e)}]}).encode()
    return answer_json({"errors": [], "warnings": []})


def create_repo(hub: LocalHub, payload: dict) -> tuple[int, dict, bytes]:
    repo_type, repo_id = payload.get("type") or "model", f"{payload['organization']}/{payload['name']}"
    existing = hub.repo(repo_id, repo_type)
    if existing is not None:
        body = {"error": f"You already created this {repo_type} repo", "url": repo_url(hub, existing)}
        return 409, {"Content-Type": "application/json", "X-Error-Message": body["error"]}, json.dumps(body).encode()
    repo = Repo(repo_id, {".gitattributes": GITATTRIBUTES}, repo_type, payload.get("visibility") == "private")
    with hub.lock:
        hub.repos[repo_type, repo_id] = repo
    return answer_json({"url": repo_url(hub, repo), "name": repo_id, "id": repo.commit})


def preupload(hub: LocalHub, repo: Repo, request: Request) -> tuple[int, dict, bytes]:
    files = []
    for entry in request.json()["files"]:
        path, size, sample = entry["path"], entry["size"], base64.b64decode(entry["sample"])
        files.append({"path": path, "uploadMode": "lfs" if is_lfs(path, size, sample) else "regular",
                      "shouldIgnore": False, "oid": repo.oid(path) if path in repo.files else None})
    return answer_json({"files": files, "commitOid": repo.commit})


def lfs_batch(hub: LocalHub, repo: Repo, payload: dict) -> tuple[int, dict, bytes]:
    if payload.get("operation") != "upload" or "basic" not in payload.get("transfers", ["basic"]):
        return error(501, None, "not served by this stand-in: LFS batch other than a basic upload")
    verify = f"{repo_url(hub, repo)}.git/info/lfs/objects/verify"
    objects = []
    for obj in payload["objects"]:
        upload = {"href": f"{hub.storage_endpoint}/upload/{obj['oid']}"}
        actions = None if obj["oid"] in hub.blobs else {"upload": upload, "verify": {"href": verify}}
        objects.append({"oid": obj["oid"], "size": obj["size"], "authenticated": True} |
                       ({"actions": actions} if actions else {}))
    return 200, {"Content-Type": "application/vnd.git-lfs+json"}, json.dumps(
        {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode()


def storage_put(hub: LocalHub, request: Request) -> tuple[int, dict, bytes]:
    """The storage host's PUT of one LFS object (a presigned URL on the Hub: no credentials asked)."""
    oid = request.path.removeprefix("/upload/")
    if hub.refuse.get("upload"):  # the storage host words its errors as S3 does, not as the Hub
        return hub.refuse["upload"], {"Content-Type": "text/plain"}, b"InternalError"
    if hashlib.sha256(request.body).hexdigest() != oid:
        return 400, {"Content-Type": "text/plain"}, b"BadDigest: the content does not match its sha256"
    with hub.lock:
        hub.blobs[oid] = request.body
    return 200, {"ETag": f'"{hashlib.md5(request.body).hexdigest()}"'}, b""


def lfs_verify(hub: LocalHub, payload: dict) -> tuple[int, dict, bytes]:
    data = hub.blobs.get(payload["oid"])
    if data is None or len(data) != payload["size"]:
        return error(404, None, f"LFS object {payload['oid']} was not uploaded")
    return answer_json({"success": True})


def commit(hub: LocalHub, repo: Repo, request: Request) -> tuple[int, dict, bytes]:
    """Apply the NDJSON operations to the head's files; the result is the new head."""
    lines = [json.loads(line) for line in request.body.splitlines() if line.strip()]
    if not lines or lines[0]["key"] != "header":
        return error(400, None, "The commit must start with a header")
    parent = lines[0]["value"].get("parentCommit")
    if parent and parent != repo.commit:
        return error(412, None, "A commit has happened since. Please refresh and try again.")
    files, lfs = dict(repo.files), set(repo.lfs)
    for line in lines[1:]:
        key, value = line["key"], line["value"]
        path = value["path"]
        if key == "file":
            files[path] = base64.b64decode(value["content"])
            lfs.discard(path)
        elif key == "lfsFile":
            if value["oid"] not in hub.blobs:
                return error(400, None, f"Your push was rejected because an LFS pointer pointed to a file that does "
                                        f"not exist: {path}")
            files[path] = hub.blobs[value["oid"]]
            lfs.add(path)
        elif key in ("deletedFile", "deletedFolder"):
            gone = [p for p in files if p == path or key == "deletedFolder" and p.startswith(path.rstrip("/") + "/")]
            if not gone:
                return error(404, "EntryNotFound", f"A file with this name doesn't exist: {path}")
            for p in gone:
                del files[p]
        else:
            return error(501, None, f"not served by this stand-in: commit operation {key}")
    with hub.lock:
        sha = repo.add_commit(files, lfs, lines[0]["value"].get("summary", ""))
    return answer_json({"success": True, "commitOid": sha, "commitUrl": f"{repo_url(hub, repo)}/commit/{sha}",
                        "hookOutput": ""})
