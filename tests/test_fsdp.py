"""train.py's FSDP2 path end to end on CPU: 2 gloo processes through accelerate_configs/fsdp.yaml, real checkpoints,
a SIGKILL and an exact resume, the export and validate.py on it.

Accelerate takes its FSDP path only for a GPU process group: with ``Accelerator(cpu=True)`` (what train.py asks for on
a machine without an accelerator) it sets up MULTI_CPU over gloo and drops the FSDP plugin the launch config built.
FSDP2 itself (``fully_shard``, DTensor, distributed checkpoints) runs on CPU over gloo, so the launcher this file writes
only turns the distributed type back to FSDP once the process group is up; train.py runs unchanged. The launcher also
records, in rank 0, what the model looks like after ``prepare`` (and on which device mesh) and what the first training
forward saw. HSDP runs the same way on 4 processes: accelerate 1.16 builds its parallelism config's 2 x 2 mesh on CPU
over gloo, and FSDP2's replicate all-reduce runs there.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
import yaml
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

import modeling
import train
from imagenet_trainer import checkpoints
from test_train import kill_at_checkpoint

ROOT = Path(__file__).resolve().parent.parent
ACCELERATE = str(Path(sys.executable).parent / "accelerate")
BN_MODEL, LN_MODEL = "blocknet_tiny", "convnext_atto"  # BatchNorm, LayerNorm (timm's smallest ConvNeXt)

LAUNCHER = '''
import json, os, runpy, sys
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

init = AcceleratorState.__init__


def fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    """What accelerate does for a GPU process group (accelerate/state.py), for the CPU one it built instead."""
    init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        if self._mixed_precision != "no":
            fsdp_plugin.set_mixed_precision(self._mixed_precision)
        self.fsdp_plugin = fsdp_plugin
        self.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP


AcceleratorState.__init__ = fsdp_on_cpu
prepare = Accelerator.prepare


def prepare_and_inspect(self, *args, **kwargs):
    result = prepare(self, *args, **kwargs)
    report = os.environ.get("FSDP_CPU_REPORT")
    model = next((obj for obj in result if isinstance(obj, torch.nn.Module)), None)
    if not report or model is None or not self.is_main_process:
        return result
    local = lambda p: p.to_local() if hasattr(p, "to_local") else p
    seen = {"distributed_type": str(self.distributed_type),
            "sharded": [n for n, p in model.named_parameters() if hasattr(p, "to_local")],
            "params": [n for n, _ in model.named_parameters()],
            "non_contiguous": [n for n, p in model.named_parameters()
                               if not (p.is_contiguous() and local(p).is_contiguous())],
            "meshes": sorted({(tuple(p.device_mesh.mesh_dim_names or ()), tuple(map(repr, p.placements)))
                              for p in model.parameters() if hasattr(p, "to_local")}),
            "norms": {}, "convs": {}}
    hooks = []

    def record(name, kind):
        def hook(module, args):  # runs after FSDP's own pre-forward hook: the parameters are the unsharded ones
            x = args[0] if args and torch.is_tensor(args[0]) else None
            seen[kind][name] = {
                "type": type(module).__name__,
                "params": sorted({str(p.dtype) for p in module.parameters(recurse=False)}),
                "buffers": sorted({str(b.dtype) for b in module.buffers(recurse=False) if b.is_floating_point()}),
                "input": str(x.dtype) if x is not None else None,
                "input_channels_last": bool(x is not None and x.dim() == 4
                                            and x.is_contiguous(memory_format=torch.channels_last))}
        return hook

    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            if "Norm" in type(module).__name__:
                hooks.append(module.register_forward_pre_hook(record(name, "norms")))
            elif isinstance(module, torch.nn.Conv2d):
                hooks.append(module.register_forward_pre_hook(record(name, "convs")))

    def write(module, args, output):
        seen["logits"] = str(output.dtype)
        with open(report, "w") as f:
            json.dump(seen, f)
        for h in hooks:
            h.remove()

    hooks.append(model.register_forward_hook(write))
    return result


Accelerator.prepare = prepare_and_inspect
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
runpy.run_path(sys.argv[0], run_name="__main__")
'''


# Every backbone train.py is pointed at by the registry or a recipe, prepared the way train.py prepares it (after
# --channels_last), then two bf16 training steps; the launcher records each one's report, and this script the
# collectives FSDP issued in the second step (the first also runs FSDP's lazy initialisation): FSDP2 calls them as
# attributes of torch.distributed (torch/distributed/fsdp/_fully_shard/_fsdp_collectives.py), so wrapping those sees
# each one with the size of its full, unsharded buffer.
SWEEP = '''
import json, os, sys
sys.path.insert(0, {root!r})
import torch
import torch.distributed as dist
import torch.nn.functional as F
from accelerate import Accelerator
import modeling
import train

CALLS = []


def counted(kind, collective):
    def call(*args, **kwargs):
        full = kwargs["input"] if kind == "reduce_scatter" else args[0]  # as FSDP2 calls them: the unsharded tensor
        CALLS.append([kind, full.numel() * full.element_size()])
        return collective(*args, **kwargs)
    return call


# FSDP2 calls the *_single collectives in torch 2.13+ (the deprecated *_tensor names call them), *_tensor in 2.11
for kind, names in (("all_gather", ("all_gather_single", "all_gather_into_tensor")), ("all_reduce", ("all_reduce",)),
                    ("reduce_scatter", ("reduce_scatter_single", "reduce_scatter_tensor"))):
    name = next(n for n in names if hasattr(dist, n))
    setattr(dist, name, counted(kind, getattr(dist, name)))
accelerator = Accelerator(cpu=True)
plugin = accelerator.state.fsdp_plugin
wrap = plugin.auto_wrap_policy, plugin.transformer_cls_names_to_wrap
for name in sys.argv[1:]:
    # accelerate fixes the block classes to wrap at the first model it prepares; train.py prepares one per launch
    plugin.auto_wrap_policy, plugin.transformer_cls_names_to_wrap = wrap
    torch.manual_seed(0)
    model = modeling.create_model(name, num_classes=4).to(memory_format=torch.channels_last)
    model = train.prepare_fsdp(model, accelerator)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    os.environ["FSDP_CPU_REPORT"] = os.path.join({reports!r}, name + ".json")
    model, optimizer = accelerator.prepare(model, optimizer)
    for step in range(2):
        CALLS.clear()
        x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(x).float(), torch.tensor([0, 1]))
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        assert torch.isfinite(loss), name
    if accelerator.is_main_process:
        with open(os.path.join({reports!r}, name + ".collectives.json"), "w") as f:
            json.dump(CALLS, f)
    accelerator.free_memory()
'''
RECIPE_MODELS = sorted({yaml.safe_load(p.read_text())["model"] for p in (ROOT / "recipes").glob("*.yaml")})
BACKBONES = sorted(set(modeling.list_models()) | set(RECIPE_MODELS))


@pytest.fixture(scope="module")
def launcher(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fsdp") / "fsdp_on_cpu.py"
    path.write_text(LAUNCHER)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_resumed_like_straight(tmp_path: Path, out: Path, last_step: int, reference: list) -> None:
    """The resumed run's last sharded checkpoint equals the straight run's (tmp_path/straight) bit for bit, and its
    validation rows equal `reference`'s."""
    a = sharded_weights(tmp_path / "straight" / "checkpoints" / f"step_{last_step:08d}", tmp_path)
    b = sharded_weights(out / "checkpoints" / f"step_{last_step:08d}", tmp_path)
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["val_top1"] for r in rows(out)] == [r["val_top1"] for r in reference]


