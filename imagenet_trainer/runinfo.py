"""Atomic writes and the self-description every run leaves beside its outputs."""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import yaml

LIBRARIES = ("torch", "torchvision", "timm", "accelerate", "datasets", "transformers", "huggingface_hub",
             "safetensors", "pillow", "numpy", "pyarrow")


def atomic_write_text(path, text: str) -> None:
    """Write to a temp file in the same folder, fsync, rename: readers see the old file or the new one, never half."""
    atomic_write_bytes(path, text.encode())


# the temp file an atomic write makes beside PATH: mkstemp's ".PATH." prefix, ".tmp" suffix and 8 random characters
# (tempfile._RandomNameSequence) between, which a kill before the rename leaves behind
WRITE_LEFTOVER = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def atomic_write_bytes(path, data: bytes) -> None:
    """``atomic_write_text`` of bytes (a file kept byte for byte, lines that are no UTF-8 included)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; other users of a shared dataset must read it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)  # the rename itself survives a host crash, in the order the writes were made


def fsync_dir(folder: Path) -> None:
    """Make a folder's entries (a rename into it, a new file) durable. Some filesystems refuse fsync on a folder."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_write_leftovers(folder: Path) -> None:
    """Remove the temp files of atomic writes into ``folder`` that a kill cut before their rename."""
    for entry in Path(folder).iterdir():
        if WRITE_LEFTOVER.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink():
            entry.unlink()


def current_umask() -> int:
    """The process's umask: reading it means setting it, so it is set back at once."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def share_tree(folder) -> None:
    """Give ``folder`` and everything in it the modes a plain mkdir/open would (0777/0666 less the umask): mkdtemp
    makes 0700 and safetensors writes 0600, which on a shared cluster locks teammates out of exports/checkpoints."""
    umask = current_umask()
    for path in (Path(folder), *Path(folder).rglob("*")):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


# The note a folder a tool moves aside to delete (``.NAME.old`` beside it) holds, in its own ``.work/`` (preprocess.py's
# work notes' folder): the only proof that the tool put ``.NAME.old`` there, so that a later run may delete what a kill
# left, while a user's folder, link or file of that name, whatever it holds, is never deleted
REPLACED_NOTE = ".work/replaced"


def replaced_folder(final_dir) -> Path:
    """Where ``final_dir`` is moved aside while a new one takes its name: ``.NAME.old`` beside it."""
    final_dir = Path(final_dir)
    return final_dir.with_name(f".{final_dir.name}.old")


def replaced_note(final_dir, by: str) -> str:
    return f"{final_dir}, moved aside by {by} to be deleted\n"


def mark_replaced(final_dir, by: str) -> None:
    """Write the note into ``final_dir`` before it is moved aside."""
    atomic_write_text(Path(final_dir) / REPLACED_NOTE, replaced_note(final_dir, by))


def is_replaced(old, final_dir, by: str) -> bool:
    """Whether ``old`` (a real folder, not a link to one) holds ``by``'s note for ``final_dir``, or is what a kill at
    the end of delete_replaced leaves of such a folder (_emptied)."""
    old = Path(old)
    note = old / REPLACED_NOTE
    try:
        return (old.is_dir() and not old.is_symlink() and not note.parent.is_symlink() and note.is_file()
                and not note.is_symlink() and note.read_text() == replaced_note(final_dir, by)) or _emptied(old)
    except (OSError, UnicodeDecodeError):
        return False


def delete_replaced(old) -> None:
    """Delete a folder ``is_replaced`` vouched for. The note goes last: a run killed midway leaves a folder the next
    run still knows to be its own."""
    old = Path(old)
    note = old / REPLACED_NOTE
    for folder in [f for f in (old, note.parent) if f.is_dir()]:  # an emptied one (_emptied) has no note
        for entry in folder.iterdir():
            if entry not in (note.parent, note):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
    note.unlink(missing_ok=True)
    if note.parent.is_dir():
        note.parent.rmdir()
    old.rmdir()


def _emptied(old: Path) -> bool:
    """Whether ``old`` (.NAME.old) holds nothing but the note's folder, empty: what a kill between delete_replaced's
    last steps leaves, its note deleted. Nothing in it can be lost, so it is a leftover too. An empty ``old`` is not:
    it may be a user's folder of that name (a kill in the one step before its rmdir leaves it too, refused)."""
    work = old / Path(REPLACED_NOTE).parent
    if not old.is_dir() or old.is_symlink():
        return False
    return list(old.iterdir()) == [work] and not work.is_symlink() and work.is_dir() and not any(work.iterdir())


