"""README's "Fine-tune on your own images", as written (modulo CPU sizes, and a local export standing in for the
timm weights, which need the network): a folder of JPEGs -> preprocess.py --val_fraction -> train.py --pretrained
with the head swap stated -> validate.py agreeing with the card -> an export timm loads with the folder names."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import timm
import yaml

import modeling
from imagenet_trainer.demo import make_ilsvrc_tree

ROOT = Path(__file__).resolve().parent.parent


def run(*cmd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, *map(str, cmd)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_a_folder_of_jpegs_to_a_fine_tuned_validated_export(tmp_path):
    # my_photos/<class>/*.jpg: two classes of real handwritten digits
    kaggle = make_ilsvrc_tree(tmp_path / "kaggle", source="digits", num_classes=2, train_per_class=24,
                              val_per_class=1, num_test=1, seed=0)
    photos = tmp_path / "my_photos"
    for name, wnid in zip(("one", "zero"), sorted(p.name for p in (kaggle / "ILSVRC/Data/CLS-LOC/train").iterdir())):
        (photos / name).mkdir(parents=True)
        for i, jpeg in enumerate(sorted((kaggle / "ILSVRC/Data/CLS-LOC/train" / wnid).iterdir())):
            shutil.copy(jpeg, photos / name / f"{i}.jpg")
    # the weights to start from: a 4-class export (the README starts from timm's 1000-class resnet50.a1_in1k)
    start = tmp_path / "start"
    modeling.save_pretrained(modeling.create_model("blocknet_tiny", num_classes=4), start,
                             label_names=["a", "b", "c", "d"])

    data, out = tmp_path / "data" / "digits", tmp_path / "runs" / "digits"
    run("preprocess.py", "--data_dir", photos, "--output_dir", data, "--val_fraction", 0.25)
    assert json.loads((data / "source.json").read_text())["layout"] == "class-folders-split"
    # given relative to the launch's folder, recorded absolute: validate.py reads a checkpoint's config.yaml from others
    proc = run("train.py", "--model", f"local-dir:{os.path.relpath(start, ROOT)}", "--pretrained", "--dataset", data, "--output_dir", out,
               "--epochs", 2, "--lr", 0.05, "--warmup_epochs", 0.5, "--image_size", 32, "--batch_size", 8,
               "--num_workers", 0)
    assert (f"--model local-dir:{start}: new 2-class head (random init); the 4-class head of the pretrained weights "
            "is dropped") in proc.stdout + proc.stderr
    for recorded in (out / "config.yaml", *(out / "checkpoints").glob("step_*/config.yaml")):
        assert yaml.safe_load(recorded.read_text())["model"] == f"local-dir:{start}", recorded
    proc = run("validate.py", "--model", out / "final", "--dataset", data, "--output", tmp_path / "val.json",
               "--num_workers", 0)
    scored = json.loads((tmp_path / "val.json").read_text())
    card = huggingface_hub.ModelCard.load(out / "final" / "README.md")
    top1 = {r.metric_value for r in card.data.eval_results if "top-1" in r.metric_name}
    assert top1 == {round(scored["top1"], 2)} and scored["n"] == 12  # a quarter of each class held out
    model = timm.create_model(f"local-dir:{out / 'final'}", pretrained=True)
    assert model.num_classes == 2 and model.pretrained_cfg["label_names"] == ["one", "zero"]
