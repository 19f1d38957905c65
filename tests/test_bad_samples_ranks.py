"""An undecodable train image is replaced by the same row whatever the process count and across a stop and resume:
real train.py runs (1 process; 2 gloo processes stopped at a checkpoint and resumed), compared by what each wrote to
bad_samples.json and by the images the replaced rows stood in for."""
from __future__ import annotations

import json
import re
import shutil

import datasets
import torch

from imagenet_trainer.data import ResumableSampler, TrainSet, replacement_row
from test_cluster import free_port
from test_faults import break_image
from test_train import ok, rows, run, train_cmd


def replacements(out) -> dict[int, int]:
    return {e["row"]: e["replaced_by"] for e in json.loads((out / "bad_samples.json").read_text())
            if e["split"] == "train"}


def test_replacements_agree_across_process_counts_and_a_resume(preprocessed, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(preprocessed, data)
    split = datasets.load_from_disk(str(data))["train"]
    # two rows of the run's first 8 images (the global order is the same on any process count), one on each rank
    broken = [int(r) for r in ResumableSampler(len(split), 8, seed=0).order(0)[[0, 7]]]
    for row in broken:
        break_image(data, "train", row)  # its first bytes zeroed: no decoder takes it
    expected = {row: replacement_row(0, row, 1, len(split)) for row in broken}
    assert not set(expected.values()) & set(broken), "a broken stand-in: pick other rows"

    one = tmp_path / "one"
    ok(run(train_cmd(data, one, "--epochs", "2", "--batch_size", "4")))
    steps = len(split) // 8  # optimizer steps of a 2-process epoch at 4 images a process
    assert steps >= 2, "the fixture is too small to stop inside an epoch"
    two = tmp_path / "two"
    launch = ("--multi_gpu", "--num_processes", "2", "--main_process_port", str(free_port()))
    stop_at = steps + 1  # inside the second epoch: the resume starts mid-epoch
    ok(run(train_cmd(data, two, "--epochs", "2", "--batch_size", "4", "--save_every_steps", stop_at,
                     "--max_train_steps", stop_at, launcher=launch)))
    assert replacements(two) == expected, "both are read in the first step"
    launch = ("--multi_gpu", "--num_processes", "2", "--main_process_port", str(free_port()))
    resumed = ok(run(train_cmd(data, two, "--epochs", "2", "--batch_size", "4", "--resume_from_checkpoint", "latest",
                               launcher=launch)))
    assert re.search(rf"resumed from \S+ at epoch 1, step {stop_at}\b", resumed.stdout + resumed.stderr)

    assert replacements(one) == replacements(two) == expected
    assert rows(two)[-1]["step"] == 2 * steps and rows(two)[-1]["bad_samples"] == rows(one)[-1]["bad_samples"] == 2
    # the stand-in is cropped with the broken row's own random stream: the same pixels in any process
    for row, other in expected.items():
        image, label, replaced = TrainSet(split, 32, seed=0).sample((1, row))
        assert replaced[:2] == (row, other) and label == split[other]["label"]
        assert torch.equal(image, TrainSet(split, 32, seed=0)._load(1, other, row)[0])
