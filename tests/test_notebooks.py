"""notebooks/*.ipynb run top to bottom on real data and show what their markdown promises.

Each notebook is executed by nbclient in a real Jupyter kernel of this very interpreter (a kernelspec written into a
temporary JUPYTER_PATH, so a CI machine with only ``pip install -r requirements.txt`` in .venv needs no registered
kernel), with cwd = notebooks/ as in Jupyter, and its inputs set through the environment variables its first cell
reads: conftest's ``preprocessed`` (photos with ImageNet's faults), ``digits_dataset``, and a 2-epoch train.py run on
the digits trained once per module. The assertions read the cells' printed text and check it against the files.
Small variants of these inputs (a resumed run's metrics.jsonl, a class-sorted dataset without boxes, validate.py
outputs) check what the notebooks do with real runs and datasets beyond the demo's.
"""
from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import nbformat
import numpy as np
import pyarrow.compute as pc
import pytest
import yaml
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from imagenet_trainer import demo_archives, ilsvrc
from imagenet_trainer.data import load_image_dataset
from imagenet_trainer.demo import make_folder_tree
from imagenet_trainer.ilsvrc import class_descriptions

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ("01_inspect_dataset", "02_augmentations", "03_training_curves", "04_backbone_features", "05_downstream",
         "06_effective_robustness")
INPUTS = ("IMAGENET_DATASET", "IMAGENET_RUN", "IMAGENET_RESULTS")  # what the notebooks read from the environment
KERNEL = "imagenet-trainer-tests"
WNID = re.compile(r"\bn\d{8}\b")


@pytest.fixture(scope="module")
def jupyter_home(tmp_path_factory) -> Path:
    """A folder for JUPYTER_PATH whose kernelspec starts sys.executable (the 'python3' spec a machine has registered
    may be another Python without the project's packages; the venv's own spec just says "python"), and for the
    runtime/config/IPython folders, so a user's IPython startup files or config cannot change what runs."""
    base = tmp_path_factory.mktemp("jupyter")
    spec = base / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "imagenet-trainer tests", "language": "python"}))
    return base


@pytest.fixture(scope="module")
def trained_run(digits_dataset, tmp_path_factory) -> Path:
    """A real train.py run folder (metrics.jsonl with EMA columns, final/): 2 epochs of blocknet_tiny at 32 px."""
    run = tmp_path_factory.mktemp("notebook_run") / "run"
    done = subprocess.run(
        [sys.executable, "train.py", "--config", "recipes/demo.yaml", "--model", "blocknet_tiny",
         "--dataset", str(digits_dataset), "--output_dir", str(run), "--image_size", "32", "--epochs", "2",
         "--num_workers", "0", "--ema_decay", "0.9"],
        cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def sorted_without_boxes(digits_dataset, tmp_path_factory) -> Path:
    """The digits as a class-folder copy of ImageNet looks to 05: no boxes, and train sorted by class with more rows
    of its first class (1,100) than the probe embeds (MAX_TRAIN 1,000; ImageNet's first class has 1,300)."""
    ds = datasets.load_from_disk(str(digits_dataset))
    labels = np.asarray(ds["train"]["label"])
    order = np.concatenate([np.tile(np.flatnonzero(labels == 0), 11), np.flatnonzero(labels != 0)])
    splits = {"train": ds["train"].select(order, keep_in_memory=True), "validation": ds["validation"]}
    out = tmp_path_factory.mktemp("sorted_without_boxes") / "dataset"
    datasets.DatasetDict({name: split.map(lambda _: {"objects": []}, features=split.features, keep_in_memory=True)
                          for name, split in splits.items()}).save_to_disk(str(out))
    return out


@pytest.fixture(scope="module")
def train_and_test(digits_dataset, tmp_path_factory) -> Path:
    """The digits with a labelled test split and no validation split (class folders train/ and test/ load so),
    image and label columns only: what a run with --eval_split test trains on."""
    ds = datasets.load_from_disk(str(digits_dataset))
    out = tmp_path_factory.mktemp("train_and_test") / "dataset"
    splits = datasets.DatasetDict({"train": ds["train"], "test": ds["validation"]})
    splits.select_columns(["image", "label"]).save_to_disk(str(out))
    return out


@pytest.fixture(scope="module")
def test_split_run(trained_run, train_and_test, tmp_path_factory) -> Path:
    """trained_run's export in a run that trained on train_and_test and was resumed with --eval_split test (its first
    launch's config.yaml says validation, the resume's resumes/<time>/config.yaml test: the last launch's counts)."""
    run = tmp_path_factory.mktemp("test_split_run") / "run"
    shutil.copytree(trained_run / "final", run / "final")
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    config.update(dataset=str(train_and_test), eval_split="validation", output_dir=str(run))
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "resumes" / "20261208T010203Z").mkdir(parents=True)
    (run / "resumes" / "20261208T010203Z" / "config.yaml").write_text(yaml.safe_dump({**config, "eval_split": "test"}))
    return run


@pytest.fixture(scope="module")
def border_export(trained_run, tmp_path_factory) -> Path:
    """trained_run's export (with its run's config.yaml beside it) whose pretrained_cfg says crop_mode border,
    crop_pct 1.0 and mean 0.5, as a timm config can (convnext_tiny.fb_in22k_ft_in1k_384 says squash): the eval
    transform fits each digit (none is quite square) into the crop and pads it with mid grey, where a centre crop
    cuts its longer side."""
    run = tmp_path_factory.mktemp("border_run") / "run"
    shutil.copytree(trained_run / "final", run / "final")
    shutil.copy(trained_run / "config.yaml", run / "config.yaml")
    config = json.loads((run / "final" / "config.json").read_text())
    config["pretrained_cfg"].update(crop_mode="border", crop_pct=1.0, mean=[0.5, 0.5, 0.5])
    (run / "final" / "config.json").write_text(json.dumps(config, indent=2))
    return run / "final"


