"""Faults of a long job on a shared cluster, reproduced on CPU with real processes and files: damaged checkpoints,
undecodable images, a second launch into a busy folder; each costs minutes, never the run."""
from __future__ import annotations

import calendar
import errno
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import datasets
from PIL import Image

import pytest
import torch
import yaml
from safetensors.torch import load_file

import modeling
import preprocess
import train
import validate
from imagenet_trainer import checkpoints
from imagenet_trainer.bad_samples import BadSamples, RecordingLoader
from imagenet_trainer.loader_setup import WatchedLoader
from imagenet_trainer.runlock import LOCK_FILE, FolderLock, in_use
from imagenet_trainer.worker_processes import worker_context
from imagenet_trainer.demo import make_ilsvrc_tree
from imagenet_trainer.data import ResumableSampler, TrainSet, collate, replacement_row
from test_cluster import free_port, sbatch, slurm, train_args  # noqa: F401 (slurm: a fixture)
from failing_items import FailingItems
from test_train import ROOT, TINY, ok, rows, run, train_cmd


def last_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert lines and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[-1]


def truncate(path, keep: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(keep)


# -- checkpoints -------------------------------------------------------------------------------------------------------

def test_an_atomic_write_syncs_its_data_then_the_rename(tmp_path, monkeypatch):
    """A host crash (not a process kill) after an atomic write returns keeps it: the file's data is synced before the
    rename, the folder after it, so writes made in order (metrics.jsonl's set-aside, then its rewrite) stay in order."""
    from imagenet_trainer import runinfo
    synced, fsync = [], os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), fsync(fd)))
    runinfo.atomic_write_text(tmp_path / "run" / "metrics.jsonl", "{}\n")
    assert len(synced) == 2 and re.fullmatch(runinfo.WRITE_LEFTOVER, Path(synced[0]).name), synced
    assert synced[1] == str(tmp_path / "run")


def test_sealed_folder_names_a_truncated_or_missing_file(tmp_path):
    folder = tmp_path / "ckpt" / "step_00000002"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"x" * 100)
    (folder / "sub" / "rng.pkl").write_bytes(b"y" * 10)
    checkpoints.fsync_tree(folder)
    checkpoints.seal(folder)
    assert checkpoints.problem(folder) is None
    assert json.loads((folder / checkpoints.FILE_LIST).read_text()) == {
        "model.safetensors": {"bytes": 100, "crc32": zlib.crc32(b"x" * 100)},
        "sub/rng.pkl": {"bytes": 10, "crc32": zlib.crc32(b"y" * 10)}}
    older = tmp_path / "ckpt" / "step_00000001"
    shutil.copytree(folder, older)
    with open(folder / "model.safetensors", "r+b") as f:  # one flipped bit: the same size, other bytes
        f.seek(57)
        f.write(bytes([ord("x") ^ 0x04]))
    assert checkpoints.problem(folder) == (f"{folder / 'model.safetensors'} has the size it was saved with, but other "
                                           "bytes (its CRC-32 differs)")
    truncate(folder / "model.safetensors", 40)
    assert checkpoints.problem(folder) == f"{folder / 'model.safetensors'} has 40 bytes, 100 were saved (truncated)"
    path, skipped = checkpoints.newest_complete(tmp_path / "ckpt")
    assert path == older and skipped == [f"skipped step_00000002: {checkpoints.problem(folder)}"]
    (older / "sub" / "rng.pkl").unlink()
    assert checkpoints.problem(older) == f"{older / 'sub' / 'rng.pkl'} is missing"
    with pytest.raises(ValueError, match="no complete checkpoint"):
        checkpoints.pick("latest", tmp_path / "ckpt", print_fn=lambda line: None)
    assert checkpoints.pick("latest", tmp_path / "empty", print_fn=print) is None  # nothing saved yet: start
    # a list of sizes without CRCs: the sizes are checked
    (older / checkpoints.FILE_LIST).write_text(json.dumps({"model.safetensors": 100}))
    assert checkpoints.problem(older) is None
    (older / checkpoints.FILE_LIST).write_text(json.dumps({"model.safetensors": 99}))
    assert checkpoints.problem(older) == f"{older / 'model.safetensors'} has 100 bytes, 99 were saved (grown)"
    (older / checkpoints.FILE_LIST).write_text(json.dumps({"model.safetensors": {"crc32": 1}}))
    assert checkpoints.problem(older) == f"{older / checkpoints.FILE_LIST} is damaged"


def test_a_checkpoints_config_yaml_is_listed_and_a_resume_checks_it(tmp_path):
    """config.yaml (the settings a resume reads) is sealed with the state files, run_info.json is not. A changed or
    cut config.yaml (a reader may edit a checkpoint's eval settings there) leaves the checkpoint complete: a resume
    (latest, or the folder named) notes it and reads the saved flags from the run folder's copy with the sealed
    bytes, and stops, naming the file, where there is none (the changed text is no record of the saved flags)."""
    folder = tmp_path / "ckpt" / "step_00000002"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"x" * 100)
    config = b"model: blocknet_tiny\noptimizer: sgd\nseed: 0\n"
    (folder / "config.yaml").write_bytes(config)
    (folder / "run_info.json").write_text("{}\n")
    checkpoints.seal(folder)
    assert json.loads((folder / checkpoints.FILE_LIST).read_text())["config.yaml"] == {
        "bytes": len(config), "crc32": zlib.crc32(config)}
    assert "run_info.json" not in json.loads((folder / checkpoints.FILE_LIST).read_text())
    older = tmp_path / "ckpt" / "step_00000001"
    shutil.copytree(folder, older)
    (folder / "run_info.json").write_text('{"edited": true}\n')
    assert checkpoints.problem(folder, config=True) is None
    with open(folder / "config.yaml", "r+b") as f:  # sgd -> cgd: a setting the resume would refuse the run over
        f.seek(config.index(b"sgd"))
        f.write(bytes([ord("s") ^ 0x10]))
    damaged = f"{folder / 'config.yaml'} has the size it was saved with, but other bytes (its CRC-32 differs)"
    assert checkpoints.problem(folder) is None and checkpoints.problem(folder, config=True) == damaged
    assert checkpoints.newest_complete(tmp_path / "ckpt") == (folder, [])
    for resume_from in ("latest", str(folder)):
        with pytest.raises(ValueError) as e:
            checkpoints.pick(resume_from, tmp_path / "ckpt", print_fn=print)
        assert str(e.value) == ("latest: " if resume_from == "latest" else "") + (
            f"{damaged}, and {tmp_path} holds no copy of the saved one (config.yaml, resumes/*/config.yaml) to read "
            f"the flags it was saved with from; put it back: undo the edit, or copy over {folder / 'config.yaml'} "
            f"the config.yaml of the launch that saved it, the one of {len(config)} bytes, CRC-32 "
            f"{zlib.crc32(config):08x} (the run folder's config.yaml, or resumes/<time>/config.yaml where a resume "
            "saved it)")
    assert checkpoints.saved_config(folder) is None  # never the changed text: cgd is no setting it was saved with
    (tmp_path / "resumes" / "20240101-000000Z").mkdir(parents=True)  # the launch's own copy, as record_launch writes
    (tmp_path / "config.yaml").write_bytes(config.replace(b"seed: 0", b"seed: 1"))  # another launch's
    (tmp_path / "resumes" / "20240101-000000Z" / "config.yaml").write_bytes(config)
    assert checkpoints.config_source(folder) == (
        tmp_path / "resumes" / "20240101-000000Z" / "config.yaml",
        f"note: {damaged}: changed after the save; the state files are as saved, so {folder.name} is resumed from, "
        f"with the flags it was saved with, from {tmp_path / 'resumes' / '20240101-000000Z' / 'config.yaml'} (the same "
        "bytes)")
    assert checkpoints.saved_config(folder) == {"model": "blocknet_tiny", "optimizer": "sgd", "seed": 0}
    truncate(folder / "config.yaml", 10)
    assert checkpoints.problem(folder, config=True) == (f"{folder / 'config.yaml'} has 10 bytes, {len(config)} were "
                                                        "saved (truncated)")
    (folder / "config.yaml").write_bytes(b"\xff" * 10)  # no UTF-8, in a checkpoint that lists nothing: no settings
    (folder / checkpoints.FILE_LIST).unlink()
    assert checkpoints.saved_config(folder) is None


@pytest.fixture(scope="module")
def finished(preprocessed, tmp_path_factory):
    """A 2-epoch run that checkpointed every step (keeping them all) and its last checkpoint's weights."""
    out = tmp_path_factory.mktemp("faults") / "run"
    ok(run(train_cmd(preprocessed, out, "--epochs", "2", "--save_every_steps", "1", "--keep_last", "10")))
    return out


def test_an_empty_step_folder_is_skipped_by_latest(finished, preprocessed, tmp_path):
    """A step folder with nothing in it (made by hand, or a copy that never ran) has no file list to check, but no
    weights either: latest says so and takes the newest checkpoint before it, as for a damaged one."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    newest = checkpoints.step_folders(out / "checkpoints")[-1]
    empty = checkpoints.step_folder(out / "checkpoints", int(newest.name.split("_")[1]) + 1)
    empty.mkdir()
    assert checkpoints.problem(empty) == f"{empty} holds no model weights (none of {', '.join(checkpoints.WEIGHTS)})"
    assert checkpoints.newest_complete(out / "checkpoints")[0] == newest
    said = ok(run(train_cmd(preprocessed, out, "--epochs", "2", "--resume_from_checkpoint", "latest")))
    said = said.stdout + said.stderr
    assert f"skipped {empty.name}: {empty} holds no model weights" in said and f"resumed from {newest}" in said, \
        said[-3000:]


def test_an_export_or_a_run_given_as_the_checkpoint_to_resume_says_what_it_is(finished, preprocessed, tmp_path):
    """RUN/final holds weights and a card, not an optimizer or a position, and RUN or RUN/checkpoints many
    checkpoints: one line saying which it is and what to give."""
    proc = run(train_cmd(preprocessed, tmp_path / "run", "--epochs", "2", "--resume_from_checkpoint",
                         finished / "final"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = last_line(proc)
    assert f"{finished / 'final'} is an export (weights and card, no optimizer or position), not a checkpoint" in line
    assert f"--model local-dir:{finished / 'final'} --pretrained" in line, line
    for folder in (finished, finished / "checkpoints"):  # the run, not one of its checkpoints
        proc = run(train_cmd(preprocessed, tmp_path / "run", "--epochs", "2", "--resume_from_checkpoint", folder))
        assert last_line(proc).endswith(f"{folder} is a run folder or its checkpoints/, not one checkpoint: give "
                                        "latest (with --output_dir the run folder) or one checkpoints/step_N")


def test_truncated_newest_checkpoint_resumes_from_the_previous_one(finished, preprocessed, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    steps = checkpoints.step_folders(out / "checkpoints")
    assert len(steps) >= 3 and all(checkpoints.problem(s) is None for s in steps)
    assert all((s / checkpoints.FILE_LIST).is_file() for s in steps), "every checkpoint lists its files"
    newest, previous = steps[-1], steps[-2]
    reference = {k: v.clone() for k, v in load_file(newest / "model.safetensors").items()}  # load_file maps the file
    truncate(newest / "model.safetensors", 64)  # a host crash after the rename, before the data reached the disk

    # named explicitly: one line naming the file, in train.py and validate.py
    proc = run(train_cmd(preprocessed, out, "--epochs", "2", "--resume_from_checkpoint", newest))
    assert proc.returncode != 0
    line = last_line(proc)
    assert f"{newest / 'model.safetensors'} has 64 bytes" in line and "truncated" in line, line
    with pytest.raises(SystemExit) as e:
        validate.main(["--model", str(newest), "--dataset", str(preprocessed), "--num_workers", "0"])
    assert str(e.value.code).startswith("error: --model") and "model.safetensors has 64 bytes" in str(e.value.code)

    # latest: says what it skipped and why, resumes from the one before, and ends on the same weights
    resumed = ok(run(train_cmd(preprocessed, out, "--epochs", "2", "--resume_from_checkpoint", "latest")))
    said = resumed.stdout + resumed.stderr
    assert f"skipped {newest.name}: {newest / 'model.safetensors'} has 64 bytes" in said, said[-3000:]
    assert f"resumed from {previous}" in said
    # the damaged one is moved aside, out of the way of latest and of rotation; this run writes its step again
    aside = (out / "checkpoints").glob("set_aside/*/*")
    assert sorted(p.relative_to(out / "checkpoints").parts[::2] for p in aside) == [
        (checkpoints.SET_ASIDE, "metrics.jsonl"), (checkpoints.SET_ASIDE, newest.name)]
    again = load_file(newest / "model.safetensors")
    assert reference.keys() == again.keys() and all(torch.equal(reference[k], again[k]) for k in reference)
    steps_logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged == sorted(set(steps_logged)), "an epoch's row twice: the damaged step's and this run's"


def test_a_checkpoint_file_the_disk_cannot_read_is_skipped_as_damage(finished, tmp_path, monkeypatch):
    """EIO from a failing sector (or a stale NFS handle) while the CRC check reads a file: latest skips that
    checkpoint for the one before, as it skips a flipped bit, and a folder named is refused in one line. Any other
    read error (permissions, NFS) stops the resume instead: skipping would set a sound checkpoint aside."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    previous, newest = checkpoints.step_folders(out / "checkpoints")[-2:]
    bad = newest / "optimizer.bin"
    crc32 = checkpoints.crc32

    def failing_read(path):  # the kernel's answer for a sector the disk cannot read
        if Path(path) == bad:
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))
        return crc32(path)

    monkeypatch.setattr(checkpoints, "crc32", failing_read)
    unreadable = f"{bad} cannot be read (Input/output error)"
    assert checkpoints.problem(newest) == unreadable
    assert checkpoints.newest_complete(out / "checkpoints") == (previous, [f"skipped {newest.name}: {unreadable}"])
    with pytest.raises(ValueError, match=re.escape(f"damaged checkpoint: {unreadable};")):
        checkpoints.pick(str(newest), out / "checkpoints")

    def refused(path):  # EACCES, a stale NFS handle: the file may read again, so latest must not set it aside
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(checkpoints, "crc32", refused)
    with pytest.raises(ValueError, match=re.escape(f"{newest}/") + r"[\w.]+ " + re.escape(
            "cannot be read now (Permission denied); fix what keeps it from being read")):  # its first file read
        checkpoints.pick("latest", out / "checkpoints")


