"""validate.py on CPU: a real train.py run, real exports and checkpoints, a real 2-process accelerate launch."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import datasets
import huggingface_hub
import matplotlib
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from test_hub_loading import flip_a_tensor_byte

import modeling
import validate
from imagenet_trainer import eval_suite, manifest
from imagenet_trainer.worker_processes import auto_workers, available_cores

ROOT = Path(__file__).resolve().parent.parent
ACCELERATE = str(Path(sys.executable).parent / "accelerate")
TINY = "blocknet_tiny"


def run(cmd, **env):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **env}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def evaluate(model, dataset, *extra, batch_size=8) -> dict:
    """validate.py in this process (an import of torch/timm per subprocess costs ~5 s on these cores)."""
    return validate.main(["--model", str(model), "--dataset", str(dataset), "--batch_size", str(batch_size),
                          "--num_workers", "0", *map(str, extra)])


def error_of(*args) -> str:
    with pytest.raises(SystemExit) as e:
        evaluate(*args)
    message = str(e.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


@pytest.fixture(scope="module")
def trained(preprocessed, tmp_path_factory) -> Path:
    """A train.py run folder: one epoch, its export in final/ (non-EMA) and the checkpoint of the same step. It
    trains at 32 px and evaluates at 48 (FixRes), so an eval at the train size cannot pass for the logged one."""
    out = tmp_path_factory.mktemp("validate") / "run"
    ok(run([sys.executable, str(ROOT / "train.py"), "--model", TINY, "--dataset", str(preprocessed),
            "--output_dir", str(out), "--image_size", "32", "--eval_image_size", "48", "--batch_size", "8",
            "--epochs", "1", "--num_workers", "0", "--warmup_epochs", "0.5"]))
    return out


def only_checkpoint(run_dir: Path) -> Path:
    (ckpt,) = sorted((run_dir / "checkpoints").glob("step_*"))
    return ckpt


def fake_checkpoint(tmp_path: Path, state: dict, prefix: str, image_size: int = 32, eval_image_size: int = 48) -> Path:
    """What accelerate's save_state leaves for a DDP-wrapped torch.compile'd model, with the run's config.yaml (the
    sizes of the ``trained`` run by default)."""
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000001"
    ckpt.mkdir(parents=True)
    save_file({prefix + k: v.contiguous() for k, v in state.items()}, ckpt / "model.safetensors")
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(
        {"model": TINY, "image_size": image_size, "eval_image_size": eval_image_size}))
    return ckpt


def test_checkpoint_is_scored_with_the_settings_saved_in_it(trained, preprocessed, tmp_path, capsys):
    """Each checkpoint carries the config.yaml of the launch that wrote it: an --eval_flip launch's checkpoint is
    scored with flip (its metrics.jsonl numbers), whatever later launches of the run changed; --flip overrides."""
    ckpt = only_checkpoint(trained)
    assert yaml.safe_load((ckpt / "config.yaml").read_text())["model"] == TINY
    assert (ckpt / "run_info.json").is_file()
    flipped_ckpt = tmp_path / "run" / "checkpoints" / ckpt.name
    shutil.copytree(ckpt, flipped_ckpt)
    flipped_ckpt.joinpath("config.yaml").write_text(yaml.safe_dump(
        {**yaml.safe_load((ckpt / "config.yaml").read_text()), "eval_flip": True}))
    capsys.readouterr()
    flipped, plain = evaluate(flipped_ckpt, preprocessed), evaluate(ckpt, preprocessed)
    assert flipped["flip"] is True and plain["flip"] is False
    # an edit is taken, and said (a damaged byte that still parses would be taken too: the note says where to look)
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: ")]
    assert notes == [f"note: {flipped_ckpt / 'config.yaml'} is not the one saved with the checkpoint (its size or "
                     "CRC-32 differs): scoring with the settings it holds now (an edit; if not, a damaged copy: the "
                     "run's own config.yaml has them)"], notes
    assert flipped["loss"] != pytest.approx(plain["loss"], rel=1e-6)
    asked = evaluate(ckpt, preprocessed, "--flip")
    assert asked["flip"] is True and asked["loss"] == pytest.approx(flipped["loss"], rel=1e-6)
    assert evaluate(flipped_ckpt, preprocessed, "--flip", "false")["loss"] == pytest.approx(plain["loss"], rel=1e-6)


def test_a_checkpoint_config_that_does_not_read_as_yaml_is_one_line(trained, preprocessed, tmp_path):
    """An edit's typo (or a damaged byte) in a checkpoint's config.yaml, which validate.py takes edited: one line
    naming the file and the line, not yaml's traceback."""
    ckpt = tmp_path / "step"
    shutil.copytree(only_checkpoint(trained), ckpt)
    text = (ckpt / "config.yaml").read_text()
    (ckpt / "config.yaml").write_text(text.replace("model:", "model;", 1))
    message = error_of(ckpt, preprocessed)
    line = 1 + text[:text.index("model:")].count("\n")
    assert f"{ckpt / 'config.yaml'} does not read as YAML at line " in message, message
    assert abs(int(message.split(" at line ")[1].split()[0]) - line) <= 1, message
    (ckpt / "config.yaml").write_bytes(text.encode().replace(b"model:", b"m\xe9del:", 1))  # not UTF-8
    assert f"{ckpt / 'config.yaml'} does not read as YAML (invalid continuation byte)" in error_of(ckpt, preprocessed)


def test_a_one_channel_network_trains_and_scores_on_each_images_luminance(preprocessed, tmp_path):
    """An in_chans=1 export (README: ours or timm's) fine-tuned with train.py --pretrained and scored by validate.py:
    the RGB batches become PIL's "L" of each image on the device, as timm's validate.py feeds such a network (its
    first conv met 3 channels at the first step, after the whole set-up); validate.py reproduces the logged score."""
    labels = datasets.load_from_disk(str(preprocessed))["train"].features["label"].names
    gray = modeling.save_pretrained(modeling.create_model(TINY, num_classes=len(labels), in_chans=1),
                                    tmp_path / "gray", label_names=labels)
    out = tmp_path / "run"
    ok(run([sys.executable, str(ROOT / "train.py"), "--model", f"local-dir:{gray}", "--pretrained", "--dataset",
            str(preprocessed), "--output_dir", str(out), "--image_size", "32", "--batch_size", "8",
            "--max_train_steps", "2", "--epochs", "1", "--num_workers", "0", "--warmup_epochs", "0"]))
    logged = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert json.loads((out / "final" / "config.json").read_text())["pretrained_cfg"]["input_size"][0] == 1
    for model in (only_checkpoint(out), out / "final"):
        scored = evaluate(model, preprocessed)
        assert scored["n"] == logged["val_n"] and scored["loss"] == pytest.approx(logged["val_loss"], rel=1e-5)
    # the suite's GMACs and throughput feed it one channel too
    suite = evaluate(out / "final", preprocessed, "--image_sizes", "32", "--benchmark_batch_sizes", "2",
                     "--benchmark_steps", "1")
    assert suite["gmacs"] > 0 and suite["throughput"][0]["infer_samples_per_sec"] > 0, suite