def eval_crops(split, rows: list[int], data_cfg: dict, **transform):
    """The uint8 crops of ``rows`` as validate.py's eval_loader makes them for a model of data config ``data_cfg``
    (size, crop_pct, interpolation, crop_mode, and mean for border mode's padding), ``transform`` overriding those."""
    import torch

    from imagenet_trainer.data import EvalSet

    settings = {"crop_pct": data_cfg["crop_pct"], "interpolation": data_cfg["interpolation"],
                "crop_mode": data_cfg["crop_mode"], "mean": data_cfg["mean"], **transform}
    evals = EvalSet(split, data_cfg["input_size"][-1], **settings)
    return torch.stack([evals[i][0] for i in rows])


def execute(name: str, monkeypatch, jupyter_home: Path, **inputs) -> nbformat.NotebookNode:
    """The executed notebook; a cell that raises fails the test with the cell's traceback (CellExecutionError)."""
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_home))  # the kernelspec lookup happens in this process
    for var, sub in (("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTER_CONFIG_DIR", "config"), ("IPYTHONDIR", "ipython")):
        monkeypatch.setenv(var, str(jupyter_home / sub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in INPUTS:
        monkeypatch.delenv(var, raising=False)
    for key, value in inputs.items():
        monkeypatch.setenv(key, str(value))  # the kernel inherits this environment
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    NotebookClient(nb, kernel_name=KERNEL, timeout=240, resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def cell(nb, marker: str):
    """The one code cell whose source contains ``marker``."""
    found = [c for c in nb.cells if c.cell_type == "code" and marker in c.source]
    assert len(found) == 1, f"{len(found)} code cells contain {marker!r}"
    return found[0]


def stdout(c) -> str:
    return "".join(o.text for o in c.outputs if o.output_type == "stream" and o.name == "stdout")


def pngs(c) -> int:
    return sum("image/png" in o.get("data", {}) for o in c.outputs)


def notebook_function(name: str, function: str, **namespace):
    """A function defined in a notebook's code cell, compiled alone (the rest of the cell is not run)."""
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    for c in nb.cells:
        if c.cell_type == "code" and f"def {function}(" in c.source:
            source = "\n".join(line for line in c.source.splitlines() if not line.startswith("%"))  # IPython magics
            found = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == function]
            exec(compile(ast.Module(found, type_ignores=[]), name, "exec"), namespace)
            return namespace[function]
    raise AssertionError(f"{name}: no cell defines {function}()")


def test_notebooks_are_stored_clean_and_read_their_inputs_from_the_environment():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)
    reads = {"IMAGENET_DATASET": ("01", "02", "03", "04", "05"), "IMAGENET_RUN": ("02", "03", "04", "05"),
             "IMAGENET_RESULTS": ("06",)}
    for name in NAMES:
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.outputs == [] and c.execution_count is None for c in code), f"{name}: outputs not cleared"
        assert nb.cells[0].cell_type == "markdown", f"{name}: starts without an explanation"
        assert nb.cells[0].source.startswith(f"# {int(name[:2])}. "), f"{name}: its title has another number"
        for var in INPUTS:
            assert (f"os.environ.get(\"{var}\"" in code[0].source) == (name[:2] in reads[var]), (name, var)


def test_inspect_dataset(preprocessed, ilsvrc_tree, monkeypatch, jupyter_home):
    nb = execute("01_inspect_dataset", monkeypatch, jupyter_home, IMAGENET_DATASET=preprocessed)
    ds = datasets.load_from_disk(str(preprocessed))
    short = {d.split(",")[0] for d in class_descriptions(preprocessed)}
    manifest = json.loads((ilsvrc_tree / "demo_manifest.json").read_text())

    grid = cell(nb, "titles.append")
    assert pngs(grid) == 1
    shown = stdout(grid).split("shown: ", 1)[1].strip().split(", ")
    assert len(shown) == 16 and set(shown) <= short  # human names ("tench"), not wnids
    assert not WNID.search(stdout(grid))

    histogram = cell(nb, "images per class")
    assert pngs(histogram) == 1
    for split in ("train", "validation"):
        counts = np.bincount(ds[split]["label"], minlength=len(short))
        assert f"{split}: {counts.min()}-{counts.max()} images per class" in stdout(histogram)

    sizes = cell(nb, "def header_sizes")
    assert pngs(sizes) == 1
    for split, rows in ds.items():
        assert f"{split}: median" in stdout(sizes) and f"({rows.num_rows} headers read)" in stdout(sizes)

    report = json.loads((preprocessed / "preprocess_report.json").read_text())
    summary = stdout(cell(nb, "preprocess_report.json"))
    assert len(report["skipped"]) == len(manifest["broken"]) == 3
    for skipped in report["skipped"]:
        assert f"{skipped['path']}: {skipped['reason']}" in summary
    assert "empty file" in summary and "mode CMYK" in summary and "EXIF orientation 6" in summary
    for split, tiled in report["tiled"].items():  # the table's last column: tiled JPEGs
        assert any(line.split()[:1] == [split] and line.split()[-1] == f"{tiled:,}" for line in summary.splitlines())

    boxes = cell(nb, "Rectangle((x0, y0)")
    assert pngs(boxes) == 1
    several = manifest["planted"]["box_several"]["stem"]  # the val image with three boxes is shown first
    assert stdout(boxes).splitlines()[0] == f"{several} (validation): boxes 3"


