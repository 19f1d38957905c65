"""Faults of a long job on a shared cluster, reproduced on CPU with real processes and files: damaged checkpoints,
undecodable images, a second launch into a busy folder; each costs minutes, never the run."""
from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

import validate
from imagenet_trainer import checkpoints
from test_train import ok, rows, run, train_cmd


def last_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert lines and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[-1]


def truncate(path, keep: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(keep)


# -- checkpoints -------------------------------------------------------------------------------------------------------

def test_sealed_folder_names_a_truncated_or_missing_file(tmp_path):
    folder = tmp_path / "ckpt" / "step_00000002"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"x" * 100)
    (folder / "sub" / "rng.pkl").write_bytes(b"y" * 10)
    checkpoints.fsync_tree(folder)
    checkpoints.seal(folder)
    assert checkpoints.problem(folder) is None
    assert json.loads((folder / checkpoints.FILE_LIST).read_text()) == {"model.safetensors": 100, "sub/rng.pkl": 10}
    older = tmp_path / "ckpt" / "step_00000001"
    shutil.copytree(folder, older)
    truncate(folder / "model.safetensors", 40)
    assert checkpoints.problem(folder) == f"{folder / 'model.safetensors'} has 40 bytes, 100 were saved (truncated)"
    path, skipped = checkpoints.newest_complete(tmp_path / "ckpt")
    assert path == older and skipped == [f"skipped step_00000002: {checkpoints.problem(folder)}"]
    (older / "sub" / "rng.pkl").unlink()
    assert checkpoints.problem(older) == f"{older / 'sub' / 'rng.pkl'} is missing"
    with pytest.raises(ValueError, match="no complete checkpoint"):
        checkpoints.pick("latest", tmp_path / "ckpt", say=lambda line: None)
    assert checkpoints.pick("latest", tmp_path / "empty", say=print) is None  # nothing saved yet: start


@pytest.fixture(scope="module")
def finished(preprocessed, tmp_path_factory):
    """A 2-epoch run that checkpointed every step (keeping them all) and its last checkpoint's weights."""
    out = tmp_path_factory.mktemp("faults") / "run"
    ok(run(train_cmd(preprocessed, out, "--epochs", "2", "--save_every_steps", "1", "--keep_last", "10")))
    return out


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
    again = load_file(newest / "model.safetensors")
    assert reference.keys() == again.keys() and all(torch.equal(reference[k], again[k]) for k in reference)


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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