def test_a_squash_architecture_is_evaluated_by_train_and_validate_alike(preprocessed, tmp_path):
    """tf_efficientnetv2_b3's pretrained_cfg says crop_mode squash (both sides resized, as timm's create_transform
    does for it): train.py evaluates with it, so validate.py on the checkpoint and on the export gives metrics.jsonl's
    numbers, and the card says the transform they were measured with."""
    out = tmp_path / "run"
    ok(run([sys.executable, str(ROOT / "train.py"), "--model", "tf_efficientnetv2_b3", "--dataset", str(preprocessed),
            "--output_dir", str(out), "--image_size", "32", "--batch_size", "8", "--max_train_steps", "1",
            "--epochs", "1", "--num_workers", "0", "--warmup_epochs", "0"]))
    logged = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    for model in (only_checkpoint(out), out / "final"):
        scored = evaluate(model, preprocessed)
        assert scored["crop_mode"] == "squash" and scored["n"] == logged["val_n"]
        assert scored["loss"] == pytest.approx(logged["val_loss"], rel=1e-5), model
    card = (out / "final" / "README.md").read_text()
    assert "Evaluated at 32x32 px center crop (crop_pct 0.9, crop_mode squash, bicubic)." in card


def test_checkpoint_and_export_are_scored_under_the_runs_mixed_precision(trained, preprocessed, tmp_path):
    """train.py evaluates under its launch's mixed precision: a checkpoint's run_info.json and an export's card
    (Hardware line) record it, and validate.py scores under it (bf16 logits move the loss); --mixed_precision
    overrides; nothing recorded is fp32. The summary says which, and from where."""
    ckpt = tmp_path / "run" / "checkpoints" / only_checkpoint(trained).name
    shutil.copytree(only_checkpoint(trained), ckpt)
    info = json.loads((ckpt / "run_info.json").read_text())
    assert info["mixed_precision"] == "no"
    (ckpt / "run_info.json").write_text(json.dumps({**info, "mixed_precision": "bf16"}))
    plain, bf16 = evaluate(only_checkpoint(trained), preprocessed), evaluate(ckpt, preprocessed)
    assert (plain["mixed_precision"], bf16["mixed_precision"]) == ("no", "bf16")
    assert bf16["mixed_precision_from"] == str(ckpt / "run_info.json")
    assert bf16["loss"] != pytest.approx(plain["loss"], rel=1e-6)
    assert evaluate(ckpt, preprocessed, "--mixed_precision", "no")["loss"] == plain["loss"]
    assert evaluate(only_checkpoint(trained), preprocessed, "--mixed_precision", "bf16")["loss"] == bf16["loss"]

    final = tmp_path / "final"
    shutil.copytree(trained / "final", final)
    card = (final / "README.md").read_text()
    assert "- **Hardware:** 1 x cpu, fp32\n" in card
    (final / "README.md").write_text(card.replace("- **Hardware:** 1 x cpu, fp32", "- **Hardware:** 1 x cpu, bf16"))
    exported = evaluate(final, preprocessed)
    assert exported["mixed_precision"] == "bf16" and exported["loss"] == pytest.approx(bf16["loss"], rel=1e-6)
    (final / "README.md").unlink()  # an export without its card (a bare save_pretrained)
    bare = evaluate(final, preprocessed)
    assert bare["mixed_precision"] == "no" and bare["mixed_precision_from"].startswith("not recorded")
    assert "--mixed_precision must be one of" in error_of(final, preprocessed, "--mixed_precision", "fp64")


def test_export_of_an_eval_flip_run_is_scored_with_flip_and_a_checkpoint_on_its_eval_split(trained, preprocessed,
                                                                                          tmp_path):
    """The card's recipe table says --eval_flip, as config.yaml does for a checkpoint; a checkpoint's run evaluated
    on its --eval_split, which need not be called validation."""
    final = tmp_path / "final"
    shutil.copytree(trained / "final", final)
    card = (final / "README.md").read_text()
    assert "| eval_flip | False |" in card
    (final / "README.md").write_text(card.replace("| eval_flip | False |", "| eval_flip | True |"))
    flipped = evaluate(final, preprocessed)
    assert flipped["flip"] is True and flipped["flip_from"] == f"{final / 'README.md'} (eval_flip row)"
    assert flipped["loss"] == evaluate(trained / "final", preprocessed, "--flip")["loss"]

    ds = datasets.load_from_disk(str(preprocessed))
    datasets.DatasetDict({"train": ds["train"], "holdout": ds["validation"]}).save_to_disk(str(tmp_path / "holdout"))
    state = load_file(only_checkpoint(trained) / "model.safetensors")
    ckpt = fake_checkpoint(tmp_path / "ckpt", state, "")
    config = ckpt.parent.parent / "config.yaml"
    config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "eval_split": "holdout"}))
    scored = evaluate(ckpt, tmp_path / "holdout")
    assert scored["split"] == "holdout" and scored["n"] == ds["validation"].num_rows
    assert error_of(trained / "final", tmp_path / "holdout").endswith(
        "--split validation: the dataset has train, holdout; pass --split holdout")