def test_inspect_dataset_counts_the_boxes_of_every_row():
    """01 picks the images with the most boxes from every row's count, read from the `objects` column alone."""
    box_counts = notebook_function("01_inspect_dataset", "box_counts", np=np, pc=pc)
    box = {"bbox": [0.0, 0.0, 1.0, 1.0], "label": 0}
    rows = datasets.Dataset.from_dict({"objects": [[box]] * 6000 + [[box] * 3, None, []], "label": [0] * 6003})
    assert box_counts(rows).tolist() == [1] * 6000 + [3, 0, 0]  # the most boxes past any prefix a scan might take
    assert box_counts(rows.select([6000, 2])).tolist() == [3, 1]
    assert box_counts(rows.remove_columns("objects")).tolist() == [0] * 6003  # a Hub copy has no objects column


def test_inspect_dataset_counts_a_labelled_test_split(train_and_test, monkeypatch, jupyter_home):
    """A test split with labels (class folders train/ and test/) is counted per class like train; only a split
    without any label (ILSVRC's test split: -1 in every row) is left out."""
    nb = execute("01_inspect_dataset", monkeypatch, jupyter_home, IMAGENET_DATASET=train_and_test)
    histogram = stdout(cell(nb, "images per class"))
    for split, rows in datasets.load_from_disk(str(train_and_test)).items():
        counts = np.bincount(rows["label"])
        assert f"{split}: {counts.min()}-{counts.max()} images per class" in histogram
    assert "test: 20-20 images per class" in histogram


def test_inspect_and_augment_datasets_preprocess_did_not_write(ilsvrc_tree, tmp_path, monkeypatch, jupyter_home):
    """Datasets load_image_dataset reads besides preprocess.py outputs: 01 on a folder of class folders (images read
    from their files), 02 on a local Hub Parquet snapshot. The class names come from the loaded splits."""
    folders = make_folder_tree(tmp_path / "folders", num_classes=3, train_per_class=4, val_per_class=2)
    nb = execute("01_inspect_dataset", monkeypatch, jupyter_home, IMAGENET_DATASET=folders)
    listing = stdout(cell(nb, "class_descriptions("))
    lemmas = ilsvrc.imagenet_lemmas()
    assert all(f"  {wnid}  {lemmas[wnid]}" in listing for wnid in ilsvrc.imagenet_wnids()[:3])
    assert "train: 4-4 images per class" in stdout(cell(nb, "images per class"))
    sizes = stdout(cell(nb, "def header_sizes"))
    assert "(12 headers read)" in sizes and "(6 headers read)" in sizes

    hub = demo_archives.hub_parquet(ilsvrc_tree, tmp_path / "hub")
    nb = execute("02_augmentations", monkeypatch, jupyter_home, IMAGENET_DATASET=hub)
    manifest = json.loads((ilsvrc_tree / "demo_manifest.json").read_text())
    first = list(load_image_dataset(str(hub))["train"]["label"]).index(0)  # its train rows are shuffled
    assert first > 0
    assert stdout(cell(nb, "class_descriptions(")).startswith(f"index {first}: {manifest['descriptions'][0]}, ")
    assert "same key, same pixels: True" in stdout(cell(nb, "same key"))


def test_augmentations(preprocessed, monkeypatch, jupyter_home):
    nb = execute("02_augmentations", monkeypatch, jupyter_home, IMAGENET_DATASET=preprocessed)
    assert "crops at ImageNet's defaults, no run's: 128 px, scale_min 0.08" in stdout(cell(nb, "IMAGENET_RUN"))
    crops = cell(nb, "same key, same pixels")
    assert pngs(crops) == 1 and "crop shape (3, 128, 128) torch.uint8; same key, same pixels: True" in stdout(crops)
    assert pngs(cell(nb, 'auto_augment=mode')) == 2  # RandAugment and TrivialAugment rows
    eval_crop = cell(nb, "eval_set = EvalSet")
    assert pngs(eval_crop) == 1 and "resize shorter side to 146 px, centre crop (3, 128, 128)" in stdout(eval_crop)
    mixing = cell(nb, "mixup_cutmix(x, y")
    assert pngs(mixing) == 2 and stdout(mixing).count("targets sum to 1: True") == 2
    # the targets train.py's loss trains toward: the mix, label-smoothed with the mixup recipe's epsilon
    recipe = yaml.safe_load((ROOT / "recipes" / "convnext_tiny.yaml").read_text())
    eps, classes = recipe["label_smoothing"], len(class_descriptions(preprocessed))
    assert recipe["mixup_alpha"] > 0 and recipe["cutmix_alpha"] > 0 and eps > 0
    pairs = re.findall(r"image 0 target = ([\d.]+) .+ \+ ([\d.]+) .+; targets sum to 1: True\n"
                       rf"  label smoothing {eps}: ([\d.]+) .+ \+ ([\d.]+) .+, {eps / classes:.2g} for each other "
                       r"class; the loss with label_smoothing equals the loss on these: True$", stdout(mixing), re.M)
    assert len(pairs) == 2
    for *mixed, first, second in pairs:
        assert [float(first), float(second)] == pytest.approx(
            [float(w) * (1 - eps) + eps / classes for w in mixed], abs=0.01)  # each printed to 2 decimals
    erasing = cell(nb, "random_erasing(x")
    fractions = [float(f) for f in stdout(erasing).split(":")[1].split(",")]
    assert pngs(erasing) == 1 and len(fractions) == 8 and all(0 < f < 0.5 for f in fractions)  # prob 1: all erased


def test_augmentations_of_a_run_are_the_crops_it_trained_on(trained_run, digits_dataset, monkeypatch, jupyter_home):
    """Given a run (its export RUN/final stands for it): its config.yaml's --image_size and --scale_min, the demo
    recipe's 32 px and 0.8, not ImageNet's 128 px and 0.08."""
    nb = execute("02_augmentations", monkeypatch, jupyter_home, IMAGENET_DATASET=digits_dataset,
                 IMAGENET_RUN=trained_run / "final")
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert (config["image_size"], config["scale_min"]) == (32, 0.8)
    assert (f"crops as {trained_run} trains them (its config.yaml): 32 px, scale_min 0.8"
            in stdout(cell(nb, "IMAGENET_RUN")))
    assert "crop shape (3, 32, 32) torch.uint8; same key, same pixels: True" in stdout(cell(nb, "same key"))


