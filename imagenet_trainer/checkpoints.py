"""Checkpoints you can trust after a host crash: every file and folder on disk before the rename, a list of the files
and their sizes sealed inside, and a reader that takes the newest checkpoint whose files are all there.

A rename is atomic in the namespace, not on the disk: without fsync the kernel may write the new folder's entry
before the files' data, so a crash can leave ``step_N`` in place with truncated or empty files (ext4's
``auto_da_alloc`` covers rename-over-a-file, not a new folder). Hence: fsync each file, then its folder, then the
rename's parent, and delete older checkpoints only after that.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .runinfo import atomic_write_text

FILE_LIST = "checkpoint_files.json"  # {relative path: size in bytes} of the state files, written last
RECORDS = ("config.yaml", "run_info.json")  # the launch's records: written atomically, and readers may edit them


def fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder``, then every folder bottom-up (each entry is durable before its parent's).
    On a shared filesystem each process calls it for the files it wrote: an NFS client flushes its own writes."""
    folder = Path(folder)
    dirs = [folder]
    for root, subdirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        dirs.extend(Path(root) / d for d in subdirs)
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(d)


def fsync_dir(folder: Path) -> None:
    """Make a folder's entries (a rename into it, a new file) durable. Some filesystems refuse fsync on a folder."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def seal(folder: Path) -> None:
    """Write FILE_LIST (the size of every file but RECORDS) into a finished checkpoint folder, durably."""
    folder = Path(folder)
    sizes = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != FILE_LIST and str(p.relative_to(folder)) not in RECORDS}
    atomic_write_text(folder / FILE_LIST, json.dumps(sizes, indent=1) + "\n")
    fsync_dir(folder)


def problem(folder: Path) -> str | None:
    """Why ``folder`` is not a complete checkpoint (naming the file), or None. A folder without FILE_LIST (saved by
    another tool) is taken as it is: nothing to check it against."""
    folder = Path(folder)
    listed = folder / FILE_LIST
    if not listed.is_file():
        return None
    try:
        sizes = json.loads(listed.read_text())
        if not isinstance(sizes, dict):
            raise ValueError
    except (ValueError, OSError, UnicodeDecodeError):
        return f"{listed} is damaged"
    for name, size in sizes.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        actual = path.stat().st_size
        if actual != size:
            return f"{path} has {actual} bytes, {size} were saved ({'truncated' if actual < size else 'grown'})"
    return None


def step_folders(ckpt_dir: Path) -> list[Path]:
    """The ``step_N`` folders, oldest first (.tmp_* folders are unfinished saves)."""
    return sorted(p for p in Path(ckpt_dir).glob("step_*") if p.is_dir())


def newest_complete(ckpt_dir: Path) -> tuple[Path | None, list[str]]:
    """(newest complete checkpoint or None, one line per newer one skipped and why)."""
    skipped = []
    for path in reversed(step_folders(ckpt_dir)):
        why = problem(path)
        if why is None:
            return path, skipped
        skipped.append(f"skipped {path.name}: {why}")
    return None, skipped


def pick(resume_from: str, ckpt_dir: Path, print_fn=print) -> Path | None:
    """The checkpoint ``--resume_from_checkpoint`` names: "latest" is the newest complete one (each newer one
    skipped is said, with why; None when nothing was saved yet), a folder must be complete. ValueError otherwise."""
    if resume_from == "latest":
        path, skipped = newest_complete(ckpt_dir)
        for line in skipped:
            print_fn(line)
        if path is None and skipped:
            raise ValueError(f"latest: no complete checkpoint in {ckpt_dir} ({'; '.join(skipped)}); resume from a "
                             "copy or start a new --output_dir")
        return path
    path = Path(resume_from)
    if not path.is_dir():
        raise ValueError(f"{path}: no such checkpoint folder")
    why = problem(path)
    if why is not None:
        raise ValueError(f"{path}: damaged checkpoint: {why}; --resume_from_checkpoint latest takes the newest "
                         "complete one")
    return path


def setting_mismatch(folder: Path, cfg) -> str | None:
    """How the launch recorded in ``folder``/config.yaml differs from ``cfg`` in what a checkpoint's state cannot
    follow (the model, the optimizer's kind of state, EMA on or off), as "was saved with ..., this launch has ...";
    None when they agree or the checkpoint holds no config.yaml."""
    import yaml  # noqa: PLC0415 (only resumes read it)

    try:
        saved = yaml.safe_load((Path(folder) / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(saved, dict):
        return None
    ema = {True: "EMA on (--ema_decay {})", False: "EMA off (--ema_decay 0)"}
    pairs = [(f"--{k} {saved[k]}", f"--{k} {getattr(cfg, k)}") for k in ("model", "optimizer")
             if k in saved and str(saved[k]).lower() != str(getattr(cfg, k)).lower()]
    if "ema_decay" in saved and bool(saved["ema_decay"]) != bool(cfg.ema_decay):
        pairs.append((ema[bool(saved["ema_decay"])].format(saved["ema_decay"]),
                      ema[bool(cfg.ema_decay)].format(cfg.ema_decay)))
    if not pairs:
        return None
    return (f"was saved with {', '.join(a for a, _ in pairs)}, this launch has {', '.join(b for _, b in pairs)}; "
            f"resume with the checkpoint's settings, or start a new --output_dir")


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC, or a library's wrapping of it (safetensors' SafetensorError carries only the text)."""
    import errno  # noqa: PLC0415

    while error is not None:  # or the error raised while handling it (a clean-up that failed too)
        if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(error) \
                or "Disk quota exceeded" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def nearly_full(ckpt_dir: Path) -> bool:
    """Whether a failed save is best explained by the disk: less free than the newest checkpoint takes, or than
    64 MiB. torch.save reports a full disk as "unexpected pos" or "iostream error", without ENOSPC."""
    newest = next(iter(reversed(step_folders(ckpt_dir))), None)
    size = sum(p.stat().st_size for p in newest.rglob("*") if p.is_file()) if newest is not None else 0
    return free_bytes(ckpt_dir) < max(size, 64 << 20)


def free_bytes(folder: Path) -> int:
    """Bytes free to this user on ``folder``'s filesystem (0 when it cannot be read)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize
