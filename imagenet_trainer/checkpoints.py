"""Checkpoints you can trust after a host crash: every file and folder on disk before the rename, a list of the files
and their sizes sealed inside, and a reader that takes the newest checkpoint whose files are all there.

A rename is atomic in the namespace, not on the disk: without fsync the kernel may write the new folder's entry
before the files' data, so a crash can leave ``step_N`` in place with truncated or empty files (ext4's
``auto_da_alloc`` covers rename-over-a-file, not a new folder). Hence: fsync each file, then its folder, then the
rename's parent, and delete older checkpoints only after that. A file can also change without changing size (a
flipped bit on a disk or in a copy, a tool that rewrote it): neither safetensors nor torch.load would notice every
such change, so each file's CRC-32 is listed beside its size and checked before a resume. That includes the
launch's config.yaml, which the resume reads the saved settings from (its seed, model, optimizer, EMA) but which a
reader may edit (its eval settings, for validate.py): a changed one does not make the checkpoint incomplete, the
resume reads the settings from the run folder's copy with the saved bytes instead (config_source), and stops, keeping
the checkpoint, where no copy has them.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import zlib
from pathlib import Path

from .runinfo import atomic_write_bytes, atomic_write_text, fsync_dir

# the model weights of train.py's checkpoints (validate.py reads these): DDP's or one process's; FSDP's
# SHARDED_STATE_DICT (one shard file per rank); FSDP's FULL_STATE_DICT (gathered on rank 0)
SAVED_WEIGHTS = ("model.safetensors", "pytorch_model_fsdp_0", "pytorch_model_fsdp.bin")
WEIGHTS = (*SAVED_WEIGHTS, "pytorch_model.bin")  # and accelerate's without safe serialization
FILE_LIST = "checkpoint_files.json"  # {relative path: {"bytes": size, "crc32": CRC-32}} of the state files, last
CONFIG = "config.yaml"  # the launch's resolved flags: listed, as a resume reads them; a reader may edit a
# checkpoint's eval settings there: validate.py and a resume note a change (config_source), neither refuses it
UNLISTED = ("run_info.json",)  # where and how the launch ran: a resume reads it for its messages only (readers may
# edit it)


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


def seal(folder: Path) -> None:
    """Write FILE_LIST (the size and CRC-32 of every file but UNLISTED, read back from the disk; CONFIG included)
    into a finished checkpoint folder, durably."""
    folder = Path(folder)
    files = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "crc32": crc32(p)}
             for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != FILE_LIST and str(p.relative_to(folder)) not in UNLISTED}
    atomic_write_text(folder / FILE_LIST, json.dumps(files, indent=1) + "\n")
    fsync_dir(folder)


def crc32(path: Path) -> int:
    """zlib's CRC-32 of a file, read in blocks of 16 MiB (memory stays flat on a large shard). A CRC, not a
    cryptographic hash: it guards against accidental change, at a fraction of SHA-256's cost a byte."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


DAMAGE_ERRNOS = {errno.EIO, errno.ENODATA}  # a read error of the medium: the bytes are lost, as a flipped bit's


def problem(folder: Path, config: bool = False, only: str | None = None) -> str | None:
    """Why ``folder`` is not a complete checkpoint (naming the file), or None. A folder without FILE_LIST (saved by
    another tool) is taken as it is: nothing to check it against; a list of sizes without CRCs checks the sizes.
    ``config``: CONFIG too, where the list has it (whether it is the one saved: config_source); without it the
    state files alone, what a complete checkpoint needs (a reader may edit its eval settings in CONFIG).
    ``only``: that listed file alone (none when unlisted). A file that cannot be read for another reason than its
    medium's (permissions, a stale NFS handle: DAMAGE_ERRNOS) is a ValueError: nothing to skip it for."""
    folder = Path(folder)
    listed = folder / FILE_LIST
    if not listed.is_file():  # nothing to check it against, but a folder without weights is no checkpoint at all
        held = [name for name in WEIGHTS if (folder / name).exists()]
        return None if held else f"{folder} holds no model weights (none of {', '.join(WEIGHTS)})"
    try:
        files = json.loads(listed.read_text())
        if not isinstance(files, dict):
            raise ValueError
        files = {name: saved if isinstance(saved, dict) else {"bytes": saved} for name, saved in files.items()}
        if not all(isinstance(saved.get("bytes"), int) for saved in files.values()):
            raise ValueError
    except OSError as e:
        return unreadable(listed, e)
    except (ValueError, UnicodeDecodeError):
        return f"{listed} is damaged"
    if not config:
        files.pop(CONFIG, None)
    if only is not None:
        files = {only: files[only]} if only in files else {}
    path = folder
    try:
        for name, saved in files.items():  # every size first: a truncated file is named without reading the others
            path = folder / name
            if not path.is_file():
                return f"{path} is missing"
            actual, size = path.stat().st_size, saved["bytes"]
            if actual != size:
                return f"{path} has {actual} bytes, {size} were saved ({'truncated' if actual < size else 'grown'})"
        for name, saved in files.items():
            path = folder / name
            if "crc32" in saved and crc32(path) != saved["crc32"]:
                return f"{path} has the size it was saved with, but other bytes (its CRC-32 differs)"
    except OSError as e:
        return unreadable(path, e)
    return None