class ReplacedInTheWay(FileExistsError):
    """``replace_dir(..., by=...)`` would move the folder it replaces to ``.NAME.old``, where something else is."""


def replace_dir(tmp_dir, final_dir, by: str | None = None) -> None:
    """Move a finished temp folder into place; an older folder of that name is removed only once the new one is in.

    With ``by`` (the tool's name), the older folder is marked (``mark_replaced``) before it is moved aside to
    ``.NAME.old``, so a later run can tell a leftover of a kill from a user's folder of that name
    (``is_replaced``); a ``.NAME.old`` that is not the tool's raises ReplacedInTheWay and is left as it was. Without
    ``by`` (an export inside a run folder of the tool's own), ``.NAME.old`` is the tool's by where it is."""
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    old = None
    if final_dir.exists():
        old = replaced_folder(final_dir)
        if by is None:
            shutil.rmtree(old, ignore_errors=True)
        elif is_replaced(old, final_dir, by):
            delete_replaced(old)
        elif os.path.lexists(old):
            raise ReplacedInTheWay(f"{final_dir} is replaced by moving it to {old} first, which holds something else "
                                   "(a file, link or folder of yours?); move it away or rename it, then run again")
        if by is not None:
            mark_replaced(final_dir, by)
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    if old is not None:
        if by is None:
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                delete_replaced(old)
            except OSError as e:  # the new folder is in place: not worth a failed run
                print(f"warning: {old}, the folder this one replaced, could not be deleted ({e}); delete it to free "
                      "its space")


CHECKOUT = Path(__file__).resolve().parent.parent  # the code this process runs


def git(root: Path, *args) -> str | None:
    """stdout of ``git -C root ARGS`` (stripped), or None when git is missing, slow (10 s) or fails."""
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.cache  # the code this process was launched with; train.py records it in every checkpoint
def git_sha() -> str | None:
    sha = git(CHECKOUT, "rev-parse", "HEAD")
    if sha is None:
        return None
    return sha + ("-dirty" if git(CHECKOUT, "status", "--porcelain", "--untracked-files=no") else "")


@functools.cache
def git_install_url(root: Path | None = None) -> str | None:
    """``git+URL@SHA`` of the code in ``root`` (default: this checkout), for the model card's pip line: the exact
    code that made the weights. None without a remote ``origin``, with uncommitted changes or a commit no remote
    branch contains (that code is nowhere to install from) or for a local-path remote. Credentials in the URL
    (``https://user:token@host/...``) are dropped: a card is public."""
    root = root or CHECKOUT
    sha, url = git(root, "rev-parse", "HEAD"), git(root, "remote", "get-url", "origin")
    if not sha or not url or git(root, "status", "--porcelain", "--untracked-files=no") != "":
        return None
    if not git(root, "branch", "-r", "--contains", sha):  # never pushed (as the last fetch knows): not installable
        return None
    if "://" in url:
        scheme, rest = url.split("://", 1)
        host, _, path = rest.partition("/")
        url = f"{scheme}://{host.rpartition('@')[2]}/{path}"
    elif ":" in url and not url.startswith(("/", ".")):  # scp-like git@host:owner/repo.git (no secret in it)
        user_host, path = url.split(":", 1)
        url = f"ssh://{user_host}/{path}"
    else:
        return None
    return f"git+{url}@{sha}"


def library_versions() -> dict:
    return dict(_library_versions())  # a copy: callers may add to it


@functools.cache  # fixed for the process; metadata lookups scan site-packages
def _library_versions() -> dict:
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_run_info(out_dir, cfg, extra: dict | None = None) -> None:
    """config.yaml (re-runnable with --config), and run_info.json: command line, git SHA, library versions."""
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    info = {"command": [sys.executable, *sys.argv], "git_sha": git_sha(), "versions": library_versions(),
            **(extra or {})}
    atomic_write_text(out_dir / "run_info.json", json.dumps(info, indent=2, default=str))
