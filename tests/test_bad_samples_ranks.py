"""An undecodable train image is replaced by the same row whatever the process count and across a stop and resume:
real train.py runs (1 process; 2 gloo processes stopped at a checkpoint and resumed), compared by what each wrote to
bad_samples.json and by the images the replaced rows stood in for."""
from __future__ import annotations

import io
import json
import re
import shutil

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from imagenet_trainer.data import ResumableSampler, TrainSet, replacement_row
from test_cluster import free_port
from test_faults import break_image, last_line
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


@pytest.mark.parametrize("workers", [0, 2])
def test_a_train_split_that_mostly_does_not_decode_ends_the_run_in_one_line_and_records_the_row(tmp_path, workers):
    """No stand-in decodes either: one error line (no worker traceback) naming the row, the stand-ins and the
    check that finds every bad file, and the row in bad_samples.json."""
    names = datasets.ClassLabel(names=["a", "b"])
    features = datasets.Features({"image": datasets.Image(), "label": names})

    def jpeg(seed: int) -> bytes:
        out = io.BytesIO()
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 48, 3), np.uint8)).save(out, "JPEG")
        return out.getvalue()

    train = {"image": [{"bytes": b"\xff\xd8garbage%d" % i, "path": None} for i in range(16)],
             "label": [i % 2 for i in range(16)]}
    val = {"image": [{"bytes": jpeg(i), "path": None} for i in range(4)], "label": [0, 1, 0, 1]}
    data = tmp_path / "data"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(train, features=features),
                          "validation": datasets.Dataset.from_dict(val, features=features)}).save_to_disk(str(data))
    out = tmp_path / "run"
    proc = run(train_cmd(data, out, "--epochs", "1", "--max_bad_samples", "10", "--num_workers", workers))
    assert proc.returncode != 0
    line = last_line(proc)  # and no "Traceback" in stderr
    found = re.match(r"error: train row (\d+) \(image_id None\): the image does not decode \(.*; and 8 rows "
                     r"tried in its place do not decode either; listed in (\S+)\. The dataset is damaged: `python "
                     r"preprocess\.py --verify DATASET` names every bad file", line)
    assert found and found[2] == str(out / "bad_samples.json"), line
    record = json.loads((out / "bad_samples.json").read_text())
    assert [(e["split"], e["row"]) for e in record] == [("train", int(found[1]))]
    assert "8 rows tried in its place" in record[0]["error"] and "replaced_by" not in record[0]
