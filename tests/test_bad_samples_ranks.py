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


def jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 48, 3), np.uint8)).save(out, "JPEG")
    return out.getvalue()


def garbage_dataset(folder, num_train: int, good=()) -> None:
    """A saved DatasetDict (no preprocess.py manifest): train rows that do not decode, but those in ``good``, and 4
    validation JPEGs."""
    names = datasets.ClassLabel(names=["a", "b"])
    features = datasets.Features({"image": datasets.Image(), "label": names})
    train = {"image": [{"bytes": jpeg(100 + i) if i in good else b"\xff\xd8garbage%d" % i, "path": None}
                       for i in range(num_train)], "label": [i % 2 for i in range(num_train)]}
    val = {"image": [{"bytes": jpeg(i), "path": None} for i in range(4)], "label": [0, 1, 0, 1]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(train, features=features),
                          "validation": datasets.Dataset.from_dict(val, features=features)}).save_to_disk(str(folder))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_train_split_that_mostly_does_not_decode_ends_the_run_in_one_line_and_records_the_row(tmp_path, workers):
    """No stand-in decodes either: one error line (no worker traceback) naming the row, its Arrow file and the
    stand-ins, and the row in bad_samples.json. The data is no preprocess.py output: no --verify to run."""
    data = tmp_path / "data"
    garbage_dataset(data, 16)
    out = tmp_path / "run"
    proc = run(train_cmd(data, out, "--epochs", "1", "--max_bad_samples", "10", "--num_workers", workers))
    assert proc.returncode != 0
    line = last_line(proc)  # and no "Traceback" in stderr
    found = re.match(r"error: train row (\d+) \((\S+)\): the image does not decode \(cannot identify image file\); "
                     r"and 8 rows tried in its place do not decode either; listed in (\S+)\. The dataset is damaged: "
                     r"copy (\S+) again \(a copy in datasets' cache: delete it and load the dataset again, which "
                     r"downloads or converts it anew\)$", line)
    assert found and found[3] == str(out / "bad_samples.json"), line
    assert found[4] == str(data / "train"), line  # a save_to_disk copy: no image files to restore
    assert found[2] == str(next((data / "train").glob("*.arrow"))), line
    record = json.loads((out / "bad_samples.json").read_text())
    assert [(e["split"], e["row"]) for e in record] == [("train", int(found[1]))]
    assert "8 rows tried in its place" in record[0]["error"] and "replaced_by" not in record[0]


def test_ranks_that_each_meet_an_unreplaceable_row_both_record_it_and_the_rows_replaced_before_it(tmp_path):
    """Each of 2 processes stops at a train row whose stand-ins do not decode: every row an error line names is in
    bad_samples.json (each rank adds to it, neither overwrites the other's), and so is the row rank 0's batch
    replaced before its unreplaceable one, a batch that never reached the loop."""
    n = 32
    first = {rank: [i for _, i in next(iter(ResumableSampler(n, 4, seed=0, num_replicas=2, rank=rank)))]
             for rank in (0, 1)}
    replaced, stopper = first[0][:2]  # rank 0 replaces its batch's first row, then stops at its second
    stoppers = (stopper, first[1][0])
    failing = {*stoppers, *(replacement_row(0, r, a, n) for r in stoppers for a in range(1, 9))}
    attempt = next(a for a in range(1, 9) if replacement_row(0, replaced, a, n) not in failing | {replaced})
    stand_in = replacement_row(0, replaced, attempt, n)
    data = tmp_path / "data"
    garbage_dataset(data, n, good={stand_in})
    out = tmp_path / "run"
    launch = ("--multi_gpu", "--num_processes", "2", "--main_process_port", str(free_port()))
    proc = run(train_cmd(data, out, "--epochs", "1", "--batch_size", "4", launcher=launch))
    assert proc.returncode != 0
    stopped = [int(row) for row in re.findall(r"^error: train row (\d+)\b", proc.stderr, re.M)]
    assert stopped and set(stopped) <= {stopper, first[1][0]}, proc.stderr[-3000:]
    record = {e["row"]: e for e in json.loads((out / "bad_samples.json").read_text()) if e["split"] == "train"}
    assert set(stopped) <= set(record), (stopped, sorted(record))
    assert record[replaced].get("replaced_by") == stand_in, sorted(record)


def test_an_image_folder_whose_train_files_do_not_decode_names_the_file_not_preprocess_verify(tmp_path):
    """An image-folder --dataset (README section 7) has no image_id and no preprocess.py manifest: the line names
    the image file and says to check the files, without decoder object reprs."""
    folder = tmp_path / "photos"
    for split in ("train", "validation"):
        for k, name in enumerate("ab"):
            (folder / split / name).mkdir(parents=True)
            for i in range(4):
                data = jpeg(10 * k + i)
                (folder / split / name / f"img{i}.jpg").write_bytes(data[:30] if split == "train" else data)
    proc = run(train_cmd(folder, tmp_path / "run", "--epochs", "1", "--batch_size", "4"))
    assert proc.returncode != 0
    line = last_line(proc)
    named = re.match(rf"error: train row \d+ \(({re.escape(str(folder / 'train'))}/[ab]/img\d\.jpg)\): the image "
                     r"does not decode", line)
    assert named and "image_id None" not in line and "preprocess.py --verify" not in line, line
    assert " object at 0x" not in line and line.count("rerun preprocess.py") <= 1, line
    assert line.endswith("check or restore the image files"), line
    (entry,) = json.loads((tmp_path / "run" / "bad_samples.json").read_text())
    assert entry["image_file"] == named[1]
