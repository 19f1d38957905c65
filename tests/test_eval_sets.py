"""Robustness sets in their distributed layouts (real folder names, image counts scaled down, generated JPEGs) through
preprocess.py and validate.py --eval_sets: labels, R/A masks, ReaL, mCE, sweeps, results.csv, the card, 2 processes."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import huggingface_hub
import nbformat
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file
from timm.data import create_transform, resolve_data_config
from timm.data.transforms_factory import transforms_imagenet_eval

import modeling
import preprocess
import validate
from imagenet_trainer import eval_sets, eval_suite, manifest, robustness
from imagenet_trainer.data import EvalSet, collate, normalize
from imagenet_trainer.ilsvrc import imagenet_wnids
from imagenet_trainer.image_tree import HIDDEN, NOT_IMAGE, OUTSIDE_CLASSES
from modeling.card_sets import update_card_sets
from test_notebooks import execute, jupyter_home, pngs, stdout  # noqa: F401  (jupyter_home: a fixture)
from test_validate import ACCELERATE, ROOT, TINY, error_of, evaluate, free_port, ok, run

WNIDS = imagenet_wnids()


def jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (20, 26, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=85)


def make_tree(base: Path, kind: str, **change) -> Path:
    """A scaled-down copy of ``kind`` as its authors distribute it: all class folders, a few images in them."""
    if kind == eval_sets.V2:
        root = base / "imagenetv2-matched-frequency-format-val"
        for i in range(1000):
            (root / str(i)).mkdir(parents=True, exist_ok=True)
        for i in (0, 1, 7, 999):
            jpeg(root / str(i) / f"{i:040x}.jpeg", i)
    elif kind == eval_sets.SKETCH:
        root = base / "sketch"
        for i in (0, 3, 500):
            jpeg(root / WNIDS[i] / f"sketch_{WNIDS[i]}_1.JPEG", i)
    elif kind in (eval_sets.R, eval_sets.A):
        root = base / kind
        for i, wnid in enumerate(change.get("wnids") or eval_sets.subset_wnids(kind)):
            jpeg(root / wnid / f"{kind}_{i}.jpg", i)
    else:  # ImageNet-C: the tarballs' category level for noise, none for fog
        root = base / "imagenet-c"
        for corruption, parent in (("gaussian_noise", "noise/"), ("fog", "")):
            for severity in change.get("severities", "12345"):
                for i in (1, 4):
                    jpeg(root / f"{parent}{corruption}" / severity / WNIDS[i] / f"ILSVRC2012_val_{i:08d}.JPEG", i)
    return root


def preprocessed_set(root: Path) -> Path:
    out = root.parent / f"{root.name}-out"
    preprocess.main(["--data_dir", str(root), "--output_dir", str(out), "--num_proc", "1"])
    return out


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("evalsets")
    return {kind: preprocessed_set(make_tree(base, kind)) for kind in eval_sets.SETS}


@pytest.fixture(scope="module")
def in1k_model(tmp_path_factory) -> Path:
    """A 1000-class export with ImageNet's wnids, random weights but for a classifier bias that makes class 1
    (n01443537, one of ImageNet-R's 200) its top-1 answer for every image and class 4 its second."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("in1k") / "final"
    model = modeling.create_model(TINY, num_classes=1000)
    with torch.no_grad():
        model.get_classifier().bias[1] += 100.0
        model.get_classifier().bias[4] += 50.0
    modeling.save_pretrained(model, folder, label_names=WNIDS)
    return folder


def logits_of(model_dir: Path, split: datasets.Dataset, size: int, crop_pct: float | None = None) -> torch.Tensor:
    """The model's logits on every image of ``split`` in validate.py's eval transform, computed here."""
    model = modeling.load_model(str(model_dir)).eval()
    cfg = resolve_data_config(model=model)
    x, _ = collate([EvalSet(split, size, crop_pct or cfg["crop_pct"], cfg["interpolation"])[i]
                    for i in range(len(split))])
    with torch.no_grad():
        return model(normalize(x, cfg["mean"], cfg["std"]))


def test_layouts_are_labelled_in_imagenet_1k_index_space(sets):
    v2 = datasets.load_from_disk(str(sets[eval_sets.V2]))["validation"]
    assert v2.features["label"].names == WNIDS
    assert sorted(zip(v2["image_id"], v2["label"])) == sorted((f"{i}/{i:040x}", i) for i in (0, 1, 7, 999))
    sketch = datasets.load_from_disk(str(sets[eval_sets.SKETCH]))["validation"]
    assert [(i.split("/")[0], WNIDS[label]) for i, label in zip(sketch["image_id"], sketch["label"])] == [
        (WNIDS[i], WNIDS[i]) for i in (0, 3, 500)]
    for kind in (eval_sets.R, eval_sets.A):
        source = json.loads((sets[kind] / "source.json").read_text())
        timm_indices = [WNIDS.index(w) for w in eval_sets.subset_wnids(kind)]
        assert source["eval_set"] == kind and source["class_subset"] == timm_indices
        split = datasets.load_from_disk(str(sets[kind]))["validation"]
        assert len(split) == 200 and sorted(set(split["label"])) == timm_indices
        assert all(WNIDS[label] == image_id.split("/")[0] for label, image_id in zip(split["label"], split["image_id"]))
    c = datasets.load_from_disk(str(sets[eval_sets.C]))
    assert sorted(c) == sorted(f"{name}_{s}" for name in ("gaussian_noise", "fog") for s in "12345")
    assert sorted(c["fog_3"]["label"]) == [1, 4] and c["gaussian_noise_5"]["image_id"][0] == f"{WNIDS[1]}/" \
        "ILSVRC2012_val_00000001"
    # a scaled-down copy is not called by the published name; a complete one would be
    source = json.loads((sets[eval_sets.V2] / "source.json").read_text())
    assert (source["variant"], source["complete"], source["hub_id"]) == ("matched-frequency", False, None)
    assert source["name"] == "imagenetv2-matched-frequency-format-val"


def preprocess_error(root: Path, *extra) -> str:
    with pytest.raises(SystemExit) as e:
        preprocess.main(["--data_dir", str(root), "--output_dir", str(root.parent / "never"), "--num_proc", "1",
                         *extra])
    message = str(e.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def test_layout_errors_are_one_line(tmp_path):
    r = make_tree(tmp_path / "r199", eval_sets.R, wnids=eval_sets.subset_wnids(eval_sets.R)[1:])
    assert "199 class folders where ImageNet-R has its 200 (missing n01443537)" in preprocess_error(r)
    a = make_tree(tmp_path / "a", eval_sets.A, wnids=[*eval_sets.subset_wnids(eval_sets.A)[:-1], WNIDS[0]])
    assert f"{WNIDS[0]} is not one of its 200 classes" in preprocess_error(a)
    sketch = make_tree(tmp_path / "s", eval_sets.SKETCH)
    jpeg(sketch / "n99999999" / "x.jpg", 0)
    assert "'n99999999' is not an ImageNet-1k wnid" in preprocess_error(sketch)
    v2 = make_tree(tmp_path / "v2", eval_sets.V2)
    jpeg(v2 / "1000" / "x.jpeg", 0)
    assert "named by class index 0..999, not '1000'" in preprocess_error(v2)
    c = make_tree(tmp_path / "c", eval_sets.C, severities="1234")
    assert "expected the severity folders 1 2 3 4 5, found 1 2 3 4" in preprocess_error(c)
    # a renamed folder: --eval_set says what it is; a plain class tree without it still asks for --val_fraction
    mine = shutil.copytree(make_tree(tmp_path / "rr", eval_sets.R), tmp_path / "mine")
    assert "--val_fraction" in preprocess_error(mine)
    assert "not one of imagenet-v2" in preprocess_error(mine, "--eval_set", "imagenet-x")
    assert "drop --val_fraction" in preprocess_error(mine, "--eval_set", "imagenet-r", "--val_fraction", "0.1")
    for layout in ("ilsvrc", "folders"):  # two answers to one question: neither is dropped silently
        assert f"--layout {layout} both say how to read" in preprocess_error(mine, "--eval_set", "imagenet-r",
                                                                             "--layout", layout)
    preprocess.main(["--data_dir", str(mine), "--output_dir", str(tmp_path / "out"), "--num_proc", "1",
                     "--eval_set", "imagenet-r"])
    assert json.loads((tmp_path / "out" / "source.json").read_text())["eval_set"] == "imagenet-r"


def test_a_set_unpacked_one_level_too_deep_says_pass_data_dir_the_inner_folder(tmp_path):
    """imagenet-r/imagenet-r/<wnid>/, imagenet-c/imagenet-c/noise/..., or a set inside a folder of another name."""
    for kind, outer in ((eval_sets.R, "imagenet-r"), (eval_sets.C, "imagenet-c"), (eval_sets.R, "downloads")):
        inner = make_tree(tmp_path / kind / outer, kind).resolve()
        assert preprocess_error(inner.parent) == (
            f"error: {inner.parent}: its one folder, {inner.name}, is {eval_sets.SETS[kind].title} itself (its archive "
            f"unpacked one level too deep); pass --data_dir {inner}")


def test_imagenet_c_severity_folders_missing_or_stray_say_unpack_every_severity_or_move_it_out(tmp_path):
    c = make_tree(tmp_path / "c3", eval_sets.C, severities="123").resolve()
    noise = c / "noise" / "gaussian_noise"
    assert preprocess_error(c) == (
        f"error: {noise}: expected the severity folders 1 2 3 4 5, found 1 2 3; {noise / '4'} is missing (2 of 5), so "
        f"this copy is incomplete: unpack every severity of gaussian_noise from its tarball, or move {noise} out to "
        "score the other corruptions")
    c = make_tree(tmp_path / "c6", eval_sets.C).resolve()
    jpeg(c / "fog" / "6" / WNIDS[1] / "ILSVRC2012_val_00000001.JPEG", 1)
    assert preprocess_error(c) == (f"error: {c / 'fog'}: expected the severity folders 1 2 3 4 5, found 1 2 3 4 5 6; "
                                   f"{c / 'fog' / '6'} is none of them: move it out")


@pytest.mark.parametrize("copy", ["one severity", "severity_N"])
def test_imagenet_c_class_folders_without_a_severity_or_severity_n_folders_say_where_they_go(copy, tmp_path):
    """A one-severity copy (fog/<wnid>/) or fog/severity_1..5/: the folders are the corruption's data, so the line
    says the level is missing or misnamed, not to move them out (which would empty the corruption)."""
    c = make_tree(tmp_path, eval_sets.C).resolve()
    fog = c / "fog"
    if copy == "one severity":
        for severity in "2345":
            shutil.rmtree(fog / severity)
        for wnid in (fog / "1").iterdir():
            wnid.rename(fog / wnid.name)
        (fog / "1").rmdir()
        assert preprocess_error(c) == (
            f"error: {fog}: expected the severity folders 1 2 3 4 5, found {WNIDS[1]} {WNIDS[4]}; {fog / WNIDS[1]} is "
            f"an ImageNet-1k class folder (2 such): the severity folder above them is missing; move them into {fog}/N, "
            "N their severity (1..5)")
        return
    for severity in "12345":
        (fog / severity).rename(fog / f"severity_{severity}")
    names = [f"severity_{s}" for s in "12345"]
    assert preprocess_error(c) == (
        f"error: {fog}: expected the severity folders 1 2 3 4 5, found {' '.join(names)}; {', '.join(names)} look like "
        f"severity folders: rename each to its severity alone ({fog / 'severity_1'} -> {fog / '1'})")


def test_a_folder_of_several_sets_lists_them_and_says_pass_one_as_data_dir(tmp_path):
    """imagenetv2/ holding the three V2 variants (not 'class folders are named by class index'), downloads/ holding
    imagenet-r/ and imagenet-a/ (not the generic layout line): each set is one preprocess.py run."""
    v2 = tmp_path / "imagenetv2"
    v2.mkdir()
    for variant in eval_sets.V2_VARIANTS:
        make_tree(tmp_path / variant, eval_sets.V2).rename(v2 / f"imagenetv2-{variant}-format-val")
    variants = [f"imagenetv2-{v}-format-val" for v in eval_sets.V2_VARIANTS]
    assert preprocess_error(v2) == (
        f"error: {v2}: holds 3 evaluation sets, {', '.join(variants)}; pass one of them as --data_dir (--data_dir "
        f"{v2 / variants[0]}), one preprocess.py run per set")
    downloads = tmp_path / "downloads"
    make_tree(downloads, eval_sets.R), make_tree(downloads, eval_sets.A)
    assert preprocess_error(downloads) == (
        f"error: {downloads}: holds 2 evaluation sets, imagenet-a, imagenet-r; pass one of them as --data_dir "
        f"(--data_dir {downloads / 'imagenet-a'}), one preprocess.py run per set")
    assert preprocess_error(v2, "--eval_set", "imagenet-v2").startswith(f"error: {v2}: holds 3 evaluation sets")


def test_an_evaluation_sets_report_lists_its_hidden_and_non_image_files_on_any_num_proc(tmp_path, capsys):
    """preprocess_report.json's left_out on the evaluation-set route, as on the tree and archive routes (it was null):
    hidden files and non-image files in the class folders, the severity folders and the levels above them."""
    c = make_tree(tmp_path / "c", eval_sets.C)
    r = make_tree(tmp_path / "r", eval_sets.R)
    wnid = eval_sets.subset_wnids(eval_sets.R)[0]
    planted = {c: [f"noise/gaussian_noise/3/{WNIDS[1]}/.DS_Store", f"fog/1/{WNIDS[4]}/notes.txt",
                   "noise/gaussian_noise/2/._x.JPEG", "noise/.DS_Store", "README.txt"],
               r: [f"{wnid}/.DS_Store", f"{wnid}/readme.txt", ".DS_Store"]}
    reasons = {".DS_Store": HIDDEN, "._x.JPEG": HIDDEN, "notes.txt": NOT_IMAGE, "readme.txt": NOT_IMAGE,
               "README.txt": OUTSIDE_CLASSES}
    for root, paths in planted.items():
        for path in paths:
            (root / path).write_bytes(b"\0\0\0\1Bud1")
        expected = sorted(({"path": path, "reason": reasons[path.rsplit("/", 1)[-1]]} for path in paths),
                          key=lambda e: e["path"])
        for num_proc in ("1", "2"):
            out = tmp_path / f"{root.parent.name}-{num_proc}"
            preprocess.main(["--data_dir", str(root), "--output_dir", str(out), "--num_proc", num_proc])
            assert json.loads((out / "preprocess_report.json").read_text())["left_out"] == expected, num_proc
            hidden = [e["path"] for e in expected if e["reason"] == HIDDEN]
            assert (f'warning: {len(hidden)} hidden files and folders (names starting with ".": .DS_Store, ._*, '
                    f".ipynb_checkpoints) in {root} left out, e.g. {min(hidden)}") in capsys.readouterr().out
    assert sum(len(s) for s in datasets.load_from_disk(str(tmp_path / "c-2")).values()) == 20  # every image still


def test_imagenet_v2_in_a_renamed_folder_is_named_by_the_variant_given(tmp_path, monkeypatch, capsys):
    """V2's three variants share the layout 0..999/, so a renamed copy is ImageNet-V2 <variant> only when --eval_set
    imagenet-v2:<variant> names it; plain imagenet-v2 there warns and stays a subset, with no timm name."""
    # the fixture's 4 images as the whole set: source.json's names are those of a complete copy
    monkeypatch.setitem(eval_sets.SETS, eval_sets.V2, eval_sets.SETS[eval_sets.V2]._replace(full_images=4))
    distributed = make_tree(tmp_path / "d", eval_sets.V2)
    renamed = shutil.copytree(distributed, tmp_path / "v2-mf")

    def source(root: Path, out: str, *flags) -> dict:
        preprocess.main(["--data_dir", str(root), "--output_dir", str(tmp_path / out), "--num_proc", "1", *flags])
        found = json.loads((tmp_path / out / "source.json").read_text())
        return {k: found[k] for k in ("name", "complete", "variant", "timm_name", "hub_id")}

    published = {"name": "ImageNet-V2 matched-frequency", "complete": True, "variant": "matched-frequency",
                 "timm_name": "imagenetv2-matched-frequency", "hub_id": "vaishaal/ImageNetV2"}
    assert source(renamed, "named", "--eval_set", "imagenet-v2:matched-frequency") == published
    assert source(distributed, "plain-distributed", "--eval_set", "imagenet-v2") == published  # as before
    capsys.readouterr()
    assert source(renamed, "plain", "--eval_set", "imagenet-v2") == {
        "name": "v2-mf", "complete": False, "variant": None, "timm_name": None, "hub_id": None}
    assert (f"warning: {renamed}: its name names none of ImageNet-V2's variants, so it is scored as a subset, not as "
            "ImageNet-V2; name the variant: --eval_set imagenet-v2:matched-frequency (or :threshold0.7, :top-images)"
            ) in capsys.readouterr().out.splitlines()
    # naming the variant afterwards changes what the output is: a rebuild, not the plain output kept as it is
    with pytest.raises(SystemExit) as e:
        source(renamed, "plain", "--eval_set", "imagenet-v2:top-images")
    assert "(variant None -> top-images); add --overwrite" in str(e.value.code)
    assert source(renamed, "plain", "--eval_set", "imagenet-v2:top-images", "--overwrite")["name"] == \
        "ImageNet-V2 top-images"
    # the distributed name already says the variant: the same one named again is the same job, another is refused
    assert source(distributed, "plain-distributed", "--eval_set", "imagenet-v2:matched-frequency") == published
    assert preprocess_error(distributed, "--eval_set", "imagenet-v2:threshold0.7") == (
        f"error: --eval_set imagenet-v2:threshold0.7: {distributed}'s name says it is ImageNet-V2's matched-frequency "
        "variant; give --eval_set imagenet-v2:matched-frequency, or rename the folder")
    for wrong in ("imagenet-v2:matched", "imagenet-v2:", "imagenet-r:top-images"):
        assert (f"--eval_set {wrong!r}: only ImageNet-V2 names a variant, one of imagenet-v2:matched-frequency, "
                "imagenet-v2:threshold0.7, imagenet-v2:top-images") in preprocess_error(renamed, "--eval_set", wrong)


def test_mce_against_hand_computed_values():
    """Errors equal to AlexNet's give CE 100 on each corruption; half of them on one corruption gives CE 50 there:
    mCE = (14 x 100 + 50) / 15."""
    errors = {c: [100 * e] * 5 for c, e in robustness.ALEXNET_ERRORS.items()}
    errors["fog"] = [100 * robustness.ALEXNET_ERRORS["fog"] / 2] * 5
    result = robustness.mean_corruption_error(errors)
    assert result["ce"]["fog"] == pytest.approx(50.0) and result["ce"]["snow"] == pytest.approx(100.0)
    assert result["mce"] == pytest.approx((14 * 100 + 50) / 15) and result["corruptions"] == 15
    # by severity: CE sums the five errors, so (10+20+30+40+50)/5 = 30% against AlexNet's 60.65% jpeg error
    errors = robustness.corruption_errors({f"jpeg_compression_{s}": 100 - 10 * s for s in range(1, 6)})
    assert errors == {"jpeg_compression": [10, 20, 30, 40, 50]}
    assert robustness.mean_corruption_error(errors)["mce"] == pytest.approx(100 * 0.30 / 0.606500)
    # a reference run (our AlexNet, say) instead of the published numbers
    assert robustness.mean_corruption_error(errors, {"jpeg_compression": 0.6})["mce"] == pytest.approx(50.0)


def test_console_line_of_a_row_without_corruptions_counts_only_its_own_left_out():
    """A val, R or -clean row with an undecodable image says so once; the extra corruptions' note is ImageNet-C's."""
    line = eval_suite.format_row({"name": "val (ImageNet-R's 200 classes)", "split": "validation", "image_size": 32,
                                  "top1": 66.67, "top5": 66.67, "n": 3, "left_out": 1})
    assert line == ("val (ImageNet-R's 200 classes) [validation] @32px: top-1 66.67%  top-5 66.67%  n=3  "
                    "(1 left out: they do not decode)")


def test_results_csv_diffs_as_timms_tables_and_rounds_the_parameters_once():
    """timm's tables diff ReaL, V2 and Sketch to ImageNet at the same size, R and A to ImageNet's val restricted to
    their 200 classes (-r-clean, -a-clean), of which this summary has no row: their diffs stay empty rather than
    taken against the 1000-class row. param_count is timm's round(n / 1e6, 2): regnetx_002's 2,684,792 is 2.68
    (rounded to 3 places first, 2.685, it would become 2.69)."""
    def row(kind, top1, size=224):
        return {"dataset": kind, "kind": kind, "top1": top1, "top5": top1 + 10, "image_size": size, "crop_pct": 0.875}

    rows = [row("imagenet", 70.0), row(eval_sets.V2, 58.5), row(eval_sets.R, 30.0), row(eval_sets.A, 5.0),
            row(eval_sets.SKETCH, 20.0, size=256)]
    summary = {"model": "/runs/r50/final", "results": rows, "params_m": round(2_684_792 / 1e6, 6),
               "interpolation": "bicubic"}
    table = {r["dataset"]: r for r in csv.DictReader(io.StringIO(eval_suite.results_csv(summary)))}
    assert (table[eval_sets.V2]["top1_diff"], table[eval_sets.V2]["top5_diff"]) == ("-11.500", "-11.500")
    assert (table[eval_sets.V2]["top1"], table["imagenet"]["top5_err"]) == ("58.500", "20.000")  # timm's 3 places
    rows.append({**row("imagenet-r-clean", 29.5), "dataset": "imagenet-r-clean"})
    diffs = {r["dataset"]: r["top1_diff"] for r in csv.DictReader(io.StringIO(eval_suite.results_csv(summary)))}
    assert diffs[eval_sets.R] == "+0.500"  # signed, as timm's tables write it
    rows.pop()
    for kind in (eval_sets.R, eval_sets.A, eval_sets.SKETCH, "imagenet"):  # Sketch: no ImageNet row at 256
        assert table[kind]["top1_diff"] == table[kind]["top5_diff"] == "", kind
    assert {r["param_count"] for r in table.values()} == {"2.68"}


def test_eval_sets_scores_like_the_papers(sets, in1k_model, tmp_path):
    out = tmp_path / "res" / "r.json"
    summary = evaluate(in1k_model, "", "--eval_sets", ",".join(str(sets[k]) for k in eval_sets.SETS), "--output",
                       out, "--image_sizes", "32,40")
    rows = {(r["kind"], r["image_size"]): r for r in summary["results"]}
    assert len(rows) == 10 and json.loads(out.read_text())["results"] == summary["results"]
    # R and A: top-1/top-5 over their 200 classes, as computed here from the model's own logits
    for kind in (eval_sets.R, eval_sets.A):
        split = datasets.load_from_disk(str(sets[kind]))["validation"]
        subset = eval_sets.subset_wnids(kind)
        masked = logits_of(in1k_model, split, 32)[:, [WNIDS.index(w) for w in subset]]
        target = torch.tensor([subset.index(WNIDS[label]) for label in split["label"]])
        assert rows[kind, 32]["top1"] == pytest.approx(100 * (masked.argmax(1) == target).double().mean().item())
        top5 = (masked.topk(5).indices == target[:, None]).any(1).double().mean().item()
        assert rows[kind, 32]["top5"] == pytest.approx(100 * top5) and rows[kind, 32]["n"] == 200
    # C: the error per corruption and severity, at crop_pct 1 (its images are crops already), and its mCE
    c = datasets.load_from_disk(str(sets[eval_sets.C]))
    hits = {s: (logits_of(in1k_model, c[s], 32, 1.0).argmax(1) == torch.tensor(c[s]["label"])).double().mean()
            for s in c}
    assert {s: h.item() for s, h in hits.items()} == {s: 0.5 for s in c}  # class 1 right, class 4 wrong
    assert rows[eval_sets.C, 32]["errors"] == {"gaussian_noise": [50.0] * 5, "fog": [50.0] * 5}
    alexnet = robustness.ALEXNET_ERRORS
    assert summary["imagenet_c"]["mce"] == pytest.approx((50 / alexnet["gaussian_noise"] + 50 / alexnet["fog"]) / 2)
    assert summary["imagenet_c"]["corruptions"] == 2 and rows[eval_sets.C, 32]["top1"] == 50.0
    assert rows[eval_sets.R, 32]["top1"] == pytest.approx(100 / 200)  # the one image of class 1 among 200
    assert rows[eval_sets.V2, 32]["top1"] == pytest.approx(25.0) and rows[eval_sets.V2, 32]["top5"] == 25.0
    # the sweep names the best size of the first set; results.csv has timm's columns, one row per set and size
    best = max((32, 40), key=lambda s: rows[eval_sets.V2, s]["top1"])
    assert summary["best_image_size"]["image_size"] == best
    with open(out.with_name("r_results.csv")) as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == list(robustness.RESULTS_COLUMNS) and len(table) == 10
    # scaled-down copies in folders named as the sets: their own names, never timm's (its tables are the whole sets')
    row = next(t for t in table if t["dataset"] == "imagenet-r (subset)" and t["img_size"] == "32")
    assert float(row["top1"]) + float(row["top1_err"]) == pytest.approx(100) and row["model"] == in1k_model.parent.name
    assert {t["crop_pct"] for t in table if t["dataset"] == "imagenet-c (subset)"} == {"1.0"}
    assert not {t["dataset"] for t in table} & eval_suite.TIMM_NAMES


def test_a_rerun_scores_only_the_splits_an_interrupted_run_did_not_finish(sets, in1k_model, preprocessed, tmp_path,
                                                                          monkeypatch):
    """A suite run ended after 3 splits (as a crash or a preemption would end it) keeps their scores, ReaL's
    counts with them; the same command again scores only the others and writes what an uninterrupted run writes.
    Other weights score all."""
    (tmp_path / "real.json").write_text(json.dumps([[i % 1000, (i * 7) % 1000] if i % 2 else [] for i in range(8)]))
    args = ["--eval_sets", ",".join(str(sets[k]) for k in eval_sets.SETS), "--image_sizes", "32,40",
            "--real_labels", tmp_path / "real.json"]
    val = imagenet_val(preprocessed, tmp_path / "in1k")
    scored, end_after, score_split = [], [None], eval_suite.score_split

    def counted(*a, **kw):
        if len(scored) == end_after[0]:
            raise KeyboardInterrupt  # the run ends here, its 3 finished splits kept
        scored.append(a[2])
        return score_split(*a, **kw)

    def suite(model, out, ends_after=None):
        scored.clear()
        end_after[0] = ends_after
        return evaluate(model, val, *args, "--output", out)

    monkeypatch.setattr(eval_suite, "score_split", counted)
    straight = suite(in1k_model, tmp_path / "straight.json")
    total, out = len(scored), tmp_path / "r.json"
    with pytest.raises(KeyboardInterrupt) as stopped:
        suite(in1k_model, out, ends_after=3)
    assert len(list(eval_suite.parts_folder(str(out)).glob("*.json"))) == 3 and not out.exists()
    assert str(stopped.value) == (f"interrupted (Ctrl-C): the scores of the 3 split(s) finished are kept in "
                                  f"{eval_suite.parts_folder(str(out))}: the same command scores only the others")
    resumed = suite(in1k_model, out)
    assert len(scored) == total - 3
    assert resumed["results"] == straight["results"] and resumed["imagenet_c"] == straight["imagenet_c"]
    assert [r["kind"] for r in resumed["results"][:2]] == ["imagenet", "imagenet-real"]
    assert out.with_name("r_results.csv").read_text() == (tmp_path / "straight_results.csv").read_text()
    assert not eval_suite.parts_folder(str(out)).exists()  # gone once the outputs are written
    # the parts of other weights are not taken, though the output, the sets and the flags are the same
    with pytest.raises(KeyboardInterrupt):
        suite(in1k_model, out, ends_after=3)
    other = tmp_path / "other" / "final"
    shutil.copytree(in1k_model, other)
    weights = load_file(other / "model.safetensors")
    save_file({k: v + 1 if v.is_floating_point() else v for k, v in weights.items()}, other / "model.safetensors")
    suite(other, out)
    assert len(scored) == total


def imagenet_val(preprocessed: Path, folder: Path) -> Path:
    """The fixture's validation images labelled in ImageNet-1k's 1000 classes (its 4 classes are the first 4)."""
    split = datasets.load_from_disk(str(preprocessed))["validation"]
    features = split.features.copy()
    features["label"] = datasets.ClassLabel(names=WNIDS)
    # in memory: a cast on disk would leave a cache file in the shared, read-only fixture
    split = split.cast(features, keep_in_memory=True)
    datasets.DatasetDict({"validation": split}).save_to_disk(str(folder))
    return folder


def test_real_labels_skip_empty_lists_and_accept_any_of_several(preprocessed, in1k_model, tmp_path):
    split = datasets.load_from_disk(str(imagenet_val(preprocessed, tmp_path / "in1k")))["validation"]
    top5 = logits_of(in1k_model, split, 32).topk(5).indices.tolist()
    real = [[] for _ in range(max(int(i.rsplit("_", 1)[1]) for i in split["image_id"]))]
    expected = []  # (top-1 right, top-5 right) of the images with labels
    for k, (image_id, top) in enumerate(zip(split["image_id"], top5)):
        if k % 4 == 0:
            continue  # an empty list: left out
        other = next(c for c in range(1000) if c not in top)
        # right among two labels; wrong at top-1 but right at top-5 (the 3rd guess); not in the top 5
        real[int(image_id.rsplit("_", 1)[1]) - 1] = {1: [other, top[0]], 2: [top[2]], 3: [other]}[k % 4]
        expected.append((k % 4 == 1, k % 4 != 3))
    (tmp_path / "real.json").write_text(json.dumps(real))
    summary = evaluate(in1k_model, tmp_path / "in1k", "--real_labels", tmp_path / "real.json", "--image_size", 32)
    plain, real_row = summary["results"]
    assert plain["kind"] == "imagenet" and plain["n"] == len(split)
    assert real_row["n"] == len(expected) < len(split)
    assert real_row["top1"] == pytest.approx(100 * sum(e[0] for e in expected) / len(expected))
    assert real_row["top5"] == pytest.approx(100 * sum(e[1] for e in expected) / len(expected))
    # timm's names only for the complete ILSVRC-2012 val, ReaL's row as the ImageNet row, the card's name otherwise
    assert (plain["dataset"], real_row["dataset"]) == (plain["name"], real_row["name"]) == ("in1k",
                                                                                         "in1k (ReaL labels)")
    (tmp_path / "in1k" / "source.json").write_text(json.dumps({"ilsvrc2012_full": True}))
    full = evaluate(in1k_model, tmp_path / "in1k", "--real_labels", tmp_path / "real.json", "--image_size", 32)
    assert [r["dataset"] for r in full["results"]] == ["imagenet", "imagenet-real"]
    # a subset kept in a folder named imagenet, as preprocess.py records it: never timm's names
    (tmp_path / "in1k" / "source.json").write_text(json.dumps({"name": "imagenet", "ilsvrc2012_full": False}))
    subset = evaluate(in1k_model, tmp_path / "in1k", "--real_labels", tmp_path / "real.json", "--image_size", 32)
    assert [r["dataset"] for r in subset["results"]] == [r["name"] for r in subset["results"]] == [
        "imagenet (subset)", "imagenet (subset) (ReaL labels)"]
    (tmp_path / "in1k" / "source.json").unlink()
    # without the suite's flags: the single-split summary, as before, with --crop_pct applied
    single = evaluate(in1k_model, tmp_path / "in1k", "--image_size", 32, "--crop_pct", 1.0)
    assert (single["crop_pct"], single["n"], single["top1"]) == (1.0, len(split), plain["top1"])
    (tmp_path / "bad.json").write_text(json.dumps({"not": "a list"}))
    with pytest.raises(SystemExit, match="expected ReaL's real.json"):
        evaluate(in1k_model, tmp_path / "in1k", "--real_labels", tmp_path / "bad.json")


def damaged_copy(folder: Path, out: Path, rows: set[int], prefix: str = "") -> Path:
    """``folder`` (a preprocess.py output) with the images of ``rows`` in every split (whose name starts with
    ``prefix``) replaced by bytes that do not decode, as a flipped block on a disk would leave them; its source.json
    kept."""
    ds = datasets.load_from_disk(str(folder))
    damaged = {}
    for name, split in ds.items():
        if not name.startswith(prefix):
            damaged[name] = split
            continue
        raw = split.cast_column("image", datasets.Image(decode=False))
        damaged[name] = raw.map(lambda ex, i: {"image": {"bytes": b"\xff\xd8 not a JPEG" if i in rows
                                                         else ex["image"]["bytes"], "path": ex["image"]["path"]}},
                                with_indices=True, keep_in_memory=True).cast_column("image", datasets.Image())
    datasets.DatasetDict(damaged).save_to_disk(str(out))
    if (folder / "source.json").is_file():
        shutil.copy(folder / "source.json", out / "source.json")
    return out


def test_undecodable_images_in_the_suite_are_left_out_named_and_limited(sets, in1k_model, preprocessed, tmp_path,
                                                                        capsys):
    """As validate.py's single split does: each left out of the scores (ImageNet-R's 200-class renumbering and
    ReaL's positional labels included), named, counted in the row, and past --max_bad_samples an error."""
    r = damaged_copy(sets[eval_sets.R], tmp_path / "r", {5, 11})  # 999 - 11 = 988 is one of R's 200 classes
    r_row = evaluate(in1k_model, "", "--eval_sets", r, "--image_size", 32)["results"][0]
    assert (r_row["n"], r_row["left_out"]) == (198, 2)
    said = capsys.readouterr().err
    assert all(f"{r_row['name']} validation row {k} " in said for k in (5, 11)), said
    split = datasets.load_from_disk(str(sets[eval_sets.R]))["validation"]
    kept = [label for k, label in enumerate(split["label"]) if k not in (5, 11)]
    assert r_row["top1"] == pytest.approx(100 * kept.count(1) / 198)  # the model answers class 1, always
    message = error_of(in1k_model, "", "--eval_sets", r, "--image_size", 32, "--max_bad_samples", 1)
    assert "2 images do not decode, more than --max_bad_samples 1" in message
    # ReaL: each image's labels by its position; the damaged one keeps its place and is left out
    val = damaged_copy(imagenet_val(preprocessed, tmp_path / "in1k"), tmp_path / "val", {0})
    ids = datasets.load_from_disk(str(val))["validation"]["image_id"]
    numbers = [int(i.rsplit("_", 1)[1]) for i in ids]
    real = [[] for _ in range(max(numbers))]
    for k, number in enumerate(numbers):
        real[number - 1] = [1] if k % 2 else [2]  # the model's top-1 is right on the odd rows only
    (tmp_path / "real.json").write_text(json.dumps(real))
    plain, real_row = evaluate(in1k_model, val, "--real_labels", tmp_path / "real.json", "--image_size", 32)["results"]
    assert plain["n"] == real_row["n"] == len(ids) - 1 and plain["left_out"] == 1
    assert real_row["top1"] == pytest.approx(100 * (len(ids) // 2) / (len(ids) - 1))


def test_imagenet_c_top1_and_completeness_count_the_15_benchmark_corruptions_only(in1k_model, tmp_path):
    """The authors hold the 4 extra corruptions out: they are in `errors`, not in the set's top-1 nor in whether a
    copy is the published ImageNet-C."""
    root = make_tree(tmp_path, eval_sets.C)
    for severity in "12345":  # the model answers class 1: right on every image of this extra corruption
        jpeg(root / "extra" / "speckle_noise" / severity / WNIDS[1] / "ILSVRC2012_val_00000001.JPEG", 1)
    row = evaluate(in1k_model, "", "--eval_sets", preprocessed_set(root), "--image_size", 32)["results"][0]
    assert row["errors"]["speckle_noise"] == [0.0] * 5 and row["corruptions"] == 2
    assert row["top1"] == 50.0 and row["n"] == 2 * 5 * 2  # gaussian_noise and fog, 2 images a split, half right
    counts = {f"{c}_{s}": 50_000 for c in (*eval_sets.C_CORRUPTIONS[:11], *eval_sets.C_EXTRA) for s in range(1, 6)}
    assert len(counts) == 75
    assert not eval_sets.source_fields(eval_sets.C, {}, counts, tmp_path)["complete"]
    counts = {f"{c}_{s}": 50_000 for c in eval_sets.C_CORRUPTIONS for s in range(1, 6)}
    assert eval_sets.source_fields(eval_sets.C, {}, counts, tmp_path)["complete"]


def test_imagenet_c_extra_corruptions_undecodable_images_are_counted_in_the_rows_counts(in1k_model, tmp_path, capsys):
    """5 images of extra/speckle_noise that do not decode: the row's n and left_out stay the 15 benchmark corruptions'
    (as its top-1), and `counts` gives every corruption's n and left_out per severity, the console line says them."""
    root = make_tree(tmp_path, eval_sets.C)
    for severity in "12345":
        for i in (1, 4):
            jpeg(root / "extra" / "speckle_noise" / severity / WNIDS[i] / f"ILSVRC2012_val_{i:08d}.JPEG", i)
    c = damaged_copy(preprocessed_set(root), tmp_path / "damaged", {0}, prefix="speckle_noise")
    capsys.readouterr()
    summary = evaluate(in1k_model, "", "--eval_sets", c, "--image_size", 32)
    (row,) = summary["results"]
    assert (row["n"], row["left_out"], row["top1"]) == (20, 0, 50.0)
    assert row["counts"] == {"gaussian_noise": {"n": [2] * 5, "left_out": [0] * 5},
                             "fog": {"n": [2] * 5, "left_out": [0] * 5},
                             "speckle_noise": {"n": [1] * 5, "left_out": [1] * 5}}
    assert summary["imagenet_c"]["counts"] == row["counts"] and len(row["errors"]["speckle_noise"]) == 5
    (line,) = [x for x in capsys.readouterr().out.splitlines() if " [all] @32px: " in x]
    assert line.endswith("(2 corruptions)  (5 left out of the extra corruptions' errors: they do not decode)"), line


def test_two_processes_give_the_same_numbers(sets, in1k_model, preprocessed, tmp_path):
    """R's 200 images, C's 2-image splits and ReaL's positions, in batches of 7: ranks get padded tails."""
    val = imagenet_val(preprocessed, tmp_path / "in1k")
    real = [[i % 1000, (i * 7) % 1000] if i % 2 else [] for i in range(8)]
    (tmp_path / "real.json").write_text(json.dumps(real))
    args = ["--model", str(in1k_model), "--dataset", str(val), "--real_labels", str(tmp_path / "real.json"),
            "--eval_sets", f"{sets[eval_sets.R]},{sets[eval_sets.C]}", "--image_size", "32", "--batch_size", "7",
            "--num_workers", "0"]
    one = evaluate(args[1], args[3], *args[4:-4], "--output", tmp_path / "one.json", batch_size=7)
    ok(run([ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", str(free_port()),
            str(ROOT / "validate.py"), *args, "--output", str(tmp_path / "two.json")]))
    two = json.loads((tmp_path / "two.json").read_text())
    assert (one["num_processes"], two["num_processes"]) == (1, 2)
    assert [r["kind"] for r in two["results"]] == ["imagenet", "imagenet-real", "imagenet-r-clean", eval_sets.R,
                                                   eval_sets.C]
    for a, b in zip(one["results"], two["results"]):
        assert {k: a[k] for k in ("top1", "top5", "n")} == {k: b[k] for k in ("top1", "top5", "n")}, a["kind"]
    assert two["imagenet_c"]["errors"] == one["imagenet_c"]["errors"]
    assert (tmp_path / "two_results.csv").read_text() == (tmp_path / "one_results.csv").read_text()


def clean_val(preprocessed: Path, folder: Path) -> tuple[Path, datasets.Dataset, int]:
    """The fixture's 7 validation images relabelled so that 2 are of ImageNet-R's classes only, 2 of both R's and A's,
    1 of A's only and 2 of neither, in a validation and a train split, one image of both not decoding; (the folder,
    the split as it decodes, the damaged row)."""
    split = datasets.load_from_disk(str(imagenet_val(preprocessed, folder.with_name(folder.name + "-1k"))))[
        "validation"]
    r, a = (set(WNIDS.index(w) for w in eval_sets.subset_wnids(kind)) for kind in (eval_sets.R, eval_sets.A))
    mapping = {0: 0, 1: min(r - a), 2: min(r & a), 3: min(a - r)}  # 0: in neither
    assert 0 not in r | a and sorted(split["label"]) == [0, 0, 1, 1, 2, 2, 3]
    labels = [mapping[label] for label in split["label"]]
    split = split.remove_columns("label").add_column("label", labels).cast_column(
        "label", datasets.ClassLabel(names=WNIDS)).flatten_indices(keep_in_memory=True)
    datasets.DatasetDict({"validation": split, "train": split}).save_to_disk(str(folder.with_name("whole")))
    damaged = labels.index(mapping[2])
    return damaged_copy(folder.with_name("whole"), folder, {damaged}), split, damaged


def clean_scores(model: Path, split: datasets.Dataset, kind: str, damaged: int) -> dict:
    """top1, top5, n, left_out of ``split``'s images of ``kind``'s 200 classes, their logits masked by hand."""
    subset = [WNIDS.index(w) for w in eval_sets.subset_wnids(kind)]
    rows = [k for k, label in enumerate(split["label"]) if label in subset and k != damaged]
    masked = logits_of(model, split, 32)[rows][:, subset]
    target = torch.tensor([subset.index(split[k]["label"]) for k in rows])
    top = masked.topk(5).indices == target[:, None]
    return {"top1": pytest.approx(100 * top[:, 0].double().mean().item()),
            "top5": pytest.approx(100 * top.any(1).double().mean().item()), "n": len(rows),
            "left_out": int(split[damaged]["label"] in subset)}


def test_clean_rows_score_the_val_images_of_r_and_a_classes_under_their_mask(sets, in1k_model, preprocessed, tmp_path,
                                                                              capsys):
    """ImageNet val beside R and A: one -clean row each (timm's imagenet-r-clean, imagenet-a-clean), equal to the
    model's logits masked by hand on the val images of the set's 200 classes; timm's names only for the complete
    ILSVRC-2012 validation split; R's and A's diffs in results.csv to them; none without R/A, or without val."""
    val, split, damaged = clean_val(preprocessed, tmp_path / "val")
    r, a, c = (str(sets[k]) for k in (eval_sets.R, eval_sets.A, eval_sets.C))
    card = Path(shutil.copytree(in1k_model, tmp_path / "final"))
    out = tmp_path / "r.json"
    summary = evaluate(card, val, "--eval_sets", f"{r},{a}", "--image_size", 32, "--output", out,
                       "--update_model_card", batch_size=3)
    printed = capsys.readouterr().out
    assert [row["kind"] for row in summary["results"]] == ["imagenet", "imagenet-r-clean", "imagenet-a-clean",
                                                           eval_sets.R, eval_sets.A]
    rows = {row["kind"]: row for row in summary["results"]}
    for kind in (eval_sets.R, eval_sets.A):
        clean = rows[f"{kind}-clean"]
        assert {k: clean[k] for k in ("top1", "top5", "n", "left_out")} == clean_scores(in1k_model, split, kind,
                                                                                          damaged), kind
        title = eval_sets.SETS[kind].title
        assert clean["name"] == clean["dataset"] == f"val ({title}'s 200 classes)" and clean["split"] == "validation"
        assert f"val ({title}'s 200 classes) [validation] @32px: top-1 {clean['top1']:.2f}%" in printed, printed
    assert (rows["imagenet-r-clean"]["n"], rows["imagenet-r-clean"]["left_out"]) == (3, 1)
    assert rows["imagenet-r-clean"]["top1"] == pytest.approx(200 / 3)  # class 1 first: the 2 of its images right
    with open(tmp_path / "r_results.csv") as f:
        table = {row["dataset"]: row for row in csv.DictReader(f)}
    for kind in (eval_sets.R, eval_sets.A):
        shifted, clean = rows[kind], rows[f"{kind}-clean"]
        assert float(table[shifted["dataset"]]["top1_diff"]) == round(shifted["top1"] - clean["top1"], 3)
        assert table[clean["dataset"]]["top1_diff"] == ""
    assert "| val (ImageNet-A's 200 classes) | validation |" in (card / "README.md").read_text()
    # the complete ILSVRC-2012 val: timm's names; another split of it is named by its split, never by timm's names
    (val / "source.json").write_text(json.dumps({"name": "ILSVRC-2012", "ilsvrc2012_full": True}))
    full = evaluate(in1k_model, val, "--eval_sets", f"{r},{a}", "--image_size", 32, batch_size=3)["results"]
    assert [row["dataset"] for row in full[:3]] == ["imagenet", "imagenet-r-clean", "imagenet-a-clean"]
    assert [row["top1"] for row in full[1:3]] == [rows["imagenet-r-clean"]["top1"], rows["imagenet-a-clean"]["top1"]]
    train = evaluate(in1k_model, val, "--split", "train", "--eval_sets", r, "--image_size", 32)["results"]
    assert (train[1]["dataset"], train[1]["name"], train[1]["split"]) == (
        ("ILSVRC-2012 train (ImageNet-R's 200 classes)",) * 2 + ("train",))
    assert (train[1]["n"], train[1]["left_out"]) == (3, 1)
    # no -clean row without R or A, without --dataset, or with an evaluation set as --dataset
    def kinds(*args) -> list[str]:
        return [row["kind"] for row in evaluate(in1k_model, *args, "--image_size", 32)["results"]]

    assert kinds(val, "--eval_sets", c) == ["imagenet", eval_sets.C]
    assert kinds("", "--eval_sets", f"{r},{a}") == [eval_sets.R, eval_sets.A]
    assert kinds(r, "--eval_sets", a) == [eval_sets.R, eval_sets.A]
    # a val without an image of A's classes: no row over n=0, a note
    in1k = imagenet_val(preprocessed, tmp_path / "in1k")
    capsys.readouterr()
    assert kinds(in1k, "--eval_sets", f"{r},{a}") == ["imagenet", "imagenet-r-clean", eval_sets.R, eval_sets.A]
    assert (f"note: no imagenet-a-clean row at 32 px: no image of --dataset {in1k} validation is of ImageNet-A's 200 "
            "classes") in capsys.readouterr().out


def test_clean_rows_are_the_same_on_two_processes_and_after_a_resume(sets, in1k_model, preprocessed, tmp_path,
                                                                     monkeypatch):
    """Batches of 3 of 7 images on 2 processes (a padded tail); a run ended after the val split keeps its -clean
    scores with it, and a kept val split without them (a run without R and A) is scored again."""
    val, _, _ = clean_val(preprocessed, tmp_path / "val")
    sets_arg = f"{sets[eval_sets.R]},{sets[eval_sets.A]}"
    args = ["--model", str(in1k_model), "--dataset", str(val), "--eval_sets", sets_arg, "--image_size", "32",
            "--batch_size", "3", "--num_workers", "0"]
    one = evaluate(in1k_model, val, *args[4:-4], "--output", tmp_path / "one.json", batch_size=3)["results"]
    ok(run([ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", str(free_port()),
            str(ROOT / "validate.py"), *args, "--output", str(tmp_path / "two.json")]))
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["num_processes"] == 2 and [r["kind"] for r in two["results"]] == [r["kind"] for r in one]
    for a, b in zip(one, two["results"]):
        assert {k: a[k] for k in ("top1", "top5", "n", "left_out")} == {k: b[k] for k in ("top1", "top5", "n",
                                                                                       "left_out")}, a["kind"]
    assert (tmp_path / "two_results.csv").read_text() == (tmp_path / "one_results.csv").read_text()

    scored, end_after, score_split = [], [None], eval_suite.score_split

    def counted(*a, **kw):
        if len(scored) == end_after[0]:
            raise KeyboardInterrupt
        scored.append(a[2])
        return score_split(*a, **kw)

    def suite(eval_sets_arg, ends_after=None):
        scored.clear()
        end_after[0] = ends_after
        return evaluate(in1k_model, val, "--eval_sets", eval_sets_arg, "--image_size", 32, "--output",
                        tmp_path / "r.json", batch_size=3)

    monkeypatch.setattr(eval_suite, "score_split", counted)
    with pytest.raises(KeyboardInterrupt):
        suite(sets_arg, ends_after=1)  # the val split kept, with its -clean scores
    assert suite(sets_arg)["results"] == one and len(scored) == 2  # R and A only
    with pytest.raises(KeyboardInterrupt):
        suite(str(sets[eval_sets.C]), ends_after=1)  # the val split kept without them
    assert suite(sets_arg)["results"] == one and len(scored) == 3


def test_card_metadata_round_trip_merges_and_keeps_earlier_entries(sets, in1k_model, tmp_path):
    folder = Path(shutil.copytree(in1k_model, tmp_path / "final"))
    modeling.update_model_card_results(folder, {"top1": 70.0, "top5": 90.0, "dataset": "ILSVRC-2012",
                                                "dataset_id": "ILSVRC/imagenet-1k"})
    update_card_sets(folder, [
        {"name": "ImageNet-R", "dataset_id": None, "split": "validation", "top1": 30.0, "top5": 50.0,
         "image_size": 224},
        {"name": "ImageNet-Sketch", "dataset_id": "songweig/imagenet_sketch", "split": "validation", "top1": 20.0,
         "top5": 40.0, "image_size": 224},
        {"name": "ImageNet-C", "dataset_id": None, "split": "all", "top1": 40.0, "top5": 60.0, "mce": 77.7}])
    update_card_sets(folder, [{"name": "ImageNet-R", "split": "validation", "top1": 31.0, "top5": 51.0}])
    card = huggingface_hub.ModelCard.load(folder / "README.md")
    found = {(r.dataset_type, r.dataset_name, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert found == {
        ("ILSVRC/imagenet-1k", "ILSVRC-2012", "top-1 accuracy (%)"): 70.0,
        ("ILSVRC/imagenet-1k", "ILSVRC-2012", "top-5 accuracy (%)"): 90.0,
        ("ImageNet-R", "ImageNet-R", "top-1 accuracy (%)"): 31.0,
        ("ImageNet-R", "ImageNet-R", "top-5 accuracy (%)"): 51.0,
        ("songweig/imagenet_sketch", "ImageNet-Sketch", "top-1 accuracy (%)"): 20.0,
        ("songweig/imagenet_sketch", "ImageNet-Sketch", "top-5 accuracy (%)"): 40.0,
        ("ImageNet-C", "ImageNet-C", "top-1 accuracy (%)"): 40.0,
        ("ImageNet-C", "ImageNet-C", "top-5 accuracy (%)"): 60.0,
        ("ImageNet-C", "ImageNet-C", "mCE (%)"): 77.7}
    assert card.data.datasets == ["ILSVRC/imagenet-1k", "songweig/imagenet_sketch"]
    listed = yaml.safe_load((folder / ".eval_results" / "imagenet_sketch.yaml").read_text())
    assert [(e.dataset_id, e.value) for e in huggingface_hub.parse_eval_result_entries(listed)] == [
        ("songweig/imagenet_sketch", 20.0), ("songweig/imagenet_sketch", 40.0)]
    for line in ("| ILSVRC-2012 | validation | 70.00 | 90.00 | - |", "| ImageNet-R | validation | 31.00 | 51.00 | - |",
                 "| ImageNet-C | all | 40.00 | 60.00 | 77.70 |"):
        assert line in card.text
    # the single-set update (validate.py without --eval_sets) replaces its own entries and keeps the others
    modeling.update_model_card_results(folder, {"top1": 71.0, "top5": 91.0, "dataset": "ILSVRC-2012",
                                                "dataset_id": "ILSVRC/imagenet-1k"})
    card = huggingface_hub.ModelCard.load(folder / "README.md")
    assert len(card.data.eval_results) == len(found) and card.text.count("## Results by dataset") == 1
    assert "| ILSVRC-2012 | validation | 71.00 | 91.00 | - |" in card.text  # the table follows the model-index
    assert "| ImageNet-R | validation | 31.00 | 51.00 | - |" in card.text and "70.00" not in card.text
    # validate.py --eval_sets --update_model_card: ImageNet-R's row replaced by the measured one, the rest kept
    result = evaluate(folder, "", "--eval_sets", sets[eval_sets.R], "--update_model_card", "--image_size", 32)
    card = huggingface_hub.ModelCard.load(folder / "README.md")
    name = result["results"][0]["name"]
    assert {(r.dataset_name, r.metric_name): r.metric_value for r in card.data.eval_results}[
        (name, "top-1 accuracy (%)")] == round(result["results"][0]["top1"], 2)
    assert len(card.data.eval_results) == len(found) + 2


def test_reference_run_sweep_throughput_and_bad_flags(sets, in1k_model, preprocessed, tmp_path):
    """mCE relative to a reference run with the same errors is 100; --dataset of an evaluation set is scored the
    way its paper does; params and GMACs are the card's own count; bad flags are one-line errors."""
    c = str(sets[eval_sets.C])
    evaluate(in1k_model, "", "--eval_sets", c, "--image_size", 32, "--output", tmp_path / "ref.json")
    again = evaluate(in1k_model, "", "--eval_sets", c, "--image_size", 32, "--mce_reference", tmp_path / "ref.json")
    assert again["imagenet_c"]["relative_to_reference"]["mce"] == pytest.approx(100.0)
    masked = evaluate(in1k_model, sets[eval_sets.R], "--image_sizes", "32,48", "--crop_pct", 1.0,
                      "--benchmark_batch_sizes", "1,2", "--benchmark_steps", 2, "--benchmark_train")
    assert [(r["kind"], r["image_size"], r["crop_pct"]) for r in masked["results"]] == [
        (eval_sets.R, 32, 1.0), (eval_sets.R, 48, 1.0)]
    assert masked["results"][0]["top1"] == pytest.approx(0.5)  # over the 200 classes
    model = modeling.load_model(str(in1k_model))
    stats = modeling.card.model_stats(model, {"pretrained_cfg": {"input_size": (3, 32, 32)}})
    assert masked["params_m"] == pytest.approx(stats["params"], rel=1e-3)
    assert masked["params_m"] == round(sum(p.numel() for p in model.parameters()) / 1e6, 6)  # unrounded: results.csv
    # rounds it once, as timm does
    assert masked["gmacs"] == pytest.approx(stats["gmacs"], rel=0.05)
    assert [r["batch_size"] for r in masked["throughput"]] == [1, 2]
    assert all(r["infer_samples_per_sec"] > 0 and r["img_size"] == 32 for r in masked["throughput"])
    assert [r["train_samples_per_sec"] is None for r in masked["throughput"]] == [True, False]  # BatchNorm: 2+
    assert masked["throughput"][1]["train_samples_per_sec"] > 0

    def error(*args):
        with pytest.raises(SystemExit) as e:
            evaluate(in1k_model, *args)
        assert str(e.value.code).startswith("error: ") and "\n" not in str(e.value.code)
        return str(e.value.code)
    assert "--image_sizes takes whole numbers" in error("", "--eval_sets", c, "--image_sizes", "224px")
    assert "--dataset is required (or --eval_sets)" in error("")
    assert "not an evaluation set made by preprocess.py" in error("", "--eval_sets", preprocessed)
    assert "--real_labels scores --dataset's" in error("", "--eval_sets", c, "--real_labels", tmp_path / "r.json")
    assert "--mce_reference" in error("", "--eval_sets", c, "--mce_reference", sets[eval_sets.R] / "source.json")
    assert error("", "--eval_sets", sets[eval_sets.R], "--mce_reference", tmp_path / "ref.json") == (
        f"error: --mce_reference {tmp_path / 'ref.json'}: no ImageNet-C among --dataset and --eval_sets to compare it "
        "with; add the ImageNet-C output, or drop --mce_reference")


def test_real_labels_with_an_evaluation_set_as_dataset_says_give_ilsvrc_2012_val_as_dataset(sets, in1k_model, tmp_path):
    """--dataset was given: the line says what it is (not that it is missing) and which data ReaL relabels."""
    (tmp_path / "real.json").write_text(json.dumps([[1]]))
    for kind, title in ((eval_sets.R, "ImageNet-R"), (eval_sets.V2, "ImageNet-V2 matched-frequency")):
        assert error_of(in1k_model, sets[kind], "--real_labels", tmp_path / "real.json") == (
            f"error: --real_labels: --dataset {sets[kind]} is {title}; ReaL relabels ILSVRC-2012's validation split: "
            "give that as --dataset")


@pytest.mark.parametrize("kind, args, message", [
    (eval_sets.C, ("--split", "gaussian_noise_3", "--image_size", 32),
     "--split gaussian_noise_3 picks a split of --dataset, and there is no --dataset: --eval_sets scores every split "
     "of its sets (ImageNet-C: all); drop --split, or give the set as --dataset to score that split alone"),
    (eval_sets.R, ("--image_size", 48, "--image_sizes", 32),
     "--image_size 48 and --image_sizes 32 both set the eval size; give one of them (--image_sizes 32,48 scores every "
     "size)"),
])
def test_split_without_dataset_and_image_size_with_image_sizes_are_refused_naming_both_flags(sets, in1k_model, kind,
                                                                                            args, message):
    """Each was ignored silently (every split of ImageNet-C scored; --image_sizes' sizes alone): now one line each."""
    assert error_of(in1k_model, "", "--eval_sets", sets[kind], *args) == f"error: {message}"


def test_an_unpacked_set_given_to_eval_sets_or_dataset_says_run_preprocess_py_on_it_first(in1k_model, tmp_path):
    """A folder of JPEGs (ImageNet-R, ImageNet-C as unpacked) where preprocess.py's output goes: one line that says so,
    not 'not an evaluation set' (R) nor a missing label column (C)."""
    r, c = make_tree(tmp_path, eval_sets.R), make_tree(tmp_path, eval_sets.C)
    for flag, raw, args in (("--eval_sets", r, ("", "--eval_sets", r)), ("--eval_sets", c, ("", "--eval_sets", c)),
                            ("--dataset", c, (c,))):
        assert error_of(in1k_model, *args) == (
            f"error: {flag} {raw}: no preprocess.py output there (no dataset_dict.json): run preprocess.py --data_dir "
            f"{raw} --output_dir OUT on it first (--eval_set NAME for a renamed set), then give OUT as {flag}")


def test_an_unpacked_set_as_dataset_says_run_preprocess_py_on_it_first_not_that_it_has_a_train_split(in1k_model,
                                                                                                       tmp_path):
    """ImageNet-R, -A, -Sketch and -V2 unpacked are plain <class>/<image> trees, which datasets' imagefolder reads as
    one train split: --dataset on one said 'the dataset has train' (a class count with --split train), in the
    single-split run and the suite alike. A user's own class tree still loads as before."""
    line = ("error: --dataset {given}: no preprocess.py output there (no dataset_dict.json): run preprocess.py "
            "--data_dir {data_dir} --output_dir OUT on it first (--eval_set NAME for a renamed set), then give OUT as "
            "--dataset")
    for kind in (eval_sets.R, eval_sets.A, eval_sets.SKETCH, eval_sets.V2):
        raw = make_tree(tmp_path / kind, kind)
        for given, args in ((raw, ()), (f"{raw}/", ()), (raw, ("--split", "train")), (raw, ("--image_sizes", 32))):
            assert error_of(in1k_model, given, *args) == line.format(given=given, data_dir=given), (kind, args)
    downloads = tmp_path / "downloads"
    make_tree(downloads, eval_sets.R)
    assert error_of(in1k_model, downloads) == line.format(given=downloads, data_dir=downloads / eval_sets.R)
    make_tree(downloads, eval_sets.A)
    assert error_of(in1k_model, downloads) == (
        f"error: --dataset {downloads}: no preprocess.py output there (no dataset_dict.json): it holds 2 evaluation "
        f"sets, imagenet-a, imagenet-r: run preprocess.py --data_dir {downloads / 'imagenet-a'} --output_dir OUT on "
        "each first (--eval_set NAME for a renamed set), then give OUT as --dataset")
    for mine, train in ((tmp_path / "sketch", "train/"), (tmp_path / "photos", "")):  # a training tree; a class tree
        for split in ((train, "val/") if train else ("",)):
            for name in ("cat", "dog"):
                jpeg(mine / split / name / f"{name}.jpg", len(name))
        assert eval_suite.unpacked_set_line(str(mine), "--dataset") is None
        cfg = validate.ValidateConfig(model=str(in1k_model), dataset=str(mine), split="train")
        ds, split, names = validate.load_split(cfg, "--split")
        assert (sorted(ds), names, len(split)) == (["train", "validation"] if train else ["train"], ["cat", "dog"], 2)


def test_effective_robustness_notebook(sets, preprocessed, tmp_path, monkeypatch, jupyter_home):
    """Three models (each answering one of R's classes first: one with validation images, two without) scored on
    ImageNet's val and ImageNet-R by validate.py; the notebook plots R against its -clean row (ImageNet's images of
    R's 200 classes, as Taori et al. place R) in logit space and prints each model's distance above the line fitted
    to them; files without -clean rows fall back to the 1000-class top-1, and the notebook says so."""
    val = imagenet_val(preprocessed, tmp_path / "in1k")
    counts = np.bincount(datasets.load_from_disk(str(val))["validation"]["label"], minlength=1000)
    # three of R's 200 classes, one with val images (the val holds 2 or none of each): two -clean accuracies
    subset = json.loads((Path(sets[eval_sets.R]) / "source.json").read_text())["class_subset"]
    in_r = np.zeros(1000, dtype=bool)
    in_r[subset] = True
    with_images, without = np.flatnonzero((counts > 0) & in_r), np.flatnonzero((counts == 0) & in_r)
    classes = (int(with_images[0]), int(without[0]), int(without[1]))
    results = tmp_path / "results"
    for k in classes:
        torch.manual_seed(k)
        model = modeling.create_model(TINY, num_classes=1000)
        with torch.no_grad():
            model.get_classifier().bias[k] += 100.0
        modeling.save_pretrained(model, tmp_path / f"m{k}", label_names=WNIDS)
        evaluate(tmp_path / f"m{k}", val, "--eval_sets", sets[eval_sets.R], "--image_size", 32, "--output",
                 results / f"model{k}.json")
    assert len(set(counts[list(classes)])) == 2  # two ImageNet (and -clean) accuracies: a line to fit
    nb = execute("06_effective_robustness", monkeypatch, jupyter_home, IMAGENET_RESULTS=results)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "3 models in" in stdout(code[0]) and pngs(code[1]) == 1
    scored = {f"model{k}": {r["kind"]: r for r in json.loads((results / f"model{k}.json").read_text())["results"]}
              for k in classes}
    # R is placed against its -clean row (ImageNet's images of R's 200 classes), as Taori et al. place it
    clean = [s["imagenet-r-clean"] for s in scored.values()]
    logit = lambda v: np.log(np.clip(v / 100, 0.005, 0.995) / (1 - np.clip(v / 100, 0.005, 0.995)))  # noqa: E731
    x = np.array([logit(c["top1"]) for c in clean])
    y = np.array([logit(s[eval_sets.R]["top1"]) for s in scored.values()])
    slope, intercept = np.polyfit(x, y, 1)
    for (m, s), c, xi in zip(scored.items(), clean, x):
        top1 = s[eval_sets.R]["top1"]
        above = top1 - 100 / (1 + np.exp(-(slope * xi + intercept)))
        assert f"imagenet-r (subset): {m}: top-1 {top1:.2f}% at {c['dataset']} {c['top1']:.2f}%, effective " \
               f"robustness {above:+.2f} points" in stdout(code[1])
    assert clean[0]["top1"] > scored[f"model{classes[0]}"]["imagenet"]["top1"] > 0  # not the 1000-class top-1
    assert "200 classes):" not in stdout(code[1])  # the -clean rows are ImageNet's images: no panel of their own
    assert "placed against the 1000-class" not in stdout(code[0])
    for path in results.glob("*.json"):  # files scored before validate.py made -clean rows: the 1000-class top-1
        summary = json.loads(path.read_text())
        summary["results"] = [r for r in summary["results"] if not r["kind"].endswith("-clean")]
        path.write_text(json.dumps(summary))
    nb = execute("06_effective_robustness", monkeypatch, jupyter_home, IMAGENET_RESULTS=results)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "imagenet-r (subset) placed against the 1000-class ImageNet top-1" in stdout(code[0])
    assert pngs(code[1]) == 1 and f"at {scored[f'model{classes[0]}']['imagenet']['dataset']} " in stdout(code[1])
    stored = nbformat.read(ROOT / "notebooks" / "06_effective_robustness.ipynb", as_version=4)
    assert all(c.outputs == [] and c.execution_count is None for c in stored.cells if c.cell_type == "code")
    assert 'os.environ.get("IMAGENET_RESULTS"' in [c for c in stored.cells if c.cell_type == "code"][0].source


def test_training_trees_named_like_a_set_are_read_as_before(tmp_path):
    """A class-folder tree with train/ and val/ in a folder called sketch is a user's dataset, not ImageNet-Sketch."""
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            jpeg(tmp_path / "sketch" / split / c / f"{c}.jpg", len(c))
    preprocess.main(["--data_dir", str(tmp_path / "sketch"), "--output_dir", str(tmp_path / "out"), "--num_proc", "1"])
    source = json.loads((tmp_path / "out" / "source.json").read_text())
    assert source["layout"] == "class-folders" and "eval_set" not in source
    assert datasets.load_from_disk(str(tmp_path / "out"))["train"].features["label"].names == ["cat", "dog"]


def test_an_empty_set_a_damaged_kept_split_and_a_full_disk_for_the_kept_ones(sets, in1k_model, tmp_path, monkeypatch,
                                                                             capsys):
    """A set preprocess.py wrote with no image (every file skipped) is refused in one line, not scored 0% over n=0; a
    file in <stem>_parts/ that is no kept split (cut short, or another's) is scored anew, not a traceback; a disk that
    refuses the kept splits costs a warning, once, not the run."""
    sketch = make_tree(tmp_path / "junk", eval_sets.SKETCH)
    for image in sketch.rglob("*.JPEG"):
        image.write_bytes(b"<html>a download's error page</html>")
    empty = preprocessed_set(sketch)
    assert error_of(in1k_model, "", "--eval_sets", f"{sets[eval_sets.R]},{empty}") == (
        f"error: --eval_sets {empty}: split 'validation' has no images; its preprocess_report.json says which files "
        "were skipped and why")

    out = tmp_path / "r.json"
    args = ["--eval_sets", f"{sets[eval_sets.R]},{sets[eval_sets.C]}", "--image_size", 32, "--output", out]
    straight = evaluate(in1k_model, "", *args)
    parts = eval_suite.parts_folder(str(out))
    parts.mkdir()
    for name, text in (("cut", '{"scores": {"top1": 1'), ("list", "[]"), ("other", '{"scores": {}, "real": null}')):
        (parts / f"{name}.json").write_text(text)
    capsys.readouterr()
    assert evaluate(in1k_model, "", *args)["results"] == straight["results"]
    assert "not scored again" not in capsys.readouterr().out and not parts.exists()

    def full_disk(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(eval_suite, "atomic_write_text", full_disk)
    assert evaluate(in1k_model, "", *args)["results"] == straight["results"]  # the outputs: validate.py's writes
    said = capsys.readouterr().err
    assert said.count(f"warning: {parts}: cannot keep the splits' scores there (No space left on device); the run "
                      "goes on, but a rerun after an early end scores them again") == 1, said
    assert json.loads(out.read_text())["results"] == straight["results"]


def jpeg_bytes(height: int, width: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=85)
    return out.getvalue()


SHAPES = [(20, 26), (26, 20), (17, 33), (40, 40), (30, 18), (18, 30), (24, 37), (37, 24)]  # small: no DCT reduction


def test_evalset_crop_modes_are_timms_eval_transforms():
    """center, squash and border against timm's transforms_imagenet_eval (uint8, before normalising): the same crop
    geometry and padding (the mean colour), within the resize kernels' rounding (a crop one pixel off differs by tens
    of grey levels on these noise images)."""
    images = [jpeg_bytes(h, w, k) for k, (h, w) in enumerate(SHAPES)]
    split = datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in images], "label": [0] * len(images)},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a"])}))
    mean = (0.5, 0.3, 0.1)  # border mode pads with round(255 * mean)
    for mode in ("center", "squash", "border"):
        for size, crop_pct in ((32, 0.9), (30, 1.0)):
            ours = EvalSet(split, size, crop_pct, "bilinear", crop_mode=mode, mean=mean)
            timms = transforms_imagenet_eval(size, crop_pct, mode, interpolation="bilinear", mean=mean,
                                             normalize=False)
            for k, image in enumerate(images):
                reference = timms(Image.open(io.BytesIO(image)).convert("RGB"))
                assert ours[k][0].shape == reference.shape == (3, size, size)
                assert (ours[k][0].float() - reference.float()).abs().mean() < 0.5, (mode, size, SHAPES[k])
    with pytest.raises(ValueError, match="crop_mode='crop'"):
        EvalSet(split, 32, crop_mode="crop")


@pytest.fixture(scope="module")
def squash_model(tmp_path_factory) -> tuple[Path, Path]:
    """An export whose pretrained_cfg says crop_mode squash (as timm's tf_efficientnetv2_* do), and a set of noise
    images of several aspect ratios, each labelled with the class the model gives it through timm's own
    create_transform: timm's pipeline scores 100% top-1 on it."""
    base = tmp_path_factory.mktemp("squash")
    torch.manual_seed(0)
    model = modeling.create_model(TINY, num_classes=1000)
    with torch.no_grad():
        model.get_classifier().weight.mul_(50.0)  # logits far apart: a crop of other pixels changes the answer
    folder = modeling.save_pretrained(model, base / "final", label_names=WNIDS,
                                      pretrained_cfg={"crop_mode": "squash", "crop_pct": 0.9})
    model = modeling.load_model(str(folder)).eval()
    images = [jpeg_bytes(h, w, 10 + k) for k, (h, w) in enumerate(SHAPES)]
    labels = [int(timm_logits(model, image, "squash").argmax()) for image in images]
    split = datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in images], "label": labels},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=WNIDS)}))
    datasets.DatasetDict({"validation": split}).save_to_disk(str(base / "val"))
    return folder, base / "val"