def test_export_and_checkpoint_reproduce_train_logged_val(trained, preprocessed, tmp_path):
    logged = json.loads((trained / "metrics.jsonl").read_text().splitlines()[-1])
    out = tmp_path / "res" / "val.json"
    exported = evaluate(trained / "final", preprocessed, "--output", out)
    # the export was made from this very eval (epoch 1 is the best), with the same eval transform and batch size
    assert exported["top1"] == pytest.approx(logged["val_top1"], abs=1e-9)
    assert exported["top5"] == pytest.approx(logged["val_top5"], abs=1e-9)
    assert exported["n"] == logged["val_n"] == datasets.load_from_disk(str(preprocessed))["validation"].num_rows
    assert exported["loss"] == pytest.approx(logged["val_loss"], rel=1e-5)
    assert exported["image_size"] == 48  # the run's --eval_image_size from the export's pretrained_cfg, not 32 or 64

    # the checkpoint of the same step: architecture and eval size (--eval_image_size) from the run's config.yaml
    from_ckpt = evaluate(only_checkpoint(trained), preprocessed)
    for key in ("top1", "top5", "n", "image_size", "crop_pct"):
        assert from_ckpt[key] == exported[key], key
    assert from_ckpt["loss"] == pytest.approx(exported["loss"], rel=1e-6)

    # the summary and its companions, each saying which weights, data, transform and precision made it
    summary = json.loads(out.read_text())
    assert {"top1", "top5", "n", "loss", "images_per_sec"} <= set(summary) and summary["n"] == exported["n"]
    assert summary["mixed_precision"] == "no" and summary["meta"]["model_path"] == str((trained / "final").resolve())
    per_class_file = json.loads((out.parent / "val_per_class.json").read_text())
    confused_file = json.loads((out.parent / "val_confused.json").read_text())
    assert per_class_file["meta"] == confused_file["meta"] == summary["meta"]
    assert summary["meta"]["weights_sha256"] == eval_suite.weights_digest(modeling.load_model(trained / "final"))
    assert summary["meta"]["model_name"] == trained.name  # the run's name: every export is a "final"
    per_class = per_class_file["rows"]
    assert [row["wnid"] for row in per_class] == ["n01440764", "n01443537", "n01484850", "n01491361"]
    assert per_class[0]["name"] == "astronaut" and sum(row["n"] for row in per_class) == exported["n"]
    correct = sum(row["top1"] * row["n"] / 100 for row in per_class if row["n"])
    assert correct == pytest.approx(exported["top1"] * exported["n"] / 100)
    confused = confused_file["rows"]
    assert all(row["true"] != row["predicted"] and row["count"] > 0 for row in confused)
    assert sum(row["count"] for row in confused) == round(exported["n"] * (1 - exported["top1"] / 100))


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_checkpoint_keys_from_ddp_and_compile_load(trained, preprocessed, tmp_path, prefix):
    state = load_file(only_checkpoint(trained) / "model.safetensors")
    ckpt = fake_checkpoint(tmp_path, state, prefix)
    assert evaluate(ckpt, preprocessed)["top1"] == evaluate(trained / "final", preprocessed)["top1"]


def test_checkpoint_validates_at_the_runs_eval_image_size(trained, preprocessed, tmp_path):
    state = load_file(only_checkpoint(trained) / "model.safetensors")
    fixres = fake_checkpoint(tmp_path / "fixres", state, "", image_size=32, eval_image_size=40)
    assert evaluate(fixres, preprocessed)["image_size"] == 40
    same = fake_checkpoint(tmp_path / "same", state, "", image_size=32, eval_image_size=0)  # 0: --image_size
    assert evaluate(same, preprocessed)["image_size"] == 32