def test_an_unsealed_checkpoint_missing_files_is_called_incomplete(finished, preprocessed, tmp_path):
    """A copy of a run folder cut short inside its newest checkpoint (cp copies in directory order: the seal and
    optimizer.bin may not have arrived): not 'does not fit this run, resume with the flags of config.yaml', which
    sends the user after settings, but incomplete, with the way to the checkpoint before it."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    newest = checkpoints.step_folders(out / "checkpoints")[-1]
    for name in (checkpoints.FILE_LIST, "optimizer.bin"):
        (newest / name).unlink()
    proc = run(train_cmd(preprocessed, out, "--epochs", "2", "--resume_from_checkpoint", "latest"))
    assert proc.returncode != 0
    line = last_line(proc)
    assert line.startswith(f"error: --resume_from_checkpoint {newest} is incomplete (") and "optimizer.bin" in line
    assert line.endswith(f"move it out of {out / 'checkpoints'}, then --resume_from_checkpoint latest takes the one "
                         "before"), line


def test_the_rows_past_a_resume_and_an_append_a_kill_cut_are_set_aside(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    kept = [json.dumps({"epoch": 1, "step": 10}), json.dumps({"epoch": 2, "step": 20})]
    later = [json.dumps({"epoch": 3, "step": 30}), '{"epoch": 4, "st']  # the last append cut by a kill
    metrics.write_text("\n".join(kept + later))
    assert checkpoints.set_aside_later_rows(metrics, 20, tmp_path / "aside") == (1, 1)  # a row past 20, a damaged one
    assert metrics.read_text() == "".join(line + "\n" for line in kept)  # the next append starts its own line
    assert (tmp_path / "aside" / "metrics.jsonl").read_text() == "".join(line + "\n" for line in later)
    assert checkpoints.set_aside_later_rows(metrics, 20, tmp_path / "again") == (0, 0)
    assert not (tmp_path / "again").exists()


@pytest.mark.parametrize("name, at", [("model.safetensors", None), ("optimizer.bin", None)])
def test_a_flipped_bit_in_the_newest_checkpoint_is_found_and_latest_resumes_from_the_previous(finished, preprocessed,
                                                                                                tmp_path, name, at):
    """A file of the size it was saved with but other bytes (a bit flipped on a disk or in a copy): in a weight it
    would load without an error (wrong weights), in the optimizer's zip it fails the load. Its CRC-32 names it before
    the load, and latest goes on from the checkpoint before it. (In config.yaml: test_a_changed_config_yaml_...)"""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    previous, newest = checkpoints.step_folders(out / "checkpoints")[-2:]
    path = newest / name
    with open(path, "r+b") as f:  # a byte in the middle of the file (tensor data), or the first of ``at``'s value
        f.seek(path.stat().st_size // 2 if at is None else path.read_bytes().index(at) + at.index(b":") + 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))
    resumed = ok(run(train_cmd(preprocessed, out, "--epochs", "2", "--resume_from_checkpoint", "latest")))
    said = resumed.stdout + resumed.stderr
    assert f"skipped {newest.name}: {path} has the size it was saved with, but other bytes" in said, said[-3000:]
    assert f"resumed from {previous}" in said


@pytest.mark.parametrize("edit", ["eval_image_size", "flipped bit"])
def test_a_changed_config_yaml_in_the_newest_checkpoint_is_resumed_from_with_the_saved_flags(finished, preprocessed,
                                                                                               tmp_path, edit):
    """A checkpoint's config.yaml edited (its eval settings, for validate.py, as the README invites) or with a
    flipped bit (optimizer: sgd read as cgd) leaves its state files as saved: latest resumed from the checkpoint
    before it, retraining an interval, and set the changed one aside. It resumes from it, says so in one note, and
    compares the flags with the run folder's copy of the saved config.yaml: no eval_image_size change reported, no
    refusal over an optimizer it was not saved with."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    newest = checkpoints.step_folders(out / "checkpoints")[-1]
    config = newest / "config.yaml"
    if edit == "eval_image_size":
        config.write_text(config.read_text().replace("\neval_image_size: 0\n", "\neval_image_size: 40\n"))
    else:
        text = config.read_bytes()
        at = text.index(b"\noptimizer: sgd") + len(b"\noptimizer: ")
        config.write_bytes(text[:at] + bytes([text[at] ^ 0x10]) + text[at + 1:])
    assert checkpoints.problem(newest, config=True, only="config.yaml") is not None  # the change is seen
    resumed = ok(run(train_cmd(preprocessed, out, "--epochs", "3", "--save_every_steps", "1", "--keep_last", "10",
                               "--resume_from_checkpoint", "latest")))
    said = resumed.stdout + resumed.stderr
    assert f"resumed from {newest} at epoch 2" in said and "skipped" not in said, said[-3000:]
    assert (f"note: {config} ") in said and (f": changed after the save; the state files are as saved, so "
                                             f"{newest.name} is resumed from, with the flags it was saved with, from "
                                             f"{out / 'config.yaml'} (the same bytes)") in said, said[-3000:]
    assert "flags that differ from the checkpoint's config.yaml, this launch's apply: --epochs 2 -> 3\n" in said
    assert not (out / "checkpoints" / checkpoints.SET_ASIDE).exists()
    assert [r["epoch"] for r in rows(out)] == [1, 2, 3]


def test_a_checkpoint_copied_alone_with_a_changed_config_yaml_stops_and_is_kept(finished, preprocessed, tmp_path):
    """A mid-epoch checkpoint copied alone into a new --output_dir, with seed 0 -> 1 in its config.yaml (a flipped
    bit, or an edit) and no copy of the saved config.yaml beside it: the resume took the changed text as the saved
    flags, told --seed 0 to resume with --seed 1 and then resumed with --seed 1 (another sample order). It stops in
    one line naming the file, keeps the checkpoint (neither set aside nor passed over for an older one), and
    resumes once the run's config.yaml, with the saved bytes, is beside it."""
    out = tmp_path / "copied"
    mid = out / "checkpoints" / "step_00000001"  # inside the first epoch
    shutil.copytree(checkpoints.step_folder(finished / "checkpoints", 1), mid)
    config = mid / "config.yaml"
    assert "\nseed: 0\n" in config.read_text()
    config.write_text(config.read_text().replace("\nseed: 0\n", "\nseed: 1\n"))
    for seed, resume_from in ((1, "latest"), (0, "latest"), (1, mid)):
        proc = run(train_cmd(preprocessed, out, "--epochs", "2", "--seed", seed, "--resume_from_checkpoint",
                             resume_from))
        said = proc.stdout + proc.stderr
        assert proc.returncode == 1 and "resumed from" not in said and "resume with --seed 1" not in said, said[-3000:]
        assert last_line(proc).startswith(f"error: --resume_from_checkpoint {'latest: ' * (resume_from == 'latest')}"
                                          f"{config} has the size it was saved with, but other bytes"), said[-3000:]
        saved = (finished / "config.yaml").read_bytes()  # a first launch saved step 1: the run's config.yaml
        assert (f"copy over {config} the config.yaml of the launch that saved it, the one of {len(saved)} bytes, "
                f"CRC-32 {zlib.crc32(saved):08x} (the run folder's config.yaml, or resumes/<time>/config.yaml") in said
        assert checkpoints.step_folders(out / "checkpoints") == [mid], "the checkpoint stays where it is"
        assert not (out / "checkpoints" / checkpoints.SET_ASIDE).exists()
    shutil.copy(finished / "config.yaml", config)  # as the line says
    proc = run(train_cmd(preprocessed, out, "--epochs", "2", "--seed", "1", "--resume_from_checkpoint", "latest"))
    assert proc.returncode == 1 and "changed after the save" not in proc.stdout, proc.stdout[-3000:]
    assert last_line(proc).endswith("resume with --seed 0, or from an epoch-end checkpoint"), proc.stderr[-3000:]