def fsdp_cmd(launcher, dataset, out, model, *extra, mixed_precision="bf16", launch=(), processes=2, config="fsdp.yaml"):
    """README's FSDP command, on 2 CPU processes: accelerate launch --config_file accelerate_configs/fsdp.yaml ...
    (`config`: another file of accelerate_configs/; the launcher leaves a launch without FSDP as it is)."""
    return [ACCELERATE, "launch", "--config_file", str(ROOT / "accelerate_configs" / config),
            "--num_processes", str(processes), "--mixed_precision", mixed_precision, "--main_process_port", str(free_port()),
            *launch, str(launcher), *train_args(dataset, out, model, *extra)]


def train_args(dataset, out, model, *extra):
    """train.py and the flags every run here shares: tiny images and batches, no loader workers."""
    return [str(ROOT / "train.py"), "--model", model, "--dataset", str(dataset),
            "--output_dir", str(out), "--image_size", "32", "--batch_size", "4", "--num_workers", "0",
            "--warmup_epochs", "0.5", "--log_every_steps", "1", *map(str, extra)]


def env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **extra}


def ok(cmd, **extra_env):
    proc = subprocess.run(cmd, cwd=ROOT, env=env(**extra_env), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def refused(proc) -> str:
    """The one line a refused launch ends with. Each rank says it (once or twice in all: torchrun stops the other
    rank once one has exited), and two copies may interleave, one cut by the other: every piece starting "error: "
    must begin the whole line. No traceback but the launcher's (torchrun's ChildFailedError)."""
    pieces = ["error: " + piece.split("\n")[0] for piece in proc.stderr.split("error: ")[1:]]
    line = max(pieces, key=len, default="")
    assert proc.returncode != 0 and line and all(line.startswith(piece) for piece in pieces), proc.stderr[-3000:]
    tracebacks = re.findall(r"Traceback \(most recent call last\):(.*\n.*)", proc.stderr)
    assert all("bin/accelerate" in t for t in tracebacks), proc.stderr[-6000:]
    return line


def rows(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def sharded_weights(ckpt: Path, tmp_path: Path) -> dict:
    """The full model state of an FSDP SHARDED_STATE_DICT checkpoint, gathered from its shards in one process."""
    out = tmp_path / f"{ckpt.parent.parent.name}_{ckpt.name}.pt"
    dcp_to_torch_save(ckpt / "pytorch_model_fsdp_0", out)
    return torch.load(out, weights_only=True)["model"]


def card_results(final: Path) -> tuple[str, float, float]:
    """(images, top-1, top-5) of the Results table of an export's model card."""
    text = (final / "README.md").read_text()
    row = re.search(r"^\| [^|]+ \| validation \| (\d+) \| ([\d.]+) \| ([\d.]+) \|$", text, re.M)
    assert row, text
    return row.group(1), float(row.group(2)), float(row.group(3))


@pytest.mark.parametrize("model, norm", [(BN_MODEL, "BatchNorm2d"), (LN_MODEL, "LayerNorm")])
def test_fsdp_bf16_kill_resume_export_validate(preprocessed, launcher, tmp_path, model, norm):
    common = ("--epochs", "2", "--save_every_steps", "1", "--keep_last", "10")  # channels_last: the default, true
    report = tmp_path / "prepared.json"
    ok(fsdp_cmd(launcher, preprocessed, tmp_path / "straight", model, *common), FSDP_CPU_REPORT=str(report))
    reference = rows(tmp_path / "straight")
    steps_per_epoch, last_step = reference[0]["step"], reference[-1]["step"]
    assert steps_per_epoch >= 2, "the fixture must give a mid-epoch step to resume from"

    # what prepare made of the model, and what the first training forward ran with
    seen = json.loads(report.read_text())
    assert seen["distributed_type"] == "DistributedType.FSDP"
    assert seen["sharded"] == seen["params"]  # every parameter is a DTensor shard: fully_shard ran on all
    assert seen["non_contiguous"] == []  # channels_last is on, yet no parameter was converted
    assert seen["meshes"] == [[[], ["Shard(dim=0)"]]]  # no parallelism config: one unnamed dimension, all sharded
    assert any(norm in s["type"] for s in seen["norms"].values())
    for name, norm_seen in seen["norms"].items():  # norm layers: fp32 parameters, statistics and compute
        assert norm_seen["params"] == ["torch.float32"], name
        assert norm_seen["buffers"] in ([], ["torch.float32"]), name
        assert norm_seen["input"] == "torch.float32", name
    assert {c["params"][0] for c in seen["convs"].values()} == {"torch.bfloat16"}  # the rest computes in bf16
    first_conv = next(iter(seen["convs"].values()))
    assert first_conv["input_channels_last"]  # the NHWC input still selects the channels_last kernels
    info = json.loads((tmp_path / "straight" / "run_info.json").read_text())
    assert info["distributed_type"] == "DistributedType.FSDP" and info["mixed_precision"] == "bf16"

    # SIGKILL mid-epoch, then resume from the latest checkpoint
    out = tmp_path / "killed"
    mid_epoch = steps_per_epoch + 1
    kill_at_checkpoint(fsdp_cmd(launcher, preprocessed, out, model, *common), env(), out, mid_epoch, last_step)
    resumed = ok(fsdp_cmd(launcher, preprocessed, out, model, *common, "--resume_from_checkpoint", "latest"))
    assert f"at epoch 1, step {mid_epoch}" in resumed.stdout + resumed.stderr

    assert_resumed_like_straight(tmp_path, out, last_step, reference)

    # the export loads as a DDP run's does: the plain architecture's keys, float32 weights
    exported = modeling.load_model(str(out / "final"))
    plain = modeling.create_model(model, num_classes=exported.num_classes)
    assert exported.state_dict().keys() == plain.state_dict().keys()
    assert {v.dtype for v in exported.state_dict().values() if v.is_floating_point()} == {torch.float32}

    # validate.py on the export, in the run's precision: the card's numbers
    summary = tmp_path / "val.json"
    ok([ACCELERATE, "launch", "--cpu", "--mixed_precision", "bf16", "--num_processes", "1", str(ROOT / "validate.py"),
        "--model", str(out / "final"), "--dataset", str(preprocessed), "--batch_size", "4", "--num_workers", "0",
        "--output", str(summary)])
    val = json.loads(summary.read_text())
    best = max(rows(out), key=lambda r: r["val_top1"])  # the export is the first epoch with the best top-1
    assert card_results(out / "final") == (str(val["n"]), round(val["top1"], 2), round(val["top5"], 2))
    assert (val["top1"], val["top5"], val["n"]) == (best["val_top1"], best["val_top5"], best["val_n"])
    # and on the sharded checkpoint of that epoch, gathered in one process: its metrics.jsonl row's numbers
    step = out / "checkpoints" / f"step_{best['step']:08d}"
    ok([ACCELERATE, "launch", "--cpu", "--num_processes", "1", str(ROOT / "validate.py"), "--model", str(step),
        "--dataset", str(preprocessed), "--batch_size", "4", "--num_workers", "0", "--output", str(summary)])
    val = json.loads(summary.read_text())
    assert (val["top1"], val["top5"], val["n"]) == (best["val_top1"], best["val_top5"], best["val_n"])
    # a copy without its seal whose shard lost its end: one line, not torch's CheckpointException traceback
    cut = shutil.copytree(step, tmp_path / "cut" / "checkpoints" / step.name)
    (cut / "checkpoint_files.json").unlink()
    shard = next((cut / "pytorch_model_fsdp_0").glob("*.distcp"))
    os.truncate(shard, shard.stat().st_size // 2)
    proc = subprocess.run([sys.executable, str(ROOT / "validate.py"), "--model", str(cut), "--dataset",
                           str(preprocessed), "--num_workers", "0"], cwd=ROOT, env=env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"{cut / 'pytorch_model_fsdp_0'} is damaged (" in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]


def test_validate_scores_a_full_state_dict_fsdp_checkpoint(preprocessed, launcher, tmp_path):
    """FULL_STATE_DICT: rank 0 writes the whole model as pytorch_model_fsdp.bin; validate.py scores it as train.py
    did (its metrics.jsonl row), in the run's precision."""
    out = tmp_path / "run"
    ok(fsdp_cmd(launcher, preprocessed, out, BN_MODEL, "--max_train_steps", "2", mixed_precision="no",
                launch=("--fsdp_state_dict_type", "FULL_STATE_DICT")))
    (row,) = rows(out)
    step = out / "checkpoints" / f"step_{row['step']:08d}"
    assert (step / "pytorch_model_fsdp.bin").is_file()
    summary = tmp_path / "v.json"
    ok([ACCELERATE, "launch", "--cpu", "--num_processes", "1", str(ROOT / "validate.py"), "--model", str(step),
        "--dataset", str(preprocessed), "--batch_size", "4", "--num_workers", "0", "--output", str(summary)])
    val = json.loads(summary.read_text())
    assert (val["top1"], val["top5"], val["n"], val["loss"]) == pytest.approx(
        (row["val_top1"], row["val_top5"], row["val_n"], row["val_loss"]), rel=1e-5)


@pytest.fixture(scope="module")
def fp32_run(preprocessed, launcher, tmp_path_factory) -> Path:
    """One fp32 FSDP run of one step: run/ (its checkpoint: step_00000001) and the launcher's prepared.json."""
    base = tmp_path_factory.mktemp("fp32")
    ok(fsdp_cmd(launcher, preprocessed, base / "run", BN_MODEL, "--max_train_steps", "1", mixed_precision="no"),
       FSDP_CPU_REPORT=str(base / "prepared.json"))
    return base


def test_fsdp_fp32(fp32_run):
    """Without mixed precision every parameter stays fp32 and contiguous, and a run trains and exports."""
    seen = json.loads((fp32_run / "prepared.json").read_text())
    assert seen["sharded"] == seen["params"] and seen["non_contiguous"] == []
    assert {d for s in (*seen["norms"].values(), *seen["convs"].values()) for d in s["params"]} == {"torch.float32"}
    assert (fp32_run / "run" / "final" / "model.safetensors").is_file()
    info = json.loads((fp32_run / "run" / "run_info.json").read_text())  # timm's CUDA settings, recorded
    assert info["cudnn_benchmark"] is info["tf32_matmul"] is torch.cuda.is_available() and "tf32_cudnn" in info


def test_a_ddp_checkpoint_resumed_under_fsdp_is_refused_in_one_line(preprocessed, launcher, tmp_path):
    """A checkpoint's model files are those of its launch config: FSDP reads pytorch_model_fsdp_0/ only. A DDP one
    is refused before the load (else: each rank's CheckpointException, "metadata is None"), naming the config it was
    saved with, and before its EMA (told to resume with --ema_decay 0.9, a launch under FSDP would refuse the flag)."""
    out = tmp_path / "run"
    ok(fsdp_cmd(launcher, preprocessed, out, BN_MODEL, "--max_train_steps", "1", "--ema_decay", "0.9",
                mixed_precision="no", config="cpu_ddp.yaml"))
    (saved,) = checkpoints.step_folders(out / "checkpoints")
    line = refused(subprocess.run(
        fsdp_cmd(launcher, preprocessed, out, BN_MODEL, "--max_train_steps", "2", "--resume_from_checkpoint", "latest",
                 mixed_precision="no"), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600))
    assert line == (f"error: --resume_from_checkpoint {saved} was saved without FSDP (DDP on CPUs, 2 processes: "
                    "accelerate_configs/cpu_ddp.yaml; its model is one file, model.safetensors), this launch runs FSDP "
                    "(accelerate_configs/fsdp.yaml), which reads sharded checkpoints only; resume with the "
                    "--config_file it was saved with")


def test_an_fsdp_checkpoint_resumed_without_fsdp_or_damaged_is_refused_in_one_line(fp32_run, preprocessed, launcher,
                                                                                   tmp_path):
    """One process refuses FSDP's sharded checkpoint naming fsdp.yaml, not config.yaml's flags. A shard that lost its
    end in a checkpoint without its file list (another tool's copy: nothing checks it before the load) fails the
    load on every rank (torch.load's PytorchStreamReader error on one, EOFError on the other, in DCP's
    CheckpointException): "is damaged", as a DDP checkpoint's model.safetensors would be."""
    out = tmp_path / "run"
    shutil.copytree(fp32_run / "run", out)
    (saved,) = checkpoints.step_folders(out / "checkpoints")
    again = ("--max_train_steps", "1", "--resume_from_checkpoint", str(saved))
    line = refused(subprocess.run([sys.executable, *train_args(preprocessed, out, BN_MODEL, *again)], cwd=ROOT,
                                  env=env(), capture_output=True, text=True, timeout=600))
    assert line == (f"error: --resume_from_checkpoint {saved} was saved under FSDP (accelerate_configs/fsdp.yaml: its "
                    "model is in pytorch_model_fsdp_0/), this launch runs without FSDP; resume with that "
                    "--config_file")

    (saved / checkpoints.FILE_LIST).unlink()
    with open(saved / "pytorch_model_fsdp_0" / "__1_0.distcp", "r+b") as f:  # rank 1's shard
        f.truncate(5000)
    line = refused(subprocess.run(fsdp_cmd(launcher, preprocessed, out, BN_MODEL, *again, mixed_precision="no"),
                                  cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600))
    assert line.startswith(f"error: --resume_from_checkpoint {saved} is damaged (PytorchStreamReader failed ") and \
        line.endswith("); --resume_from_checkpoint latest takes the newest complete one"), line


def test_a_checkpoint_resumed_under_another_fsdp_state_dict_type_is_refused_in_one_line(fp32_run, preprocessed,
                                                                                        launcher, tmp_path):
    """accelerate's load_state reads only the layout its own fsdp_state_dict_type writes: a FULL_STATE_DICT
    checkpoint (pytorch_model_fsdp.bin) under fsdp.yaml's SHARDED_STATE_DICT failed in DCP ("metadata is None"),
    which read as damage and told the user to move every checkpoint of the run aside. Both directions are one line
    naming the setting to resume with, before the load."""
    full = tmp_path / "full"
    ok(fsdp_cmd(launcher, preprocessed, full, BN_MODEL, "--max_train_steps", "1", mixed_precision="no",
                launch=("--fsdp_state_dict_type", "FULL_STATE_DICT")))
    (saved,) = checkpoints.step_folders(full / "checkpoints")
    assert (saved / "pytorch_model_fsdp.bin").is_file()
    again = ("--max_train_steps", "2", "--resume_from_checkpoint", "latest")
    line = refused(subprocess.run(fsdp_cmd(launcher, preprocessed, full, BN_MODEL, *again, mixed_precision="no"),
                                  cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600))
    assert line == (f"error: --resume_from_checkpoint {saved} was saved with fsdp_state_dict_type FULL_STATE_DICT, "
                    "this launch has SHARDED_STATE_DICT; resume with accelerate launch --fsdp_state_dict_type "
                    "FULL_STATE_DICT (or that value in its --config_file)")
    assert checkpoints.step_folders(full / "checkpoints") == [saved]  # nothing set aside

    sharded = tmp_path / "sharded"
    shutil.copytree(fp32_run / "run", sharded)
    (saved,) = checkpoints.step_folders(sharded / "checkpoints")
    line = refused(subprocess.run(fsdp_cmd(launcher, preprocessed, sharded, BN_MODEL, *again, mixed_precision="no",
                                           launch=("--fsdp_state_dict_type", "FULL_STATE_DICT")),
                                  cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600))
    assert line.startswith(f"error: --resume_from_checkpoint {saved} was saved with fsdp_state_dict_type "
                           "SHARDED_STATE_DICT, this launch has FULL_STATE_DICT"), line


@pytest.mark.skipif(not Path("/dev/full").is_char_device(), reason="no /dev/full (a device whose writes fail ENOSPC)")
@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # DCP in one process, without a process group
def test_a_full_disk_at_a_sharded_save_is_one_line_and_keeps_the_previous_checkpoint(tmp_path):
    """A full disk as torch.distributed.checkpoint meets it under FSDP: a shard's write fails with ENOSPC (here
    from the kernel: the shard file is /dev/full) and DCP raises a CheckpointException, a BaseException, with each
    rank's OSError in .failures, gathered to every rank as pickled copies. save_checkpoint, in one process whose
    save_state writes such a shard (accelerate's save-state hook), ends in README's one line and removes the
    unfinished save, as under DDP (tests/test_faults.py, a real full tmpfs)."""
    from accelerate import Accelerator  # noqa: PLC0415

    accelerator = Accelerator(cpu=True)
    model = modeling.create_model(BN_MODEL, num_classes=4)
    cfg = train.TrainConfig(model=BN_MODEL, dataset=str(tmp_path / "data"), output_dir=str(tmp_path / "run"))
    state = train.TrainState({"num_processes": 1, "batch_size": 4, "grad_accum_steps": 1}, 8)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    state.step = 1
    train.save_checkpoint(accelerator, model, state, None, cfg, ckpt_dir)
    raised = []

    def shards_on_a_full_disk(models, weights, output_dir):
        shards = Path(output_dir) / "pytorch_model_fsdp_0"
        shards.mkdir()
        (shards / "__0_0.distcp").symlink_to("/dev/full")  # DCP's name for rank 0's first shard file
        try:
            dcp.save({"model": model.state_dict()}, checkpoint_id=shards)
        except BaseException as e:
            raised.append(e)
            raise

    hook = accelerator.register_save_state_pre_hook(shards_on_a_full_disk)
    state.step = 2
    try:
        with pytest.raises(SystemExit) as stopped:
            train.save_checkpoint(accelerator, model, state, None, cfg, ckpt_dir)
    finally:
        hook.remove()
    (error,) = raised
    assert not isinstance(error, Exception) and isinstance(next(iter(error.failures.values()))[0], OSError)
    assert checkpoints.is_disk_full(error) and checkpoints.is_disk_full(pickle.loads(pickle.dumps(error)))
    kept = ckpt_dir / "step_00000001"
    line = str(stopped.value.code)
    assert line.startswith(f"error: checkpoint step_00000002: no space left on {ckpt_dir} (") and \
        line.endswith(f"; {kept} is intact: free space, then --resume_from_checkpoint latest"), line
    assert checkpoints.step_folders(ckpt_dir) == [kept] and checkpoints.problem(kept, config=True) is None
    assert not list(ckpt_dir.glob(".tmp_*")), "the unfinished save gives its space back"
    assert Path("/dev/full").is_char_device()


@pytest.mark.parametrize("model", [BN_MODEL, LN_MODEL])
def test_every_norm_layer_computes_in_fp32_whatever_the_group_hooks_cast(monkeypatch, model):
    """torch 2.11's fully_shard of a module list casts the first module's input and the last one's output only (the
    2-process runs above check every norm layer on the torch installed): shard_norm_layers' own hooks cast each norm
    layer's input to fp32 and its output back. Here fully_shard does nothing at all, the least a torch may do."""
    import torch.distributed.fsdp  # noqa: PLC0415

    from imagenet_trainer.fsdp import norm_layers, shard_norm_layers  # noqa: PLC0415

    monkeypatch.setattr(torch.distributed.fsdp, "fully_shard", lambda *args, **kwargs: None)
    net = modeling.create_model(model, num_classes=4).to(torch.bfloat16).eval()
    norms = norm_layers(net)
    for norm in norms:  # as the norm unit's fp32 policy gathers them
        norm.float()
    assert shard_norm_layers(net, torch.bfloat16, mesh=None) == len(norms) >= 2
    seen = []  # registered after shard_norm_layers' hooks: what each norm layer computes with, and hands on
    for norm in norms:
        norm.register_forward_pre_hook(lambda module, args: seen.append(("in", args[0].dtype)))
        norm.register_forward_hook(lambda module, args, output: seen.append(("out", output.dtype)))
    with torch.no_grad():
        assert net(torch.rand(2, 3, 32, 32, dtype=torch.bfloat16)).dtype == torch.bfloat16
    assert seen == [("in", torch.float32), ("out", torch.bfloat16)] * len(norms)


@pytest.mark.parametrize("name, norm", [("convnextv2_atto", None), ("resnet10t", "EvoNorm2dS0"),
                                        ("resnet10t", "FilterResponseNormTlu2d"), ("resnet10t", "RmsNorm2d")])
def test_timms_own_norm_layers_join_the_fp32_norm_unit(name, norm):
    """timm's norm layers that subclass none of torch's (ConvNeXt-V2's GlobalResponseNorm, EvoNorm, FRN, RmsNorm2d)
    are norm layers too: left out, FSDP would gather and compute them in bf16 (the README says every norm layer
    computes in fp32). Every module of a norm class with parameters of its own is found."""
    import timm.layers  # noqa: PLC0415

    from imagenet_trainer.fsdp import norm_layers  # noqa: PLC0415

    net = modeling.create_model(name, num_classes=4, **({"norm_layer": getattr(timm.layers, norm)} if norm else {}))
    normed = [m for m in net.modules() if "Norm" in type(m).__name__ and "Mlp" not in type(m).__name__
              and any(True for _ in m.parameters(recurse=False))]
    found = norm_layers(net)
    assert len(normed) > 4 and all(any(m is n for n in found) for m in normed), \
        {type(m).__name__ for m in normed if not any(m is n for n in found)}


@pytest.mark.parametrize("launch, extra, expected", [
    ((), ("--ema_decay", "0.9"), "error: --ema_decay is not supported under FSDP"),
    (("--fsdp_activation_checkpointing", "true"), (), "error: fsdp_activation_checkpointing recomputes each block"),
    # FSDP1's key, which accelerate's FSDP2 plugin drops: the run would be FULL_SHARD across nodes, silently
    (("--fsdp_sharding_strategy", "HYBRID_SHARD"), (), "error: fsdp_sharding_strategy HYBRID_SHARD is FSDP1's"),
    # (fsdp_version 1 is refused too, but accelerate's FSDP1 plugin cannot even be built without a GPU)
])
def test_what_fsdp_cannot_do_is_refused_at_start_up(preprocessed, launcher, tmp_path, launch, extra, expected):
    proc = subprocess.run(fsdp_cmd(launcher, preprocessed, tmp_path / "run", BN_MODEL, *extra, launch=launch),
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    # each rank says it in one line; the only traceback is torchrun's ChildFailedError, none from train.py
    assert proc.returncode != 0 and 'train.py", line' not in proc.stderr, proc.stderr[-3000:]
    assert expected in proc.stderr, proc.stderr[-3000:]  # (the two ranks' lines may interleave)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_the_fsdp_config_without_a_gpu_says_it_runs_as_ddp(preprocessed, tmp_path):
    """README's FSDP command on a machine without a GPU, with no test launcher: Accelerate sets up CPU DDP, whose
    checkpoints an FSDP launch later refuses, so the run says so."""
    cmd = [ACCELERATE, "launch", "--config_file", str(ROOT / "accelerate_configs" / "fsdp.yaml"), "--num_processes",
           "1", "--mixed_precision", "no", "--main_process_port", str(free_port()),
           *train_args(preprocessed, tmp_path / "run", BN_MODEL, "--max_train_steps", 1, "--epochs", 1)]
    proc = ok(cmd)
    assert "note: the launch config asks for FSDP; Accelerate runs it as DDP without a GPU" in proc.stdout, \
        proc.stdout[-2000:]


def test_cpu_ram_efficient_loading_which_accelerate_launch_turns_on_is_turned_off(preprocessed, launcher, tmp_path):
    """`accelerate launch --use_fsdp` defaults fsdp_cpu_ram_efficient_loading to true; its reload of the state dict
    after sharding read the fp32 norm unit's local shards as whole tensors (a size mismatch under bf16). Every rank
    builds the whole model here, so it saves nothing: turned off, with a note, and the run trains."""
    out = tmp_path / "run"
    proc = ok(fsdp_cmd(launcher, preprocessed, out, BN_MODEL, "--max_train_steps", "1",
                       launch=("--fsdp_cpu_ram_efficient_loading", "true")))
    assert "note: fsdp_cpu_ram_efficient_loading off: every rank builds the whole model here" in proc.stdout
    assert (out / "final" / "model.safetensors").is_file()


@pytest.fixture(scope="module")
def swept(launcher, tmp_path_factory) -> Path:
    """One 2-process FSDP launch through every backbone (one launch: each costs ~15 s of start-up here)."""
    base = tmp_path_factory.mktemp("sweep")
    (base / "reports").mkdir()
    script = base / "sweep.py"
    script.write_text(SWEEP.format(root=str(ROOT), reports=str(base / "reports")))
    ok([ACCELERATE, "launch", "--config_file", str(ROOT / "accelerate_configs" / "fsdp.yaml"), "--num_processes", "2",
        "--main_process_port", str(free_port()), str(launcher), str(script), *BACKBONES])
    return base / "reports"


@pytest.mark.parametrize("name", BACKBONES)
def test_every_backbone_shards_with_fp32_norms(swept, name):
    seen = json.loads((swept / f"{name}.json").read_text())
    assert seen["sharded"] == seen["params"] and seen["non_contiguous"] == []
    norms = {n for n, m in modeling.create_model(name, num_classes=4).named_modules()
             if "Norm" in type(m).__name__ and any(True for _ in m.parameters(recurse=False))}
    assert set(seen["norms"]) == norms  # every norm layer ran in the training step
    for norm_name, norm_seen in seen["norms"].items():
        assert norm_seen["params"] == ["torch.float32"] and norm_seen["input"] == "torch.float32", norm_name
    assert {c["params"][0] for c in seen["convs"].values()} == {"torch.bfloat16"}



def block_units(name: str) -> int:
    """How many residual blocks of `name` accelerate's TRANSFORMER_BASED_WRAP makes FSDP units (_no_split_modules)."""
    model = modeling.create_model(name, num_classes=4)
    classes = set(getattr(model, "_no_split_modules", None) or ())
    return sum(type(m).__name__ in classes for m in model.modules())


@pytest.mark.parametrize("name", BACKBONES)
def test_a_step_issues_a_few_collectives_per_block(swept, name):
    """A block unit all-gathers in forward, again in backward (it reshards after forward) and reduce-scatters; the
    norm unit, the root and the unit accelerate carves for a direct child named like a norm (its "final norm":
    convnext's NormMlpClassifierHead) all-gather once and reduce-scatter once. A unit per norm layer added two
    collectives of a few KB per layer: resnet50 issued 156 a step (107 under 64 KB), convnext_tiny 104 (BENCHMARKS.md,
    FSDP)."""
    calls = json.loads((swept / f"{name}.collectives.json").read_text())
    kinds = {kind for kind, _ in calls}
    assert kinds <= {"all_gather", "reduce_scatter"}  # FSDP, not HSDP: no all-reduce
    assert 2 <= len(calls) <= 3 * block_units(name) + 6, calls
    if name == "resnet50":  # 16 bottlenecks: 48 + 2 (norms) + 2 (root)
        assert len(calls) == 52
        assert sum(size < 64 * 1024 for _, size in calls) <= 2  # the root's (stem conv, 4-class head)


# HSDP as accelerate builds it: a (dp_replicate, dp_shard) mesh from its parallelism config, shards inside a replica
# group, an all-reduce across the groups. The flags are accelerate launch's own; a config file can hold the same keys
# under `parallelism_config:` (parallelism_config_dp_replicate_size, parallelism_config_dp_shard_size).
HSDP_2x2 = ("--use_fsdp", "--use_parallelism_config", "--parallelism_config_dp_replicate_size", "2",
            "--parallelism_config_dp_shard_size", "2")


def test_hsdp_2x2_mesh_trains_and_resumes_exactly(preprocessed, launcher, tmp_path):
    """4 gloo processes on a 2 x 2 mesh: every unit (the blocks, the root and the norm unit train.py adds) sits on
    accelerate's FSDP sub-mesh, replicated over the first dimension and sharded over the second; a SIGKILL mid-epoch
    and a resume give the uninterrupted run's weights bit for bit."""
    common = ("--epochs", "2", "--save_every_steps", "1", "--keep_last", "10", "--batch_size", "2")
    report = tmp_path / "prepared.json"
    ok(fsdp_cmd(launcher, preprocessed, tmp_path / "straight", BN_MODEL, *common, launch=HSDP_2x2, processes=4),
       FSDP_CPU_REPORT=str(report))
    seen = json.loads(report.read_text())
    assert seen["sharded"] == seen["params"]
    assert seen["meshes"] == [[["dp_replicate", "dp_shard_cp"], ["Replicate()", "Shard(dim=0)"]]]
    for name, norm_seen in seen["norms"].items():
        assert norm_seen["params"] == ["torch.float32"] and norm_seen["input"] == "torch.float32", name
    assert json.loads((tmp_path / "straight" / "run_info.json").read_text())["num_processes"] == 4
    reference = rows(tmp_path / "straight")
    steps_per_epoch, last_step = reference[0]["step"], reference[-1]["step"]
    assert steps_per_epoch >= 2, "the fixture must give a mid-epoch step to resume from"

    out = tmp_path / "killed"
    mid_epoch = steps_per_epoch + 1
    kill_at_checkpoint(fsdp_cmd(launcher, preprocessed, out, BN_MODEL, *common, launch=HSDP_2x2, processes=4), env(),
                       out, mid_epoch, last_step)
    resumed = ok(fsdp_cmd(launcher, preprocessed, out, BN_MODEL, *common, "--resume_from_checkpoint", "latest",
                          launch=HSDP_2x2, processes=4))
    assert f"at epoch 1, step {mid_epoch}" in resumed.stdout + resumed.stderr
    assert_resumed_like_straight(tmp_path, out, last_step, reference)
    assert (out / "final" / "model.safetensors").is_file()