def test_hub_id_loads_offline_from_the_cache(trained, preprocessed, tmp_path, monkeypatch):
    repo = tmp_path / "hub" / "models--me--tiny"
    (repo / "snapshots" / ("a" * 40)).mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(trained / "final" / name, repo / "snapshots" / ("a" * 40) / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    from_hub = evaluate("hf-hub:me/tiny", preprocessed)
    assert from_hub["top1"] == evaluate(trained / "final", preprocessed)["top1"]
    assert "Hub repo 'me/absent'" in error_of("hf-hub:me/absent", preprocessed)


def test_update_model_card(trained, preprocessed, tmp_path):
    folder = tmp_path / "final"
    shutil.copytree(trained / "final", folder)
    # the card of an EMA export (train.py writes this line when the EMA weights won)
    modeling.update_model_card_results(folder, {"top1": 1.0, "top5": 2.0, "ema": True})
    before = huggingface_hub.ModelCard.load(folder / "README.md")
    # local-dir: is timm's and modeling's name for the same folder
    result = evaluate(f"local-dir:{folder}", preprocessed, "--update_model_card", "--image_size", 40)  # its own: 48
    card = huggingface_hub.ModelCard.load(folder / "README.md")
    # the Results table: the source tree's name (source.json; a subset is never called ILSVRC-2012), not a path; the
    # numbers; the transform they were measured at
    name = json.loads((preprocessed / "source.json").read_text())["name"]
    assert name == "kaggle"
    row = f"| {name} | validation | {result['n']} | {result['top1']:.2f} | {result['top5']:.2f} |"
    assert row in card.text and str(preprocessed) not in card.text
    assert f"Evaluated at 40x40 px center crop (crop_pct {result['crop_pct']}, {result['interpolation']})." in card.text
    assert "Weights: the exponential moving average (EMA)" in card.text  # the weights did not change
    assert card.text.split("## Training")[1] == before.text.split("## Training")[1]  # the rest is as it was
    # the metadata too: the training data's entry now holds validate.py's numbers (no Hub dataset: its own name)
    assert [(r.dataset_name, r.dataset_split, r.metric_value) for r in card.data.eval_results] == [
        (name, "validation", round(result["top1"], 2)), (name, "validation", round(result["top5"], 2))]
    assert card.data.datasets is None and not (folder / ".eval_results").exists()
    assert torch.equal(load_file(folder / "model.safetensors")["fc.weight"],  # the weights are untouched
                       load_file(trained / "final" / "model.safetensors")["fc.weight"])


def source_json(dataset: Path, full: bool) -> dict:
    """What preprocess.py records beside its output (imagenet_trainer's provenance contract)."""
    counts = {"train": 1_281_167, "validation": 50_000} if full else {"train": 24, "validation": 8}
    return {"layout": "ilsvrc-kaggle", "name": "ILSVRC-2012", "ilsvrc2012_full": full,
            "num_classes": 1000 if full else 4, "counts": counts, "val_fraction": None, "split_seed": None}


@pytest.mark.parametrize("full, hub_id, expected", [(True, "", "ILSVRC/imagenet-1k"), (False, "", None),
                                                    (False, "me/ilsvrc-4", "me/ilsvrc-4")],
                         ids=["full-ilsvrc", "subset", "subset-with-hub-id"])
def test_update_model_card_names_the_hub_dataset_only_for_full_ilsvrc(trained, preprocessed, tmp_path, full, hub_id,
                                                                      expected):
    data = tmp_path / "imagenet"
    shutil.copytree(preprocessed, data)
    (data / "source.json").write_text(json.dumps(source_json(data, full)))
    listed = json.loads((data / manifest.MANIFEST).read_text())  # the manifest checks every file's size at load
    listed["files"]["source.json"] = manifest.file_entry(data / "source.json")
    (data / manifest.MANIFEST).write_text(json.dumps(manifest.sealed(listed)))  # sealed anew, as preprocess.py does
    folder = tmp_path / "final"
    shutil.copytree(trained / "final", folder)
    result = evaluate(folder, data, "--update_model_card", *(["--hub_dataset_id", hub_id] if hub_id else []))
    card = huggingface_hub.ModelCard.load(folder / "README.md")
    entries = {(r.dataset_type, r.dataset_name, r.dataset_split, r.metric_value) for r in card.data.eval_results}
    assert (expected or "ILSVRC-2012", "ILSVRC-2012", "validation", round(result["top1"], 2)) in entries
    assert card.data.datasets == ([expected] if expected else None)
    assert ("ILSVRC/imagenet-1k" in (folder / "README.md").read_text()) == full
    yamls = sorted(p.name for p in (folder / ".eval_results").glob("*.yaml")) if expected else []
    assert yamls == ([f"{expected.split('/')[1]}.yaml"] if expected else [])
    if expected:
        parsed = huggingface_hub.parse_eval_result_entries(yaml.safe_load((folder / ".eval_results" / yamls[0])
                                                                          .read_text()))
        assert [(e.dataset_id, e.value) for e in parsed][0] == (expected, round(result["top1"], 2))


def test_bad_input_is_a_one_line_error(trained, preprocessed, tmp_path):
    final, ckpt = trained / "final", only_checkpoint(trained)
    assert "no such folder" in error_of(tmp_path / "missing" / "final", preprocessed)
    unpadded = ckpt.with_name(f"step_{int(ckpt.name.removeprefix('step_'))}")  # as the logs write the step
    assert error_of(unpadded, preprocessed).endswith(f"no such folder (give RUN/final, RUN/checkpoints/step_N or a Hub "
                                                     f"id OWNER/NAME); {ckpt} exists")
    assert "run folder" in error_of(trained, preprocessed)
    assert "--split test: 3 of 3 images have no label" in error_of(final, preprocessed, "--split", "test")
    assert "--split nope: the dataset has train, validation, test" in error_of(final, preprocessed, "--split", "nope")
    assert "--update_model_card needs a local export" in error_of(ckpt, preprocessed, "--update_model_card")
    assert "--dataset" in error_of(final, tmp_path / "no_dataset")
    for flag, value, low in (("batch_size", 0, 1), ("image_size", -5, 0)):
        message = error_of(final, preprocessed, f"--{flag}", value)
        assert message == f"error: --{flag} must be at least {low}, got {value}"
    assert error_of(final, preprocessed, "--num_workers", -2) == (
        "error: --num_workers must be >= 0, or -1 (the cores this process may use, less one), got -2")
    assert error_of(final, preprocessed, "--crop_pct", 3) == (
        "error: --crop_pct must be in (0, 2] (0 = the model's own), got 3.0")
    # above 1 the resized image is smaller than the crop and padded, as timm evaluates volo_d5_512 (crop_pct 1.15)
    assert evaluate(final, preprocessed, "--crop_pct", 1.15)["crop_pct"] == 1.15

    # a model for 10 classes on the 4-class dataset: export and checkpoint
    ten = modeling.create_model(TINY, num_classes=10)
    modeling.save_pretrained(ten, tmp_path / "ten", label_names=[f"c{i}" for i in range(10)])
    assert "predicts 10 classes but --dataset" in error_of(tmp_path / "ten", preprocessed)
    ten_ckpt = fake_checkpoint(tmp_path / "ckpt", ten.state_dict(), "module.")
    assert "predicts 10 classes but --dataset" in error_of(ten_ckpt, preprocessed)

    # the right classes in another order would score against the wrong labels
    wnids = datasets.load_from_disk(str(preprocessed))["validation"].features["label"].names
    modeling.save_pretrained(modeling.create_model(TINY, num_classes=4), tmp_path / "shuffled",
                             label_names=wnids[::-1])
    assert "another index order" in error_of(tmp_path / "shuffled", preprocessed)

    # --output is checked before the data (here: none) or the model loads
    (tmp_path / "a_file").write_text("x")
    assert error_of(final, tmp_path / "no_dataset", "--output", tmp_path).startswith(
        f"error: --output {tmp_path}: {tmp_path} is a folder; give a file path such as")
    assert "a_file is a file, not a folder" in error_of(final, preprocessed, "--output", tmp_path / "a_file" / "r.json")
    assert "--mce_reference /nonexistent.json: cannot read it (No such file or directory)" in error_of(
        final, preprocessed, "--mce_reference", "/nonexistent.json")
    # names that are no model, or no weights, say what to give
    assert "timm has no pretrained tag 'nosuchtag' for resnet50 (known: a1_in1k" in error_of(
        "resnet50.nosuchtag", preprocessed)
    assert "no such folder, no Hub id (OWNER/NAME), and unknown model 'resnet5000'" in error_of("resnet5000",
                                                                                                preprocessed)
    message = error_of(TINY, preprocessed)
    assert "no published weights; score a saved export: --model RUN/final" in message and "--pretrained" not in message
    # a checkpoint whose run started from an export by a path relative to another folder
    moved = fake_checkpoint(tmp_path / "moved", ten.state_dict(), "")
    (moved.parent.parent / "config.yaml").write_text(yaml.safe_dump({"model": "local-dir:../gone/final"}))
    assert "names --model local-dir:../gone/final, which does not load from" in error_of(moved, preprocessed)


def test_a_fixed_input_size_model_refuses_another_size_before_scoring(preprocessed, tmp_path, capsys):
    """timm's ViTs take only their own size: one line before the first batch, and in a sweep before the first
    size is scored."""
    wnids = datasets.load_from_disk(str(preprocessed))["validation"].features["label"].names
    vit = tmp_path / "vit"
    modeling.save_pretrained(modeling.create_model("test_vit_relpos", num_classes=4), vit, label_names=wnids)
    assert error_of(vit, preprocessed, "--image_size", 96) == (
        f"error: --image_size 96: --model {vit} takes only 160 px input (Input height (96) doesn't match model "
        "(160).); give 160, or leave --image_size out")
    assert error_of(vit, preprocessed, "--image_sizes", "160,96").startswith("error: --image_sizes 96: ")
    assert "@160px" not in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (("--image_sizes", "32,48", "--benchmark_batch_sizes", "0"), "--benchmark_batch_sizes values must be at least 1, "
                                                                 "got '0'"),
    (("--benchmark_batch_sizes", "1,x"), "--benchmark_batch_sizes takes whole numbers separated by commas (e.g. "
                                         "160,224), got '1,x'"),
    (("--image_sizes", "224,0"), "--image_sizes values must be at least 1, got '224,0'"),
    (("--image_sizes", "224px"), "--image_sizes takes whole numbers separated by commas (e.g. 160,224), got '224px'"),
])
def test_a_bad_size_list_is_refused_before_anything_loads(tmp_path, capsys, args, message):
    """With the other flags: neither --model nor --dataset exists here, so the line comes before anything is loaded
    or scored (where the lists are used, it would come after every set at every size)."""
    assert error_of(tmp_path / "run" / "final", tmp_path / "no_dataset", *args) == f"error: {message}"
    assert not capsys.readouterr().out