def timm_logits(model, image: bytes, crop_mode: str) -> torch.Tensor:
    config = {**resolve_data_config(model=model), "crop_mode": crop_mode}
    with torch.no_grad():
        return model(create_transform(**config)(Image.open(io.BytesIO(image)).convert("RGB"))[None])[0]


def test_a_squash_export_scores_what_timms_create_transform_gives(squash_model, tmp_path):
    """Single split and suite alike: top-1 100% on labels timm's own transform gives (a center crop, the classic
    one, gets some wrong), the crop mode in the summary, and in the card's Preprocessing and Evaluated-at lines."""
    folder, val = squash_model
    split = datasets.load_from_disk(str(val))["validation"]
    model = modeling.load_model(str(folder)).eval()
    raw = split.cast_column("image", datasets.Image(decode=False))
    center = [int(timm_logits(model, r["image"]["bytes"], "center").argmax()) for r in raw]
    assert center != split["label"]  # the crop mode decides answers here
    card = Path(shutil.copytree(folder, tmp_path / "final"))
    single = evaluate(card, val, "--update_model_card", "--output", tmp_path / "one.json")
    assert (single["top1"], single["crop_mode"], single["meta"]["crop_mode"]) == (100.0, "squash", "squash")
    suite = evaluate(card, val, "--image_sizes", 64, "--output", tmp_path / "suite.json")
    assert (suite["results"][0]["top1"], suite["crop_mode"]) == (100.0, "squash")
    text = (card / "README.md").read_text()
    assert ("- Evaluation: resize both sides to 71 px, the aspect ratio not kept (bilinear), center-crop 64x64 "
            "(crop_pct 0.9, crop_mode squash)") in text
    assert "Evaluated at 64x64 px center crop (crop_pct 0.9, crop_mode squash, bilinear)." in text