def test_augmentations_of_a_progressive_resizing_run(trained_run, digits_dataset, tmp_path, monkeypatch,
                                                     jupyter_home):
    """A run with progressive resizing (--min_image_size), its own --seed and --eval_image_size, whose export's
    pretrained_cfg says crop_pct 0.8 bicubic: each epoch's crop is at the side train.py trains it at, and the eval
    crop is the one train.py scores. 02 reads config.yaml and RUN/final/config.json of a run, nothing else."""
    from imagenet_trainer.data import TrainSet

    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    first = yaml.safe_load((trained_run / "config.yaml").read_text())
    config = {**first, "image_size": 64, "min_image_size": 32, "ramp_start_epoch": 2, "ramp_end_epoch": 5,
              "eval_image_size": 48, "epochs": 8, "seed": 5}
    # the ramp came with a resume: its config.yaml is the last launch's, the first launch's trained at 32 px
    (run / "config.yaml").write_text(yaml.safe_dump(first))
    (run / "resumes" / "20261208T010203Z").mkdir(parents=True)
    (run / "resumes" / "20261208T010203Z" / "config.yaml").write_text(yaml.safe_dump(config))
    export = json.loads((trained_run / "final" / "config.json").read_text())
    export["pretrained_cfg"].update(input_size=[3, 48, 48], crop_pct=0.8, interpolation="bicubic")
    (run / "final" / "config.json").write_text(json.dumps(export))
    nb = execute("02_augmentations", monkeypatch, jupyter_home, IMAGENET_DATASET=digits_dataset, IMAGENET_RUN=run)
    assert (f"crops as {run} trains them (its resumes/20261208T010203Z/config.yaml): 64 px (from 32 px, ramped over "
            "epochs 2-5), scale_min "
            f"{config['scale_min']}, seed 5; evaluated at 48 px") in stdout(cell(nb, "IMAGENET_RUN"))
    train = datasets.load_from_disk(str(digits_dataset))["train"]
    ramp = TrainSet(train, 64, 5, scale=(config["scale_min"], 1.0), progressive=(32, 2, 5))  # train.py's
    sides = [ramp.size_at(epoch) for epoch in range(8)]
    assert sides == [32] * 4 + [64] * 4  # epochs 0-6 show both sides
    crops = stdout(cell(nb, "same key, same pixels"))
    assert f"crop side (px) at epochs 0-6: {', '.join(map(str, sides[:7]))}\n" in crops
    assert "crop shape (3, 32, 32) torch.uint8; same key, same pixels: True" in crops
    assert "progressive resizing over the run's 8 epochs: epochs 0-3 32 px, epochs 4-7 64 px" in crops
    eval_crop = stdout(cell(nb, "eval_set = EvalSet"))
    assert (f"eval transform ({run / 'final' / 'config.json'}): 48 px, crop_pct 0.8, bicubic, crop_mode center"
            in eval_crop)
    assert "resize shorter side to 60 px, centre crop (3, 48, 48)" in eval_crop  # floor(48 / 0.8)
    assert pngs(cell(nb, "eval_set = EvalSet")) == 1


def test_augmentations_before_a_runs_first_export(tmp_path):
    """A run without final/ yet: the eval transform of its architecture, as train.py resolves it from the model."""
    from timm.data import resolve_data_config

    import modeling

    run_data_config = notebook_function("02_augmentations", "run_data_config", json=json, modeling=modeling,
                                        resolve_data_config=resolve_data_config)
    data_cfg, source = run_data_config(tmp_path, {"model": "resnet18"})
    assert data_cfg == resolve_data_config(model=modeling.create_model("resnet18"))
    assert (data_cfg["crop_pct"], data_cfg["interpolation"], source) == (
        0.95, "bicubic", "--model resnet18 (no export yet)")


def test_training_curves(trained_run, monkeypatch, jupyter_home):
    nb = execute("03_training_curves", monkeypatch, jupyter_home, IMAGENET_RUN=trained_run)
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and "ema_val_top1" in rows[-1]
    table = stdout(cell(nb, "rows = last_history("))
    assert "ema_val_top1" in table and len(table.strip().splitlines()) == 2 + len(rows)  # title, header, rows
    assert pngs(cell(nb, "plt.subplots(2, 2")) == 1
    summary = stdout(cell(nb, "last = rows[-1]"))
    last = rows[-1]
    assert (f"last: epoch {last['epoch']:g}, step {last['step']}: val top-1 {last['val_top1']:.2f}%, "
            f"top-5 {last['val_top5']:.2f}%") in summary
    assert f"last EMA: val top-1 {last['ema_val_top1']:.2f}%" in summary
    # the loader's share after each epoch's first batch, which says whether it keeps up (README, Troubleshooting)
    assert (f"throughput (last epoch, after its first batch): {last['images_per_sec_steady']:.0f} images/s, "
            f"{100 * last['data_wait_steady_frac']:.0f}% of the time waiting for data (first batch included: "
            f"{100 * last['data_wait_frac']:.0f}%; the first batch took {last['first_batch_s']:.1f} s)") in summary