def test_the_printed_summary_says_the_flip_and_precision_and_where_each_came_from(trained, preprocessed, tmp_path,
                                                                                 capsys):
    """An export's card, a checkpoint's config.yaml and run_info.json, a flag, or nothing recorded: the one line a
    run prints says which flip and precision made its numbers (a flip-TTA number must not pass for a plain one)."""
    def printed(model, *flags) -> str:
        capsys.readouterr()
        evaluate(model, preprocessed, *flags)
        (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("validation: top-1 ")]
        return line.split(" img/s  ", 1)[1]

    assert printed(trained / "final") == "flip off (card), fp32 (card)"
    assert printed(trained / "final", "--flip", "--mixed_precision", "bf16") == \
        "flip on (--flip), bf16 (--mixed_precision)"
    assert printed(only_checkpoint(trained)) == "flip off (run's config.yaml), fp32 (run's run_info.json)"
    bare = tmp_path / "bare"
    shutil.copytree(trained / "final", bare)
    (bare / "README.md").unlink()  # a bare save_pretrained: no card records either
    assert printed(bare) == "flip off (default), fp32 (default)"
    evaluate(bare, preprocessed, "--image_sizes", "32")  # the suite says it once, for every set
    assert "every set scored with flip off (default), fp32 (default)" in capsys.readouterr().out.splitlines()