def test_the_cards_preprocessing_line_is_the_test_size_validate_py_scores_at(tmp_path):
    """An export whose pretrained_cfg has a test_input_size and test_crop_pct (a model trained small, scored larger:
    FixRes) is scored at them, and its card's Preprocessing line says so rather than the training size."""
    torch.manual_seed(0)
    model = modeling.create_model(TINY, num_classes=1000)
    folder = modeling.save_pretrained(model, tmp_path / "final", label_names=WNIDS, pretrained_cfg={
        "input_size": (3, 48, 48), "crop_pct": 0.875, "test_input_size": (3, 64, 64), "test_crop_pct": 1.0})
    images = [jpeg_bytes(h, w, k) for k, (h, w) in enumerate(SHAPES)]
    split = datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in images], "label": [0] * len(images)},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=WNIDS)}))
    datasets.DatasetDict({"validation": split}).save_to_disk(str(tmp_path / "val"))
    summary = evaluate(folder, tmp_path / "val", "--update_model_card", "--output", tmp_path / "one.json")
    assert (summary["image_size"], summary["crop_pct"]) == (64, 1.0)
    text = (folder / "README.md").read_text()
    assert "- Evaluation: resize the shorter side to 64 px (bilinear), center-crop 64x64 (crop_pct 1.0)" in text
    assert "config = timm.data.resolve_data_config({}, model=model, use_test_size=True)" in text
    assert resolve_data_config({}, model=modeling.load_model(str(folder)), use_test_size=True)["input_size"][-1] == 64