def test_training_curves_keep_the_last_history():
    """A row is superseded when a later row has the same or an earlier step: what a resume from an earlier
    checkpoint appends after the rows of the run it leaves."""
    last_history = notebook_function("03_training_curves", "last_history")
    for steps, kept in (([10, 20, 30], [0, 1, 2]),
                        ([10, 20, 30, 20, 30, 40], [0, 3, 4, 5]),  # resumed from step 10, with another --lr
                        ([10, 20, 30, 30, 40], [0, 1, 3, 4]),  # resumed from a mid-epoch checkpoint (step 25)
                        ([10, 20, 30, 20, 30, 40, 10, 20], [6, 7])):  # then from the first epoch's start
        assert [r["i"] for r in last_history([{"step": s, "i": i} for i, s in enumerate(steps)])] == kept


def test_training_curves_of_a_resumed_run_given_its_export(trained_run, tmp_path, monkeypatch, jupyter_home):
    """metrics.jsonl still holding the rows of the branch a resume left, and IMAGENET_RUN naming the export
    RUN/final: the curves and the best epoch are the last history's only. Its rows are those of a train.py that
    recorded no steady figures (after each epoch's first batch): the whole epoch's stand in."""
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    shutil.copy(trained_run / "config.yaml", run / "config.yaml")
    shutil.copy(trained_run / "final" / "config.json", run / "final" / "config.json")
    launched = yaml.safe_load((run / "config.yaml").read_text())
    for when, epochs in (("20261201-090000Z", launched["epochs"] + 1), ("20261201-100000Z", launched["epochs"] + 3)):
        (run / "resumes" / when).mkdir(parents=True)  # resumes that extended the run: the newest one's plan counts
        (run / "resumes" / when / "config.yaml").write_text(yaml.safe_dump({**launched, "epochs": epochs}))
    steady = ("first_batch_s", "images_per_sec_steady", "data_wait_steady_frac")
    first, second = [{k: v for k, v in json.loads(line).items() if k not in steady}
                     for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    left = {**second, "val_top1": 99.5, "ema_val_top1": 99.5}  # the run the resume from epoch 1's checkpoint left
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (first, left, second)))
    nb = execute("03_training_curves", monkeypatch, jupyter_home, IMAGENET_RUN=run / "final")
    assert stdout(cell(nb, 'print(f"run: {RUN}")')).splitlines()[-1] == f"run: {run}"
    table = stdout(cell(nb, "rows = last_history("))
    assert "dropped 1 of 3 rows, superseded by a resume from an earlier checkpoint" in table
    assert f": 2 rows, {launched['epochs'] + 3} epochs planned" in table
    assert [line.split()[:2] for line in table.splitlines()[-2:]] == [[f"{r['epoch']:g}", str(r["step"])]
                                                                      for r in (first, second)]
    summary = stdout(cell(nb, "last = rows[-1]"))
    best = max((first, second), key=lambda r: max(r["val_top1"], r["ema_val_top1"]))
    assert (f"best: epoch {best['epoch']:g}: val top-1 {best['val_top1']:.2f}%, "
            f"EMA {best['ema_val_top1']:.2f}%") in summary
    assert "99.50" not in table + summary
    assert (f"throughput (last epoch, first batch included): {second['images_per_sec']:.0f} images/s, "
            f"{100 * second['data_wait_frac']:.0f}% of the time waiting for data") in summary
    assert pngs(cell(nb, "plt.subplots(2, 2")) == 1


def test_backbone_features(trained_run, digits_dataset, monkeypatch, jupyter_home):
    """Given the export RUN/final and no IMAGENET_DATASET: the dataset the run's config.yaml names."""
    nb = execute("04_backbone_features", monkeypatch, jupyter_home, IMAGENET_RUN=trained_run / "final")
    names = class_descriptions(digits_dataset)
    inputs = stdout(cell(nb, "def trained_on("))
    assert f"dataset: {digits_dataset} (from {trained_run / 'config.yaml'})" in inputs
    assert f"model: {trained_run / 'final'}" in inputs

    predictions = cell(nb, "probs.topk")
    assert pngs(predictions) == 1
    val = datasets.load_from_disk(str(digits_dataset))["validation"]
    queries = sorted(np.random.default_rng(0).permutation(len(val))[:4].tolist())  # not the first rows: sorted splits
    assert f"validation rows {queries} (drawn at random, seed 0)" in stdout(predictions)
    assert re.findall(r"^(\S+) \(true: ", stdout(predictions), re.M) == [val[i]["image_id"] for i in queries]
    blocks = stdout(predictions).split("ILSVRC2012_val_")[1:]
    assert len(blocks) == 4
    for block in blocks:
        ranked = re.findall(r"^  ([1-5])\. (.+?) +([\d.]+)%$", block, re.M)
        assert [int(r) for r, _, _ in ranked] == [1, 2, 3, 4, 5]
        assert all(any(n.startswith(name) for n in names) for _, name, _ in ranked)  # human names (cut at 50)
        assert not WNID.search(block)
        probs = [float(p) for _, _, p in ranked]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 100.5

    # blocknet_tiny: a stem tap at stride 2 and four stages of 16-128 channels; fed at 128 px
    shapes = re.findall(r"^stage (\d) \((\S+)\): stride (\d+), shape \((.+)\)$", stdout(cell(nb, "features_only=True")),
                        re.M)
    assert [(int(s), m, int(r), tuple(int(v) for v in shape.split(", "))) for s, m, r, shape in shapes] == [
        (0, "stem.2", 2, (1, 16, 64, 64)), (1, "stages.0", 4, (1, 16, 32, 32)), (2, "stages.1", 8, (1, 32, 16, 16)),
        (3, "stages.2", 16, (1, 64, 8, 8)), (4, "stages.3", 32, (1, 128, 4, 4))]
    assert pngs(cell(nb, "features_only=True")) == 1

    neighbours = cell(nb, "fill_diagonal_")
    n, dim, agreement, chance = re.search(r"(\d+) images, (\d+)-d features: 1-NN label agreement ([\d.]+)% "
                                          r"\(chance ([\d.]+)%\)", stdout(neighbours)).groups()
    assert (int(n), int(dim), float(chance)) == (200, 128, 10.0)
    assert float(agreement) > 3 * float(chance)  # trained features group the digits well beyond chance
    assert pngs(neighbours) == 1


