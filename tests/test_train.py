"""train.py end to end on CPU: real subprocesses, real accelerate launches, real Arrow data."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from hub_server import LocalHub
from safetensors.torch import load_file

from imagenet_trainer import checkpoints
from imagenet_trainer.config import parse_config
import train
from train import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
ACCELERATE = str(Path(sys.executable).parent / "accelerate")
TINY = "blocknet_tiny"  # our smallest design: a step takes milliseconds on CPU


def train_cmd(dataset, out, *extra, launcher=("python",)):
    base = [sys.executable] if launcher == ("python",) else [ACCELERATE, "launch", *launcher]
    return [*base, str(ROOT / "train.py"), "--model", TINY, "--dataset", str(dataset), "--output_dir", str(out),
            "--image_size", "32", "--batch_size", "8", "--num_workers", "0", "--warmup_epochs", "0.5",
            "--log_every_steps", "1", *map(str, extra)]


def run(cmd, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, **kw)
    return proc


def ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def kill_at_checkpoint(cmd, env: dict, out: Path, step: int, last_step: int) -> None:
    """Start ``cmd``, SIGKILL it and every process under it (launcher, ranks, DataLoader workers: torchrun starts
    ranks in sessions of their own) once ``out``'s checkpoint of ``step`` exists, with no chance to clean up; then
    drop the saves the kill let land after it, so that "latest" is that checkpoint every time."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = out / "checkpoints" / f"step_{step:08d}"
    deadline = time.time() + 300
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    if proc.poll() is None:
        for p in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
            p.send_signal(signal.SIGKILL)
    proc.wait()
    assert target.exists(), "the run ended before the checkpoint to kill at"
    assert not (out / "checkpoints" / f"step_{last_step:08d}").exists(), "killed too late to test anything"
    for later in (out / "checkpoints").glob("step_*"):
        if later.name > target.name:
            shutil.rmtree(later)


def rows(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def readme_metrics_columns() -> list[str]:
    """The metrics.jsonl columns README.md's run-folder paragraph lists ("one row per epoch: `epoch, step, ...`")."""
    text = (ROOT / "README.md").read_text().split("`metrics.jsonl` (one row per epoch:", 1)[1]
    return [column.strip() for column in text.split("`", 2)[1].split(",")]


def test_few_steps_end_to_end(preprocessed, tmp_path):
    out = tmp_path / "run"
    ok(run(train_cmd(preprocessed, out, "--epochs", "2", "--save_every_steps", "1", "--keep_last", "1",
                     "--ema_decay", "0.9", "--report_to", "tensorboard", "--eval_flip",
                     "--min_image_size", "16", "--ramp_start_epoch", "0", "--ramp_end_epoch", "1")))
    metrics = rows(out)
    assert [r["epoch"] for r in metrics] == [1, 2]
    assert [r["image_size"] for r in metrics] == [16, 32]  # progressive resizing: 16 px first, 32 from epoch 1
    for key in ("epoch", "step", "train_loss", "val_top1", "val_top5", "lr", "images_per_sec", "data_wait_frac",
                "first_batch_s", "images_per_sec_steady", "data_wait_steady_frac", "ema_val_top1"):
        assert key in metrics[-1], key
    listed = readme_metrics_columns()  # what README.md tells users to read, EMA's columns "when on"
    assert set(metrics[-1]) == {*listed, *(f"ema_{c}" for c in listed if c.startswith("val_"))}, listed
    assert 0 <= metrics[-1]["val_top1"] <= metrics[-1]["val_top5"] <= 100
    # the wait for an epoch's first batch is counted apart: what is left is the loader's steady share
    for r in metrics:
        assert r["first_batch_s"] > 0 and 0 <= r["data_wait_steady_frac"] < r["data_wait_frac"] <= 1
        assert r["images_per_sec_steady"] > r["images_per_sec"] > 0
    # where each epoch's wall time went: --save_every_steps 1 saves mid-epoch, and those saves are not training time
    steps = [r["step"] for r in metrics]
    for r, done in zip(metrics, [steps[0], steps[1] - steps[0]]):
        assert r["train_s"] > 0 and r["eval_s"] > 0 and r["export_s"] >= 0 and r["checkpoint_s"] > 0
        assert abs(r["images_per_sec"] * r["train_s"] - done * 8) < 1e-6 * done * 8  # --batch_size 8, 1 process
    assert metrics[0]["export_s"] > 0  # the first epoch is the best so far: final/ is written
    # self-describing run folder
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"] == TINY and config["epochs"] == 2
    info = json.loads((out / "run_info.json").read_text())
    assert "train.py" in " ".join(info["command"]) and info["versions"]["torch"]
    assert 0 < info["startup_s"] < 600  # imports, data, model, prepare: the launch's cost before its first step
    split = info["startup_split_s"]  # the same by phase, in main's order, adding up to it (to the rounding)
    assert list(split) == ["imports", "accelerator", "data_and_model", "loaders", "prepare", "resume"]
    assert all(v >= 0 for v in split.values()) and split["imports"] > 0
    assert sum(split.values()) == pytest.approx(info["startup_s"], abs=0.04)
    assert list(out.glob("**/events.out.tfevents.*")), "no tensorboard events"
    # the tracker's config: the flags, and the global batch and absolute peak LR the optimizer took from them
    tracked = yaml.safe_load(next(out.glob("imagenet-trainer/*/hparams.yml")).read_text())
    assert tracked["lr"] == 0.1 and tracked["global_batch"] == 8 and tracked["peak_lr"] == pytest.approx(0.1 * 8 / 256)
    # keep-last-1 plus the best checkpoint; no unfinished temp folders
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert len(ckpts) in (1, 2) and not any(n.startswith(".tmp") for n in ckpts)
    for name in ("config.yaml", "run_info.json", "metrics.jsonl", "final", "run.lock"):  # README's run folder
        assert (out / name).exists(), name
    assert all((out / "checkpoints" / n / "checkpoint_files.json").is_file() for n in ckpts)
    assert f"step_{metrics[-1]['step']:08d}" in ckpts
    # the exported backbone
    final = out / "final"
    assert (final / "model.safetensors").is_file() and (final / "config.json").is_file()
    card = (final / "README.md").read_text()
    assert "top1" in card.lower() or "top-1" in card.lower()


def test_cli_errors_are_one_line(preprocessed, tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("epochs: 1\nlearning_rate: 0.1\n")
    # a config error (the rest of them: test_flag_ranges_are_checked_before_anything_starts, in-process), then
    # errors found once the model and the data are built
    for extra, expected in ((["--config", bad_yaml], "unknown key 'learning_rate'"),
                            (["--model", "alexnet", "--drop_path", "0.1"], "alexnet takes no drop_path_rate"),
                            (["--optimizer", "nope"], "--optimizer nope"),
                            (["--eval_split", "nope"], "--eval_split 'nope'"),
                            (["--eval_split", "test"], "split 'test': 3 of 3 images have no label")):
        proc = run(train_cmd(preprocessed, tmp_path / "r", *extra))
        assert proc.returncode != 0
        assert expected in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]
    proc = run(train_cmd(tmp_path / "nope", tmp_path / "r"))
    assert proc.returncode != 0 and "nope" in proc.stderr.strip().splitlines()[-1]
    (tmp_path / "used" / "checkpoints").mkdir(parents=True)  # a fresh run never mixes into an earlier one
    proc = run(train_cmd(preprocessed, tmp_path / "used"))
    assert proc.returncode != 0 and "--resume_from_checkpoint latest" in proc.stderr.strip().splitlines()[-1]


def test_accelerate_launch_options_given_to_train_py_say_where_they_go(tmp_path, capsys):
    """--mixed_precision (or --num_processes, --multi_gpu, --config_file...) given to train.py, or a recipe key
    mixed_precision, failed with argparse's bare "unrecognized arguments" or "unknown key" and 50 names: the line
    says they are accelerate launch's, and how to give them; --help says where device, precision and distribution
    are set. A flag of neither keeps argparse's words."""
    proc = run([sys.executable, str(ROOT / "train.py"), "--dataset", str(tmp_path / "ds"), "--mixed_precision", "bf16"])
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: --mixed_precision is an accelerate launch option: accelerate launch --mixed_precision bf16 train.py "
        "... (or set it in accelerate_configs/*.yaml)"), proc.stderr[-2000:]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("epochs: 1\nmixed_precision: bf16\n")
    with pytest.raises(SystemExit, match=re.escape(f"error: --config {recipe}: key 'mixed_precision' is an accelerate "
                                                   "launch option: accelerate launch --mixed_precision bf16 train.py")):
        train.main(["--dataset", "ds", "--config", str(recipe)])
    for argv, said in ((["--multi_gpu", "--epochs", "2"], "--multi_gpu is an accelerate launch option: accelerate "
                        "launch --multi_gpu train.py ..."),
                       (["--num-processes=2"], "accelerate launch --num_processes 2 train.py"),
                       (["--config_file", "accelerate_configs/cpu.yaml"], "accelerate launch --config_file "
                        "accelerate_configs/cpu.yaml train.py ..."),
                       (["--gradient_accumulation_steps", "4"], "train.py's own is --grad_accum_steps"),
                       (["--learning_rate", "0.1"], "unrecognized arguments: --learning_rate 0.1 (see --help)")):
        with pytest.raises(SystemExit, match=re.escape(said)):
            train.main(["--dataset", "ds", *argv])
    with pytest.raises(SystemExit) as e:
        train.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert e.value.code == 0 and "are not flags of train.py: accelerate launch sets them" in help_text, help_text