def test_a_users_copy_of_a_checkpoint_beside_them_is_neither_resumed_from_nor_pruned(finished, preprocessed,
                                                                                      tmp_path):
    """cp -a step_N step_N.bak (or step_N_keep) inside checkpoints/: latest took the copy for the newest (the .bak
    ended every resume, and every requeue, in a traceback), and rotation deleted it at the next save."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    ckpt_dir = out / "checkpoints"
    newest = checkpoints.step_folders(ckpt_dir)[-1]
    copies = [ckpt_dir / f"{newest.name}.bak", ckpt_dir / f"{newest.name}_keep"]
    for copy in copies:
        shutil.copytree(newest, copy)
    assert checkpoints.step_folders(ckpt_dir)[-1] == newest
    resumed = ok(run(train_cmd(preprocessed, out, "--epochs", "3", "--save_every_steps", "1", "--keep_last", "1",
                               "--resume_from_checkpoint", "latest")))
    assert f"resumed from {newest} at" in resumed.stdout + resumed.stderr
    assert all(copy.is_dir() for copy in copies)
    kept = [p.name for p in checkpoints.step_folders(ckpt_dir)]  # --keep_last 1, and the best step's
    assert kept[-1] == f"step_{rows(out)[-1]['step']:08d}" and len(kept) <= 2, kept


def test_checkpoints_sort_by_step_past_eight_digits(tmp_path):
    for step in (99_999_999, 100_000_000, 7):
        checkpoints.step_folder(tmp_path, step).mkdir()
    assert [p.name for p in checkpoints.step_folders(tmp_path)] == ["step_00000007", "step_99999999",
                                                                    "step_100000000"]


def test_a_checkpoint_without_its_file_list_loads_and_a_damaged_one_is_named(finished, preprocessed, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    newest = checkpoints.step_folders(out / "checkpoints")[-1]
    (newest / checkpoints.FILE_LIST).unlink()  # another tool's checkpoint: nothing to check it against
    truncate(newest / "model.safetensors", 64)
    proc = run(train_cmd(preprocessed, out, "--epochs", "3", "--resume_from_checkpoint", "latest"))
    assert proc.returncode != 0
    line = last_line(proc)
    assert line.startswith(f"error: --resume_from_checkpoint {newest} is damaged") and "latest" in line, line
    with pytest.raises(SystemExit) as e:
        validate.main(["--model", str(newest), "--dataset", str(preprocessed), "--num_workers", "0"])
    assert f"{newest / 'model.safetensors'} is damaged" in str(e.value.code)


@pytest.mark.parametrize("extra, said", [
    (("--optimizer", "adamw"), "was saved with --optimizer sgd, this launch has --optimizer adamw"),
    (("--model", "blocknet_mobile"), "was saved with --model blocknet_tiny, this launch has --model blocknet_mobile"),
    (("--ema_decay", "0.9"), "was saved with EMA off (--ema_decay 0), this launch has EMA on (--ema_decay 0.9)"),
])
def test_resume_with_another_optimizer_model_or_ema_is_named_as_such(finished, preprocessed, tmp_path, extra, said):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    proc = run(train_cmd(preprocessed, out, "--epochs", "3", "--resume_from_checkpoint", "latest", *extra))
    assert proc.returncode != 0
    assert said in last_line(proc)
    assert yaml.safe_load((out / "config.yaml").read_text())["epochs"] == 2, "a refused resume changes nothing"
    assert len(rows(out)) == 2


def test_a_resume_with_nothing_left_to_do_says_so_and_claims_no_export_it_lacks(finished, preprocessed, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    last = rows(out)[-1]["step"]
    for epochs in (2, 1):  # the run's own end (a requeue after it finished), and an end it has passed
        proc = ok(run(train_cmd(preprocessed, out, "--epochs", epochs, "--resume_from_checkpoint", "latest")))
        said = proc.stdout + proc.stderr
        assert (f"nothing to do: the checkpoint is at step {last} (epoch 2), and --epochs {epochs} ends this run at "
                f"step {last * epochs // 2}; raise --epochs to train on. The best model is in {out / 'final'}") in said
    shutil.rmtree(out / "final")
    proc = ok(run(train_cmd(preprocessed, out, "--epochs", "2", "--resume_from_checkpoint", "latest")))
    assert f"No model was exported yet ({out / 'final'} is absent)" in proc.stdout and "model in" not in proc.stdout
    assert len(rows(out)) == 2 and not (out / "resumes").exists(), "nothing trained, nothing recorded"


def test_the_card_of_a_run_resumed_with_other_flags_says_so(finished, preprocessed, tmp_path):
    """The card's recipe table gives the last launch's flags; a run resumed with others trained with both, so the
    card says at which step which flags changed (from the checkpoint's state: a later resume keeps the entry), and
    leaves out plumbing such as --num_workers."""
    step = rows(finished)[0]["step"]
    out = tmp_path / "new"  # resumed into a new folder: its first evaluation exports there
    ok(run(train_cmd(preprocessed, out, "--epochs", "3", "--label_smoothing", "0.2", "--num_workers", "1",
                     "--resume_from_checkpoint", checkpoints.step_folder(finished / "checkpoints", step))))
    card = (out / "final" / "README.md").read_text()
    # --epochs is plumbing in the table (the Epochs line gives it) but a change of schedule: said
    assert ("Resumed with other flags (the table gives the last launch's): at step "
            f"{step}, `--epochs 2 -> 3`, `--label_smoothing 0.1 -> 0.2`.") in card, card
    assert "| label_smoothing | 0.2 |" in card


def test_a_checkpoint_resumed_into_a_new_output_dir_exports_there(finished, preprocessed, tmp_path):
    """A checkpoint copied elsewhere and resumed into a new --output_dir carries the best score of a model exported
    into the old folder: forgotten, in one line, so that this run's first evaluation exports into its own final/ (the
    one --push_to_hub uploads) and rotation keeps a best step this folder has. The copy's best is set to 100%, which
    no later epoch beats (a run on a plateau at its best), and sealed again."""
    first_row = rows(finished)[0]
    copy = tmp_path / "copied"
    shutil.copytree(checkpoints.step_folder(finished / "checkpoints", first_row["step"]), copy)
    saved = torch.load(copy / "custom_checkpoint_0.pkl", weights_only=False)  # TrainState's, as accelerate saves it
    torch.save({**saved, "best_top1": 100.0}, copy / "custom_checkpoint_0.pkl")
    checkpoints.seal(copy)
    out = tmp_path / "new"
    proc = ok(run(train_cmd(preprocessed, out, "--epochs", "2", "--resume_from_checkpoint", copy)))
    said = proc.stdout + proc.stderr
    assert (out / "final" / "model.safetensors").is_file(), said[-3000:]
    assert (f"{out / 'final'} is absent: the checkpoint's best (val top-1 100.00% at step {first_row['step']}) was "
            "exported elsewhere; this run's first evaluation exports here") in said, said[-3000:]
    last = rows(out)[-1]
    assert proc.stdout.strip().splitlines()[-1] == (f"best val top-1 {last['val_top1']:.2f}% (step {last['step']}); "
                                                    f"model in {out / 'final'}")
    assert checkpoints.step_folder(out / "checkpoints", last["step"]).is_dir()


def test_a_resume_after_final_was_deleted_keeps_the_best_checkpoint(finished, preprocessed, tmp_path):
    """final/ deleted (or moved) by hand: the best model's only copy left is its step_N. Its score stays the one to
    beat and rotation keeps that checkpoint (forgetting it, as for a checkpoint copied into a new folder, would let
    rotation delete it and put a worse model into final/). The latest checkpoint is made the best at 100%, sealed
    again, so that no later epoch beats it."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    best = checkpoints.step_folders(out / "checkpoints")[-1]
    saved = torch.load(best / "custom_checkpoint_0.pkl", weights_only=False)  # TrainState's, as accelerate saves it
    step = int(best.name.removeprefix("step_"))
    torch.save({**saved, "best_top1": 100.0, "best_step": step}, best / "custom_checkpoint_0.pkl")
    checkpoints.seal(best)
    shutil.rmtree(out / "final")
    proc = ok(run(train_cmd(preprocessed, out, "--epochs", "3", "--keep_last", "1", "--save_every_steps", "1",
                            "--resume_from_checkpoint", "latest")))
    said = proc.stdout + proc.stderr
    assert (f"{out / 'final'} is absent: the best model (val top-1 100.00% at step {step}) is in {best}, which "
            "rotation keeps; this run exports above it") in said, said[-3000:]
    assert best.is_dir() and "exported elsewhere" not in said
    assert rows(out)[-1]["step"] > step and not (out / "final").exists()


# -- kills, full disks and Ctrl-C at known points ---------------------------------------------------------------------

def train_faulting(prelude: str, cmd: list, **kwargs):
    """``cmd`` (a train_cmd) with train.py's main run after ``prelude``: Python that patches train.py or a module it
    uses to fault at a known point (a SIGKILL, a full disk, a Ctrl-C), as a real run would meet it there."""
    script = f"import os, signal, sys, time\nimport train\n{textwrap.dedent(prelude)}\n" \
             "train.run_and_close(train.main, sys.argv[1:])"
    return run([cmd[0], "-c", script, *cmd[2:]], **kwargs)


def timeless(logged: list[dict]) -> list[dict]:
    """metrics.jsonl rows without their wall-clock columns."""
    return [{k: v for k, v in row.items() if not k.endswith("_s") and "per_sec" not in k and "frac" not in k}
            for row in logged]


@pytest.mark.parametrize("epoch", [1, 2])
def test_a_kill_between_an_epochs_checkpoint_and_its_row_loses_no_row(finished, preprocessed, tmp_path, epoch):
    """The epoch-end checkpoint is sealed before metrics.jsonl gets the epoch's row. The row is saved in the
    checkpoint, so the resume appends it: after the first epoch, and after the last, where it has nothing to train."""
    out, flags = tmp_path / "run", ("--epochs", "2", "--save_every_steps", "1", "--keep_last", "10")  # `finished`'s
    killed = train_faulting(f"""
        calls, log_epoch = [], train.log_epoch
        def killed_at_epoch(*args, **kwargs):
            calls.append(1)
            if len(calls) == {epoch}:
                os.kill(os.getpid(), signal.SIGKILL)
            log_epoch(*args, **kwargs)
        train.log_epoch = killed_at_epoch
    """, train_cmd(preprocessed, out, *flags))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    step = rows(finished)[epoch - 1]["step"]
    assert checkpoints.problem(checkpoints.step_folder(out / "checkpoints", step)) is None
    assert len(rows(out) if (out / "metrics.jsonl").exists() else []) == epoch - 1, "killed before the row"
    said = ok(run(train_cmd(preprocessed, out, *flags, "--resume_from_checkpoint", "latest")))
    said = said.stdout + said.stderr
    assert f"{out / 'metrics.jsonl'}: appended the row of step {step} from its checkpoint" in said, said[-3000:]
    assert ("nothing to do" in said) == (epoch == 2)
    assert timeless(rows(out)) == timeless(rows(finished))
    ok(run(train_cmd(preprocessed, out, *flags, "--resume_from_checkpoint", "latest")))
    assert len(rows(out)) == 2, "appended once"