def test_a_hub_copy_of_an_export_is_scored_with_the_flip_its_card_records(trained, preprocessed, tmp_path,
                                                                         monkeypatch, capsys):
    """README: an export is scored with the eval_flip and precision its model card records; its pushed copy, loaded
    by Hub id (here from the Hugging Face cache with HF_HUB_OFFLINE=1), carries the same card, so the same
    settings, not the defaults."""
    sha = "1123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--me--flip"
    shutil.copytree(trained / "final", repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    card = repo / "snapshots" / sha / "README.md"
    card.write_text(card.read_text().replace("| eval_flip | False |", "| eval_flip | True |"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for ref in ("hf-hub:me/flip", "me/flip"):
        capsys.readouterr()
        evaluate(ref, preprocessed)
        (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("validation: top-1 ")]
        assert line.endswith("flip on (card), fp32 (card)"), (ref, line)


def test_a_re_pushed_hub_export_is_scored_with_its_new_cards_settings(trained, tmp_path, monkeypatch):
    """The model's load fetches the repo's current weights: the settings must come from the same commit's card, not
    from a card an earlier score left in the cache."""
    from hub_server import LocalHub, point_this_process_at

    folder = tmp_path / "net"
    shutil.copytree(trained / "final", folder)
    read = ("import sys; sys.path.insert(0, sys.argv[1]); import validate; "
            "print(validate.recorded_settings('me/net').flip)")
    with LocalHub() as hub:
        point_this_process_at(hub, monkeypatch, tmp_path / "home")
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "home"), HF_TOKEN=hub.token,
                   HF_HUB_DISABLE_XET="1", NO_PROXY="127.0.0.1")
        flips = []
        for flip in ("False", "True"):
            card = folder / "README.md"
            card.write_text(card.read_text().replace("| eval_flip | True |", f"| eval_flip | {flip} |")
                            .replace("| eval_flip | False |", f"| eval_flip | {flip} |"))
            modeling.push_to_hub(folder, "me/net", token=hub.token, commit_message=f"flip {flip}")
            proc = subprocess.run([sys.executable, "-c", read, str(ROOT)], env=env, capture_output=True, text=True,
                                  timeout=300)
            assert proc.returncode == 0, proc.stderr[-2000:]
            flips.append(proc.stdout.split()[-1])
    assert flips == ["False", "True"]


def test_a_cached_hub_export_without_its_card_scores_at_once_when_the_hub_is_out_of_reach(trained, preprocessed,
                                                                                           tmp_path):
    """timm.create_model("hf-hub:...") caches config.json and the weights, not the card. With the Hub out of reach
    and HF_HUB_OFFLINE unset, the card is looked for with one request, not huggingface_hub's five retries (~22 s
    before every score): the defaults, said as such."""
    sha = "1123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "home" / "hub" / "models--me--cached"
    (repo / "snapshots" / sha).mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(trained / "final" / name, repo / "snapshots" / sha / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    with socket.socket() as closed:  # a port nothing listens on: the connection is refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "home"), HF_ENDPOINT=f"http://127.0.0.1:{port}", NO_PROXY="127.0.0.1",
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "validate.py"), "--model", "me/cached", "--dataset",
                           str(preprocessed), "--num_workers", "0"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "flip off (default), fp32 (default)" in proc.stdout and "Retrying" not in proc.stderr, proc.stderr[-2000:]


def test_num_workers_defaults_to_the_cores_less_one_and_says_so(trained, preprocessed, capsys):
    """As train.py's: every core this process may use, less one (8 workers on a 2-core machine only contend)."""
    validate.main(["--model", str(trained / "final"), "--dataset", str(preprocessed), "--batch_size", "8"])
    assert (f"--num_workers {auto_workers()}: {available_cores()} cores for 1 process(es) on this machine, one "
            "each for the process itself") in capsys.readouterr().out


def test_shared_memory_too_small_for_the_workers_is_one_line_before_scoring(trained, preprocessed):
    """As train.py's check: the workers' prefetched batches must fit /dev/shm (Docker's 64 MB default would end in a
    bus error mid-scoring); validate.py holds no train ring, so only the eval batches count."""
    message = error_of(trained / "final", preprocessed, "--num_workers", "1", "--batch_size", 10**7)
    assert message.startswith("error: /dev/shm has ") and "x 4 batches (prefetched) + 2 in hand)" in message, message
    assert "--shm-size=" in message and "--num_workers" in message


def test_suite_results_name_the_run_and_the_help_names_every_output(trained, preprocessed, tmp_path, capsys):
    """results.csv rows concatenated across runs stay apart: the model column is the run's name, not "final"."""
    out = tmp_path / "suite.json"
    evaluate(trained / "final", preprocessed, "--image_sizes", "32,48", "--output", out)
    with (tmp_path / "suite_results.csv").open() as f:
        assert [row["model"] for row in csv.DictReader(f)] == [trained.name] * 2
    summary = json.loads(out.read_text())
    assert summary["mixed_precision"] == "no" and summary["meta"]["model_name"] == trained.name
    with pytest.raises(SystemExit):
        validate.main(["--help"])
    assert "(suite: _results.csv, _parts/)" in " ".join(capsys.readouterr().out.split())


def test_offline_hub_id_fails_in_one_line_from_the_cli(preprocessed, tmp_path):
    proc = run([sys.executable, str(ROOT / "validate.py"), "--model", "hf-hub:timm/resnet18.a1_in1k",
                "--dataset", str(preprocessed), "--num_workers", "0"], HF_HUB_CACHE=str(tmp_path / "empty"))
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --model hf-hub:timm/resnet18.a1_in1k: ") and "Hub repo" in last


def test_two_processes_give_the_same_numbers(trained, preprocessed, tmp_path):
    batch, n = 3, datasets.load_from_disk(str(preprocessed))["validation"].num_rows
    assert n % (2 * batch), "the split must leave a padded tail batch across 2 processes, or this proves nothing"
    one = tmp_path / "one" / "r.json"
    evaluate(trained / "final", preprocessed, "--output", one, batch_size=batch)
    two = tmp_path / "two" / "r.json"
    ok(run([ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", str(free_port()),
            str(ROOT / "validate.py"), "--model", str(trained / "final"), "--dataset", str(preprocessed),
            "--batch_size", str(batch), "--num_workers", "0", "--output", str(two)]))
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert (a["num_processes"], b["num_processes"]) == (1, 2)
    assert b["n"] == a["n"] == n  # gather_for_metrics dropped the duplicated padding
    assert (b["top1"], b["top5"]) == (a["top1"], a["top5"])
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    for companion in ("r_per_class.json", "r_confused.json"):
        a_rows, b_rows = (json.loads((out.parent / companion).read_text()) for out in (one, two))
        assert b_rows["rows"] == a_rows["rows"] and b_rows["meta"]["num_processes"] == 2
        assert b_rows["meta"]["weights_sha256"] == a_rows["meta"]["weights_sha256"]


def test_other_class_names_warn_and_still_score(preprocessed, tmp_path, capsys):
    modeling.save_pretrained(modeling.create_model(TINY, num_classes=4), tmp_path / "other",
                             label_names=["cat", "dog", "cow", "owl"])
    result = evaluate(tmp_path / "other", preprocessed)
    assert result["n"] > 0
    assert "warning: --model's class names (['cat', 'dog', 'cow']...) are not the dataset's" in capsys.readouterr().err


def test_train_export_card_has_results_the_hub_reads(trained, preprocessed):
    card = huggingface_hub.ModelCard.load(trained / "final" / "README.md")
    logged = json.loads((trained / "metrics.jsonl").read_text().splitlines()[-1])
    name = json.loads((preprocessed / "source.json").read_text())["name"]  # the tree's: a subset, not ILSVRC-2012
    assert [(r.dataset_name, r.metric_name, r.metric_value) for r in card.data.eval_results] == [
        (name, "top-1 accuracy (%)", round(logged["val_top1"], 2)),
        (name, "top-5 accuracy (%)", round(logged["val_top5"], 2))]
    assert card.data.datasets is None  # no source.json saying it is the full ILSVRC-2012, no --hub_dataset_id
    assert "| output_dir |" not in card.text and "| num_workers |" not in card.text  # run plumbing is no recipe
    assert "topk(4)" in card.text  # 4 classes: top-5 would fail
    assert "**Training time:**" in card.text and "**Epochs:** 1\n" in card.text


ISOLATED_REMOTE_CODE = r"""
import importlib.util, json, sys
assert importlib.util.find_spec("modeling") is None and importlib.util.find_spec("imagenet_trainer") is None
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification, pipeline
folder, tensors, photo = sys.argv[1:]
io = load_file(tensors)
model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
with torch.no_grad():
    predicted = model(pixel_values=io["x"]).logits.argmax(-1)
top1 = 100.0 * (predicted == io["y"]).double().mean().item()
labels = [p["label"] for p in pipeline("image-classification", model=folder, trust_remote_code=True)(photo, top_k=4)]
print("RESULT " + json.dumps({"top1": top1, "labels": labels, "class": type(model).__module__}))
"""


def test_own_design_export_loads_in_transformers_without_project_code(trained, preprocessed, tmp_path):
    """The train.py export of blocknet_tiny (not a timm architecture): transformers' Auto class and pipeline with
    trust_remote_code=True, in a process that can import neither the repo nor an installed copy, give validate.py's
    top-1 on the same images and the dataset's human class names."""
    from timm.data import resolve_data_config

    from imagenet_trainer.data import EvalSet, collate, normalize
    from imagenet_trainer.ilsvrc import class_descriptions

    final = trained / "final"
    summary = evaluate(final, preprocessed)
    model = modeling.load_model(final)
    data_cfg = resolve_data_config(model=model)
    split = datasets.load_from_disk(str(preprocessed))["validation"]
    x, y = collate([EvalSet(split, summary["image_size"], data_cfg["crop_pct"], data_cfg["interpolation"])[i]
                    for i in range(len(split))])
    save_file({"x": normalize(x, data_cfg["mean"], data_cfg["std"]).contiguous(), "y": y}, tmp_path / "io.safetensors")
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"  # a real JPEG shipped offline
    proc = subprocess.run([sys.executable, "-I", "-c", ISOLATED_REMOTE_CODE, str(final), str(tmp_path / "io.safetensors"),
                           str(photo)], cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert out["class"].startswith("transformers_modules.")  # the folder's own modeling_blocknet.py
    assert out["top1"] == pytest.approx(summary["top1"], abs=1e-9)
    assert sorted(out["labels"]) == sorted(class_descriptions(preprocessed))  # human names, not wnids


def test_a_timm_tag_resolves_as_timm_does_from_the_offline_cache(preprocessed, tmp_path, monkeypatch):
    """--model test_resnet.r160_in1k is timm's name for timm/test_resnet.r160_in1k's weights, not a Hub repo of
    ours: read from the local Hub cache offline; missing there, the one-line error names HF_HUB_OFFLINE and the repo."""
    import timm
    from imagenet_trainer.ilsvrc import imagenet_wnids

    name = "test_resnet.r160_in1k"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    assert "HF_HUB_OFFLINE=1" in error_of(name, preprocessed) and "timm/test_resnet.r160_in1k" in error_of(
        name, preprocessed)
    with pytest.raises(ValueError, match=r"HF_HUB_OFFLINE=1 is set .* no copy of Hub repo 'timm/test_resnet"):
        modeling.create_model(name, pretrained=True)

    torch.manual_seed(0)
    weights = timm.create_model("test_resnet").state_dict()
    snapshot = tmp_path / "hub" / "models--timm--test_resnet.r160_in1k" / "snapshots" / ("b" * 40)
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, snapshot / "model.safetensors")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("b" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = modeling.create_model(name, pretrained=True)  # what train.py --model NAME --pretrained calls
    assert torch.equal(model.state_dict()["fc.weight"], weights["fc.weight"])

    split = datasets.load_from_disk(str(in1k_copy(preprocessed, tmp_path)))["validation"]
    summary = evaluate(name, tmp_path / "in1k")
    assert summary["n"] == len(split) and summary["image_size"] == 160  # timm's cfg for the tag


def in1k_copy(preprocessed: Path, tmp_path: Path) -> Path:
    """tmp_path/in1k: ILSVRC's 1000 classes, the fixture's 8 validation images (labels 0-3 are the first four wnids);
    cast on a copy: the cast writes a cache file beside the Arrow files it reads, which the shared fixture's manifest
    does not list."""
    from imagenet_trainer.ilsvrc import imagenet_wnids

    shutil.copytree(preprocessed, tmp_path / "copy")
    split = datasets.load_from_disk(str(tmp_path / "copy"))["validation"]
    split = split.cast_column("label", datasets.ClassLabel(names=imagenet_wnids()))
    datasets.DatasetDict({"validation": split}).save_to_disk(str(tmp_path / "in1k"))
    return tmp_path / "in1k"


def test_timm_weights_are_scored_at_timms_test_size_and_exports_at_their_own(preprocessed, tmp_path, monkeypatch):
    """timm's validate.py scores its weights at their pretrained_cfg's test_input_size and test_crop_pct (unless
    --use_train_size), the numbers of its results tables: resnet10t.c3_in1k, trained at 176 px crop 0.875, is scored
    at 224 px crop 0.95 by its timm name (single split and suite) and from a folder timm saved (a Hub copy);
    --image_size and --crop_pct win. This project's export and a train.py checkpoint of the same architecture are
    scored as train.py evaluated them, at its size and crop."""
    import timm
    from imagenet_trainer.ilsvrc import imagenet_wnids

    name = "resnet10t.c3_in1k"
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False)  # timm's pretrained_cfg of the tag, no download
    assert (model.pretrained_cfg["test_input_size"], model.pretrained_cfg["test_crop_pct"]) == ((3, 224, 224), 0.95)
    snapshot = tmp_path / "hub" / f"models--timm--{name}" / "snapshots" / ("c" * 40)
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, snapshot / "model.safetensors")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("c" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    in1k = in1k_copy(preprocessed, tmp_path)

    def scored_at(ref, *extra) -> tuple:
        summary = evaluate(ref, in1k, *extra, "--output", tmp_path / "s.json")
        return summary["image_size"], summary["crop_pct"], summary["meta"]["crop_pct"]

    assert scored_at(name) == (224, 0.95, 0.95)
    assert scored_at(name, "--image_size", 200, "--crop_pct", 0.9) == (200, 0.9, 0.9)
    suite = evaluate(name, in1k, "--image_sizes", "176,224", "--output", tmp_path / "suite.json")
    assert suite["image_size"] == 224 and {r["crop_pct"] for r in suite["results"]} == {0.95}
    assert suite["meta"]["crop_pct"] == 0.95
    timm.models.save_for_hf(model, tmp_path / "timm_saved", safe_serialization=True)
    assert json.loads((tmp_path / "timm_saved" / "config.json").read_text())["pretrained_cfg"]["test_crop_pct"] == 0.95
    assert scored_at(tmp_path / "timm_saved") == (224, 0.95, 0.95)
    ours = modeling.save_pretrained(model, tmp_path / "final", label_names=imagenet_wnids())
    assert scored_at(ours) == (176, 0.875, 0.875)
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000001"
    ckpt.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, ckpt / "model.safetensors")
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({"model": name, "image_size": 176}))
    assert scored_at(ckpt) == (176, 0.875, 0.875)