def test_backbone_features_in_the_exports_crop_mode(border_export, digits_dataset, monkeypatch, jupyter_home):
    """An export whose pretrained_cfg says crop_mode border: 04 predicts on the crops validate.py scores (the digit
    fitted in and padded with the export's mean colour), not on centre crops."""
    import torch
    from timm.data import resolve_data_config

    import modeling
    from imagenet_trainer.data import normalize

    nb = execute("04_backbone_features", monkeypatch, jupyter_home, IMAGENET_RUN=border_export)
    assert "crop_pct 1.0, crop_mode border" in stdout(cell(nb, "eval_set = EvalSet("))
    val = datasets.load_from_disk(str(digits_dataset))["validation"]
    queries = sorted(np.random.default_rng(0).permutation(len(val))[:4].tolist())
    printed = [re.findall(r"^  [1-5]\. (.+?) +([\d.]+)%$", block, re.M)
               for block in stdout(cell(nb, "probs.topk")).split("ILSVRC2012_val_")[1:]]
    model, names = modeling.load_model(border_export), modeling.label_info(border_export)[1]
    data_cfg = resolve_data_config(model=model)

    def percent(**transform):  # (query, class) -> probability in %
        with torch.no_grad():
            return 100 * model(normalize(eval_crops(val, queries, data_cfg, **transform), data_cfg["mean"],
                                         data_cfg["std"])).softmax(1)

    expected, centre = percent(), percent(crop_mode="center")
    index = {name[:50]: c for c, name in enumerate(names)}  # as printed: cut at 50 characters
    shown = [(k, index[name], float(p)) for k, block in enumerate(printed) for name, p in block]
    assert len(shown) == 4 * 5
    assert all(abs(expected[k, c] - p) <= 0.051 for k, c, p in shown)  # printed to 0.1%
    # the two transforms predict visibly differently here, so the check above tells them apart
    assert any(abs(centre[k, c] - p) > 0.2 for k, c, p in shown)


def test_downstream(trained_run, digits_dataset, monkeypatch, jupyter_home):
    """The export in torchvision's FasterRCNN (every backbone parameter trained), as a transformers TimmBackbone with
    the export's exact weights inside DETR, and a linear probe of its frozen features well above chance."""
    nb = execute("05_downstream", monkeypatch, jupyter_home, IMAGENET_RUN=trained_run)  # the dataset: config.yaml's
    assert f"dataset: {digits_dataset} (from {trained_run / 'config.yaml'})" in stdout(cell(nb, "def trained_on("))
    detection = stdout(cell(nb, "FasterRCNN(TimmFPN"))
    first, last, reached, total = re.search(r"loss ([\d.]+) -> ([\d.]+) over 6 steps; gradients reached (\d+) of "
                                            r"(\d+) backbone parameters", detection).groups()
    assert int(reached) == int(total) > 0 and np.isfinite([float(first), float(last)]).all()
    # train is sorted by class, so its first 24 images with boxes are all of one digit; a random draw has several
    train = datasets.load_from_disk(str(digits_dataset))["train"]
    assert len({row["label"] for row in train.select(range(100)) if row["objects"]}) == 1
    classes = int(re.search(r"^FasterRCNN: 24 training images with boxes \((\d+) classes\)", detection, re.M).group(1))
    assert classes >= 5

    transformers_route = stdout(cell(nb, "DetrForObjectDetection"))
    assert "weights and BatchNorm statistics equal the export's: True" in transformers_route
    assert "loaded into ['model.backbone.model']" in transformers_route
    detr_losses = re.search(r"DETR: loss ([\d.]+) -> ([\d.]+)", transformers_route).groups()
    assert np.isfinite([float(v) for v in detr_losses]).all()

    probe = stdout(cell(nb, "LogisticRegression"))
    assert "linear probe: 1000 train images of 10 classes / 200 val images" in probe
    top1, chance = re.search(r"val top-1 ([\d.]+)% \(chance ([\d.]+)%\)", probe).groups()
    assert float(chance) == 10.0 and float(top1) > 3 * float(chance)  # trained features separate the digits


def test_downstream_on_a_class_sorted_dataset_without_boxes(trained_run, sorted_without_boxes, monkeypatch,
                                                           jupyter_home):
    """No boxes (class folders, Hub copies): one line says so, the detector training is skipped, the probe runs on
    train images of every class although the first 1,100 rows are of one (a prefix would give LogisticRegression
    one class). The model is given as its export folder."""
    nb = execute("05_downstream", monkeypatch, jupyter_home, IMAGENET_RUN=trained_run / "final",
                 IMAGENET_DATASET=sorted_without_boxes)
    assert stdout(cell(nb, "FasterRCNN(TimmFPN")) == (
        f"no train image of {sorted_without_boxes} has boxes (its `objects` column is empty or missing): the "
        "FasterRCNN and DETR training is skipped\n")
    transformers_route = stdout(cell(nb, "DetrForObjectDetection"))
    assert "weights and BatchNorm statistics equal the export's: True" in transformers_route
    assert "DETR: loss" not in transformers_route
    probe = stdout(cell(nb, "LogisticRegression"))
    assert "linear probe: 1000 train images of 10 classes / 200 val images" in probe
    top1, chance = re.search(r"val top-1 ([\d.]+)% \(chance ([\d.]+)%\)", probe).groups()
    assert float(top1) > 3 * float(chance)