def test_a_row_a_kill_cut_short_is_set_aside_as_damaged_and_written_again(finished, preprocessed, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    metrics = out / "metrics.jsonl"
    metrics.write_text(metrics.read_text()[:-40])  # the last append, cut by a kill
    proc = ok(run(train_cmd(preprocessed, out, "--epochs", "2", "--resume_from_checkpoint", "latest")))
    said = proc.stdout + proc.stderr
    (aside,) = (out / "checkpoints" / checkpoints.SET_ASIDE).iterdir()
    assert (f"1 damaged line of {metrics} (no JSON row: an append a kill cut short, or changed bytes) moved to "
            f"{aside}") in said and "past step" not in said, said[-3000:]
    assert f"appended the row of step {rows(finished)[-1]['step']} from its checkpoint" in said
    assert timeless(rows(out)) == timeless(rows(finished))


def test_a_flipped_high_bit_in_metrics_jsonl_is_one_damaged_line(finished, preprocessed, tmp_path):
    """A bit flipped on at the top of a byte (a bad disk or copy) leaves a line that is no UTF-8: one damaged line, as
    any changed byte, moved aside byte for byte, and the row is written again from its checkpoint."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    metrics = out / "metrics.jsonl"
    data = bytearray(metrics.read_bytes())
    data[data.rindex(b'"step"') + 1] ^= 0x80  # in the last row: "s" becomes 0xf3, no UTF-8 start of a 4-byte char
    metrics.write_bytes(data)
    damaged = bytes(data[data.rindex(b"\n", 0, len(data) - 1) + 1:])
    proc = ok(run(train_cmd(preprocessed, out, "--epochs", "2", "--resume_from_checkpoint", "latest")))
    said = proc.stdout + proc.stderr
    (aside,) = (out / "checkpoints" / checkpoints.SET_ASIDE).iterdir()
    assert (f"1 damaged line of {metrics} (no JSON row: an append a kill cut short, or changed bytes) moved to "
            f"{aside}") in said, said[-3000:]
    assert (aside / "metrics.jsonl").read_bytes() == damaged
    assert timeless(rows(out)) == timeless(rows(finished))


def test_a_kill_in_the_first_export_blocks_not_its_own_command(preprocessed, tmp_path):
    """modeling.save_pretrained builds the export in .final.tmp-* and renames it: killed before the rename, with no
    checkpoint yet (the first epoch ended before one was due), the folder holds it beside the start records. The
    same command, with or without latest, starts again and removes it."""
    killed = tmp_path / "killed"
    proc = train_faulting("""
        import modeling.hub
        modeling.hub.fsync_tree = lambda folder: os.kill(os.getpid(), signal.SIGKILL)  # written, not yet renamed
    """, train_cmd(preprocessed, killed, "--epochs", "1"))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    (temp,) = killed.glob(".final.tmp-*")
    for extra in ((), ("--resume_from_checkpoint", "latest")):
        out = tmp_path / f"again{len(extra)}"
        shutil.copytree(killed, out)
        proc = ok(run(train_cmd(preprocessed, out, "--epochs", "1", *extra)))
        assert (f"{out}: cleaned up after an export a kill cut short: removed {temp.name} (never moved into place)"
                in proc.stdout + proc.stderr)
        assert (out / "final" / "model.safetensors").is_file() and not list(out.glob(".final*"))


def test_an_export_cut_between_its_renames_is_put_back_by_the_next_launch(finished, preprocessed, tmp_path):
    """runinfo.replace_dir moves final/ to .final.old, then the new export in: killed between the two renames,
    final/ is missing and .final.old holds the best model; killed after them, .final.old stays beside final/."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    best = (out / "final" / "model.safetensors").read_bytes()
    os.replace(out / "final", out / ".final.old")
    shutil.copytree(out / ".final.old", out / ".final.tmp-k1ll3d")  # the new export, never moved into place
    again = train_cmd(preprocessed, out, "--epochs", "2", "--resume_from_checkpoint", "latest")
    said = ok(run(again))
    said = said.stdout + said.stderr
    assert (f"{out}: cleaned up after an export a kill cut short: removed .final.tmp-k1ll3d (never moved into "
            "place); moved .final.old back to final/ (the export was cut between its renames)") in said, said[-3000:]
    assert f"The best model is in {out / 'final'}" in said  # nothing to train: final/ is back all the same
    assert (out / "final" / "model.safetensors").read_bytes() == best and not list(out.glob(".final*"))
    shutil.copytree(out / "final", out / ".final.old")  # killed while replace_dir deleted it
    said = ok(run(again))
    assert "removed .final.old (the export before final/)" in said.stdout + said.stderr
    assert not (out / ".final.old").exists() and (out / "final" / "model.safetensors").read_bytes() == best


def test_a_checkpoint_cut_between_its_renames_is_put_back_and_unfinished_saves_go(finished, preprocessed, tmp_path):
    """save_checkpoint seals .tmp_step_N, then renames it to step_N; a step saved again (the resume of an evaluation
    a stop cut short) first moves the earlier save to .old_step_N. Killed between the two renames, the run has no
    step_N; killed mid-save, an unsealed .tmp_step_N as large as a checkpoint is left. The next launch puts step_N
    back (the sealed new save when complete, else the earlier one) and removes the rest, in one line."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    ckpts = out / "checkpoints"
    previous, newest = checkpoints.step_folders(ckpts)[-2:]
    new_save, earlier = ckpts / f".tmp_{newest.name}", ckpts / f".old_{newest.name}"
    unsealed = ckpts / ".tmp_step_00000099"
    shutil.copytree(previous, unsealed)
    (unsealed / checkpoints.FILE_LIST).unlink()
    shutil.copytree(newest, new_save)
    os.replace(newest, earlier)
    again = train_cmd(preprocessed, out, "--epochs", "2", "--resume_from_checkpoint", "latest")
    said = ok(run(again))
    said = said.stdout + said.stderr
    assert (f"{ckpts}: cleaned up after a checkpoint a kill cut short: moved {new_save.name} to {newest.name} (sealed, "
            f"its rename cut short); removed {unsealed.name} (never sealed); removed {earlier.name} ({newest.name} is "
            "in place)") in said, said[-3000:]
    assert f"resumed from {newest}" in said and not list(ckpts.glob(".*"))
    shutil.copytree(newest, new_save)  # the new save with a flipped bit: the earlier one goes back
    with open(new_save / "model.safetensors", "r+b") as f:
        f.seek(-1, os.SEEK_END)
        byte = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0x10]))
    os.replace(newest, earlier)
    said = ok(run(again))
    said = said.stdout + said.stderr
    assert (f"removed {new_save.name} ({new_save / 'model.safetensors'} has the size it was saved with, but other "
            f"bytes (its CRC-32 differs)); moved {earlier.name} to {newest.name} (the save replacing it was cut)"
            ) in said, said[-3000:]
    assert f"resumed from {newest}" in said and not list(ckpts.glob(".*"))


def test_a_start_stopped_between_its_two_records_does_not_block_its_command(preprocessed, tmp_path):
    """write_run_info writes config.yaml, then run_info.json: a start killed (or out of space) between the two
    leaves config.yaml beside run.lock, and the same command must start again. A config.yaml alone (no run.lock)
    may be the user's: refused, as before."""
    out = tmp_path / "run"
    proc = train_faulting("""
        from imagenet_trainer import runinfo
        write = runinfo.atomic_write_text
        def killed_after_config(path, text):
            write(path, text)
            if path.name == "config.yaml":  # the run folder's, the first one written
                os.kill(os.getpid(), signal.SIGKILL)
        runinfo.atomic_write_text = killed_after_config
    """, train_cmd(preprocessed, out, "--epochs", "1"))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", LOCK_FILE]
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(out / "config.yaml", mine)
    ok(run(train_cmd(preprocessed, out, "--epochs", "1")))
    assert len(rows(out)) == 1 and (out / "run_info.json").is_file()
    proc = run(train_cmd(preprocessed, mine, "--epochs", "1"))
    assert proc.returncode == 1 and "is not empty and holds no train.py run (config.yaml)" in last_line(proc)


def file_size_limit(size: int):
    """A preexec_fn: the process's writes may not take a file past ``size`` bytes (RLIMIT_FSIZE; such a write fails
    with EFBIG, SIGXFSZ ignored): a folder that refuses writes, without root or a mount."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    return limit


@pytest.mark.parametrize("where", ["lock", "records"])
def test_an_output_dir_that_refuses_writes_at_start_up_ends_in_one_line(preprocessed, tmp_path, where):
    """The lock's record (a disk full to its last kB), or the launch's records after it (writes past RLIMIT_FSIZE: a
    folder that refuses them, without root or a mount)."""
    out = tmp_path / "run"
    cmd = train_cmd(preprocessed, out, "--epochs", "1")
    if where == "lock":
        proc = train_faulting("""
            import errno
            def full(*args):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.pwrite = full  # what runlock writes its holder's record with
        """, cmd)
        why = "No space left on device"
    else:
        proc = run(cmd, preexec_fn=file_size_limit(512))  # the lock's record fits, config.yaml does not
        why = "File too large"
    assert proc.returncode == 1
    line = last_line(proc)
    assert line.startswith(f"error: --output_dir {out}: cannot write there ({why}; ") and line.endswith(
        " free); free space or make it writable, or give another --output_dir"), line
    ok(run(cmd))  # the same command, once the folder takes writes: the failed start blocks nothing
    assert len(rows(out)) == 1


def test_a_full_disk_at_the_first_checkpoint_says_none_was_saved_yet(preprocessed, tmp_path, monkeypatch):
    out = tmp_path / "run"
    proc = train_faulting("""
        import errno
        from imagenet_trainer import checkpoints
        def full(folder):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        checkpoints.fsync_tree = full
        checkpoints.free_bytes = lambda folder: 3 << 20  # what the full disk has left
    """, train_cmd(preprocessed, out, "--epochs", "1", "--save_every_steps", "1"))
    assert proc.returncode == 1
    assert last_line(proc) == (f"error: checkpoint step_00000001: no space left on {out / 'checkpoints'} (3.1 MB free)"
                               "; no checkpoint was saved yet: free space, then run again (--resume_from_checkpoint "
                               "latest then starts from scratch)")
    assert not list((out / "checkpoints").iterdir()), "the unfinished save gives its space back"
    for free, said in ((5 * 10**9, "5.0 GB free"), (999 * 10**6, "999.0 MB free"), (12 << 10, "12 kB free")):
        monkeypatch.setattr(checkpoints, "free_bytes", lambda folder, free=free: free)
        assert checkpoints.free_space(tmp_path) == said


def interactive() -> None:
    """A preexec_fn: SIGINT at its default, as in a terminal (a non-interactive shell's background job, pytest's
    maybe, starts with it ignored, and a process that starts so keeps it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_a_full_disk_at_an_epochs_row_is_one_line_and_the_resume_appends_the_row(finished, preprocessed, tmp_path):
    """The disk fills between the epoch's checkpoint and its metrics.jsonl row (here the file is /dev/full): one
    line, not a traceback, and the resume appends the row the checkpoint holds."""
    out, flags = tmp_path / "run", ("--epochs", "2", "--save_every_steps", "1", "--keep_last", "10")  # `finished`'s
    full = train_faulting("""
        log_epoch = train.log_epoch
        def onto_a_full_disk(accelerator, row, run_dir, bar):
            if not (run_dir / "metrics.jsonl").exists():
                (run_dir / "metrics.jsonl").symlink_to("/dev/full")
            log_epoch(accelerator, row, run_dir, bar)
        train.log_epoch = onto_a_full_disk
    """, train_cmd(preprocessed, out, *flags))
    step = rows(finished)[0]["step"]
    assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr[-3000:]
    assert full.stderr.strip().splitlines()[-1].startswith(
        f"error: {out / 'metrics.jsonl'}: cannot append the row of step {step} (No space left on device; "), \
        full.stderr[-2000:]
    again = run(train_cmd(preprocessed, out, *flags, "--resume_from_checkpoint", "latest"))  # the disk still full
    assert again.returncode == 1 and "Traceback" not in again.stderr, again.stderr[-3000:]
    assert last_line(again).startswith(f"error: {out / 'metrics.jsonl'}: cannot append the row of step {step} (")
    (out / "metrics.jsonl").unlink()
    said = ok(run(train_cmd(preprocessed, out, *flags, "--resume_from_checkpoint", "latest")))
    assert f"appended the row of step {step} from its checkpoint" in said.stdout + said.stderr
    assert timeless(rows(out)) == timeless(rows(finished))


def test_a_stop_whose_record_cannot_be_written_still_exits_75_in_one_line(preprocessed, tmp_path):
    """A disk full right after the stop's checkpoint (here the record's name is taken by a folder): the checkpoint is
    whole, so the stop still ends with STOPPED_STATUS and one line saying the record is missing, not a traceback
    with status 1."""
    out = tmp_path / "run"
    proc = train_faulting(f"""
        from imagenet_trainer import stopping
        exit_stopped = stopping.exit_stopped
        def record_blocked(accelerator, step, ckpt_dir, signal_name):
            (ckpt_dir.parent / "{train.STOPPED_RECORD}" / "taken").mkdir(parents=True)
            exit_stopped(accelerator, step, ckpt_dir, signal_name)
        train.exit_stopped = record_blocked
        save = train.save_checkpoint
        def stopped_after_one(*args, **kwargs):
            seconds = save(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGTERM)
            return seconds
        train.save_checkpoint = stopped_after_one
    """, train_cmd(preprocessed, out, "--epochs", "3", "--save_every_steps", "2"))
    assert proc.returncode == train.STOPPED_STATUS and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert re.match(rf"SIGTERM: checkpoint \S+ written [0-9.]+ s after the signal, but not "
                    rf"{re.escape(str(out / train.STOPPED_RECORD))} \(", last), last
    ckpt = Path(last.split()[2])
    assert checkpoints.problem(ckpt) is None


def test_ctrl_c_checkpoints_and_exits_75_like_sigterm(preprocessed, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(train_cmd(preprocessed, out, "--epochs", "1000", "--save_every_steps", "2"), cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=interactive)
    try:
        deadline = time.time() + 300
        while not (out / "checkpoints" / "step_00000002").exists() and proc.poll() is None \
                and time.time() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the run must still be training"
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the foreground process group
    finally:
        stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == train.STOPPED_STATUS and "Traceback" not in stderr, stderr[-3000:]
    stopped = json.loads((out / "stopped_on_signal.json").read_text())
    assert stopped["signal"] == "SIGINT" and checkpoints.problem(Path(stopped["checkpoint"])) is None
    assert stdout.strip().splitlines()[-1].startswith(f"SIGINT: checkpoint {stopped['checkpoint']} written")
    ignored = run([sys.executable, "-c", "import signal; from imagenet_trainer import stop_signals; "
                   "stop_signals.install(ctrl_c=True); print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)"],
                  preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert ignored.stdout.strip() == "True", "a SIGINT ignored by whoever started the run stays ignored"


def test_a_second_ctrl_c_stops_at_once_and_the_last_checkpoint_resumes(preprocessed, tmp_path):
    out, flags = tmp_path / "run", ("--epochs", "1", "--batch_size", "4", "--save_every_steps", "2")  # 5 steps
    proc = train_faulting("""
        from imagenet_trainer import stop_signals
        save, step, steps = train.save_checkpoint, train.EpochTrainer.micro_batch, []
        def micro_batch(self, *args, **kwargs):
            steps.append(1)
            if len(steps) == 3:  # the first Ctrl-C, in the step after the first checkpoint (step 2)
                os.kill(os.getpid(), signal.SIGINT)
            return step(self, *args, **kwargs)
        def save_interrupted(*args, **kwargs):
            if stop_signals.received:  # the checkpoint the first Ctrl-C asked for: Ctrl-C again while it is written
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(120)
            return save(*args, **kwargs)
        train.EpochTrainer.micro_batch = micro_batch
        train.save_checkpoint = save_interrupted
    """, train_cmd(preprocessed, out, *flags), preexec_fn=interactive)
    assert proc.returncode == -signal.SIGINT and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == ("SIGINT again: stopping now, without a checkpoint; "
                                                    "--resume_from_checkpoint latest continues from the last one")
    assert [p.name for p in checkpoints.step_folders(out / "checkpoints")] == ["step_00000002"]
    assert not (out / "stopped_on_signal.json").exists()
    resumed = ok(run(train_cmd(preprocessed, out, *flags, "--resume_from_checkpoint", "latest")))
    assert f"resumed from {out / 'checkpoints' / 'step_00000002'}" in resumed.stdout + resumed.stderr


# train.py whose rank-0 sampler has a train DataLoader worker die at the given (epoch, micro-batch) positions, once
# each: the batch's last sample index goes as a CrashAt, which unpickles in the worker as that index after making the
# worker's next write into a ring slot SIGKILL it, the slot held (a decoder's segfault, the kernel's OOM killer); a
# second first, so that the batches it made before reach the main process. Each epoch's end prints the ring's
# fallbacks (batches that found their slot still held after data.ring.WAIT_S). The restart cap is RESTARTS.
CRASHING_TRAIN = """
import sys
sys.path.insert(0, ROOT)
import train

KILL_IN_FILL = ("(setattr(__import__('imagenet_trainer.data.ring').data.ring, 'fill', lambda view, batch: ["
                "__import__('time').sleep(1), __import__('os').kill(__import__('os').getpid(), 9)]), ")
crashed = set()


class CrashAt:
    def __init__(self, index):
        self.index = index

    def __reduce__(self):
        return eval, (KILL_IN_FILL + repr(self.index) + ")[1]",)


class CrashingSampler(train.ResumableSampler):
    def __iter__(self):
        epoch, b = self.epoch, self.start
        for batch in super().__iter__():
            if self.rank == 0 and (epoch, b) in CRASH_AT and (epoch, b) not in crashed:
                crashed.add((epoch, b))
                batch = [*batch[:-1], CrashAt(batch[-1])]
            yield batch
            b += 1


def finish(self, finish=train.EpochTrainer.finish):
    # one write: the ranks share stdout, and print writes its parts apart (two ranks' lines interleaved)
    sys.stdout.write(f"ring fallbacks: {int(self.loader.collate_fn.ring.fallbacks.sum())}\\n")
    sys.stdout.flush()
    return finish(self)


train.ResumableSampler, train.EpochTrainer.finish = CrashingSampler, finish
train.LOADER_RESTARTS = RESTARTS
if __name__ == "__main__":
    train.run_and_close(train.main, sys.argv[1:])
    train.exit_now()
"""
WORKER_FLAGS = ("--epochs", "2", "--batch_size", "2", "--grad_accum_steps", "2", "--num_workers", "2")


def crashing_cmd(tmp_path, cmd: list, crash_at=(), restarts: int = 3) -> list:
    """``cmd`` (a train_cmd) with train.py replaced by CRASHING_TRAIN, a worker of rank 0 dying at ``crash_at``."""
    script = tmp_path / f"crashing_train_{len(list(tmp_path.glob('crashing_train_*')))}.py"
    script.write_text(f"ROOT, CRASH_AT, RESTARTS = {str(ROOT)!r}, {set(crash_at)!r}, {restarts}\n{CRASHING_TRAIN}")
    return [str(script) if part == str(ROOT / "train.py") else part for part in cmd]


def last_weights(out):
    return load_file(checkpoints.step_folders(out / "checkpoints")[-1] / "model.safetensors")


@pytest.mark.parametrize("processes", [1, 2])
def test_a_dead_train_worker_is_restarted_in_place_and_the_run_ends_as_an_uninterrupted_one(preprocessed, tmp_path,
                                                                                           processes):
    """A train DataLoader worker SIGKILLed mid-epoch, half-way through a gradient accumulation, holding a ring slot:
    its rank says so in one line, starts new workers at the same micro-batch with every slot free, and the run ends
    with weights bit-equal to an uninterrupted one's; on 2 processes the other rank waits meanwhile."""
    launcher = ("python",) if processes == 1 else ("--multi_gpu", "--num_processes", "2", "--main_process_port")
    crash_at = (0, 3) if processes == 1 else (0, 1)  # the 2nd micro-batch of an optimizer step of 2
    runs = {}
    for name, crashes in (("reference", ()), ("crashed", (crash_at,))):
        cmd = train_cmd(preprocessed, tmp_path / name, *WORKER_FLAGS,
                        launcher=launcher if processes == 1 else (*launcher, str(free_port())))
        runs[name] = ok(run(crashing_cmd(tmp_path, cmd, crashes)))
    said = [line for line in runs["crashed"].stderr.splitlines() if "DataLoader" in line]
    assert len(said) == 1 and "Traceback" not in runs["crashed"].stderr, runs["crashed"].stderr[-3000:]
    assert re.fullmatch(rf"warning: rank 0: DataLoader worker \(pid \d+\) was killed by SIGKILL at step "
                        rf"{crash_at[1] // 2}; restarted the DataLoader workers \(1 of 3\) at the same batch: lower "
                        r"--num_workers if the kernel's OOM killer ended it \(dmesg\)", said[0]), said
    fallbacks = [line for line in runs["crashed"].stdout.splitlines() if line.startswith("ring fallbacks:")]
    assert fallbacks and fallbacks[-1] == "ring fallbacks: 0", "the dead worker's slot was left held"
    assert timeless(rows(tmp_path / "crashed")) == timeless(rows(tmp_path / "reference"))
    reference, crashed = last_weights(tmp_path / "reference"), last_weights(tmp_path / "crashed")
    assert reference.keys() == crashed.keys()
    assert all(torch.equal(reference[k], crashed[k]) for k in reference), "not the uninterrupted run's weights"


def test_train_worker_deaths_past_the_cap_end_in_one_line_naming_the_resume(preprocessed, tmp_path):
    """A second worker death with the cap at 1 restart: a one-line error that names the cause and the resume."""
    proc = run(crashing_cmd(tmp_path, train_cmd(preprocessed, tmp_path / "run", *WORKER_FLAGS), [(0, 3), (1, 3)],
                            restarts=1))
    assert proc.returncode == 1
    assert "restarted the DataLoader workers (1 of 1)" in proc.stderr
    assert re.fullmatch(r"error: rank 0: DataLoader worker \(pid \d+\) was killed by SIGKILL at step 6, .*"
                        r"then resume with --resume_from_checkpoint latest", last_line(proc)), last_line(proc)


# train.py whose second evaluation starts after one of its (persistent, idle) eval DataLoader workers was SIGKILLed
EVAL_WORKER_KILLED = """
import os, signal, sys
sys.path.insert(0, ROOT)
import train

calls = []


def evaluate_and_export(accelerator, model, ema, eval_loader, *args, evaluate=train.evaluate_and_export, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        worker = eval_loader._iterator._workers[0]
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(10)
    return evaluate(accelerator, model, ema, eval_loader, *args, **kwargs)


train.evaluate_and_export = evaluate_and_export
if __name__ == "__main__":
    train.run_and_close(train.main, sys.argv[1:])
    train.exit_now()
"""


def test_an_idle_eval_worker_killed_between_evaluations_is_replaced_before_the_next(preprocessed, tmp_path):
    """The OOM killer may pick an eval worker while it idles through an epoch's training: the next evaluation, before
    any rank's first gather, starts new workers and scores as an uninterrupted run does (it ended the run)."""
    reference = ok(run(train_cmd(preprocessed, tmp_path / "reference", *WORKER_FLAGS)))
    script = tmp_path / "eval_worker_killed.py"
    script.write_text(f"ROOT = {str(ROOT)!r}\n{EVAL_WORKER_KILLED}")
    cmd = [str(script) if part == str(ROOT / "train.py") else part
           for part in train_cmd(preprocessed, tmp_path / "killed", *WORKER_FLAGS)]
    killed = ok(run(cmd))
    said = [line for line in killed.stderr.splitlines() if "DataLoader" in line]
    assert len(said) == 1 and re.fullmatch(r"warning: rank 0: eval DataLoader worker \(pid \d+\) was killed by SIGKILL "
                                           r"since the last evaluation; started new eval workers at step \d+", said[0])
    assert "Traceback" not in killed.stderr and reference.returncode == 0
    assert timeless(rows(tmp_path / "killed")) == timeless(rows(tmp_path / "reference"))


def test_a_resume_names_the_flags_it_changes_and_refuses_another_seed_mid_epoch(finished, preprocessed, tmp_path):
    """The sampler's order comes from (seed, epoch): another --seed mid-epoch would read the rest of the epoch in
    another order, some images twice and others never. At an epoch's end it only changes what comes next."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    mid = checkpoints.step_folder(out / "checkpoints", 1)  # inside the first epoch
    proc = run(train_cmd(preprocessed, out, "--epochs", "2", "--seed", "1", "--resume_from_checkpoint", mid))
    assert proc.returncode == 1
    assert last_line(proc) == (f"error: --seed 1: --resume_from_checkpoint {mid} was saved mid-epoch (epoch 0, batch "
                               "1) with --seed 0, and another seed reorders the rest of the epoch (images seen twice "
                               "or not at all); resume with --seed 0, or from an epoch-end checkpoint")
    assert not (out / "checkpoints" / checkpoints.SET_ASIDE).exists(), "a refused resume moves nothing"
    proc = ok(run(train_cmd(preprocessed, out, "--epochs", "2", "--seed", "1", "--label_smoothing", "0.2",
                            "--resume_from_checkpoint", "latest")))
    assert ("flags that differ from the checkpoint's config.yaml, this launch's apply: --label_smoothing 0.1 -> 0.2, "
            "--seed 0 -> 1") in proc.stdout


def test_a_mid_epoch_resume_onto_a_train_split_of_another_length_is_refused(finished, preprocessed, tmp_path):
    """An epoch's order is a permutation of the train split's rows: on a split of another length (preprocess.py run
    again on other files, a subset) the saved position would read the rest of the epoch in another order, or lie past
    its end (the sampler's ValueError). Refused mid-epoch in one line; from an epoch's end the run goes on with the
    new split. A checkpoint saved before the length was recorded is taken as it is."""
    half = tmp_path / "half"
    ds = datasets.load_from_disk(str(preprocessed))
    samples = len(ds["train"])
    ds["train"] = ds["train"].select(range(samples // 2))
    ds.save_to_disk(str(half))
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    epoch_end = rows(finished)[0]["step"]
    mid = checkpoints.step_folder(out / "checkpoints", epoch_end + 1)  # epoch 1, batch 1
    proc = run(train_cmd(half, out, "--epochs", "3", "--resume_from_checkpoint", mid))
    assert proc.returncode == 1
    assert last_line(proc) == (f"error: --dataset {half}: --resume_from_checkpoint {mid} was saved mid-epoch (epoch 1, "
                               f"batch 1) with {samples} train images, this split has {samples // 2}, and another "
                               "length reorders the rest of the epoch (images seen twice or not at all); resume on the "
                               "train split it was saved with, or from an epoch-end checkpoint")
    assert not (out / "checkpoints" / checkpoints.SET_ASIDE).exists(), "a refused resume moves nothing"
    ok(run(train_cmd(half, out, "--epochs", "3", "--resume_from_checkpoint",
                     checkpoints.step_folder(out / "checkpoints", epoch_end))))
    state = train.TrainState({}, samples // 2)
    state.load_state_dict({"epoch": 1, "batch_in_epoch": 1})  # an older checkpoint's: no train_samples
    train.check_train_set(mid, str(half), samples // 2, state)
    assert state.train_samples == samples // 2


# -- undecodable images -----------------------------------------------------------------------------------------------

def break_image(dataset: Path, split: str, row: int) -> tuple[str, str]:
    """Overwrite the first two bytes of ``row``'s JPEG inside its Arrow file: the same size, so the start-up size check
    passes, and no decoder takes it (what a flipped byte in a header does). Returns (image_id, Arrow file)."""
    part = datasets.load_from_disk(str(dataset))[split]
    image_id = part[row]["image_id"]
    jpeg = part.cast_column("image", datasets.Image(decode=False))[row]["image"]["bytes"]
    for name in (f["filename"] for f in part.cache_files):
        content = bytearray(Path(name).read_bytes())
        at = content.find(jpeg)
        if at >= 0:
            assert content.find(jpeg, at + 1) < 0, "the row's bytes must be unique to find them"
            content[at:at + 2] = b"\x00\x00"
            Path(name).write_bytes(bytes(content))
            return image_id, name
    raise AssertionError(f"{split} row {row} not found in its Arrow files")


def test_a_bad_row_is_replaced_by_the_same_row_in_every_epoch_worker_and_launch(preprocessed, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(preprocessed, data)
    image_id, arrow = break_image(data, "train", 3)
    split = datasets.load_from_disk(str(data))["train"]
    n = len(split)
    choice = replacement_row(0, 3, 1, n)
    assert choice != 3 and [replacement_row(0, 3, 1, n) for _ in range(3)] == [choice] * 3
    first = TrainSet(split, 32, seed=0).sample((0, 3))
    assert first[2][:2] == (3, choice) and "row 3: the image does not decode" in first[2][2]
    again = TrainSet(split, 32, seed=0).sample((0, 3))  # another process: the same image, crop and label
    assert torch.equal(first[0], again[0]) and first[1] == again[1] == split[choice]["label"]
    assert TrainSet(split, 32, seed=0).sample((5, 3))[2][1] == choice, "any epoch: the same stand-in"
    # through worker processes: the batch carries the news to the main process, which names the image
    bad = BadSamples({"train": split}, limit=10, folder=tmp_path)
    sampler = [[(0, 2), (0, 3)], [(1, 3), (1, 4)]]
    loader = RecordingLoader(TrainSet(split, 32, seed=0), batch_sampler=sampler, collate_fn=collate, num_workers=2,
                             bad=bad)
    for x, y in loader:
        assert x.shape == (2, 3, 32, 32) and y.shape == (2,)
    (entry,) = bad.seen.values()
    assert entry.pop("error").startswith("row 3: the image does not decode (cannot identify image file")
    assert entry == {"split": "train", "row": 3, "image_id": image_id, "arrow_file": arrow, "replaced_by": choice}
    strict = BadSamples({"train": split}, limit=0)
    strict.add_batch([first[2]])  # recorded; train.py judges the limit once the ranks share their finds
    assert not strict.over_limit()
    with pytest.raises(SystemExit, match=r"error: 1 images do not decode, more than --max_bad_samples 0 .*"
                                         r"preprocess.py --verify"):
        strict.check()


def test_the_train_loader_notices_a_dead_worker_in_seconds_and_a_hung_one_at_its_timeout():
    """Workers from a fork server, as train.py's: their deaths send this process no SIGCHLD, and torch's loader with
    a timeout looked for a dead one only when the whole timeout had run out. The server is train.py's (worker_context):
    one process has one server, and a plain one started here would serve later tests' loaders without its mask."""
    forkserver = worker_context()
    loader = WatchedLoader(FailingItems(die_at=3), batch_size=None, num_workers=1, timeout=90,
                           multiprocessing_context=forkserver)
    batches = iter(loader)
    assert [next(batches) for _ in range(3)] == [0, 1, 2]
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"DataLoader worker \(pid\(s\) \d+\) exited unexpectedly"):
        next(batches)
    assert time.monotonic() - started < loader.timeout / 2, "the dead worker was found only at the timeout"
    del batches
    hung = WatchedLoader(FailingItems(hang_at=1), batch_size=None, num_workers=1, timeout=10,
                         multiprocessing_context=forkserver)
    batches = iter(hung)
    assert next(batches) == 0
    with pytest.raises(RuntimeError, match="DataLoader timed out after 10 seconds"):
        next(batches)
    del batches  # torch's shutdown terminates the sleeping worker


def test_flipped_bytes_in_a_train_and_a_validation_image_cost_one_image_each(preprocessed, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(preprocessed, data)
    n_train = len(datasets.load_from_disk(str(data))["train"])
    row = ResumableSampler(n_train, 8, seed=0).order(0)[0].item()  # read in the first step of the run
    train_id, train_file = break_image(data, "train", row)
    val_id, val_file = break_image(data, "validation", 1)
    out = tmp_path / "run"
    proc = ok(run(train_cmd(data, out, "--epochs", "2")))
    assert f"train row {row} (image_id {train_id}, {train_file}) does not decode: replaced by row" in proc.stderr
    assert f"validation row 1 (image_id {val_id}, {val_file}) does not decode: left out" in proc.stdout + proc.stderr
    record = json.loads((out / "bad_samples.json").read_text())
    assert [(e["split"], e["row"], e["image_id"], e["arrow_file"]) for e in record] == [
        ("train", row, train_id, train_file), ("validation", 1, val_id, val_file)]
    n_val = len(datasets.load_from_disk(str(data))["validation"])
    assert [(r["bad_samples"], r["val_left_out"], r["val_n"]) for r in rows(out)] == [(2, 1, n_val - 1)] * 2
    summary = validate.main(["--model", str(out / "final"), "--dataset", str(data), "--num_workers", "0"])
    assert summary["left_out"] == 1 and summary["n"] == n_val - 1
    with pytest.raises(SystemExit) as e:
        validate.main(["--model", str(out / "final"), "--dataset", str(data), "--num_workers", "0",
                       "--max_bad_samples", "0"])
    assert "more than --max_bad_samples 0" in str(e.value.code) and "preprocess.py --verify" in str(e.value.code)
    assert f"validation row 1 (image_id {val_id}" in str(e.value.code) and "\n" not in str(e.value.code)
    # past the limit the run stops after its checkpoint, in one line naming the check that finds every bad file
    proc = run(train_cmd(data, tmp_path / "strict", "--epochs", "2", "--max_bad_samples", "1"))
    assert proc.returncode != 0
    line = last_line(proc)
    assert "2 images do not decode, more than --max_bad_samples 1" in line and "preprocess.py --verify" in line
    assert (tmp_path / "strict" / "bad_samples.json").is_file() and len(rows(tmp_path / "strict")) == 1


def test_too_many_bad_images_mid_epoch_stop_at_a_checkpoint_and_a_resume_with_a_higher_limit_goes_on(
        preprocessed, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(preprocessed, data)
    order = ResumableSampler(len(datasets.load_from_disk(str(data))["train"]), 4, seed=0).order(0)
    for row in (order[0].item(), order[4].item()):  # read in the first and the second of 5 steps
        break_image(data, "train", row)
    out, small = tmp_path / "run", ("--epochs", "1", "--batch_size", "4")
    proc = run(train_cmd(data, out, *small, "--max_bad_samples", "1"))
    assert proc.returncode == 1
    line = last_line(proc)
    ckpt = out / "checkpoints" / "step_00000002"
    assert line.startswith("error: 2 images do not decode, more than --max_bad_samples 1") and \
        "preprocess.py --verify" in line and "then --resume_from_checkpoint latest counts only the rows still " \
        "broken; or resume as they are with --max_bad_samples 2" in line and line.endswith(ckpt.name), line
    assert checkpoints.step_folders(out / "checkpoints") == [ckpt] and checkpoints.problem(ckpt) is None
    assert not (out / "metrics.jsonl").exists(), "stopped mid-epoch, before the epoch's row"
    assert len(json.loads((out / "bad_samples.json").read_text())) == 2
    resumed = ok(run(train_cmd(data, out, *small, "--max_bad_samples", "2",
                               "--resume_from_checkpoint", "latest")))
    assert f"resumed from {ckpt} at epoch 0, step 2" in resumed.stdout + resumed.stderr
    straight = tmp_path / "straight"
    ok(run(train_cmd(data, straight, *small, "--max_bad_samples", "2")))
    assert [r["step"] for r in rows(out)] == [r["step"] for r in rows(straight)]
    assert rows(out)[0]["train_loss"] == pytest.approx(rows(straight)[0]["train_loss"], rel=1e-5)
    a, b = load_file(out / "final" / "model.safetensors"), load_file(straight / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "the resume continues exactly where the stop left off"


def test_a_resume_after_the_data_was_repaired_counts_only_what_is_still_broken(preprocessed, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(preprocessed, data)
    order = ResumableSampler(len(datasets.load_from_disk(str(data))["train"]), 4, seed=0).order(0)
    broken = [order[0].item(), order[4].item()]  # read in the first and the second of 5 steps
    image_ids = [break_image(data, "train", row)[0] for row in broken]
    out, small = tmp_path / "run", ("--epochs", "1", "--batch_size", "4", "--max_bad_samples", "1")
    proc = run(train_cmd(data, out, *small))
    assert proc.returncode == 1 and "copy them again or rerun preprocess.py, then --resume_from_checkpoint latest " \
        "counts only the rows still broken" in last_line(proc)
    assert sorted(e["row"] for e in json.loads((out / "bad_samples.json").read_text())) == sorted(broken)
    shutil.copytree(preprocessed, data, dirs_exist_ok=True)  # the repair: the original Arrow files again
    resumed = ok(run(train_cmd(data, out, *small, "--resume_from_checkpoint", "latest")))  # the same limit
    log = resumed.stdout + resumed.stderr
    for row, image_id in zip(broken, image_ids):
        assert f"train row {row} (image_id {image_id}) decodes now: no longer counted; from here on it is sampled " \
               "itself instead of row" in log, log[-3000:]
    assert json.loads((out / "bad_samples.json").read_text()) == []
    assert [(r["step"], r["bad_samples"]) for r in rows(out)] == [(5, 0)]


def test_the_recheck_forgets_repaired_rows_and_keeps_those_still_broken(preprocessed, tmp_path, capsys):
    from accelerate import Accelerator  # noqa: PLC0415

    from imagenet_trainer.bad_samples import load_run_record  # noqa: PLC0415

    data = tmp_path / "data"
    shutil.copytree(preprocessed, data)
    for split, row in (("train", 3), ("train", 5), ("validation", 1)):
        break_image(data, split, row)
    ds = datasets.load_from_disk(str(data))
    accelerator = Accelerator(cpu=True)
    found = BadSamples({"train": ds["train"], "validation": ds["validation"]}, limit=10, folder=tmp_path)
    found.add("train", 3, "does not decode", replaced_by=7)
    found.add("train", 5, "does not decode", replaced_by=8)
    found.add_left_out("validation", [1], warn=False)
    found.share(accelerator)
    shutil.copytree(preprocessed, data, dirs_exist_ok=True)
    break_image(data, "train", 5)  # train row 3 and validation row 1 repaired, train row 5 still broken
    ds = datasets.load_from_disk(str(data))
    splits = {"train": ds["train"], "validation": ds["validation"]}
    capsys.readouterr()
    bad = load_run_record(accelerator, splits, limit=0, folder=tmp_path)
    said = capsys.readouterr().out.splitlines()
    assert [line.split(" (image_id")[0] for line in said] == ["train row 3", "validation row 1"], said
    assert "instead of row 7, so this run is not bit-identical" in said[0] and said[1].endswith("it is scored again")
    assert list(bad.shared) == list(bad.seen) == [("train", 5)] and bad.over_limit()
    assert [(e["split"], e["row"]) for e in json.loads((tmp_path / "bad_samples.json").read_text())] == [("train", 5)]
    again = load_run_record(accelerator, splits, limit=0, folder=tmp_path)  # nothing more to forget, nothing said
    assert list(again.shared) == [("train", 5)] and capsys.readouterr().out == ""


# -- one run per folder ------------------------------------------------------------------------------------------------

HOLD = ("import sys, time; from imagenet_trainer.runlock import FolderLock; "
        "FolderLock(sys.argv[1], '--output_dir').acquire(); print('held', flush=True); time.sleep(600)")


def test_a_folder_lock_names_its_holder_and_is_taken_over_only_when_the_holder_is_gone(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match=rf"--output_dir {folder} is in use by pid {holder.pid} on host "
                                             rf"{socket.gethostname()} since 20"):
            FolderLock(folder, "--output_dir").acquire()
        assert in_use(folder).startswith(f"pid {holder.pid} on host")
    finally:
        holder.kill()  # SIGKILL: no clean-up, the record still says held
        holder.wait()
    assert json.loads((folder / LOCK_FILE).read_text())["held"] is True
    lock = FolderLock(folder, "--output_dir").acquire()  # the kernel dropped the dead holder's flock
    assert lock.took_over and f"pid {holder.pid}" in lock.took_over
    lock.release()
    assert json.loads((folder / LOCK_FILE).read_text())["held"] is False and in_use(folder) is None
    # a record of another host: its holder may live on; explained, not taken over, unless it is this SLURM job
    (folder / LOCK_FILE).write_text(json.dumps({"host": "node-b", "pid": 4242, "start": "2026-01-01T00:00:00Z",
                                                "slurm_job_id": "77", "held": True}))
    with pytest.raises(ValueError, match=rf"locked by pid 4242 on host node-b since 2026-01-01T00:00:00Z, SLURM job "
                                         rf"77, another host: .* delete {folder / LOCK_FILE} and launch again"):
        FolderLock(folder, "--output_dir").acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "77")  # the requeued job, on another node
    lock = FolderLock(folder, "--output_dir").acquire()
    assert "node-b" in lock.took_over
    lock.release()


def test_a_run_lock_deleted_by_hand_is_made_again_or_the_run_stops_before_a_second_one_writes(preprocessed,
                                                                                             tmp_path):
    """run.lock deleted while its run goes on (a clean-up, a user who took it for a stale one) locks nothing: the
    next launch makes a new one and takes the folder. The run checks it before each checkpoint: deleted (at its 2nd
    checkpoint) it is made and locked again; deleted and taken by another process (at its 4th, as a second launch
    takes it) the run stops before it writes, in one line, and leaves the other one's lock alone."""
    out, holder_pid = tmp_path / "run", tmp_path / "holder.pid"
    try:
        proc = train_faulting(f"""
            import subprocess
            from pathlib import Path
            calls, save_checkpoint = [], train.save_checkpoint
            def lock_deleted(*args):
                calls.append(1)
                if len(calls) in (2, 4):
                    (Path({str(out)!r}) / {LOCK_FILE!r}).unlink()
                if len(calls) == 4:  # a second launch into the folder, between the delete and this checkpoint
                    holder = subprocess.Popen([sys.executable, "-c", {HOLD!r}, {str(out)!r}], text=True,
                                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # not train's pipe
                    Path({str(holder_pid)!r}).write_text(str(holder.pid))
                    assert holder.stdout.readline().strip() == "held"
                return save_checkpoint(*args)
            train.save_checkpoint = lock_deleted
        """, train_cmd(preprocessed, out, "--epochs", "3", "--save_every_steps", "1", "--keep_last", "10"))
        holder = json.loads((out / LOCK_FILE).read_text())
        assert holder["pid"] == int(holder_pid.read_text()) and holder["held"], "the other lock is left alone"
        assert in_use(out) == f"pid {holder['pid']} on host {socket.gethostname()} since {holder['start']}"
    finally:
        if holder_pid.exists():
            os.kill(int(holder_pid.read_text()), signal.SIGKILL)
    assert f"warning: {out / LOCK_FILE} was deleted while this run held it: made and locked again" in proc.stdout
    saved = checkpoints.step_folders(out / "checkpoints")
    assert proc.returncode == 1 and last_line(proc) == (
        f"error: --output_dir {out}: {out / LOCK_FILE} was deleted while this run held it, and is now the lock of pid "
        f"{holder['pid']} on host {socket.gethostname()} since {holder['start']}; this run stops before checkpoint "
        f"step_{len(saved) + 1:08d}, so that two runs do not write into one folder (never delete the {LOCK_FILE} of "
        "a live run)")
    assert len(saved) == 3


def test_a_lock_record_the_disk_takes_only_in_part_fails_the_acquire(tmp_path):
    """A write past RLIMIT_FSIZE writes what fits and returns the count (a short write, as a filesystem near its
    quota may make): the record's writer goes on, and the next write fails (EFBIG) instead of leaving half a record
    as the holder's."""
    acquire = "import sys; from imagenet_trainer.runlock import FolderLock; FolderLock(sys.argv[1], 'x').acquire()"
    proc = run([sys.executable, "-c", acquire, str(tmp_path)], preexec_fn=file_size_limit(64))
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == "OSError: [Errno 27] File too large"
    assert (tmp_path / LOCK_FILE).stat().st_size == 64


def test_a_second_launch_into_a_busy_output_dir_is_refused_from_the_first_seconds(preprocessed, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(train_cmd(preprocessed, out, "--epochs", "1000", "--seed", "1"), cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None and in_use(out) is None:
            time.sleep(0.01)
        saved = [p.stat().st_mtime for p in (out / "checkpoints").glob("step_*")]
        assert in_use(out) is not None, "the first run holds the folder"
        # the lock comes before any save: no save yet when this poll saw the lock, or (a loaded machine starved the
        # poll past the first epoch) the lock's start, in whole seconds, no later than each save
        started = calendar.timegm(time.strptime(json.loads((out / LOCK_FILE).read_text())["start"],
                                                "%Y-%m-%dT%H:%M:%SZ"))
        assert all(started <= mtime for mtime in saved), "the lock comes before any save"
        for extra in ((), ("--resume_from_checkpoint", "latest")):
            second = run(train_cmd(preprocessed, out, "--epochs", "2", "--seed", "2", *extra))
            assert second.returncode != 0
            assert f"--output_dir {out} is in use by pid {first.pid} on host" in last_line(second)
        assert first.poll() is None, "the first run goes on"
        first.send_signal(signal.SIGUSR1)  # checkpoint and stop (status 75)
    finally:
        _, err = first.communicate(timeout=600)
    assert first.returncode == 75, err[-3000:]
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == 1 and not (out / "resumes").exists()
    assert in_use(out) is None and json.loads((out / LOCK_FILE).read_text())["held"] is False


def test_two_processes_refuse_a_busy_output_dir_together(preprocessed, tmp_path):
    """Rank 0 asks for the lock, every rank hears the answer: both exit with the holder's name, none hangs."""
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = run(train_cmd(preprocessed, out, "--epochs", "1", launcher=("--multi_gpu", "--num_processes", "2",
                                                                            "--main_process_port", str(free_port()))))
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode != 0
    line = (f"error: --output_dir {out} is in use by pid {holder.pid} on host {socket.gethostname()} since "
            f"{json.loads((out / LOCK_FILE).read_text())['start']}; wait for it to end or give another --output_dir")
    # counted, not split into lines: Python writes a SystemExit's text and its newline apart, so the two ranks'
    # lines may interleave on the shared stderr ("...--output_direrror: ...")
    assert proc.stderr.count(line) == proc.stderr.count("error:") == 2, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE], "nothing written"


@pytest.mark.parametrize("how", ["return", "exit"])
def test_a_rank_freeing_ddp_mid_collective_still_exits(how, tmp_path):
    """train.py's way out (run_and_close) on 2 gloo processes, rank 0 tearing down while its worker thread is still in
    an all-reduce rank 1 joins 3 s late; after a finished run (`return`) and after a stop (`exit`, status 75, the
    model still in main's frame). The default group's last reference must be train.WORLD_GROUP's: freed last by DDP's
    reducer instead, the group's destructor joined that thread with the GIL held while the thread waited for the GIL,
    and rank 0 never exited (torch 2.11; torch 2.14.1's reducer lets the GIL go itself)."""
    env = {**os.environ, "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    ranks = [subprocess.Popen([sys.executable, str(ROOT / "tests" / "gloo_teardown.py"), how, str(tmp_path / "run")],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in (0, 1)]
    try:
        outputs = [rank.communicate(timeout=120) for rank in ranks]
    finally:
        for rank in ranks:
            rank.kill()
    for rank, (out, err) in zip(ranks, outputs):
        assert rank.returncode == (0 if how == "return" else train.STOPPED_STATUS), out + err[-3000:]
    times = [dict(line.rsplit(" ", 1) for line in out.splitlines() if " " in line) for out, _ in outputs]
    rank0_left, rank1_joined = (float(times[r][f"rank {r} DistributedDataParallel"]) for r in (0, 1))
    assert rank1_joined - rank0_left > 1.0, "rank 0 began its teardown after the all-reduce ended: nothing was tested"
    if how == "return":
        assert float(times[0]["closed"]) >= rank1_joined - 0.5  # its teardown waited for the all-reduce, then ended


# -- SLURM: the signal reaches train.py whatever the process tracking ---------------------------------------------------

def node_tasks(out) -> list[int]:
    """The pids of slurm/train.sbatch's per-node tasks (bash -c ... train.py ... --output_dir out)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[:2] == [b"bash", b"-c"] and str(out).encode() in argv:
            found.append(int(proc.name))
    return found


def test_the_pre_timeout_signal_to_the_node_tasks_alone_reaches_train_py(slurm, preprocessed, tmp_path):
    """ProctrackType=proctrack/pgid: SLURM signals each node task's process group, and torchrun's ranks, in sessions
    of their own, are not in it. Here only the tasks get SIGUSR1: they pass it on, train.py checkpoints, the job
    requeues."""
    env, log = slurm
    out = tmp_path / "run"
    job = sbatch({**env, "MAIN_PROCESS_PORT": str(free_port())}, *train_args(preprocessed, out, "--epochs", "40"),
                 popen=True)  # 80 steps: the signal lands long before the end
    first = out / "checkpoints" / "step_00000002"
    deadline = time.time() + 300
    while not first.exists() and job.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    tasks = node_tasks(out)
    assert len(tasks) == 2, tasks
    for pid in tasks:
        os.kill(pid, signal.SIGUSR1)
    output = job.communicate(timeout=300)[0]
    assert job.returncode == 0, output[-5000:]
    assert (log / "requeue").read_text().split() == ["4242"], output[-3000:]
    stopped = json.loads((out / "stopped_on_signal.json").read_text())
    assert stopped["exit_status"] == 75 and 2 <= stopped["step"] < 80


# -- preprocess.py --------------------------------------------------------------------------------------------------------

def preprocess_cmd(tree, out, *extra):
    return [sys.executable, str(ROOT / "preprocess.py"), "--data_dir", str(tree), "--output_dir", str(out), *extra]


def test_a_second_preprocess_into_the_same_output_is_refused(ilsvrc_tree, tmp_path):
    out = tmp_path / "pp"
    hold_beside = HOLD.replace("'--output_dir')", "'--output_dir', sys.argv[2])")  # the lock file beside OUT
    holder = subprocess.Popen([sys.executable, "-c", hold_beside, str(out), str(tmp_path / "pp.lock")], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = run(preprocess_cmd(ilsvrc_tree, out, "--num_proc", "1"))
        assert proc.returncode != 0
        assert last_line(proc) == (f"error: --output_dir {out} is in use by pid {holder.pid} on host "
                                   f"{socket.gethostname()} since {json.loads((tmp_path / 'pp.lock').read_text())['start']}"
                                   "; wait for it to end or give another --output_dir")
        assert not out.exists() and not (tmp_path / "pp.tmp").exists()
    finally:
        holder.kill()
        holder.wait()
    ok(run(preprocess_cmd(ilsvrc_tree, out, "--num_proc", "1")))  # the holder is gone: its lock is taken over
    assert (out / "dataset_dict.json").is_file() and not (tmp_path / "pp.lock").exists(), "the lock goes with it"


def test_sigterm_ends_preprocess_in_one_line_and_the_rerun_resumes(tmp_path):
    tree = make_ilsvrc_tree(tmp_path / "kaggle", source="digits", num_classes=10, train_per_class=40,
                            val_per_class=4, num_test=1, seed=0)
    out = tmp_path / "pp"
    proc = subprocess.Popen(preprocess_cmd(tree, out, "--num_proc", "1", "--shard_size", "10"), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list((tmp_path / "pp.tmp").rglob("*.arrow")):
        time.sleep(0.02)
    assert proc.poll() is None, "finished before the signal: nothing to test"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == (f"interrupted: finished shards are kept in {tmp_path / 'pp.tmp'}; run the "
                                            "same command to resume")
    again = ok(run(preprocess_cmd(tree, out, "--num_proc", "1", "--shard_size", "10")))
    assert f"resuming {tmp_path / 'pp.tmp'}" in again.stdout and (out / "dataset_dict.json").is_file()


def mounted_tmpfs(mnt: Path, size: str):
    """A tmpfs of ``size`` at ``mnt`` for the test's duration (root and mount(8) needed, else the test is skipped)."""
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a separate small disk needs root to mount a tmpfs")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mount -t tmpfs is not allowed here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def disk(request, tmp_path):
    """A tmpfs mounted at tmp_path/mnt, of the size the test gives (indirect parametrization), unmounted after it."""
    yield from mounted_tmpfs(tmp_path / "mnt", request.param)


@pytest.mark.parametrize("disk", ["5m"], indirect=True)
def test_a_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_previous_one(preprocessed, disk):
    out = disk / "run"  # 5 MB: one checkpoint (~2.5 MB) and the export fit, a second does not
    proc = run(train_cmd(preprocessed, out, "--epochs", "2", "--save_every_steps", "1", "--keep_last", "10"))
    assert proc.returncode != 0
    line = last_line(proc)
    assert line.startswith("error: checkpoint step_00000002: no space left on") and "is intact" in line, line
    (kept,) = checkpoints.step_folders(out / "checkpoints")
    assert kept.name == "step_00000001" and checkpoints.problem(kept) is None and f"{kept} is intact" in line
    assert not list((out / "checkpoints").glob(".tmp_*")), "the unfinished save gives its space back"


@pytest.mark.parametrize("disk", ["1m"], indirect=True)
def test_a_full_disk_at_the_export_is_one_line_and_leaves_no_export_folder(preprocessed, disk):
    out = disk / "run"  # 1 MB: the run's records fit, the export (~1.3 MB of weights) does not
    proc = run(train_cmd(preprocessed, out, "--epochs", "1"))
    assert proc.returncode == 1
    line = last_line(proc)
    assert line.startswith(f"error: export {out / 'final'}: no space left on {out} (") and \
        "nothing of it is left" in line and line.endswith("--resume_from_checkpoint latest trains on from the last "
                                                          "checkpoint and exports again"), line
    assert {p.name for p in out.iterdir()} <= {LOCK_FILE, "config.yaml", "run_info.json"}, \
        "no final folder, and the unfinished one gives its space back"


@pytest.mark.parametrize("disk", ["2m"], indirect=True)  # one export (~1.3 MB) fits, a second beside it does not
def test_a_full_disk_while_saving_over_an_export_keeps_the_earlier_one(disk):
    model = modeling.create_model(TINY, num_classes=4)
    folder = modeling.save_pretrained(model, disk / "final", label_names=list("abcd"))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    torch.nn.init.zeros_(next(model.parameters()))
    with pytest.raises(Exception) as e:
        modeling.save_pretrained(model, folder, label_names=list("abcd"))
    assert checkpoints.is_disk_full(e.value)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in disk.iterdir()) == ["final"], "the unfinished save gives its space back"


@pytest.mark.parametrize("disk", ["64m"], indirect=True)
def test_an_empty_mount_point_as_output_dir_is_built_inside_on_its_own_disk(ilsvrc_tree, disk):
    proc = ok(run(preprocess_cmd(ilsvrc_tree, disk, "--num_proc", "1")))
    assert "Traceback" not in proc.stderr
    assert not disk.with_name("mnt.tmp").exists(), "nothing built on the parent's disk"
    assert sorted(p.name for p in disk.iterdir() if p.name.startswith(".")) == []
    assert len(datasets.load_from_disk(str(disk))["train"]) > 0
    assert "already done" in ok(run(preprocess_cmd(ilsvrc_tree, disk, "--num_proc", "1"))).stdout
    assert run([sys.executable, str(ROOT / "preprocess.py"), "--verify", str(disk)]).returncode == 0


@pytest.mark.parametrize("disk", ["256k"], indirect=True)
def test_a_full_disk_ends_preprocess_in_one_line(tmp_path, disk):
    tree = make_ilsvrc_tree(tmp_path / "kaggle", source="photos", num_classes=4, train_per_class=12,
                            val_per_class=2, num_test=1, seed=0)
    proc = run(preprocess_cmd(tree, disk / "pp", "--num_proc", "1", "--shard_size", "4"))
    assert proc.returncode != 0
    line = last_line(proc)
    assert line.startswith(f"error: no space left on the disk of {disk / 'pp.tmp'} (") and "resume" in line


def test_verify_fails_on_a_file_missing_from_the_manifest(preprocessed, tmp_path):
    """A file added to a split folder since (an edited manifest is damaged: its own SHA-256, test_preprocess.py)."""
    copy = tmp_path / "data"
    shutil.copytree(preprocessed, copy)
    listed = json.loads((copy / "preprocess_manifest.json").read_text())
    arrow = sorted(k for k in listed["files"] if k.endswith(".arrow"))[0]
    victim = str(Path(arrow).with_name("data-00009-of-00009.arrow"))
    shutil.copy(copy / arrow, copy / victim)
    proc = run([sys.executable, str(ROOT / "preprocess.py"), "--verify", str(copy)])
    assert proc.returncode != 0
    assert f"BAD {copy / victim}: not in preprocess_manifest.json" in proc.stdout
    assert "1 of" in last_line(proc)


def test_a_linked_class_folder_is_reported_not_duplicated_and_broken_links_are_counted(tmp_path, capsys):
    tree = tmp_path / "photos"
    for split, n in (("train", 3), ("val", 1)):
        for k, name in enumerate(("bus", "car")):
            (tree / split / name).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (24, 16), (40 * k, 90, 20 * i)).save(tree / split / name / f"{name}{i}.jpg")
    (tree / "train" / "lorry").symlink_to(tree / "train" / "bus")  # the same images under a second name
    (tree / "train" / "car" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    preprocess.main(["--data_dir", str(tree), "--output_dir", str(tmp_path / "pp"), "--num_proc", "1"])
    report = json.loads((tmp_path / "pp" / "preprocess_report.json").read_text())
    assert datasets.load_from_disk(str(tmp_path / "pp"))["train"].features["label"].names == ["bus", "car"]
    assert (f"1 folders in {tree / 'train'} are the same folder as a class listed already, not listed twice: "
            "lorry -> bus") in report["warnings"]
    assert f"1 broken links (their target is gone) in {tree / 'train'} left out, e.g. car/gone.jpg" in report["warnings"]


def test_layout_folders_reads_a_class_named_train_as_a_class(tmp_path):
    tree = tmp_path / "vehicles"
    for k, name in enumerate(("bus", "car", "train", "truck")):
        (tree / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (24, 16), (60 * k, 90, 30 * i)).save(tree / name / f"{name}{i}.jpg")
    with pytest.raises(SystemExit) as detected:  # train/ taken for the train split: its images are no classes
        preprocess.main(["--data_dir", str(tree), "--output_dir", str(tmp_path / "a"), "--num_proc", "1",
                         "--val_fraction", "0.34"])
    assert "no class folders" in str(detected.value.code)
    preprocess.main(["--data_dir", str(tree), "--output_dir", str(tmp_path / "pp"), "--num_proc", "1",
                     "--val_fraction", "0.34", "--layout", "folders"])
    ds = datasets.load_from_disk(str(tmp_path / "pp"))
    assert ds["train"].features["label"].names == ["bus", "car", "train", "truck"]
    assert len(ds["train"]) == 8 and len(ds["validation"]) == 4
    with pytest.raises(SystemExit, match="--layout folders: .* add --val_fraction 0.1"):
        preprocess.main(["--data_dir", str(tree), "--output_dir", str(tmp_path / "b"), "--layout", "folders"])
    with pytest.raises(SystemExit, match="--layout must be ilsvrc or folders"):
        preprocess.main(["--data_dir", str(tree), "--output_dir", str(tmp_path / "c"), "--layout", "flat"])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))


def test_a_nan_stop_says_so_when_the_last_checkpoint_cannot_be_read_now(tmp_path, monkeypatch):
    """The NaN guard names the last good checkpoint; one whose file cannot be read now (EACCES, a stale NFS handle)
    must not turn its one line into a traceback about the file."""
    import errno

    from accelerate import Accelerator

    from imagenet_trainer.stopping import StopSignal

    step = tmp_path / "checkpoints" / "step_00000004"
    step.mkdir(parents=True)
    (step / "model.safetensors").write_bytes(b"x" * 64)
    checkpoints.seal(step)

    def refused(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(checkpoints, "crc32", refused)
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    stop = StopSignal(save_every_minutes=0)
    with pytest.raises(SystemExit) as e:
        stop.check(Accelerator(cpu=True), model, torch.tensor(float("nan")), 1, 5, tmp_path / "checkpoints",
                   BadSamples({}, 0))
    said = str(e.value.code)
    assert said.startswith("error: loss is nan at step 5") and "\n" not in said, said
    assert f"Last good checkpoint: unknown: {step / 'model.safetensors'} cannot be read now (Permission denied)" in said


def test_a_full_disk_with_a_checkpoint_that_cannot_be_read_now_does_not_say_none_was_saved(tmp_path, monkeypatch):
    """The full disk's line names the checkpoint to resume from; one that cannot be read now (EACCES) is said as
    such, not taken for none (which would send the user to start over)."""
    import errno
    import types

    from accelerate import Accelerator

    ckpt_dir = tmp_path / "run" / "checkpoints"
    step = checkpoints.step_folder(ckpt_dir, 4)
    step.mkdir(parents=True)
    (step / "model.safetensors").write_bytes(b"x" * 64)
    checkpoints.seal(step)

    def refused(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoints, "crc32", refused)
    monkeypatch.setattr(train, "still_held", lambda *args, **kwargs: None)
    accelerator = Accelerator(cpu=True)
    monkeypatch.setattr(accelerator, "save_state", full)
    with pytest.raises(SystemExit) as e:
        train.save_checkpoint(accelerator, torch.nn.Linear(2, 2), types.SimpleNamespace(step=8), None, None, ckpt_dir)
    said = str(e.value.code)
    assert said.startswith(f"error: checkpoint step_00000008: no space left on {ckpt_dir}") and "\n" not in said
    assert said.endswith(f"; free space; the last checkpoint: {step / 'model.safetensors'} cannot be read now "
                         "(Permission denied); fix what keeps it from being read (its permissions, the mount), then "
                         "run again"), said