def test_a_damaged_or_foreign_export_is_one_line_naming_the_file(preprocessed, tmp_path, capsys):
    """What a copy cut short, a download of another library's model or a hand edit leaves in --model's folder: one line
    naming the file (timm and safetensors would raise from deep inside), before any scoring; an export that lacks
    its eval transform or its class names is scored with a warning saying so."""
    wnids = datasets.load_from_disk(str(preprocessed))["validation"].features["label"].names
    good = tmp_path / "good"
    modeling.save_pretrained(modeling.create_model(TINY, num_classes=4), good, label_names=wnids)

    def broken(name: str, weights: bytes | None = None, config=None) -> Path:
        folder = shutil.copytree(good, tmp_path / name)
        if weights is not None:
            (folder / "model.safetensors").write_bytes(weights)
        if config is not None:
            text = config if isinstance(config, str) else json.dumps(config)
            (folder / "config.json").write_text(text)
        return folder

    weights, config = (good / "model.safetensors").read_bytes(), json.loads((good / "config.json").read_text())
    for name, cut in (("half", weights[:len(weights) // 2]), ("empty", b"")):
        folder = broken(name, weights=cut)
        message = error_of(folder, preprocessed)
        assert message.startswith(f"error: --model {folder}: {folder / 'model.safetensors'} does not read (Error "
                                  "while deserializing header: "), message
        assert message.endswith("): a cut or damaged copy; copy, download or export it again")
    cut = broken("cut_config", config=(good / "config.json").read_text()[:100])
    assert error_of(cut, preprocessed).startswith(f"error: --model {cut}: {cut / 'config.json'} is not JSON (")
    transformers_config = {"architectures": ["ViTForImageClassification"], "model_type": "vit"}
    assert error_of(broken("vit", config=transformers_config), preprocessed).endswith(
        "config.json names no timm 'architecture' (it is a transformers config: ['ViTForImageClassification']); "
        "validate.py scores timm models and this project's exports")
    assert error_of(broken("listed", config=[config]), preprocessed).endswith(
        "config.json holds a JSON list, not the object a timm config.json is")
    assert error_of(broken("text_count", config={**config, "num_classes": "4"}), preprocessed).endswith(
        "config.json: 'num_classes' is '4', not a whole number")
    flat = broken("no_pretrained_cfg", config={k: v for k, v in config.items() if k != "pretrained_cfg"})
    assert error_of(flat, preprocessed).startswith(
        f"error: --model {flat}: {flat / 'config.json'} does not build a timm model (TypeError: ")
    assert "Traceback" not in capsys.readouterr().err

    pretrained_cfg = {k: v for k, v in config["pretrained_cfg"].items() if k not in ("input_size", "label_names")}
    unnamed = broken("unnamed", config={**{k: v for k, v in config.items() if k not in ("id2label", "label2id")},
                                        "pretrained_cfg": pretrained_cfg})
    assert evaluate(unnamed, preprocessed)["n"] > 0
    said = capsys.readouterr().err
    assert (f"warning: --model {unnamed}: its config.json's pretrained_cfg has no input_size: scored with timm's "
            "defaults, which may not be the eval transform of these weights (--image_size set it)") in said
    assert (f"warning: --model {unnamed}: its config.json names no classes: scoring by class index, unchecked against "
            "the dataset's class names and order") in said
    evaluate(good, preprocessed)
    assert "warning" not in capsys.readouterr().err

    (tmp_path / "no_card").mkdir()
    for name in ("config.json", "model.safetensors"):  # what a download of only the weights leaves
        shutil.copy(good / name, tmp_path / "no_card" / name)
    assert error_of(tmp_path / "no_card", preprocessed, "--update_model_card") == (
        f"error: --update_model_card: {tmp_path / 'no_card'} has no README.md (model card) to write the results into; "
        "export it with modeling.save_pretrained (train.py does), or leave the flag out")


def test_a_bit_flipped_export_is_one_line_before_scoring(preprocessed, tmp_path, capsys):
    """A bit flipped in the tensor data of an export's model.safetensors (the size and header as saved) reads as other
    weights: the CRC-32 saved in its header ends validate.py in one line naming the file, before any scoring."""
    wnids = datasets.load_from_disk(str(preprocessed))["validation"].features["label"].names
    folder = modeling.save_pretrained(modeling.create_model(TINY, num_classes=4), tmp_path / "export",
                                      label_names=wnids)
    flip_a_tensor_byte(folder / "model.safetensors")
    assert error_of(folder, preprocessed) == (
        f"error: --model {folder}: {folder / 'model.safetensors'}: its tensors differ from the CRC-32 saved with them "
        "(a damaged copy); copy the export again or re-export it")
    assert "Traceback" not in capsys.readouterr().err


# validate.py, stopped by a signal the way a terminal (Ctrl-C) or a scheduler (SIGTERM) stops a job: sent to the
# whole process group, DataLoader workers and their fork server included, before batch 2 of the split is asked for
SIGNALLED = r"""
import os, runpy, signal, sys
from imagenet_trainer import metrics
evaluate = metrics.evaluate
def signalled(accelerator, net, batches, *args, **kwargs):
    def feed():
        for k, batch in enumerate(batches):
            if k == 2:
                os.killpg(0, getattr(signal, os.environ["STOP_SIGNAL"]))
            yield batch
    return evaluate(accelerator, net, feed(), *args, **kwargs)
metrics.evaluate = signalled
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


# the same, the signal sent right after the loader started its second worker: the loader, cut while it starts them,
# never tells them to leave
SIGNALLED_AT_START = r"""
import os, runpy, signal, sys
import multiprocessing.process
start, started = multiprocessing.process.BaseProcess.start, []
def signalled(self):
    start(self)
    started.append(self)
    if len(started) == 2:
        os.killpg(0, getattr(signal, os.environ["STOP_SIGNAL"]))
multiprocessing.process.BaseProcess.start = signalled
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def group_members(pgid: int) -> list[str]:
    """The live (not zombie) processes of process group ``pgid``: ``pid name``."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" (", 1)
        except OSError:
            continue
        name, fields = rest.rsplit(") ", 1)
        state, _, group = fields.split()[:3]
        if int(group) == pgid and state != "Z":
            alive.append(f"{pid} {name}")
    return alive


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads process groups from /proc")
@pytest.mark.parametrize("stop, status, said, script", [("SIGINT", 130, "Ctrl-C", SIGNALLED),
                                                         ("SIGTERM", 143, "SIGTERM", SIGNALLED),
                                                         ("SIGTERM", 143, "SIGTERM", SIGNALLED_AT_START)],
                         ids=["SIGINT", "SIGTERM", "SIGTERM-as-workers-start"])
def test_ctrl_c_or_sigterm_mid_evaluation_is_one_line_and_leaves_no_worker(trained, preprocessed, tmp_path, stop,
                                                                            status, said, script):
    """The workers and their fork server block the stop signals (imagenet_trainer/worker_processes.py): killed by
    SIGTERM's default action, validate.py left them running, holding its stdout and stderr open, until a SIGKILL.
    Now SIGTERM unwinds as Ctrl-C does: one line, the shell's status, nothing written, no process left; also when it
    comes while the loader starts its workers (the exit waited for them for good)."""
    out = tmp_path / "r.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "STOP_SIGNAL": stop}
    with open(tmp_path / "stdout", "w") as stdout, open(tmp_path / "stderr", "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", script, str(ROOT / "validate.py"), "--model",
                                 str(trained / "final"), "--dataset", str(preprocessed), "--batch_size", "2",
                                 "--num_workers", "2", "--output", str(out)], cwd=ROOT, env=env, stdout=stdout,
                                stderr=stderr, start_new_session=True,
                                # Ctrl-C as from a terminal: a shell's background job (`cmd &`) inherits it ignored
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            assert proc.wait(timeout=300) == status, (tmp_path / "stderr").read_text()[-3000:]
            for _ in range(100):  # the fork server and the workers end a moment after the process
                if not group_members(proc.pid):
                    break
                time.sleep(0.1)
            left = group_members(proc.pid)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # what a failed test would leave
            except ProcessLookupError:
                pass
    err = (tmp_path / "stderr").read_text()
    assert left == [], (left, err[-3000:])
    assert err.strip().splitlines()[-1] == (f"interrupted ({said}): nothing was written (a split is scored whole): "
                                            "the same command scores it again"), err[-3000:]
    assert "Traceback" not in err and not out.exists()