def test_downstream_embeds_in_the_exports_crop_mode(border_export, digits_dataset):
    """05's linear probe reads the features of the crops validate.py scores for an export whose pretrained_cfg says
    crop_mode border (the digit fitted in and padded with the export's mean colour), not of centre crops."""
    import torch
    from timm.data import resolve_data_config

    import modeling
    from imagenet_trainer.data import EvalSet, normalize

    model = modeling.load_model(border_export)
    data_cfg = resolve_data_config(model=model)
    embed = notebook_function("05_downstream", "embed", EvalSet=EvalSet, normalize=normalize, np=np, torch=torch,
                              data_cfg=data_cfg, model=model)
    val = datasets.load_from_disk(str(digits_dataset))["validation"]
    features, labels = embed(val, 50)
    rows = np.sort(np.random.default_rng(0).permutation(len(val))[:50]).tolist()  # embed's draw

    def pooled(**transform):
        x = normalize(eval_crops(val, rows, data_cfg, **transform), data_cfg["mean"], data_cfg["std"])
        with torch.no_grad():
            return model.forward_head(model.forward_features(x), pre_logits=True).numpy()

    assert labels.tolist() == val.select(rows)["label"]
    assert np.allclose(features, pooled(), atol=1e-5)
    assert not np.allclose(features, pooled(crop_mode="center"), atol=1e-3)


@pytest.mark.parametrize("name", ["04_backbone_features", "05_downstream"])
def test_features_of_a_run_scored_on_its_test_split(name, test_split_run, train_and_test, monkeypatch,
                                                    jupyter_home):
    """A run trained with --eval_split test on a dataset without a validation split: 04 predicts on and 05 scores
    its probe on the test split."""
    nb = execute(name, monkeypatch, jupyter_home, IMAGENET_RUN=test_split_run)
    test = datasets.load_from_disk(str(train_and_test))["test"]
    if name == "04_backbone_features":
        queries = sorted(np.random.default_rng(0).permutation(len(test))[:4].tolist())
        predictions = stdout(cell(nb, "probs.topk"))
        assert f"test rows {queries} (drawn at random, seed 0)" in predictions
        assert re.findall(r"^(row \d+) \(true: ", predictions, re.M) == [f"row {i}" for i in queries]  # no image_id
        assert f"{len(test)} images, 128-d features" in stdout(cell(nb, "fill_diagonal_"))
    else:
        probe = stdout(cell(nb, "LogisticRegression"))
        assert f"linear probe: 1000 train images of 10 classes / {len(test)} test images" in probe
        assert re.search(r"test top-1 [\d.]+% \(chance 10.0%\)", probe)


@pytest.mark.parametrize("name", ["04_backbone_features", "05_downstream"])
def test_features_stop_on_a_dataset_without_the_runs_eval_split(name, test_split_run, sorted_without_boxes,
                                                                monkeypatch, jupyter_home):
    """The run scored --eval_split test; a dataset without that split stops in one line that names the split and
    IMAGENET_DATASET, not a KeyError (nor the validation split in its place)."""
    with pytest.raises(CellExecutionError) as failed:
        execute(name, monkeypatch, jupyter_home, IMAGENET_RUN=test_split_run, IMAGENET_DATASET=sorted_without_boxes)
    assert failed.value.ename == "ValueError"
    assert failed.value.evalue.startswith(f"{sorted_without_boxes} has no split 'test' (")
    assert failed.value.evalue.endswith("set IMAGENET_DATASET to the dataset the run was trained on")


def test_backbone_features_name_imagenet_run_when_it_holds_no_export(trained_run, tmp_path, monkeypatch,
                                                                     jupyter_home):
    """A run still in its first epoch (config.yaml, no final/ yet) and a Hub model id: one line that names
    IMAGENET_RUN (not IMAGENET_DATASET) and says that a Hub model is read from the folder it was downloaded to."""
    first_epoch = tmp_path / "run"
    first_epoch.mkdir()
    shutil.copy(trained_run / "config.yaml", first_epoch / "config.yaml")
    for run in (first_epoch, "timm/resnet18.a1_in1k"):
        with pytest.raises(CellExecutionError) as failed:
            execute("04_backbone_features", monkeypatch, jupyter_home, IMAGENET_RUN=run)
        assert failed.value.ename == "FileNotFoundError"
        message = failed.value.evalue
        assert message.startswith(f"{Path(run) / 'final'} holds no export (config.json): set IMAGENET_RUN to ")
        assert "hf download OWNER/NAME --local-dir DIR" in message and "IMAGENET_DATASET" not in message


@pytest.mark.parametrize("name", ["01_inspect_dataset", "02_augmentations", "04_backbone_features", "05_downstream"])
def test_a_dataset_that_does_not_load_names_imagenet_dataset(name, trained_run, tmp_path, monkeypatch,
                                                             jupyter_home):
    """load_image_dataset's one-line error, and which variable to set."""
    missing = tmp_path / "no_dataset"
    run = {"IMAGENET_RUN": trained_run} if name[:2] in ("04", "05") else {}
    with pytest.raises(CellExecutionError) as failed:
        execute(name, monkeypatch, jupyter_home, IMAGENET_DATASET=missing, **run)
    assert failed.value.ename == "ValueError"
    assert failed.value.evalue.startswith(f"{missing}: no such folder")
    assert failed.value.evalue.endswith("; set IMAGENET_DATASET to a preprocess.py output (or a Hub dataset id)")