def unreadable(path: Path, error: OSError) -> str:
    """problem's answer for a file of a checkpoint that did not read: damage where its medium lost the bytes (EIO, a
    sector the disk cannot read: latest skips it as a flipped bit); a ValueError for a passing fault or one of access
    (EACCES, ESTALE, ETIMEDOUT on NFS, EMFILE), where skipping would set a sound checkpoint aside and redo its steps,
    so the run stops instead, until the file reads again."""
    if error.errno in DAMAGE_ERRNOS:
        return f"{path} cannot be read ({error.strerror or error})"
    raise ValueError(f"{path} cannot be read now ({error.strerror or error}); fix what keeps it from being read (its "
                     "permissions, the mount), then run again") from None


def step_folder(ckpt_dir: Path, step: int) -> Path:
    """The checkpoint of optimizer step ``step``."""
    return Path(ckpt_dir) / f"step_{step:08d}"


STEP_NAME = re.compile(r"step_(\d+)")  # what step_folder names; .tmp_*/.old_* are saves in progress


def step_folders(ckpt_dir: Path) -> list[Path]:
    """The checkpoints train.py wrote there, oldest first, by step number (9 digits past step 99,999,999). A copy a
    user made beside them (step_N.bak, step_N_keep) is none: latest never resumes from it, rotation never deletes it."""
    found = [(int(m[1]), p) for p in Path(ckpt_dir).glob("step_*")
             if (m := STEP_NAME.fullmatch(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


# what train.py's save_checkpoint writes beside step_N: the save in progress (sealed last), and a step saved again
# (a resume that ran the evaluation a stop cut short) moves the earlier save aside between its two renames
TEMP, EARLIER = ".tmp_", ".old_"


def clean_leftovers(ckpt_dir: Path) -> str | None:
    """Undo what a kill during a checkpoint left in ``ckpt_dir``, under the run's lock: a step_N cut between its
    renames is put back, from its sealed and complete new save (newer) or else from the earlier one; every other
    TEMP folder (unfinished or damaged: checkpoint-sized each, and nothing reads them) and EARLIER folder goes. One
    line saying what was done, or None."""
    ckpt_dir = Path(ckpt_dir)
    done = []
    for prefix in (TEMP, EARLIER):  # TEMP first: where both are left, the new save is the one put back
        for path in sorted(ckpt_dir.glob(f"{prefix}step_*")):
            final = ckpt_dir / path.name.removeprefix(prefix)
            why = (None if prefix == EARLIER else "never sealed" if not (path / FILE_LIST).is_file()
                   else problem(path))  # an EARLIER folder was a step_N: latest checks it
            if why is None and not final.exists():
                os.replace(path, final)
                done.append(f"moved {path.name} to {final.name} ("
                            f"{'sealed, its rename cut short' if prefix == TEMP else 'the save replacing it was cut'})")
            else:
                shutil.rmtree(path)
                done.append(f"removed {path.name} ({why or f'{final.name} is in place'})")
    if done:
        fsync_dir(ckpt_dir)
    return f"{ckpt_dir}: cleaned up after a checkpoint a kill cut short: {'; '.join(done)}" if done else None


SET_ASIDE = "set_aside"  # under the checkpoints folder: the steps past a resume's, out of latest's and rotation's way


def set_aside_later_steps(ckpt_dir: Path, step: int, stamp: str) -> Path | None:
    """Move the ``step_N`` folders past ``step`` (a resume's) to ``SET_ASIDE/<stamp>/``; the folder, or None when
    there were none. They belong to the run this resume left: a rollback to an older checkpoint, or a newer one that
    was damaged. Left in place they would count as the newest: latest would go back to them (a rollback silently
    undone) and rotation would keep them in place of the checkpoints this run writes. Moved, not deleted: a rollback
    by mistake can be undone by moving them back."""
    later = [p for p in step_folders(ckpt_dir) if int(STEP_NAME.fullmatch(p.name)[1]) > step]
    if not later:
        return None
    folder = Path(ckpt_dir) / SET_ASIDE / stamp
    folder.mkdir(parents=True, exist_ok=True)
    for path in later:
        os.replace(path, folder / path.name)
    fsync_dir(folder)
    fsync_dir(ckpt_dir)
    return folder


def set_aside_later_rows(metrics: Path, step: int, folder: Path) -> tuple[int, int]:
    """Move the rows of ``metrics`` (a run's metrics.jsonl) past ``step`` (a resume's) to ``folder/metrics.jsonl``;
    how many, and how many of the lines moved are damaged. Rows past ``step`` are the history of the run the resume
    leaves: kept in place, this run's rows would follow them (curves that run to the abandoned branch's end and back,
    and its best epoch reported as this run's). A line that is no JSON row (an append a kill cut short, a changed
    byte) goes with them, so this run's first row starts a line of its own. The set-aside copy is written before the
    rewrite: a kill between the two leaves a row twice, never none. Read line by line as bytes: a line that is no
    UTF-8 (a flipped high bit) is one damaged line, kept byte for byte in the set-aside copy."""
    metrics = Path(metrics)
    if not metrics.is_file():
        return 0, 0
    keep, later, damaged = [], [], 0
    for line in metrics.read_bytes().splitlines(keepends=True):
        row_step = (row_of(line) or {}).get("step")
        damaged += not isinstance(row_step, int)
        (keep if isinstance(row_step, int) and row_step <= step else later).append(line)
    if not later:
        return 0, 0
    later[-1] = later[-1].rstrip(b"\n") + b"\n"
    atomic_write_bytes(Path(folder) / metrics.name, b"".join(later))
    atomic_write_bytes(metrics, b"".join(keep))
    return len(later) - damaged, damaged


def row_of(line: bytes) -> dict | None:
    """A metrics.jsonl line's JSON row, or None: an append a kill cut short, changed bytes, no UTF-8."""
    try:
        row = json.loads(line.decode())
    except ValueError:  # UnicodeDecodeError and JSONDecodeError both are
        return None
    return row if isinstance(row, dict) else None


def rows_of(metrics: Path) -> list[dict]:
    """The JSON rows of a metrics.jsonl (a damaged line, row_of's None, is none)."""
    return [row for line in Path(metrics).read_bytes().splitlines() if (row := row_of(line)) is not None]


def newest_complete(ckpt_dir: Path) -> tuple[Path | None, list[str]]:
    """(newest complete checkpoint, or None; one line per newer one skipped and why). Complete: its state files as
    saved; a config.yaml changed since (an edit of its eval settings, or damage) is no reason to redo a checkpoint
    interval: config_source reads the saved flags elsewhere."""
    skipped = []
    for path in reversed(step_folders(ckpt_dir)):
        why = problem(path)
        if why is None:
            return path, skipped
        skipped.append(f"skipped {path.name}: {why}")
    return None, skipped


def pick(resume_from: str, ckpt_dir: Path, print_fn=print) -> Path | None:
    """The checkpoint ``--resume_from_checkpoint`` names: "latest" is the newest complete one (each newer one
    skipped is said, with why; None when nothing was saved yet), a folder must be complete. ValueError otherwise.
    A config.yaml changed since the save is said in a note, or refused where no copy has the saved bytes
    (config_source); that checkpoint stays: nothing newer is set aside, nothing older resumed from in its place."""
    if resume_from == "latest":
        path, skipped = newest_complete(ckpt_dir)
        for line in skipped:
            print_fn(line)
        if path is None and skipped:
            raise ValueError(f"latest: no complete checkpoint in {ckpt_dir} ({'; '.join(skipped)}); resume from a "
                             "copy or start a new --output_dir")
        try:
            if path is not None and (note := config_source(path)[1]):
                print_fn(note)
        except ValueError as e:
            raise ValueError(f"latest: {e}") from None
        return path
    path = Path(resume_from)
    if not path.is_dir():
        raise ValueError(f"{path}: no such checkpoint folder")
    if (path / "checkpoints").is_dir() or path.name == "checkpoints":
        raise ValueError(f"{path} is a run folder or its checkpoints/, not one checkpoint: give latest (with "
                         "--output_dir the run folder) or one checkpoints/step_N")
    if (path / "config.json").is_file() and not (path / FILE_LIST).is_file():  # modeling.save_pretrained's
        raise ValueError(f"{path} is an export (weights and card, no optimizer or position), not a checkpoint: resume "
                         "from its run's checkpoints/step_N (or latest), or start a new run from it with --model "
                         f"local-dir:{path} --pretrained")
    why = problem(path)
    if why is not None:
        raise ValueError(f"{path}: damaged checkpoint: {why}; --resume_from_checkpoint latest takes the newest "
                         "complete one")
    if note := config_source(path)[1]:
        print_fn(note)
    return path


def config_source(folder: Path) -> tuple[Path, str | None]:
    """(the config.yaml that holds the flags of the launch that saved the checkpoint ``folder``, a note when that
    is not ``folder``'s own). Its own, unless it differs from the size or CRC-32 sealed with it: then the run
    folder's copy with those bytes (record_launch wrote the same text to RUN/config.yaml or RUN/resumes/<time>/);
    a ValueError naming the file and how to put the saved one back where no copy has them (a checkpoint copied out
    of its run with an edit, or every copy changed). The resume compares flags to know what the state was trained
    with (the seed's sample order, the model and optimizer the state fits, the recipe changes the card lists): the
    changed text may say another seed or optimizer than the state's, and nothing tells an eval edit from damage."""
    folder = Path(folder)
    own = folder / CONFIG
    changed = problem(folder, config=True, only=CONFIG)
    if changed is None:
        return own, None
    try:
        saved = json.loads((folder / FILE_LIST).read_text())[CONFIG]
        size, crc = saved["bytes"], saved.get("crc32")
    except (OSError, ValueError, KeyError, TypeError):  # a listing problem() named: the state check refuses it
        return own, None
    run_dir = folder.parent.parent  # RUN/checkpoints/step_N
    said = f"note: {changed}: changed after the save; the state files are as saved, so {folder.name} is resumed from"
    for copy in (run_dir / CONFIG, *sorted((run_dir / "resumes").glob(f"*/{CONFIG}"))):
        try:
            if copy.stat().st_size == size and crc in (None, crc32(copy)):
                return copy, f"{said}, with the flags it was saved with, from {copy} (the same bytes)"
        except OSError:  # absent or unreadable: another copy may do
            continue
    which = f"{size} bytes" + (f", CRC-32 {crc:08x}" if isinstance(crc, int) else "")
    raise ValueError(f"{changed}, and {run_dir} holds no copy of the saved one (config.yaml, resumes/*/config.yaml) "
                     f"to read the flags it was saved with from; put it back: undo the edit, or copy over {own} the "
                     f"config.yaml of the launch that saved it, the one of {which} (the run folder's config.yaml, "
                     "or resumes/<time>/config.yaml where a resume saved it)")


def saved_config(folder: Path) -> dict | None:
    """The flags of the launch that saved the checkpoint ``folder`` (its config.yaml, or the run folder's copy of
    the saved one where it was changed since: config_source), or None when it has none, when no copy has the saved
    bytes (pick refuses that checkpoint first), or when it does not read as YAML (an unlisted one with changed
    bytes)."""
    import yaml  # noqa: PLC0415 (only resumes read it)

    try:
        saved = yaml.safe_load(config_source(folder)[0].read_text())
    except (OSError, ValueError, yaml.YAMLError):  # ValueError: no UTF-8, an unreadable file, no saved copy
        return None
    return saved if isinstance(saved, dict) else None


def changed_flags(folder: Path, cfg, skip: set[str]) -> list[str]:
    """The flags of ``cfg`` (a dataclass) whose value differs from the checkpoint ``folder``'s config.yaml, as
    "--flag saved -> now", but those in ``skip``; none when it has no config.yaml (or lacks the flag: an older one)."""
    saved = saved_config(folder) or {}
    return [f"--{k} {saved[k]} -> {v}" for k, v in vars(cfg).items() if k in saved and k not in skip
            and saved[k] != v]


def launch_changes(folder: Path, launch: dict) -> list[str]:
    """How ``launch`` (this launch's mixed_precision, num_processes and device type, as run_info.json's keys)
    differs from the launch that saved the checkpoint ``folder`` (its run_info.json), as "mixed_precision bf16 ->
    no"; none for a key it lacks, or where it has none that reads (an older checkpoint, an edit). Not flags of
    train.py but accelerate launch's, and a resume under others trains on with them: said, and on the card."""
    try:
        saved = json.loads((Path(folder) / UNLISTED[0]).read_text())
    except (OSError, ValueError):  # ValueError: no JSON, or no UTF-8
        return []
    if not isinstance(saved, dict):
        return []
    if "device" in saved:  # "cuda:0" there: the type is the launch's choice, the index each rank's own
        saved["device"] = str(saved["device"]).split(":")[0]
    return [f"{k} {saved[k]} -> {v}" for k, v in launch.items() if k in saved and str(saved[k]) != str(v)]


def setting_mismatch(folder: Path, cfg) -> str | None:
    """How the launch recorded in ``folder``/config.yaml differs from ``cfg`` in what a checkpoint's state cannot
    follow (the model, the optimizer's kind of state, EMA on or off), as "was saved with ..., this launch has ...";
    None when they agree or the checkpoint holds no config.yaml."""
    saved = saved_config(folder)
    if saved is None:
        return None
    ema = {True: "EMA on (--ema_decay {})", False: "EMA off (--ema_decay 0)"}
    model = str(saved.get("model", ""))
    if model.startswith("local-dir:"):  # a launch that recorded it relative: to this launch's folder, the best guess
        saved["model"] = "local-dir:" + str(Path(model.removeprefix("local-dir:")).expanduser().resolve())
    pairs = [(f"--{k} {saved[k]}", f"--{k} {getattr(cfg, k)}") for k in ("model", "optimizer")
             if k in saved and str(saved[k]).lower() != str(getattr(cfg, k)).lower()]
    if "ema_decay" in saved and bool(saved["ema_decay"]) != bool(cfg.ema_decay):
        pairs.append((ema[bool(saved["ema_decay"])].format(saved["ema_decay"]),
                      ema[bool(cfg.ema_decay)].format(cfg.ema_decay)))
    if not pairs:
        return None
    return (f"was saved with {', '.join(a for a, _ in pairs)}, this launch has {', '.join(b for _, b in pairs)}; "
            f"resume with the checkpoint's settings, or start a new --output_dir")


# accelerate's save_state writes the model as FSDP_MODEL_NAME shards under FSDP (pytorch_model_fsdp_0/ for
# SHARDED_STATE_DICT, pytorch_model_fsdp.bin for FULL_STATE_DICT), as one file otherwise (safe_serialization on,
# off); load_state reads only the one its own launch writes (accelerate/utils/constants.py, fsdp_utils.py)
FSDP_MODEL, WHOLE_MODEL = "pytorch_model_fsdp", ("model.safetensors", "pytorch_model.bin")
# run_info.json's distributed_type of a launch without FSDP: what it was, and the launch configs that give it
WITHOUT_FSDP = {"DistributedType.MULTI_GPU": ("DDP", "accelerate_configs/multi_gpu.yaml or multi_node.yaml"),
                "DistributedType.MULTI_CPU": ("DDP on CPUs", "accelerate_configs/cpu_ddp.yaml"),
                "DistributedType.NO": ("one process", "accelerate_configs/single_gpu.yaml or cpu.yaml")}


def saved_under_fsdp(folder: Path) -> bool | None:
    """Whether the checkpoint ``folder`` holds its model as FSDP shards (True) or as one file (False); None when it
    holds neither (load_state then names what it misses)."""
    names = {p.name for p in Path(folder).iterdir()} if Path(folder).is_dir() else set()
    if any(name.startswith(FSDP_MODEL) for name in names):
        return True
    return False if names & set(WHOLE_MODEL) else None


def fsdp_state_dict_type(folder: Path) -> str | None:
    """accelerate's fsdp_state_dict_type an FSDP checkpoint ``folder`` was saved with, by its model's layout: a
    folder of shards (SHARDED_STATE_DICT) or one gathered file (FULL_STATE_DICT); None for neither."""
    models = [p for p in Path(folder).iterdir() if p.name.startswith(FSDP_MODEL)] if Path(folder).is_dir() else []
    if any(p.is_dir() for p in models):
        return "SHARDED_STATE_DICT"
    return "FULL_STATE_DICT" if any(p.name.endswith(".bin") and "_rank" not in p.name for p in models) else None


def launch_mismatch(folder: Path, fsdp: bool, state_dict_type: str | None = None) -> str | None:
    """How the checkpoint ``folder``'s model files differ from what this launch (``fsdp``: under FSDP, with
    ``state_dict_type``) loads, as "was saved under/without FSDP (the launch config); resume with ..."; None when
    they agree or it holds neither."""
    saved = saved_under_fsdp(folder)
    saved_type = fsdp_state_dict_type(folder) if saved else None
    if saved and fsdp and state_dict_type and saved_type and saved_type != state_dict_type:
        # load_state reads only its own launch's layout: else DCP's "metadata is None", which reads as damage
        return (f"was saved with fsdp_state_dict_type {saved_type}, this launch has {state_dict_type}; resume "
                f"with accelerate launch --fsdp_state_dict_type {saved_type} (or that value in its --config_file)")
    if saved is None or saved == fsdp:
        return None
    if saved:
        shards = min(p for p in Path(folder).iterdir() if p.name.startswith(FSDP_MODEL))
        return (f"was saved under FSDP (accelerate_configs/fsdp.yaml: its model is in {shards.name}"
                f"{'/' * shards.is_dir()}), this launch runs without FSDP; resume with that --config_file")
    try:
        info = json.loads((Path(folder) / UNLISTED[0]).read_text())
        kind, configs = WITHOUT_FSDP[info["distributed_type"]]
        how = f"{kind}, {info['num_processes']} process{'es' * (info['num_processes'] != 1)}: {configs}"
    except (OSError, ValueError, TypeError, KeyError):  # no run_info.json, or one edited: the configs it may be
        how = "DDP or one process: accelerate_configs/multi_gpu.yaml, single_gpu.yaml, cpu_ddp.yaml or cpu.yaml"
    model = next(name for name in WHOLE_MODEL if (Path(folder) / name).exists())
    return (f"was saved without FSDP ({how}; its model is one file, {model}), this launch runs FSDP "
            "(accelerate_configs/fsdp.yaml), which reads sharded checkpoints only; resume with the --config_file it "
            "was saved with")


def causes(error: BaseException | None):
    """``error``, then each rank's error a torch.distributed.checkpoint CheckpointException (the failure of
    accelerate's save_state and load_state under FSDP) holds in ``.failures`` ({rank: (error, traceback summary)},
    torch/distributed/checkpoint/api.py; a bare error taken too), and what each was raised from or while handling (a
    clean-up that failed too); each once. The ranks' errors are pickled copies (gathered to every rank): without
    their own causes."""
    todo, seen = [error], set()
    while todo:
        error = todo.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        yield error
        failures = getattr(error, "failures", None)
        ranks = [f[0] if isinstance(f, tuple) else f for f in failures.values()] if isinstance(failures, dict) else []
        todo.append(error.__cause__ or error.__context__)
        todo.extend(reversed([e for e in ranks if isinstance(e, BaseException)]))  # the ranks' first, in rank order


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC, or a library's wrapping of it (safetensors' SafetensorError carries only the text), in ``error`` or
    any of its causes (a rank's, under FSDP)."""
    import errno  # noqa: PLC0415

    return any(getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(e)
               or "Disk quota exceeded" in str(e) for e in causes(error))


def nearly_full(ckpt_dir: Path) -> bool:
    """Whether a failed save is best explained by the disk: less free than the newest checkpoint takes, or than
    64 MiB. torch.save reports a full disk as "unexpected pos" or "iostream error", without ENOSPC."""
    newest = next(iter(reversed(step_folders(ckpt_dir))), None)
    size = sum(p.stat().st_size for p in newest.rglob("*") if p.is_file()) if newest is not None else 0
    return free_bytes(ckpt_dir) < max(size, 64 << 20)


def free_bytes(folder: Path) -> int:
    """Bytes free to this user on the filesystem ``folder`` is (or would be made) on: its nearest existing folder's;
    0 when that cannot be read."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        st = os.statvfs(folder)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def free_space(folder: Path) -> str:
    """free_bytes for a message: "12.3 GB free" (``amount``)."""
    return f"{amount(free_bytes(folder))} free"


def amount(size: float) -> str:
    """Bytes for a message: "12.3 GB", or in MB below 1 GB (a nearly full disk reads "0.0 GB" otherwise), kB below
    0.1 MB."""
    if size >= 1e9:
        return f"{size / 1e9:.1f} GB"
    return f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.0f} kB"