def test_resume_refuses_another_batch_layout(preprocessed, tmp_path):
    out = tmp_path / "run"
    ok(run(train_cmd(preprocessed, out, "--epochs", "1")))
    proc = run(train_cmd(preprocessed, out, "--epochs", "2", "--batch_size", "4", "--resume_from_checkpoint", "latest"))
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "it was saved with 1 process x --batch_size 8 x --grad_accum_steps 1 = 8 images per step, this launch has 1 x 4 "
        "x 1 = 4; resume with --batch_size 8 --grad_accum_steps 1 (the same 8-image micro-batches, processes x "
        "accumulation = 1)")
    for extra, said in ((("--ema_decay", "0.9"), "EMA off"), (("--model", "blocknet_mobile"), "--model blocknet_tiny")):
        proc = run(train_cmd(preprocessed, out, "--epochs", "2", "--resume_from_checkpoint", "latest", *extra))
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert f"was saved with {said}" in proc.stderr.strip().splitlines()[-1]


def test_a_rollback_resume_applies_its_own_optimizer_flags_and_sets_the_later_checkpoints_aside(preprocessed,
                                                                                                 tmp_path):
    """Resumed from an older checkpoint with other --weight_decay and --momentum: the optimizer's state comes from the
    checkpoint and its settings from the flags (what config.yaml and the card record), and the checkpoints past it,
    the run it leaves, are moved aside: latest and rotation see this run's own."""
    out = tmp_path / "run"
    ok(run(train_cmd(preprocessed, out, "--epochs", "2")))  # --keep_last 2: a checkpoint at each epoch's end
    first, second = checkpoints.step_folders(out / "checkpoints")
    left = {k: v.clone() for k, v in load_file(second / "model.safetensors").items()}
    first_row, second_row = rows(out)
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (first_row, {**second_row,
                                                                                         "val_top1": 100.0})))
    resumed = ok(run(train_cmd(preprocessed, out, "--epochs", "2", "--weight_decay", "0.05", "--momentum", "0.5",
                               "--resume_from_checkpoint", first)))
    said = resumed.stdout + resumed.stderr
    assert "this launch's apply: --momentum 0.9 -> 0.5, --weight_decay 5e-05 -> 0.05" in said, said[-3000:]
    (aside,) = (out / "checkpoints" / checkpoints.SET_ASIDE).iterdir()
    assert f"the checkpoints and 1 metrics.jsonl row past step {int(first.name.split('_')[1])} " in said, said[-3000:]
    assert f"moved to {aside}" in said and sorted(p.name for p in aside.iterdir()) == ["metrics.jsonl", second.name]
    # the history is this run's alone: each epoch once, the left run's second epoch with its checkpoint
    assert [r["epoch"] for r in rows(out)] == [1, 2]
    assert [json.loads(line)["epoch"] for line in (aside / "metrics.jsonl").read_text().splitlines()] == [2]
    # the left run's second epoch beat the first (its row says 100%, as written before the resume): it exported to
    # final/, which is not this run's until it beats the first epoch, and the log says so
    assert (f"warning: {out / 'final'} holds the model the run this resume leaves exported (val top-1 100.00%), not "
            f"this run's: it is replaced at this run's first evaluation above ") in said, said[-3000:]
    assert checkpoints.step_folders(out / "checkpoints") == [first, second]  # the second written again, by this run
    for folder, wanted in ((second, [(0.0, 0.5), (0.05, 0.5)]), (aside / second.name, [(0.0, 0.9), (5e-5, 0.9)])):
        groups = torch.load(folder / "optimizer.bin", weights_only=True)["param_groups"]
        assert sorted((g["weight_decay"], g["momentum"]) for g in groups) == wanted, folder
    now = load_file(second / "model.safetensors")
    assert any(not torch.equal(left[k], now[k]) for k in left), "the new flags changed nothing"
    assert yaml.safe_load((second / "config.yaml").read_text())["weight_decay"] == 0.05