@pytest.mark.parametrize("name", ["04_backbone_features", "05_downstream"])
def test_the_dataset_a_run_was_trained_on(name, tmp_path):
    """Without IMAGENET_DATASET, 04 and 05 read the `dataset:` of the run's config.yaml; a relative one (as `make
    demo` writes it) is relative to the folder train.py ran in, which the relative --output_dir also recorded."""
    root, elsewhere = tmp_path / "repo", tmp_path / "elsewhere"
    trained_on = notebook_function(name, "trained_on", ROOT=root, Path=Path)
    for base in (root, elsewhere):
        (base / "demo_run" / "dataset").mkdir(parents=True)
        (base / "demo_run" / "run" / "final").mkdir(parents=True)
        (base / "demo_run" / "run" / "config.yaml").write_text("dataset: demo_run/dataset\noutput_dir: demo_run/run\n")
    assert trained_on(elsewhere / "demo_run" / "run" / "final") == elsewhere / "demo_run" / "dataset"
    moved = tmp_path / "moved" / "run"  # --output_dir no longer matches: the repository root's copy
    shutil.copytree(elsewhere / "demo_run" / "run", moved)
    assert trained_on(moved / "final") == root / "demo_run" / "dataset"
    (moved / "config.yaml").write_text("dataset: ILSVRC/imagenet-1k\noutput_dir: runs/r\n")
    assert trained_on(moved / "final") == "ILSVRC/imagenet-1k"  # no such folder: a Hub id, for load_image_dataset
    (moved / "config.yaml").write_text(f"dataset: {elsewhere / 'demo_run' / 'dataset'}\noutput_dir: runs/r\n")
    assert trained_on(moved / "final") == elsewhere / "demo_run" / "dataset"
    snapshot = tmp_path / "models--org--name" / "snapshots" / "abc"  # a Hub snapshot: no run config beside it
    snapshot.mkdir(parents=True)
    with pytest.raises(ValueError, match="set IMAGENET_DATASET"):
        trained_on(snapshot)


def test_effective_robustness(tmp_path, monkeypatch, jupyter_home):
    """validate.py --output files with and without --eval_sets, then the default folder: results/ in the repository
    root, where the markdown's loop (run there) writes, whatever the kernel's cwd."""
    results = tmp_path / "results"
    results.mkdir()
    for model, imagenet, shifted in (("resnet18", 69.8, 33.1), ("resnet50", 76.1, 36.2), ("convnext_tiny", 82.1, 47.0),
                                     ("vgg16", 71.6, None)):
        rows = [{"dataset": kind, "name": kind, "kind": kind, "image_size": 224, "top1": top1, "top5": 95.0,
                 "split": "validation"} for kind, top1 in (("imagenet", imagenet), ("imagenet-real", imagenet + 7),
                                                           ("imagenet-r", shifted)) if top1 is not None]
        summary = {"model": f"runs/{model}/final", "results": rows}
        if model == "convnext_tiny":  # --image_sizes 192,224: every set at each size in turn, its own (224) second
            summary = {**summary, "results": [{**r, "image_size": 192, "top1": r["top1"] - 4} for r in rows] + rows,
                       "image_size": 224}
        (results / f"{model}.json").write_text(json.dumps(summary))
    # a scaled-down copy of ImageNet-R (and of ImageNet) is another test set, named by its folder: a panel of its own,
    # where one model gives no line
    small = [{"dataset": dataset, "name": dataset, "kind": kind, "image_size": 224, "top1": top1, "top5": 95.0,
              "split": "validation"} for dataset, kind, top1 in (("in1k", "imagenet", 75.0),
                                                                 ("imagenet-r-small", "imagenet-r", 40.0))]
    (results / "small_r.json").write_text(json.dumps({"model": "runs/small_r/final", "results": small}))
    single = {"model": "runs/vit/final", "dataset": "data/imagenet", "split": "validation", "top1": 80.0, "n": 50000}
    (results / "vit.json").write_text(json.dumps(single))  # validate.py without --eval_sets
    (results / "vit_per_class.json").write_text(json.dumps([{"label": 0, "n": 50, "top1": 80.0}]))
    nb = execute("06_effective_robustness", monkeypatch, jupyter_home, IMAGENET_RESULTS=results)
    listing = stdout(cell(nb, "IMAGENET_RESULTS"))
    assert listing.splitlines()[0] == f"4 models in {results}: convnext_tiny, resnet18, resnet50, small_r"
    assert "vit.json: scored without --eval_sets, so not on the plot" in listing
    assert (f"python validate.py --model runs/vit/final --dataset data/imagenet --eval_sets "
            f"~/data/imagenet-r,~/data/imagenet-a --output {results / 'vit.json'}") in listing
    assert "per_class" not in listing
    # ReaL relabels ImageNet's own images: not a shifted set, so vgg16 (ImageNet and ReaL only) is not on the plot
    assert "vgg16.json: scored without --eval_sets, so not on the plot" in listing
    lines = stdout(cell(nb, "np.polyfit")).splitlines()
    assert [line.split(":")[:2] for line in lines[:-1]] == [["imagenet-r", f" {m}"] for m in
                                                            ("convnext_tiny", "resnet18", "resnet50")]
    assert lines[-1] == "imagenet-r-small: 1 model: need at least 2 models to fit the line"
    # its own size's; placed against the 1000-class row, named by its dataset: these files have no -clean rows
    assert lines[0].startswith("imagenet-r: convnext_tiny: top-1 47.00% at imagenet 82.10%")
    assert "resnet18.json: imagenet-r placed against the 1000-class ImageNet top-1" in listing
    assert pngs(cell(nb, "np.polyfit")) == 1

    (tmp_path / "empty").mkdir()  # nothing scored: said, and no empty figure
    nb = execute("06_effective_robustness", monkeypatch, jupyter_home, IMAGENET_RESULTS=tmp_path / "empty")
    assert stdout(cell(nb, "np.polyfit")).startswith("nothing to plot") and pngs(cell(nb, "np.polyfit")) == 0

    nb = execute("06_effective_robustness", monkeypatch, jupyter_home)
    assert re.match(r"\d+ models in (.+?): ", stdout(cell(nb, "IMAGENET_RESULTS"))).group(1) == str(ROOT / "results")
