"""notebooks/*.ipynb run top to bottom on real data and show what their markdown promises.

Each notebook is executed by nbclient in a real Jupyter kernel of this very interpreter (a kernelspec written into a
temporary JUPYTER_PATH, so a CI machine with only ``pip install -r requirements.txt`` in .venv needs no registered
kernel), with cwd = notebooks/ as in Jupyter, and its inputs set through the environment variables its first cell
reads: conftest's ``preprocessed`` (photos with ImageNet's faults), ``digits_dataset``, and a 2-epoch train.py run on
the digits trained once per module. The assertions read the cells' printed text and check it against the files.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import datasets
import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from imagenet_trainer.ilsvrc import class_descriptions

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ("01_inspect_dataset", "02_augmentations", "03_training_curves", "04_backbone_features", "05_downstream")
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


def execute(name: str, monkeypatch, jupyter_home: Path, **inputs) -> nbformat.NotebookNode:
    """The executed notebook; a cell that raises fails the test with the cell's traceback (CellExecutionError)."""
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_home))  # the kernelspec lookup happens in this process
    for var, sub in (("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTER_CONFIG_DIR", "config"), ("IPYTHONDIR", "ipython")):
        monkeypatch.setenv(var, str(jupyter_home / sub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("IMAGENET_DATASET", raising=False)
    monkeypatch.delenv("IMAGENET_RUN", raising=False)
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


def test_notebooks_are_stored_clean_and_read_their_inputs_from_the_environment():
    for name in NAMES:
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.outputs == [] and c.execution_count is None for c in code), f"{name}: outputs not cleared"
        assert nb.cells[0].cell_type == "markdown", f"{name}: starts without an explanation"
        assert "os.environ.get(\"IMAGENET_DATASET\"" in code[0].source, name
        assert ("os.environ.get(\"IMAGENET_RUN\"" in code[0].source) == (name[:2] in ("03", "04", "05")), name


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


def test_augmentations(preprocessed, monkeypatch, jupyter_home):
    nb = execute("02_augmentations", monkeypatch, jupyter_home, IMAGENET_DATASET=preprocessed)
    crops = cell(nb, "same key, same pixels")
    assert pngs(crops) == 1 and "crop shape (3, 128, 128) torch.uint8; same key, same pixels: True" in stdout(crops)
    assert pngs(cell(nb, 'auto_augment=mode')) == 2  # RandAugment and TrivialAugment rows
    eval_crop = cell(nb, "eval_set = EvalSet")
    assert pngs(eval_crop) == 1 and "resize shorter side to 146 px, centre crop (3, 128, 128)" in stdout(eval_crop)
    mixing = cell(nb, "mixup_cutmix(x, y")
    assert pngs(mixing) == 2 and stdout(mixing).count("targets sum to 1: True") == 2
    erasing = cell(nb, "random_erasing(x")
    fractions = [float(f) for f in stdout(erasing).split(":")[1].split(",")]
    assert pngs(erasing) == 1 and len(fractions) == 8 and all(0 < f < 0.5 for f in fractions)  # prob 1: all erased


def test_training_curves(trained_run, monkeypatch, jupyter_home):
    nb = execute("03_training_curves", monkeypatch, jupyter_home, IMAGENET_RUN=trained_run)
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and "ema_val_top1" in rows[-1]
    table = stdout(cell(nb, "rows = [json.loads"))
    assert "ema_val_top1" in table and len(table.strip().splitlines()) == 2 + len(rows)  # title, header, rows
    assert pngs(cell(nb, "plt.subplots(2, 2")) == 1
    summary = stdout(cell(nb, "last = rows[-1]"))
    last = rows[-1]
    assert (f"final: epoch {last['epoch']:g}, step {last['step']}: val top-1 {last['val_top1']:.2f}%, "
            f"top-5 {last['val_top5']:.2f}%") in summary
    assert f"final EMA: val top-1 {last['ema_val_top1']:.2f}%" in summary


def test_backbone_features(trained_run, digits_dataset, monkeypatch, jupyter_home):
    nb = execute("04_backbone_features", monkeypatch, jupyter_home, IMAGENET_RUN=trained_run,
                 IMAGENET_DATASET=digits_dataset)
    names = class_descriptions(digits_dataset)

    predictions = cell(nb, "probs.topk")
    assert pngs(predictions) == 1
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


def test_downstream(trained_run, digits_dataset, monkeypatch, jupyter_home):
    """The export in torchvision's FasterRCNN (every backbone parameter trained), as a transformers TimmBackbone with
    the export's exact weights inside DETR, and a linear probe of its frozen features well above chance."""
    nb = execute("05_downstream", monkeypatch, jupyter_home, IMAGENET_RUN=trained_run, IMAGENET_DATASET=digits_dataset)
    detection = stdout(cell(nb, "FasterRCNN(TimmFPN"))
    first, last, reached, total = re.search(r"loss ([\d.]+) -> ([\d.]+) over 6 steps; gradients reached (\d+) of "
                                            r"(\d+) backbone parameters", detection).groups()
    assert int(reached) == int(total) > 0 and np.isfinite([float(first), float(last)]).all()
    assert re.search(r"^FasterRCNN: 24 training images with boxes", detection, re.M)

    transformers_route = stdout(cell(nb, "DetrForObjectDetection"))
    assert "weights and BatchNorm statistics equal the export's: True" in transformers_route
    assert "loaded into ['model.backbone.model']" in transformers_route
    detr_losses = re.search(r"DETR: loss ([\d.]+) -> ([\d.]+)", transformers_route).groups()
    assert np.isfinite([float(v) for v in detr_losses]).all()

    probe = stdout(cell(nb, "LogisticRegression"))
    top1, chance = re.search(r"val top-1 ([\d.]+)% \(chance ([\d.]+)%\)", probe).groups()
    assert float(chance) == 10.0 and float(top1) > 3 * float(chance)  # trained features separate the digits