def test_an_odd_batch_with_mixup_is_refused_for_a_new_run_and_warned_of_for_a_saved_one(preprocessed, tmp_path):
    """An odd --batch_size with mixup/cutmix is refused when the run starts (the middle image would pair with itself),
    under `--resume_from_checkpoint latest` too when nothing was saved yet; a run saved with one (begun before the
    check, here without mixup) goes on with it, warned, since a resume cannot change the batch."""
    out, odd = tmp_path / "run", ("--batch_size", "7", "--epochs", "2")
    fresh = run(train_cmd(preprocessed, out, *odd, "--mixup_alpha", "0.2", "--resume_from_checkpoint", "latest"))
    assert fresh.returncode == 1 and "Traceback" not in fresh.stderr, fresh.stderr[-3000:]
    assert fresh.stderr.strip().splitlines()[-1] == ("error: --batch_size must be even with --mixup_alpha or "
                                                     "--cutmix_alpha (each image is mixed with its mirror in the "
                                                     "batch), got 7")
    shutil.rmtree(out, ignore_errors=True)  # whatever the refused start left
    ok(run(train_cmd(preprocessed, out, *odd, "--max_train_steps", "2")))
    resumed = ok(run(train_cmd(preprocessed, out, *odd, "--mixup_alpha", "0.2", "--resume_from_checkpoint", "latest")))
    assert "warning: --batch_size 7 is odd: the middle image of each batch is mixed with itself" in resumed.stdout