# the card's transformers block (its last python block) run as printed, on the saved folder and a photo
TRANSFORMERS_BLOCK = r"""
import contextlib, io, json, re, sys, timm, torch
from PIL import Image
folder, photo = sys.argv[1:]
card = open(f"{folder}/README.md").read().replace('"OWNER/NAME"', repr(folder)).replace('"photo.jpg"', repr(photo))
namespace = {"__name__": "__main__"}
with contextlib.redirect_stdout(io.StringIO()):
    exec(re.findall(r"```python\n(.*?)```", card, flags=re.S)[-1], namespace)
pixels = namespace["processor"](Image.open(photo), return_tensors="pt")["pixel_values"]
model = timm.create_model(f"local-dir:{folder}", pretrained=True)
timm_test = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model, use_test_size=True))
print("RESULT " + json.dumps({"shape": list(pixels.shape),
                              "as_timm": bool(torch.equal(pixels[0], timm_test(Image.open(photo).convert("RGB")))),
                              "top": len(namespace["classifier"](photo, top_k=5))}))
"""


def test_the_cards_transformers_block_preprocesses_at_the_test_size(tmp_path):
    """transformers' TimmWrapperImageProcessor reads input_size and crop_pct only: for an export with a
    test_input_size, the card's transformers block gives its processor timm's use_test_size preprocessing, so the
    pipeline sees what validate.py scored (64 px, crop_pct 1.0), not the training size (48 px)."""
    torch.manual_seed(0)
    folder = modeling.save_pretrained(modeling.create_model(TINY, num_classes=1000), tmp_path / "final",
                                      label_names=WNIDS, pretrained_cfg={"input_size": (3, 48, 48), "crop_pct": 0.875,
                                                                         "test_input_size": (3, 64, 64),
                                                                         "test_crop_pct": 1.0})
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(photo)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    proc = subprocess.run([sys.executable, "-c", TRANSFORMERS_BLOCK, str(folder), str(photo)], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result == {"shape": [1, 3, 64, 64], "as_timm": True, "top": 5}


def test_a_sweep_records_the_models_own_size_and_the_reference_is_taken_at_each_size(sets, in1k_model, preprocessed,
                                                                                    tmp_path):
    """A sweep around the model's own eval size (64 px, listed second): the card's entries, its Evaluated-at line and
    the JSON's imagenet_c block are at 64 px and say so. --mce_reference takes the reference's errors at each size
    scored; a size it lacks, or a 0% error in it, is one line."""
    card = Path(shutil.copytree(in1k_model, tmp_path / "final"))
    val = imagenet_val(preprocessed, tmp_path / "in1k")
    out = tmp_path / "r.json"
    summary = evaluate(card, val, "--eval_sets", sets[eval_sets.C], "--image_sizes", "32,64", "--update_model_card",
                       "--output", out)
    c64 = next(r for r in summary["results"] if r["kind"] == eval_sets.C and r["image_size"] == 64)
    assert summary["image_size"] == 64 and summary["imagenet_c"]["image_size"] == 64
    assert summary["imagenet_c"]["errors"] == c64["errors"]
    loaded = huggingface_hub.ModelCard.load(card / "README.md")
    assert {(e.dataset_name, e.metric_config) for e in loaded.data.eval_results} == {("in1k", "64px"),
                                                                                     (c64["name"], "64px")}
    assert "Evaluated at 64x64 px center crop" in loaded.text
    # a reference with other errors at each size: each size's relative CE is against that size's errors
    reference = json.loads(out.read_text())
    for row in reference["results"]:
        if row["kind"] == eval_sets.C:
            row["errors"] = {c: [e / (2 if row["image_size"] == 32 else 4) for e in errs]
                             for c, errs in row["errors"].items()}
    (tmp_path / "ref.json").write_text(json.dumps(reference))
    again = evaluate(card, "", "--eval_sets", sets[eval_sets.C], "--image_sizes", "32,64", "--mce_reference",
                     tmp_path / "ref.json")
    relative = {r["image_size"]: r["relative_to_reference"]["mce"] for r in again["results"]}
    assert relative == {32: pytest.approx(200.0), 64: pytest.approx(400.0)}
    assert error_of(card, "", "--eval_sets", sets[eval_sets.C], "--image_size", 40, "--mce_reference",
                    tmp_path / "ref.json") == (
        f"error: --mce_reference {tmp_path / 'ref.json'}: it scored ImageNet-C at 32, 64 px, not at 40 px as this run "
        "does; give a reference scored at the same size (its --image_sizes)")
    reference["results"][-1]["errors"]["fog"] = [0.0] * 5  # ImageNet-C at 64 px
    (tmp_path / "ref.json").write_text(json.dumps(reference))
    assert error_of(card, "", "--eval_sets", sets[eval_sets.C], "--image_size", 64, "--mce_reference",
                    tmp_path / "ref.json") == (
        f"error: --mce_reference {tmp_path / 'ref.json'}: its error on fog at 64 px is 0%, so an error relative to "
        "it is undefined (a division by zero); give a reference run that errs on every corruption")


def v2_variant(folder: Path, out: Path, variant: str) -> Path:
    """``folder`` (a preprocess.py output of ImageNet-V2) under ``variant``'s name, its source.json as preprocess.py
    writes it for a complete copy (eval_sets.source_fields with 10,000 images)."""
    shutil.copytree(folder, out)
    source = json.loads((out / "source.json").read_text())
    record = {k: source[k] for k in ("eval_set", "class_subset")} | {"variant": variant}
    fields = eval_sets.source_fields(eval_sets.V2, record, {"validation": 10_000}, out)
    (out / "source.json").write_text(json.dumps({**source, **fields}))
    sealed = json.loads((out / manifest.MANIFEST).read_text())  # listed as preprocess.py lists what it wrote
    sealed["files"]["source.json"] = manifest.file_entry(out / "source.json")
    (out / manifest.MANIFEST).write_text(json.dumps(manifest.sealed(sealed)))
    return out


def test_imagenet_v2_variants_keep_their_own_card_entries(sets, in1k_model, tmp_path):
    """The three variants are one Hub dataset (vaishaal/ImageNetV2): each keeps its model-index entries (its dataset
    config) and its .eval_results/ task ids, matched-frequency's the plain ones, through a later update of one."""
    card = Path(shutil.copytree(in1k_model, tmp_path / "final"))
    matched = v2_variant(sets[eval_sets.V2], tmp_path / "imagenetv2-matched-frequency-format-val", "matched-frequency")
    threshold = v2_variant(sets[eval_sets.V2], tmp_path / "imagenetv2-threshold0.7-format-val", "threshold0.7")
    evaluate(card, "", "--eval_sets", f"{matched},{threshold}", "--image_size", 32, "--update_model_card")
    evaluate(card, "", "--eval_sets", threshold, "--image_size", 32, "--update_model_card")
    listed = yaml.safe_load((card / ".eval_results" / "ImageNetV2.yaml").read_text())
    assert [(e["dataset"]["task_id"], e["value"]) for e in listed] == [
        ("top1_accuracy", 25.0), ("top5_accuracy", 25.0), ("top1_accuracy_threshold0.7", 25.0),
        ("top5_accuracy_threshold0.7", 25.0)]
    assert listed[0]["notes"].startswith("top-1 accuracy (%) on the validation split of the matched-frequency variant")
    assert listed[2]["notes"].startswith("top-1 accuracy (%) on the validation split of the threshold0.7 variant")
    loaded = huggingface_hub.ModelCard.load(card / "README.md").data.eval_results
    assert sorted((e.dataset_name, e.dataset_config, e.metric_name) for e in loaded) == [
        ("ImageNet-V2 matched-frequency", "matched-frequency", "top-1 accuracy (%)"),
        ("ImageNet-V2 matched-frequency", "matched-frequency", "top-5 accuracy (%)"),
        ("ImageNet-V2 threshold0.7", "threshold0.7", "top-1 accuracy (%)"),
        ("ImageNet-V2 threshold0.7", "threshold0.7", "top-5 accuracy (%)")]
    # a single-split update naming the Hub dataset (validate.py --hub_dataset_id) replaces no variant's entries
    modeling.update_model_card_results(card, {"top1": 61.0, "top5": 81.0, "dataset_id": "vaishaal/ImageNetV2"})
    loaded = huggingface_hub.ModelCard.load(card / "README.md")
    assert sorted((e.dataset_config or "", e.metric_value) for e in loaded.data.eval_results) == [
        ("", 61.0), ("", 81.0), ("matched-frequency", 25.0), ("matched-frequency", 25.0), ("threshold0.7", 25.0),
        ("threshold0.7", 25.0)]
    assert "| ImageNet-V2 threshold0.7 | validation | 25.00 | 25.00 | - |" in loaded.text


def test_a_kept_split_is_scored_again_when_real_json_changes_in_place(in1k_model, preprocessed, tmp_path,
                                                                      monkeypatch):
    """The kept ImageNet split carries ReaL's counts: real.json rewritten under the same path gives a fresh count,
    what a run without kept splits gives. A split without image_id cannot be matched to real.json: one line."""
    val = imagenet_val(preprocessed, tmp_path / "in1k")  # ILSVRC2012_val_00000001 to _00000008
    real = tmp_path / "real.json"
    real.write_text(json.dumps([[1] for _ in range(8)]))  # the model's top-1: every image right
    score_split, scored = eval_suite.score_split, []

    def ends_after_one(*a, **kw):
        if scored:
            raise KeyboardInterrupt  # the run ends here, the 32 px split kept with ReaL's counts
        scored.append(a[2])
        return score_split(*a, **kw)

    monkeypatch.setattr(eval_suite, "score_split", ends_after_one)
    args = ["--real_labels", real, "--image_sizes", "32,40", "--output", tmp_path / "r.json"]
    with pytest.raises(KeyboardInterrupt):
        evaluate(in1k_model, val, *args)
    assert len(list(eval_suite.parts_folder(str(tmp_path / "r.json")).glob("*.json"))) == 1
    monkeypatch.setattr(eval_suite, "score_split", score_split)
    real.write_text(json.dumps([[2] for _ in range(8)]))  # now every image wrong
    rerun = evaluate(in1k_model, val, *args)["results"]
    fresh = evaluate(in1k_model, val, *args[:-1], tmp_path / "fresh.json")["results"]
    assert rerun == fresh and [r["top1"] for r in rerun if r["kind"] == "imagenet-real"] == [0.0, 0.0]
    split = datasets.load_from_disk(str(val))["validation"].remove_columns("image_id")
    datasets.DatasetDict({"validation": split}).save_to_disk(str(tmp_path / "no_ids"))
    assert error_of(in1k_model, tmp_path / "no_ids", "--real_labels", real) == (
        f"error: --real_labels: --dataset {tmp_path / 'no_ids'} has no image_id column, which matches each image to "
        "its real.json entry (ILSVRC2012_val_NNNNNNNN); give ILSVRC-2012's validation split as preprocess.py writes "
        "it")


def test_a_split_of_imagenet_c_named_by_split_is_scored_alone(sets, in1k_model, tmp_path):
    """--dataset IMAGENET-C --split fog_3: that split alone, the row and the JSON's meta naming it, no mCE (a CE sums
    a corruption's 5 severities); a split it lacks is one line; without --split every split is scored, with the mCE."""
    c = sets[eval_sets.C]
    one = evaluate(in1k_model, c, "--split", "fog_3", "--image_size", 32, "--output", tmp_path / "one.json")
    (row,) = one["results"]
    assert (row["split"], row["n"], row["top1"], one["meta"]["split"]) == ("fog_3", 2, 50.0, "fog_3")
    assert row.get("mce") is None and "errors" not in row and "imagenet_c" not in one
    splits = list(datasets.load_from_disk(str(c)))
    assert error_of(in1k_model, c, "--split", "fog_9") == (
        f"error: --dataset {c}: no split 'fog_9'; it has {', '.join(splits[:5])}, ... (10 splits)")
    every = evaluate(in1k_model, c, "--image_size", 32, "--output", tmp_path / "every.json")
    assert (every["results"][0]["split"], every["meta"]["split"]) == ("all", "all")
    assert (every["results"][0]["n"], every["imagenet_c"]["corruptions"]) == (20, 2)


def test_each_set_beside_dataset_is_checked_for_the_models_class_order(sets, in1k_model, preprocessed, tmp_path):
    """A model whose outputs are ImageNet-1k's classes in another index order (its label_names say which), scored on
    --dataset in that same order: a set of --eval_sets in the sorted-wnid order is refused as --dataset would be,
    not scored by class index (0%)."""
    perm = list(range(500, 1000)) + list(range(500))  # output j is WNIDS[perm[j]]
    model = modeling.load_model(str(in1k_model))
    head = model.get_classifier()
    with torch.no_grad():
        head.weight.copy_(head.weight[perm])
        head.bias.copy_(head.bias[perm])
    folder = modeling.save_pretrained(model, tmp_path / "final", label_names=[WNIDS[p] for p in perm])
    val = imagenet_val(preprocessed, tmp_path / "in1k")
    split = datasets.load_from_disk(str(val))["validation"]
    index = {p: j for j, p in enumerate(perm)}
    labels = [index[label] for label in split["label"]]
    split = split.remove_columns("label").add_column("label", labels).cast_column(
        "label", datasets.ClassLabel(names=[WNIDS[p] for p in perm]))
    datasets.DatasetDict({"validation": split.flatten_indices()}).save_to_disk(str(tmp_path / "perm"))
    # the same classifier on the same images, each in its own order: the same scores
    assert (evaluate(folder, tmp_path / "perm", "--image_size", 32)["top1"]
            == evaluate(in1k_model, val, "--image_size", 32)["top1"])
    sketch = sets[eval_sets.SKETCH]
    message = error_of(folder, tmp_path / "perm", "--eval_sets", sketch, "--image_size", 32)
    assert message.startswith(f"error: --model {folder} (scoring --eval_sets {sketch}): it has the dataset's "
                              "classes in another index order"), message


def as_complete(folder: Path, out: Path, kind: str, images: int, **record) -> Path:
    """``folder`` (a preprocess.py output of ``kind``) copied to ``out`` with the source.json preprocess.py writes
    for a complete copy (eval_sets.source_fields with ``images`` in every split), listed in its manifest."""
    shutil.copytree(folder, out)
    source = json.loads((out / "source.json").read_text())
    record = {k: source[k] for k in ("eval_set", "class_subset")} | record
    counts = {split: images for split in source["counts"]}
    (out / "source.json").write_text(json.dumps({**source, **eval_sets.source_fields(kind, record, counts, out)}))
    sealed = json.loads((out / manifest.MANIFEST).read_text())
    sealed["files"]["source.json"] = manifest.file_entry(out / "source.json")
    (out / manifest.MANIFEST).write_text(json.dumps(manifest.sealed(sealed)))
    return out


def test_a_scaled_down_copy_is_named_as_a_subset_everywhere_and_has_no_mce_in_the_card(sets, in1k_model, tmp_path,
                                                                                       capsys):
    """Copies of ImageNet-R and of ImageNet-C (all 15 benchmark corruptions, one image a split) in folders named as
    the sets: "(subset)" on the console, in the JSON, results.csv and the card's model-index and table, and no mCE
    in the card; the complete copy is named ImageNet-C there, with its mCE."""
    root = tmp_path / "c" / "imagenet-c"
    for corruption in eval_sets.C_CORRUPTIONS:
        for severity in eval_sets.C_SEVERITIES:  # the model answers class 1: right on every image
            jpeg(root / corruption / severity / WNIDS[1] / "ILSVRC2012_val_00000001.JPEG", 1)
    c = preprocessed_set(root)
    card = Path(shutil.copytree(in1k_model, tmp_path / "final"))
    capsys.readouterr()
    summary = evaluate(card, "", "--eval_sets", f"{sets[eval_sets.R]},{c}", "--image_size", 32, "--update_model_card",
                       "--output", tmp_path / "r.json")
    names = ["imagenet-r (subset)", "imagenet-c (subset)"]
    assert [(r["name"], r["dataset"]) for r in summary["results"]] == list(zip(names, names))
    assert summary["results"][1]["corruptions"] == 15 and summary["results"][1]["mce"] == 0.0
    printed = capsys.readouterr().out
    assert all(f"{name} [" in printed for name in names), printed
    with open(tmp_path / "r_results.csv") as f:
        assert [row["dataset"] for row in csv.DictReader(f)] == names
    loaded = huggingface_hub.ModelCard.load(card / "README.md")
    assert {(e.dataset_type, e.dataset_name) for e in loaded.data.eval_results} == {(n, n) for n in names}
    assert not [e for e in loaded.data.eval_results if e.metric_name == "mCE (%)"]
    assert "| imagenet-c (subset) | all | 100.00 | 100.00 | - |" in loaded.text
    whole = as_complete(c, tmp_path / "whole" / "imagenet-c", eval_sets.C, 50_000)
    evaluate(card, "", "--eval_sets", whole, "--image_size", 32, "--update_model_card")
    loaded = huggingface_hub.ModelCard.load(card / "README.md")
    assert [e.metric_value for e in loaded.data.eval_results
            if (e.dataset_name, e.metric_name) == ("ImageNet-C", "mCE (%)")] == [0.0]
    assert "| ImageNet-C | all | 100.00 | 100.00 | 0.00 |" in loaded.text


def test_one_split_of_the_complete_imagenet_c_is_named_after_it_not_as_the_set(in1k_model, tmp_path, capsys):
    """--dataset of a complete ImageNet-C with --split fog_3: one split is none of the set's published numbers, so
    the row is named after it on the console, in the JSON, results.csv and the card's model-index and table, never
    ImageNet-C / imagenet-c."""
    root = tmp_path / "c" / "imagenet-c"
    for corruption in eval_sets.C_CORRUPTIONS:
        for severity in eval_sets.C_SEVERITIES:  # the model answers class 1: right on every image
            jpeg(root / corruption / severity / WNIDS[1] / "ILSVRC2012_val_00000001.JPEG", 1)
    whole = as_complete(preprocessed_set(root), tmp_path / "whole" / "imagenet-c", eval_sets.C, 50_000)
    assert json.loads((whole / "source.json").read_text())["name"] == "ImageNet-C"
    card = Path(shutil.copytree(in1k_model, tmp_path / "final"))
    capsys.readouterr()
    summary = evaluate(card, whole, "--split", "fog_3", "--image_size", 32, "--output", tmp_path / "one.json",
                       "--update_model_card")
    (row,) = summary["results"]
    assert (row["name"], row["dataset"], row["split"], row["n"]) == ("ImageNet-C fog_3", "ImageNet-C fog_3", "fog_3", 1)
    assert "ImageNet-C fog_3 [fog_3] @32px: top-1 100.00%" in capsys.readouterr().out
    with open(tmp_path / "one_results.csv") as f:
        assert [r["dataset"] for r in csv.DictReader(f)] == ["ImageNet-C fog_3"]
    loaded = huggingface_hub.ModelCard.load(card / "README.md")
    assert {(e.dataset_type, e.dataset_name, e.dataset_split) for e in loaded.data.eval_results} == {
        ("ImageNet-C fog_3", "ImageNet-C fog_3", "fog_3")}
    assert "| ImageNet-C fog_3 | fog_3 | 100.00 | 100.00 | - |" in loaded.text


def test_one_split_of_a_scaled_down_imagenet_c_is_named_after_it_and_as_a_subset(sets, in1k_model, tmp_path):
    """A scaled-down ImageNet-C's one --split beside the whole copy (--eval_sets): two rows, two names, in the JSON
    and in results.csv, which has no split column: the split's, and the copy's mean over its splits."""
    c = sets[eval_sets.C]
    summary = evaluate(in1k_model, c, "--split", "fog_3", "--eval_sets", c, "--image_size", 32, "--output",
                       tmp_path / "b.json")
    assert [(r["name"], r["dataset"]) for r in summary["results"]] == [
        ("imagenet-c fog_3 (subset)", "imagenet-c fog_3 (subset)"), ("imagenet-c (subset)", "imagenet-c (subset)")]
    with open(tmp_path / "b_results.csv") as f:
        assert [r["dataset"] for r in csv.DictReader(f)] == ["imagenet-c fog_3 (subset)", "imagenet-c (subset)"]


def test_mce_reference_with_one_split_of_imagenet_c_is_refused_in_one_line(sets, in1k_model, tmp_path):
    """One --split of ImageNet-C has no mCE to compare with a reference run's: the flag is refused, not unused; the
    same reference with every split scored gives the relative mCE."""
    c = sets[eval_sets.C]
    evaluate(in1k_model, "", "--eval_sets", c, "--image_size", 32, "--output", tmp_path / "ref.json")
    assert error_of(in1k_model, c, "--split", "fog_3", "--image_size", 32, "--mce_reference",
                    tmp_path / "ref.json") == (
        f"error: --mce_reference {tmp_path / 'ref.json'}: --dataset {c} --split fog_3 scores one split of ImageNet-C, "
        "and an mCE needs every corruption at its 5 severities; drop --split or --mce_reference")
    every = evaluate(in1k_model, c, "--image_size", 32, "--mce_reference", tmp_path / "ref.json")
    assert every["imagenet_c"]["relative_to_reference"]["mce"] == pytest.approx(100.0)


def test_real_row_counts_its_undecodable_images_in_left_out(preprocessed, in1k_model, tmp_path, monkeypatch, capsys):
    """An image with ReaL labels that does not decode is in the ReaL row's left_out and its console line, as in every
    other row's; one with an empty list is out of ReaL's scores decoded or not. A run kept after its first size gives
    the same counts; a kept ReaL count without left_out is scored again."""
    val = damaged_copy(imagenet_val(preprocessed, tmp_path / "in1k"), tmp_path / "val", {0, 1})
    ids = datasets.load_from_disk(str(val))["validation"]["image_id"]
    numbers = [int(i.rsplit("_", 1)[1]) for i in ids]
    real = [[] for _ in range(max(numbers))]
    for k, number in enumerate(numbers):
        real[number - 1] = [] if k in (1, 2) else [1]  # row 1: damaged, no label; row 2: decoded, no label
    (tmp_path / "real.json").write_text(json.dumps(real))
    args = ["--real_labels", tmp_path / "real.json", "--image_sizes", "32,40"]
    capsys.readouterr()
    fresh = evaluate(in1k_model, val, *args, "--output", tmp_path / "fresh.json")["results"]
    plain, real_row = fresh[:2]
    assert (plain["n"], plain["left_out"]) == (len(ids) - 2, 2)
    assert (real_row["kind"], real_row["n"], real_row["left_out"]) == ("imagenet-real", len(ids) - 3, 1)
    assert real_row["top1"] == 100.0  # the model answers class 1, every labelled image's label
    assert (f"{real_row['name']} [validation] @32px: top-1 100.00%  top-5 100.00%  n={len(ids) - 3}  "
            "(1 left out: they do not decode)") in capsys.readouterr().out.splitlines()
    with open(tmp_path / "fresh_results.csv") as f:
        assert [r["dataset"] for r in csv.DictReader(f)][:2] == [plain["dataset"], real_row["dataset"]]
    score_split, scored, end_after = eval_suite.score_split, [], [1]

    def counted(*a, **kw):
        if len(scored) == end_after[0]:
            raise KeyboardInterrupt  # the run ends here, the 32 px split kept with ReaL's counts
        scored.append(a[2])
        return score_split(*a, **kw)

    def suite(ends_after: int | None) -> dict:
        scored.clear()
        end_after[0] = ends_after
        return evaluate(in1k_model, val, *args, "--output", tmp_path / "r.json")

    monkeypatch.setattr(eval_suite, "score_split", counted)
    for short in (False, True):
        with pytest.raises(KeyboardInterrupt):
            suite(ends_after=1)
        (part,) = eval_suite.parts_folder(str(tmp_path / "r.json")).glob("*.json")
        kept = json.loads(part.read_text())
        assert kept["real"][3] == 1  # its left_out
        if short:  # a count kept without left_out: not one to restore, so that split is scored again
            part.write_text(json.dumps({**kept, "real": kept["real"][:3]}))
        assert suite(ends_after=None)["results"] == fresh
        assert len(scored) == (2 if short else 1)  # the kept 32 px split taken, or scored again


def test_effective_robustness_notebook_says_what_to_run_for_each_cause_of_no_clean_row(sets, preprocessed,
                                                                                      in1k_model, tmp_path,
                                                                                      monkeypatch, capsys,
                                                                                      jupyter_home):
    """A --dataset with no image of ImageNet-A's 200 classes: validate.py writes no imagenet-a-clean row (a note says
    so), and scoring the same data again gives none either: the notebook's fallback line says what to do for it, as
    well as for a file scored before -clean rows were written."""
    val = imagenet_val(preprocessed, tmp_path / "in1k")
    results = tmp_path / "results"
    capsys.readouterr()
    summary = evaluate(in1k_model, val, "--eval_sets", sets[eval_sets.A], "--image_size", 32, "--output",
                       results / "model.json")
    assert [r["kind"] for r in summary["results"]] == ["imagenet", eval_sets.A]
    note = f"note: no imagenet-a-clean row at 32 px: no image of --dataset {val} validation is of ImageNet-A's 200"
    assert note in capsys.readouterr().out
    # a file with no ImageNet row is not plotted at all: it is listed with the flag it lacks, not as placed
    evaluate(in1k_model, "", "--eval_sets", sets[eval_sets.R], "--image_size", 32, "--output", results / "r_only.json")
    nb = execute("06_effective_robustness", monkeypatch, jupyter_home, IMAGENET_RESULTS=results)
    listing = stdout([c for c in nb.cells if c.cell_type == "code"][0])
    assert "r_only.json: scored without --dataset, so not on the plot" in listing
    assert not [s for s in listing.splitlines() if "r_only.json" in s and "placed against" in s], listing
    line = next(s for s in listing.splitlines() if "placed against the 1000-class ImageNet top-1" in s)
    said = line.split("ImageNet top-1: ", 1)[1]
    assert said.startswith("the file has no imagenet-a-clean row.")
    assert "If validate.py printed 'note: no imagenet-a-clean row' for it, its --dataset has no image of the set's " \
           "200 classes" in said and note.startswith("note: no imagenet-a-clean row")
    assert "score it again with ILSVRC-2012's validation split as --dataset" in said
    assert said.endswith("otherwise it was scored before validate.py made -clean rows: score it again as it was")