def test_an_epoch_cut_by_max_train_steps_and_resumed_reports_the_whole_epochs_loss(preprocessed, tmp_path):
    ok(run(train_cmd(preprocessed, tmp_path / "straight", "--epochs", "1")))
    (reference,) = rows(tmp_path / "straight")
    out = tmp_path / "cut"
    # the cap falls within --warmup_epochs 0.5, where the capped run's LR (its cosine fitted to the cap) is the
    # straight run's: the same steps, so the same losses
    ok(run(train_cmd(preprocessed, out, "--epochs", "1", "--max_train_steps", reference["step"] // 2)))
    card = (out / "final" / "README.md").read_text()  # the Epochs line counts against the schedule the cap set
    assert f"- **Epochs:** 0.5 (--max_train_steps {reference['step'] // 2} of --epochs 1)\n" in card
    ok(run(train_cmd(preprocessed, out, "--epochs", "1", "--resume_from_checkpoint", "latest")))
    cut, whole = rows(out)
    assert cut["step"] == reference["step"] // 2 and whole["step"] == reference["step"]
    assert whole["train_loss"] == pytest.approx(reference["train_loss"], rel=1e-6)


@pytest.mark.parametrize("argv, message", [
    (["--ema_decay", "1.5"], "--ema_decay must be in [0, 1)"),
    (["--max_train_steps", "-3"], "--max_train_steps must be a finite number >= 0"),
    (["--warmup_epochs", "inf"], "--warmup_epochs must be a finite number >= 0 (0: off), got inf"),
    (["--momentum", "1"], "--momentum must be in [0, 1)"),
    (["--lr", "nan"], "--lr must be a positive number, got nan"),
    (["--random_erase", "2"], "--random_erase must be a probability in [0, 1]"),
    (["--mixup_alpha", "-1"], "--mixup_alpha must be a finite number >= 0"),
    (["--report_to", "foo"], "--report_to must be one of none, all, "),
    (["--report_to", ""], "--report_to must be one of none, all, "),
    (["--report_to", "foo.bar"], "--report_to must be one of none, all, "),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--dataset", ""], "--dataset is required (preprocess.py output folder"),
    (["--min_image_size", "16"], "--ramp_end_epoch must be in [--ramp_start_epoch + 1, --epochs - 1]"),
    (["--min_image_size", "16", "--ramp_end_epoch", "80", "--epochs", "16"], "--ramp_end_epoch must be in"),
    # --image_size never trained (epoch 2 of epochs 0-1), or first a ramp-end epoch late
    (["--min_image_size", "16", "--ramp_end_epoch", "2", "--epochs", "2"], "--ramp_end_epoch must be in"),
    (["--min_image_size", "16", "--ramp_start_epoch", "1", "--ramp_end_epoch", "1", "--epochs", "4"],
     "--ramp_end_epoch must be in"),
    (["--report_to", "comet_ml"], "--report_to must be a tracker whose package is installed"),
    (["--drop_rate", "1"], "--drop_rate must be in [0, 1) or none"),
    (["--epochs", "two"], "--epochs must be an int, got 'two'"),
    (["--push_to_hub"], "--hub_model_id must be a Hub repo id USER/NAME"),
    (["--keep_last", "0"], "--keep_last must be at least 1"),
    (["--batch_size", "7", "--cutmix_alpha", "1"], "--batch_size must be even with --mixup_alpha or --cutmix_alpha"),
    (["--scale_min", "0"], "--scale_min must be in (0, 1] (a share of the image's area), got 0.0"),
    (["--seed", str(2**64)], "--seed must be an integer in [-2**63, 2**64)"),  # else torch.manual_seed's traceback
])
def test_flag_ranges_are_checked_before_anything_starts(argv, message):
    with pytest.raises(SystemExit) as err:
        parse_config(TrainConfig, ["--dataset", "ds", *argv])
    assert message in str(err.value.code) and "\n" not in str(err.value.code)
    assert parse_config(TrainConfig, ["--dataset", "ds", "--auto_augment", "none"]).auto_augment == ""
    assert parse_config(TrainConfig, ["--dataset", "ds", "--seed", str(2**64 - 1)]).seed == 2**64 - 1  # getrandbits(64)


def test_a_bad_auto_augment_names_the_flag_and_its_command_line_spellings():
    """"none" is "" on the command line (--help says so), not Python's None; the one flag at fault, no list of four."""
    with pytest.raises(SystemExit) as err:
        parse_config(TrainConfig, ["--dataset", "ds", "--auto_augment", "xx"])
    assert str(err.value.code) == 'error: --auto_augment \'xx\': use "" (none), ra or ta'


def test_a_run_that_ends_within_the_warmup_says_its_lr_never_leaves_it():
    """--max_train_steps fits the cosine to the cap but keeps --warmup_epochs: a cap within the warmup ends the run
    below the peak LR, and the log says so; a cap past it says nothing."""
    import modeling  # noqa: PLC0415
    from train import build_optimizer  # noqa: PLC0415

    model = modeling.create_model(TINY, num_classes=4)
    cfg = parse_config(TrainConfig, ["--dataset", "ds", "--max_train_steps", "4", "--warmup_epochs", "1"])
    said = []
    _, lr_at = build_optimizer(model, cfg, num_processes=1, steps_per_epoch=10, total_steps=4, print_fn=said.append)
    peak = cfg.lr * cfg.batch_size / 256
    assert lr_at(3) == pytest.approx(peak * 4 / 10)  # the warmup's 4th of 10 steps: not shortened to the cap
    assert said == [f"note: --max_train_steps 4 ends the run within the 10 warmup steps of --warmup_epochs 1, which "
                    f"it does not shorten: the LR never leaves warmup (last step {peak * 0.4:.3g}, peak {peak:.3g})"]
    said.clear()
    build_optimizer(model, cfg, num_processes=1, steps_per_epoch=2, total_steps=4, print_fn=said.append)
    assert said == []


def test_a_min_lr_above_the_scaled_peak_is_stated():
    """--min_lr is absolute, the peak is --lr x global batch / 256: a floor above the peak turns the cosine into a
    rise after warmup, which the log says; a floor below it says nothing."""
    import modeling  # noqa: PLC0415
    from train import build_optimizer  # noqa: PLC0415

    model = modeling.create_model(TINY, num_classes=4)
    cfg = parse_config(TrainConfig, ["--dataset", "ds", "--lr", "0.1", "--batch_size", "64", "--min_lr", "0.05"])
    said = []
    _, lr_at = build_optimizer(model, cfg, num_processes=1, steps_per_epoch=10, total_steps=100,
                               print_fn=said.append)
    assert lr_at(99) > lr_at(10) and said == [
        "note: --min_lr 0.05 is above the peak LR 0.025 (--lr 0.1 x global batch 64 / 256): the LR rises from the "
        "peak to --min_lr after warmup instead of decaying"]
    said.clear()
    build_optimizer(model, cfg, num_processes=4, steps_per_epoch=10, total_steps=100, print_fn=said.append)
    assert said == []  # peak 0.1 on 4 processes


def test_pretrained_starts_from_the_saved_weights(preprocessed, tmp_path):
    ok(run(train_cmd(preprocessed, tmp_path / "first", "--epochs", "1")))
    export = tmp_path / "first" / "final"
    proc = run(train_cmd(preprocessed, tmp_path / "x", "--model", f"local-dir:{export}"))
    assert proc.returncode != 0 and "add --pretrained" in proc.stderr.strip().splitlines()[-1]
    # one step at a negligible LR: the parameters must still be the export's (random init would be far off)
    ok(run(train_cmd(preprocessed, tmp_path / "tuned", "--model", f"local-dir:{export}", "--pretrained",
                     "--lr", "1e-12", "--warmup_epochs", "0", "--max_train_steps", "1")))
    import modeling  # noqa: PLC0415
    before, after = modeling.load_model(str(export)), modeling.load_model(str(tmp_path / "tuned" / "final"))
    after_params = dict(after.named_parameters())
    for name, p in before.named_parameters():
        assert torch.allclose(p, after_params[name], atol=1e-6), name


def test_push_without_token_fails_at_startup(preprocessed, tmp_path):
    proc = run(train_cmd(preprocessed, tmp_path / "r", "--push_to_hub", "--hub_model_id", "me/tiny"))
    assert proc.returncode != 0
    assert "--push_to_hub" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "r" / "metrics.jsonl").exists()  # refused before training


def test_nan_loss_stops_and_keeps_last_good_checkpoint(preprocessed, tmp_path):
    out = tmp_path / "run"
    proc = run(train_cmd(preprocessed, out, "--epochs", "3", "--lr", "1e30", "--warmup_epochs", "0",
                         "--save_every_steps", "1", "--optimizer", "sgd"))
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "loss is" in last and ("nan" in last or "inf" in last), proc.stderr[-2000:]
    saved = sorted((out / "checkpoints").glob("step_*"))  # README: resume from the checkpoint the line names
    assert last.endswith(f"then --resume_from_checkpoint {saved[-1]}." if saved else "no checkpoint was saved yet).")
    for ckpt in (out / "checkpoints").glob("step_*"):
        weights = load_file(ckpt / "model.safetensors")
        assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


def test_worker_processes_train_the_same_weights_as_none(preprocessed, tmp_path):
    # with workers the train batches go through reused shared-memory slots (data.ring); an epoch boundary inside
    # the run and the progressive-resizing ramp use a prefix of a slot
    common = ("--epochs", "3", "--min_image_size", "24", "--ramp_start_epoch", "0", "--ramp_end_epoch", "2")
    for workers in (0, 2):
        ok(run(train_cmd(preprocessed, tmp_path / str(workers), *common, "--num_workers", workers)))
    a, b = (load_file(tmp_path / str(w) / "final" / "model.safetensors") for w in (0, 2))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the workers' fork server started with train.py's first lines, its imports beside train.py's own, not after
    # them (imagenet_trainer/worker_processes.py); no workers, no server
    none, two = (json.loads((tmp_path / str(w) / "run_info.json").read_text()) for w in (0, 2))
    assert none["worker_server_started_s"] is None
    assert 0 <= two["worker_server_started_s"] < two["startup_split_s"]["imports"]


def test_kill_and_resume_is_bitwise_exact(preprocessed, tmp_path):
    common = ("--epochs", "3", "--save_every_steps", "1", "--keep_last", "10", "--auto_augment", "ta",
              "--mixup_alpha", "0.2", "--cutmix_alpha", "1.0", "--random_erase", "0.25", "--ema_decay", "0.9",
              "--num_workers", "2")
    ok(run(train_cmd(preprocessed, tmp_path / "straight", *common)))
    reference = rows(tmp_path / "straight")
    steps_per_epoch, last_step = reference[0]["step"], reference[-1]["step"]
    assert steps_per_epoch >= 2, "the fixture must give a mid-epoch step to resume from"
    mid_epoch = steps_per_epoch + 1  # the first step of epoch 2 (index 1): a checkpoint inside the epoch

    out = tmp_path / "killed"
    kill_at_checkpoint(train_cmd(preprocessed, out, *common), {**os.environ, "OMP_NUM_THREADS": "1",
                                                               "HF_HUB_OFFLINE": "1"}, out, mid_epoch, last_step)
    resumed = ok(run(train_cmd(preprocessed, out, *common, "--resume_from_checkpoint", "latest")))
    assert f"at epoch 1, step {mid_epoch}" in resumed.stdout + resumed.stderr
    # the first launch's record is kept; the resume adds its own
    assert "--resume_from_checkpoint" not in json.loads((out / "run_info.json").read_text())["command"]
    (record,) = (out / "resumes").iterdir()
    assert yaml.safe_load((record / "config.yaml").read_text())["resume_from_checkpoint"] == "latest"
    a = load_file(tmp_path / "straight" / "checkpoints" / f"step_{last_step:08d}" / "model.safetensors")
    b = load_file(out / "checkpoints" / f"step_{last_step:08d}" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert rows(out)[-1]["val_top1"] == reference[-1]["val_top1"]
    # the resumed epoch's train_loss covers the whole epoch, not only the part after the resume
    assert [r["train_loss"] for r in rows(out)] == pytest.approx([r["train_loss"] for r in reference], rel=1e-5)


def test_two_process_ddp_on_cpu(preprocessed, tmp_path):
    single, double = tmp_path / "one", tmp_path / "two"
    ok(run(train_cmd(preprocessed, single, "--epochs", "1")))
    proc = ok(run(train_cmd(preprocessed, double, "--epochs", "1", "--ema_decay", "0.9",
                            launcher=("--multi_gpu", "--num_processes", "2", "--main_process_port", "29517"))))
    # --batch_size is per process and --lr per 256 images: the log and the card give what the optimizer trained with
    assert proc.stdout.count("global batch 16 = 8 x 1 accumulation x 2 processes; peak lr 0.00625 (0.1 per 256 "
                             "images)") == 1, proc.stdout[-3000:]
    card = (double / "final" / "README.md").read_text()
    for row in ("| global batch (images per optimizer step: batch_size x grad_accum_steps x processes) | 16 |",
                "| peak lr (absolute, the schedule's at the end of warmup: lr x global batch / 256) | 0.00625 |",
                "| batch_size | 8 |"):
        assert row in card, card[card.find("## Training"):]
    assert "ema_val_top1" in rows(double)[-1]
    info = json.loads((double / "run_info.json").read_text())
    assert info["num_processes"] == 2 and "MULTI_CPU" in info["distributed_type"]
    # the ranks split the data: an epoch takes half the optimizer steps, and one process writes the outputs
    assert rows(double)[-1]["step"] * 2 == rows(single)[-1]["step"]
    assert len(rows(double)) == 1
    # evaluation saw every validation image exactly once (gather_for_metrics drops the padded duplicates)
    assert rows(double)[-1]["val_n"] == rows(single)[-1]["val_n"]


def test_it_learns_digits(digits_dataset, tmp_path):
    out = tmp_path / "digits"
    ok(run(train_cmd(digits_dataset, out, "--epochs", "8", "--batch_size", "32", "--lr", "1.6", "--scale_min", "0.8",
                     "--warmup_epochs", "1", "--label_smoothing", "0.0", "--weight_decay", "5e-4",
                     "--num_workers", "2")))
    assert rows(out)[-1]["val_top1"] >= 90.0, rows(out)


@pytest.mark.parametrize("fail", [False, True])
def test_push_at_the_end_to_a_local_hub(preprocessed, tmp_path, fail):
    """--push_to_hub uploads the final export over HTTP to tests/hub_server.py's local Hub; a refused commit ends
    in one line naming the retry, the export kept, and the same command resumed from its last checkpoint pushes."""
    out = tmp_path / "run"
    cmd = train_cmd(preprocessed, out, "--epochs", "1", "--push_to_hub", "--hub_model_id", "me/tiny",
                    *(["--hub_private"] if fail else []))
    with LocalHub() as hub:
        hub.refuse = {"commit": 500} if fail else {}
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(OMP_NUM_THREADS="1", HF_DATASETS_OFFLINE="1", HF_ENDPOINT=hub.endpoint, HF_TOKEN=hub.token,
                   HF_HUB_DISABLE_XET="1", HF_HOME=str(tmp_path / "home"), NO_PROXY="127.0.0.1")
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    final = out / "final"
    assert (final / "model.safetensors").is_file()  # the export is kept either way
    assert hub.token not in proc.stdout + proc.stderr and not hub.unhandled
    if fail:
        assert proc.returncode != 0
        assert "'500 Internal Server Error'" in proc.stderr and "retry with" in proc.stderr
        # the retry it prints keeps the repo private, as it was asked to be
        retry = proc.stderr.strip().splitlines()[-1]
        assert retry.endswith(f"modeling.push_to_hub('{final}', 'me/tiny', private=True)\"")
        assert hub.repo("me/tiny").files.keys() == {".gitattributes"}
        # a requeue (slurm/train.sbatch adds --resume_from_checkpoint latest) of a run trained to its end but not
        # pushed, its push cut short or refused: it trains nothing and pushes
        with LocalHub() as hub:
            env.update(HF_ENDPOINT=hub.endpoint, HF_TOKEN=hub.token)
            proc = subprocess.run([*cmd, "--resume_from_checkpoint", "latest"], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=600)
        ok(proc)
        assert "nothing to do" in proc.stdout and f"pushed to {hub.endpoint}/me/tiny" in proc.stdout
    else:
        ok(proc)
        assert f"pushed to {hub.endpoint}/me/tiny" in proc.stdout
    assert {name: data for name, data in hub.repo("me/tiny").files.items() if name != ".gitattributes"} == \
        {p.relative_to(final).as_posix(): p.read_bytes() for p in final.rglob("*") if p.is_file()}


def test_refuses_when_launcher_and_accelerate_disagree(preprocessed, tmp_path):
    # what a GPU-less torchrun launch with a plain Accelerator() can give (accelerate 1.15, 1.16): the launcher
    # started 2 processes, Accelerate sees 1. Simulated in-process: WORLD_SIZE is set once Accelerate has looked.
    script = tmp_path / "disagree.py"
    script.write_text(f"""
import os, runpy, sys
sys.path.insert(0, {str(ROOT)!r})
import accelerate
real = accelerate.Accelerator
def one_process_view(*args, **kwargs):
    accelerator = real(*args, **kwargs)
    os.environ["WORLD_SIZE"] = "2"
    return accelerator
accelerate.Accelerator = one_process_view
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path({str(ROOT / "train.py")!r}, run_name="__main__")
""")
    proc = run([sys.executable, str(script), *train_cmd(preprocessed, tmp_path / "r")[2:]])
    assert proc.returncode != 0
    assert "the launcher started 2 processes but Accelerate sees 1" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "r").exists()  # nothing written before the refusal


def test_compiled_model_exports_plain_weights(preprocessed, tmp_path):
    # torch.compile prefixes every key with "_orig_mod."; the export and the EMA must not carry it
    out = tmp_path / "run"
    ok(run(train_cmd(preprocessed, out, "--epochs", "1", "--compile", "--ema_decay", "0.9")))
    import modeling  # noqa: PLC0415  (the project root is on sys.path via pytest.ini)
    model = modeling.load_model(str(out / "final"))
    assert not any(k.startswith("_orig_mod.") for k in model.state_dict())
    assert "ema_val_top1" in rows(out)[-1]


def test_bf16_mixed_precision_trains_and_exports_float32(preprocessed, tmp_path):
    """The GPU recipes' precision, on the CPU (autocast bf16): finite metrics, the run records it, and the export
    holds float32 weights (a bf16 export would halve the precision every later fine-tune starts from)."""
    out = tmp_path / "run"
    ok(run(train_cmd(preprocessed, out, "--epochs", "1", "--ema_decay", "0.9",
                     launcher=("--cpu", "--mixed_precision", "bf16", "--num_processes", "1"))))
    assert json.loads((out / "run_info.json").read_text())["mixed_precision"] == "bf16"
    last = rows(out)[-1]
    assert all(torch.isfinite(torch.tensor(last[k])) for k in ("train_loss", "val_loss", "ema_val_top1"))
    weights = load_file(out / "final" / "model.safetensors")
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float32}


def test_a_resume_under_another_mixed_precision_says_so_and_the_card_lists_it(preprocessed, tmp_path):
    """Precision, process count and device are accelerate launch's, not train.py's flags: a run saved under bf16 and
    resumed under fp32 trained with both, which the resume said nothing of and the card's Hardware line (the last
    launch's) hid. The resume names the change, and the card's "Resumed with other flags" line lists it."""
    out = tmp_path / "run"
    ok(run(train_cmd(preprocessed, out, "--epochs", "1",
                     launcher=("--cpu", "--mixed_precision", "bf16", "--num_processes", "1"))))
    step = rows(out)[-1]["step"]
    proc = ok(run(train_cmd(preprocessed, out, "--epochs", "2", "--resume_from_checkpoint", "latest")))  # fp32
    assert ("accelerate launch settings that differ from the checkpoint's run_info.json, this launch's apply: "
            "mixed_precision bf16 -> no") in proc.stdout + proc.stderr, proc.stdout[-3000:]
    card = (out / "final" / "README.md").read_text()
    assert (f"Resumed with other flags (the table gives the last launch's): at step {step}, `--epochs 1 -> 2`, "
            "`mixed_precision bf16 -> no`.") in card, card


def test_fp16_on_cpus_is_refused_before_anything_is_written(preprocessed, tmp_path):
    """Accelerate skips fp16 on a CPU device and trains in fp32: the run would record fp16 (run_info.json, the card's
    hardware line, which validate.py scores the export with). An fp16 accelerate config from a GPU box, on CPUs."""
    out = tmp_path / "run"
    proc = run(train_cmd(preprocessed, out, "--epochs", "1", launcher=("--cpu", "--mixed_precision", "fp16",
                                                                      "--num_processes", "1", "-q")))
    assert proc.returncode != 0
    assert ("error: mixed_precision fp16 has no CPU path (Accelerate would train in fp32, and the run be recorded and "
            "scored as fp16); launch with --mixed_precision bf16 or no on CPUs") in proc.stderr, proc.stderr[-3000:]
    assert not out.exists()


def test_weight_decay_zero_keeps_the_group_layout_a_resume_with_another_value_loads_into():
    """timm puts every parameter in one group at --weight_decay 0 and two otherwise; a checkpoint's optimizer state
    loads only into its own group count, so a resume across 0 was refused where any other change is applied."""
    import modeling
    import train

    model = modeling.create_model(TINY, num_classes=4)
    optimizers = {wd: train.build_optimizer(model, TrainConfig(model=TINY, dataset="unused", weight_decay=wd), 1, 10,
                                            100)[0] for wd in (0.0, 5e-5)}
    layouts = {wd: [(len(g["params"]), g["weight_decay"]) for g in o.param_groups] for wd, o in optimizers.items()}
    ones = sum(p.ndim <= 1 for p in model.parameters())  # biases and norm layers: never decayed
    assert layouts == {0.0: [(ones, 0.0), (len(list(model.parameters())) - ones, 0.0)],
                       5e-5: [(ones, 0.0), (len(list(model.parameters())) - ones, 5e-5)]}
    optimizers[5e-5].load_state_dict(optimizers[0.0].state_dict())  # either way round
    optimizers[0.0].load_state_dict(optimizers[5e-5].state_dict())


@pytest.mark.parametrize("auto_augment", ["ra", "ta"])
def test_auto_augment_borders_are_the_mean_not_black(preprocessed, auto_augment):
    """RandAugment/TrivialAugment as torchvision's references and timm build them: rotations, shears and translations
    of a flat grey image leave borders of the ImageNet mean (timm's fill), never black (torchvision's default)."""
    import datasets  # noqa: PLC0415
    from torchvision import transforms  # noqa: PLC0415

    from imagenet_trainer.data import TrainSet  # noqa: PLC0415
    augment = TrainSet(datasets.load_from_disk(str(preprocessed))["train"], 32, 0, auto_augment=auto_augment).augment
    assert augment.interpolation == transforms.InterpolationMode.BILINEAR and augment.fill == [124, 116, 104]
    flat = torch.full((3, 32, 32), 200, dtype=torch.uint8)
    borders = 0
    for seed in range(80):
        torch.manual_seed(seed)
        out = augment(flat)
        if auto_augment == "ta":  # one op per image; RandAugment's second op (e.g. Equalize) may make black
            assert not (out == 0).any(), seed
        borders += bool(((out[0] == 124) & (out[1] == 116) & (out[2] == 104)).any())
    assert borders >= 5  # the geometric ops did run and filled with the mean


def test_an_old_one_group_optimizer_state_loads_into_the_two_group_layout():
    """A checkpoint saved when timm built one param group for --weight_decay 0 resumes into decay_groups' two (a run
    in progress when the code was updated): each parameter gets its own momentum back, whatever this launch's decay."""
    from timm.optim import create_optimizer_v2

    import modeling
    import train

    model = modeling.create_model(TINY, num_classes=4)
    # timm's Lookahead wraps the optimizer that loads (and has no load hooks of its own)
    for opt, key in (("sgd", "momentum_buffer"), ("lookahead_adamw", "exp_avg")):
        old = create_optimizer_v2(model, opt=opt, lr=0.1, weight_decay=0.0, momentum=0.9)
        assert len(old.param_groups) == 1
        model.zero_grad()
        model(torch.randn(2, 3, 32, 32)).sum().backward()
        old.step()
        saved = old.state_dict()
        for wd in (0.0, 5e-5):
            cfg = TrainConfig(model=TINY, dataset="unused", weight_decay=wd, optimizer=opt)
            new = train.build_optimizer(model, cfg, 1, 10, 100)[0]
            new.load_state_dict(saved)
            assert [len(g["params"]) for g in new.param_groups] == [sum(p.ndim <= 1 for p in model.parameters()),
                                                                     sum(p.ndim > 1 for p in model.parameters())]
            states = [getattr(o, "_base_optimizer", o).state for o in (new, old)]  # Lookahead's: the wrapped one's
            for p in model.parameters():
                assert torch.equal(states[0][p][key], states[1][p][key]), opt


ONE_GROUP_SHARDED = r"""
import os, sys
from pathlib import Path
import torch, torch.distributed as dist, torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
from torch.distributed.fsdp import fully_shard
from timm.optim import create_optimizer_v2
import modeling, train
dist.init_process_group("gloo", rank=0, world_size=1, init_method="tcp://127.0.0.1:" + sys.argv[2])
model = modeling.create_model("blocknet_tiny", num_classes=4)
fully_shard(model)
old = create_optimizer_v2(model, opt="sgd", lr=0.1, weight_decay=0.0, momentum=0.9)
model(torch.randn(2, 3, 32, 32)).sum().backward()
old.step()
folder = Path(sys.argv[1])
dcp.save({"optimizer": get_optimizer_state_dict(model, old)}, checkpoint_id=folder)
new = train.build_optimizer(model, train.TrainConfig(model="blocknet_tiny", dataset="unused"), 1, 10, 100)[0]
try:  # accelerate's load_fsdp_optimizer: a template of this launch's optimizer, filled from the shards
    state = {"optimizer": get_optimizer_state_dict(model, new)}
    dcp.load(state, checkpoint_id=folder)
    set_optimizer_state_dict(model, new, state["optimizer"])
except BaseException as e:
    print(train.load_failure(e, folder, "latest", folder.parent))
dist.destroy_process_group()
"""


def test_an_old_one_group_optimizer_state_in_fsdp_shards_is_refused_in_one_line(tmp_path):
    """Under FSDP the optimizer loads through torch.distributed.checkpoint from a template of this launch's two
    groups, where no load_state_dict hook can split the one saved: said as such, not "does not fit these flags"."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = tmp_path / "checkpoints" / "step_00000001"
    proc = run([sys.executable, "-c", ONE_GROUP_SHARDED, str(folder), str(port)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == (
        f"error: --resume_from_checkpoint {folder} holds FSDP optimizer shards in one param group (--weight_decay 0 "
        "before this version made two at any value), which a sharded load cannot split; resume it with the code that "
        "saved it (the git commit in its run_info.json)"), proc.stdout + proc.stderr[-2000:]


def test_an_fsdp_checkpoint_whose_metadata_lost_its_end_is_called_damaged(tmp_path):
    """torch.distributed.checkpoint reads .metadata with pickle and raises a new error with only the text ("metadata
    is None; global metadata read failed: ..."): a cut or empty one is damaged, not a checkpoint of other flags."""
    import torch.distributed.checkpoint as dcp

    import train

    folder = tmp_path / "checkpoints" / "step_00000001"
    dcp.save({"w": torch.randn(50, 50)}, checkpoint_id=folder)
    for cut in (100, 0):
        with open(folder / ".metadata", "r+b") as f:
            f.truncate(cut)
        with pytest.raises(BaseException) as e:
            dcp.load({"w": torch.zeros(50, 50)}, checkpoint_id=folder)
        said = train.load_failure(e.value, folder, "latest", folder.parent)
        assert said.startswith(f"error: --resume_from_checkpoint {folder} is damaged ("), said
        assert said.endswith(f"move it out of {folder.parent}, then --resume_from_checkpoint latest takes the one "
                             "before") and "\n" not in said
    # a whole file that torch.load's weights_only refuses (a numpy scalar in it) is not damaged: every checkpoint of
    # that run holds the same, and moving them out one by one helps nothing
    import pickle
    said = train.load_failure(pickle.UnpicklingError("Weights only load failed. This file can still be loaded"),
                              folder, "latest", folder.parent)
    assert said.startswith(f"error: --resume_from_checkpoint {folder} does not fit this run"), said


def test_sizes_the_model_cannot_take_are_refused_before_the_first_step(preprocessed, tmp_path):
    """A ViT takes its own size only, a CNN no side its pooling shrinks to nothing: met in the loop, the first such
    size was a traceback at the first evaluation (an epoch trained for nothing) or at a step. Each flag that asks for
    one is named at start-up, --min_image_size for its progressive-resizing ramp (16 px in epoch 0, 64 in epoch 1)."""
    vit, ramp = ("--model", "vit_tiny_patch16_224"), ("--min_image_size", "16", "--ramp_end_epoch", "1")
    for i, (extra, said) in enumerate((((*vit, "--image_size", "224", "--eval_image_size", "256"),
                         "error: --eval_image_size 256: --model vit_tiny_patch16_224 takes only 224 px input (Input "
                         "height (256) doesn't match model (224).); give 224, or leave --eval_image_size out (the "
                         "--image_size)"),
                        ((*vit, "--image_size", "192"), "error: --image_size 192: --model vit_tiny_patch16_224 takes "
                                                        "only 224 px input (Input height (192) doesn't match model "
                                                        "(224).); give --image_size 224"),
                        (("--model", "alexnet", "--image_size", "64", "--eval_image_size", "16"),
                         "error: --eval_image_size 16: --model alexnet cannot take 16 px input ("),
                        (("--model", "alexnet", "--image_size", "64", "--epochs", "2", *ramp),
                         "error: --min_image_size 16: --model alexnet cannot take 16 px input ("))):
        out = tmp_path / f"run{i}"
        proc = run(train_cmd(preprocessed, out, "--epochs", "1", *extra))
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert proc.stderr.strip().splitlines()[-1].startswith(said), proc.stderr[-2000:]
        assert not (out / "metrics.jsonl").exists() and not any((out / "checkpoints").glob("step_*"))


def test_the_size_check_leaves_the_model_as_it_was(preprocessed):
    """The check's forwards run in eval mode: a train-mode forward of a blank image would move the BatchNorm running
    statistics the first step starts from, and a 1x1 map at batch size 1 fails in train mode (resnet10t at 32 px)."""
    import datasets

    import modeling
    import train
    from imagenet_trainer.data import TrainSet

    cfg = parse_config(TrainConfig, ["--dataset", str(preprocessed), "--model", "resnet10t", "--image_size", "64",
                                     "--eval_image_size", "96", "--min_image_size", "32", "--ramp_end_epoch", "2"])
    model = modeling.create_model("resnet10t", num_classes=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_set = TrainSet(datasets.load_from_disk(str(preprocessed))["train"], 64, 0, progressive=(32, 0, 2))
    assert {train_set.size_at(epoch) for epoch in range(cfg.epochs)} == {32, 64}  # a side other than the two flags
    train.check_model_sizes(model, cfg, train_set)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_tilde_in_output_dir_or_resume_from_checkpoint_is_the_home_folder(tmp_path, monkeypatch):
    """bash expands ~ only at a word's start: after --output_dir= and in a --config YAML, train.py gets it as it is
    (and wrote into a folder named ~ in the working directory). "latest" stays "latest"."""
    monkeypatch.setenv("HOME", str(tmp_path))
    config = tmp_path / "run.yaml"
    config.write_text("output_dir: ~/runs/a\nresume_from_checkpoint: ~/runs/b/checkpoints/step_00000004\n")
    cfg = parse_config(TrainConfig, ["--dataset", "ds", "--config", str(config)])
    assert cfg.output_dir == str(tmp_path / "runs" / "a")
    assert cfg.resume_from_checkpoint == str(tmp_path / "runs" / "b" / "checkpoints" / "step_00000004")
    cfg = parse_config(TrainConfig, ["--dataset", "ds", "--output_dir=~/c", "--resume_from_checkpoint=latest"])
    assert (cfg.output_dir, cfg.resume_from_checkpoint) == (str(tmp_path / "c"), "latest")
    cfg = parse_config(TrainConfig, ["--dataset", "ds", "--output_dir", "runs/d/"])  # no ~: as given
    assert (cfg.output_dir, cfg.resume_from_checkpoint) == ("runs/d/", "")


def test_sbatch_reads_the_stop_record_in_a_tilde_output_dir(tmp_path, monkeypatch):
    """slurm/train.sbatch requeues on train.py's stop record in --output_dir: a ~ bash left as it is
    (--output_dir=~/run, a --config YAML's output_dir) is the home folder there too, where train.py wrote it."""
    from test_cluster import FAKE_ACCELERATE, SCONTROL, SRUN, sbatch, write_stop_record  # imports this module

    bin_dir, log, home = tmp_path / "bin", tmp_path / "log", tmp_path / "home"
    for folder in (bin_dir, log, home / "run"):
        folder.mkdir(parents=True)
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL), ("fake-accelerate", FAKE_ACCELERATE)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_LOG": str(log), "SLURM_JOB_ID": "4242",
           "SLURM_NNODES": "1", "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "127.0.0.1", "GPUS_PER_NODE": "1",
           "ACCELERATE": "fake-accelerate", "FAKE_STATUS": "1", "PYTHON": sys.executable, "HOME": str(home)}
    env.pop("SLURM_RESTART_COUNT", None)
    write_stop_record(home / "run", monkeypatch, "4242")
    config = tmp_path / "recipe.yaml"
    config.write_text("output_dir: ~/run\n")
    for args in (["--output_dir=~/run"], ["--config", config]):
        (log / "requeue").unlink(missing_ok=True)
        proc = ok(sbatch(env, *args))
        assert (log / "requeue").read_text().split() == ["4242"], proc.stdout + proc.stderr
