"""Train a backbone on ImageNet-1k (or any image-classification dataset) with one Accelerate loop.

    accelerate launch train.py --model convnext_tiny --dataset OUT --output_dir runs/cnt \
        [--config recipes/convnext_tiny.yaml]

Device, DDP/FSDP, nodes and mixed precision come from `accelerate config` / `accelerate_configs/*.yaml`; this file has
no branches for them. Read top to bottom, it is the recipe: config -> Accelerator -> data -> model ->
optimizer/schedule -> prepare -> loop -> eval/checkpoint -> export/push.

Exact resume: the training stream is a pure function of position. The sampler's permutation comes from (seed, epoch),
each sample's augmentation from (seed, epoch, index), and the step's own randomness (mixup/cutmix, erasing, drop-path)
from (seed, epoch, global micro-batch). Resuming sets the sampler to the saved (epoch, batch) and never reads the
skipped samples, which is what accelerate's `skip_first_batches` gets wrong (accelerate #1451, #2016) and what makes
resume take seconds. Nothing is keyed by rank, so a checkpoint of N processes resumes on M with the same global
micro-batches (processes x --grad_accum_steps kept): the same steps from the same samples with the same augmentations.

Pre-emption: SIGUSR1 (slurm/train.sbatch has SLURM send it before the time limit) or SIGTERM (preemption, spot
reclaims) to any rank makes all ranks checkpoint at the same optimizer step and exit with STOPPED_STATUS (75),
leaving STOPPED_RECORD in the run folder (imagenet_trainer/stop_signals.py). One process stops at the next step;
several agree at the next --log_every_steps boundary, the one point per interval where the ranks talk to the host.
During an evaluation they stop at its next batch, the trained epoch checkpointed with its evaluation pending (the
resume runs it first). Ctrl-C (SIGINT) stops the same way; a second one at once. A checkpoint every
--save_every_minutes bounds what a SIGKILL can cost.

Longer than 400 lines because the recipe and the steps only training takes stay in the one file a reader follows:
set-up, data, model, resume, the epoch (EpochTrainer), evaluation, checkpoint, export. What other scripts share or
what stands on its own lives in imagenet_trainer/: the run folder (run_folder.py), stopping (stopping.py), the
loaders' host side (loader_setup.py), FSDP (fsdp.py), checkpoints on disk (checkpoints.py).
"""
from __future__ import annotations

import sys
import time

STARTED = time.monotonic()  # run_info.json's startup_s counts from here: the imports, then set-up until the loop

if __name__ == "__main__":  # before the heavy imports: a stop signal in the first seconds is remembered, not fatal,
    # and the DataLoader workers' fork server imports what they need beside this process's imports, not after them
    from imagenet_trainer import stop_signals, worker_processes

    stop_signals.install(ctrl_c=True)
    worker_processes.start_early(sys.argv[1:])

import contextlib
import enum
import functools
import gc
import importlib.util
import json
import math
import os
import shutil
import signal
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.distributed.checkpoint.api import CheckpointException
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.tracking import LOGGER_TYPE_TO_CLASS
from accelerate.utils import DistributedType, ProjectConfiguration, broadcast, broadcast_object_list
from safetensors import SafetensorError
from timm.data import resolve_data_config
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from timm.utils import ModelEmaV3
from tqdm.auto import tqdm

import modeling
from imagenet_trainer import checkpoints, metrics, worker_processes
from imagenet_trainer.bad_samples import BadSamples, RecordingLoader, load_run_record
from imagenet_trainer.config import parse_config
from imagenet_trainer.data import (EvalSet, ResumableSampler, TrainSet, check_labels, collate, elastic_position,
                                   load_image_dataset, micro_batch_seed, mixup_cutmix, normalize, random_erasing)
from imagenet_trainer.data.ring import BatchRing, RingCollate
from imagenet_trainer.data.samples import UnreplaceableRow
from imagenet_trainer.fsdp import prepare_fsdp
from imagenet_trainer.ilsvrc import class_descriptions
from imagenet_trainer.loader_setup import (PREFETCH_FACTOR, RING_SLOTS, check_shm, loader_workers, local_processes,
                                           on_device)
from imagenet_trainer.process_exit import exit_now
from imagenet_trainer.run_folder import (cannot_write, check_output_dir, hold_output_dir, refuse_together,
                                         still_held)
from imagenet_trainer.runlock import in_use
from imagenet_trainer.runinfo import share_tree, write_run_info
from imagenet_trainer.stop_signals import STOPPED_RECORD, STOPPED_STATUS  # noqa: F401 (train.STOPPED_STATUS)
from imagenet_trainer.stopping import StopSignal, StoppedDuringEval, exit_bad_samples, exit_stopped
from imagenet_trainer.worker_processes import worker_context
from validate import check_input_sizes

IMPORTED = time.monotonic()  # the imports' end: run_info.json's startup_split_s starts its set-up phases here

@dataclass(kw_only=True)  # kw_only: --dataset, required, stands among fields with defaults
class TrainConfig:
    model: str = "resnet18"  # any modeling.create_model name: our designs first, then the timm zoo
    pretrained: bool = False  # start from the weights --model names (a timm tag, local-dir:PATH, hf-hub:ID)
    dataset: str  # preprocess.py output folder or a Parquet-backed Hub dataset id with image/label columns
    eval_split: str = "validation"  # the split evaluated each epoch (e.g. test, for datasets with only train/test)
    output_dir: str = ""  # run folder; empty means runs/<model>
    # schedule
    epochs: int = 90  # full passes over train; warmup then cosine decay span epochs * steps_per_epoch steps
    max_train_steps: int = 0  # optimizer steps; > 0 stops early (smoke tests), the cosine fitted to it, not the warmup
    batch_size: int = 128  # images per device per micro-batch
    grad_accum_steps: int = 1  # micro-batches per optimizer step (global batch = batch * accum * processes)
    lr: float = 0.1  # peak LR per 256 images of global batch, scaled linearly (Goyal et al. 2017)
    warmup_epochs: float = 5.0  # linear warmup from 0, applied per step (Goyal et al. 2017)
    min_lr: float = 0.0  # cosine floor (Loshchilov & Hutter 2017), absolute
    optimizer: str = "sgd"  # timm name: sgd (Nesterov), momentum (plain SGD momentum), adamw, lamb, ...
    momentum: float = 0.9  # SGD momentum (Adam's beta1 stays at its default)
    weight_decay: float = 5e-5  # not applied to norm weights or biases (timm filter_bias_and_bn)
    clip_grad: float = 0.0  # max global grad norm; 0 disables
    label_smoothing: float = 0.1  # Szegedy et al. 2016; torchvision/timm recipes use 0.1
    # augmentation
    image_size: int = 224  # train crop side in px (RandomResizedCrop output); the last size when progressive
    min_image_size: int = 0  # progressive resizing (FFCV): px of the first epochs, ramped to image_size; 0 disables
    ramp_start_epoch: int = 0  # progressive resizing: the epoch (0-based) the ramp leaves min_image_size
    ramp_end_epoch: int = 0  # progressive resizing: the first epoch (0-based) at image_size (FFCV rn18 88 ep: 65 -> 76)
    eval_image_size: int = 0  # eval crop px (0: image_size); train below it, test at it: FixRes (Touvron 2019)
    eval_flip: bool = False  # eval on the mean logits of each image and its mirror (FFCV's lr_tta); 2x eval compute
    scale_min: float = 0.08  # RandomResizedCrop's lower area bound (Szegedy et al. 2015; torchvision, timm, FFCV)
    auto_augment: str = ""  # "" none, "ra" RandAugment (Cubuk et al. 2020), "ta" TrivialAugmentWide (Mueller 2021)
    mixup_alpha: float = 0.0  # Beta(a, a) mixup (Zhang et al. 2018); 0 disables
    cutmix_alpha: float = 0.0  # Beta(a, a) cutmix (Yun et al. 2019); 0 disables
    random_erase: float = 0.0  # per-image probability of random erasing (Zhong et al. 2020)
    drop_path: float = 0.0  # stochastic depth rate for models that have it (Huang et al. 2016)
    drop_rate: float | None = None  # head dropout (timm's drop_rate; vgg16: both MLP ones); none: model's own
    # model and speed
    ema_decay: float = 0.0  # EMA of weights per optimizer step, evaluated too; 0 disables (timm uses 0.9998)
    channels_last: bool = True  # NHWC is what cuDNN's fastest conv kernels and tensor cores want
    compile: bool = False  # torch.compile the model (minutes of compile time for ~1.3x steady-state speed)
    sync_bn: bool = False  # SyncBatchNorm across processes; needs an accelerator backend (NCCL), not gloo
    num_workers: int = -1  # DataLoader processes per device; -1: every core this process may use, less one
    # (the process's own, which runs the step: loader_workers). JPEG decoding is the CPU bottleneck: BENCHMARKS.md's
    # GPU check gives the cores a GPU needs
    seed: int = 0  # seeds init, sampler order, augmentation and per-step randomness
    # a flipped byte costs one image; more than a few mean a damaged copy, which preprocess.py --verify names
    max_bad_samples: int = 10  # undecodable images (train: replaced, eval: left out) tolerated before the run stops
    # checkpoints, logging, sharing
    save_every_steps: int = 0  # also checkpoint every N optimizer steps (0: only at epoch ends)
    save_every_minutes: float = 30.0  # also checkpoint when this many minutes passed since the last one (0: off)
    # This bounds what a SIGKILL (host crash, OOM kill, preemption without grace) costs, while the checkpoint writes
    # take a small share of the run; an epoch-end checkpoint alone can be hours apart for big nets on one GPU.
    # Checked at --log_every_steps boundaries.
    keep_last: int = 2  # checkpoints kept besides the best one
    resume_from_checkpoint: str = ""  # "latest" (newest in output_dir/checkpoints) or a checkpoint folder
    log_every_steps: int = 50  # progress-bar/tracker update and NaN check interval, in optimizer steps
    report_to: str = "none"  # accelerate tracker: none, tensorboard, wandb, trackio, all
    push_to_hub: bool = False  # upload output_dir/final with its model card when training ends
    hub_model_id: str = ""  # e.g. user/resnet50-in1k; required with --push_to_hub
    hub_private: bool = False  # create the Hub repo private
    hub_dataset_id: str = ""  # Hub id of --dataset's data (OWNER/NAME), linked in the card; full ILSVRC: automatic

    def __post_init__(self):  # every flag's range, before anything starts; NaN fails every comparison below
        if self.auto_augment.lower() == "none":
            self.auto_augment = ""
        if self.auto_augment not in ("", "ra", "ta"):
            raise SystemExit(f'error: --auto_augment {self.auto_augment!r}: use "" (none), ra or ta')
        if self.model.startswith("local-dir:"):  # absolute: config.yaml's copies are read from other folders
            self.model = "local-dir:" + str(Path(self.model.removeprefix("local-dir:")).expanduser().resolve())
        # bash leaves ~ as it is after --flag= and in a --config YAML; unexpanded it would be a folder named ~ here.
        # os.path.expanduser leaves "latest" and any path without a leading ~ as given
        self.output_dir = os.path.expanduser(self.output_dir)
        self.resume_from_checkpoint = os.path.expanduser(self.resume_from_checkpoint)
        trackers = ("none", "all", *LOGGER_TYPE_TO_CLASS)
        for flag, ok, need in (
                ("hub_model_id", modeling.is_repo_id(self.hub_model_id) if self.hub_model_id else not self.push_to_hub,
                 "a Hub repo id USER/NAME (needed with --push_to_hub; the model card links it)"),
                ("hub_dataset_id", not self.hub_dataset_id or modeling.is_repo_id(self.hub_dataset_id),
                 "a Hub dataset id OWNER/NAME (or empty)"),
                *((f, getattr(self, f) >= 1, "at least 1") for f in ("epochs", "batch_size", "grad_accum_steps",
                                                                       "image_size", "log_every_steps")),
                ("keep_last", self.keep_last >= 1, "at least 1 (the checkpoint to resume from)"),
                # (a resume is checked once it knows whether a checkpoint was found: resume, odd_mixing_batch)
                ("batch_size", not odd_mixing_batch(self) or self.resume_from_checkpoint, ODD_BATCH),
                ("max_bad_samples", self.max_bad_samples >= 0, ">= 0 (0: stop at the first undecodable image)"),
                ("min_image_size", self.min_image_size <= self.image_size, "at most --image_size (0: no ramp)"),
                # after the ramp's start (FFCV asserts end_ramp > start_ramp: at start == end the end epoch would
                # still train at --min_image_size) and an epoch that runs (epochs count from 0)
                ("ramp_end_epoch", not self.min_image_size or self.ramp_start_epoch < self.ramp_end_epoch
                 < self.epochs, "in [--ramp_start_epoch + 1, --epochs - 1] with --min_image_size (the epoch, from "
                 "0, --image_size is first trained at)"),
                *((f, 0 <= getattr(self, f) < math.inf, "a finite number >= 0 (0: off)") for f in (
                    "max_train_steps", "save_every_steps", "save_every_minutes", "min_image_size", "ramp_start_epoch",
                    "eval_image_size", "weight_decay", "clip_grad", "min_lr", "warmup_epochs", "mixup_alpha",
                    "cutmix_alpha")),
                ("num_workers", self.num_workers >= -1, ">= 0, or -1 (the cores this process may use, less one)"),
                ("lr", 0 < self.lr < math.inf, "a positive number"),
                ("seed", -2**63 <= self.seed < 2**64, "an integer in [-2**63, 2**64) (torch.manual_seed's range)"),
                ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
                ("label_smoothing", 0 <= self.label_smoothing < 1, "in [0, 1)"),
                ("random_erase", 0 <= self.random_erase <= 1, "a probability in [0, 1]"),
                ("drop_path", 0 <= self.drop_path < 1, "in [0, 1)"),
                ("drop_rate", self.drop_rate is None or 0 <= self.drop_rate < 1, "in [0, 1) or none"),
                ("ema_decay", 0 <= self.ema_decay < 1, "in [0, 1) (0: off; timm uses 0.9998)"),
                ("scale_min", 0 < self.scale_min <= 1, "in (0, 1] (a share of the image's area)"),
                ("report_to", self.report_to in trackers, f"one of {', '.join(trackers)}"),
                ("report_to", self.report_to in ("none", "all") or self.report_to not in trackers  # said above
                 or importlib.util.find_spec(self.report_to)
                 or (self.report_to == "tensorboard" and importlib.util.find_spec("tensorboardX")),
                 "a tracker whose package is installed (pip install it)")):
            if not ok:
                raise SystemExit(f"error: --{flag} must be {need}, got {getattr(self, flag)!r}")


class TrainState:
    """Position in the run, saved with every checkpoint (accelerate's register_for_checkpointing)."""

    def __init__(self, batching: dict, train_samples: int):
        self.step, self.epoch, self.batch_in_epoch, self.best_top1, self.best_step = 0, 0, 0, -1.0, -1
        self.train_samples = train_samples  # rows of the train split: an epoch's order is a permutation of this
        # many, so a mid-epoch position on a split of another length points at other samples (check_train_set)
        self.epoch_loss = (0.0, 0)  # (loss sum, rank mean; micro-batches) of the epoch so far: a resumed epoch's
        # train_loss then covers the whole epoch, not only the part after the resume
        self.batching = batching  # processes/batch/accumulation: positions above count in these units
        self.train_seconds = 0.0  # wall-clock of the epochs and evaluations so far, over all launches (model card)
        self.eval_pending = None  # the metrics row of a trained epoch whose evaluation a stop signal cut short: the
        # resume evaluates it first
        self.last_row = None  # the last epoch's metrics row, as logged: saved with its checkpoint before the append,
        # so a launch that ends between the two leaves the row to the resume (log_saved_row)
        self.recipe_changes = []  # [{"step", "flags": ["--lr 1.6 -> 0.8", ...]}]: each resume that changed flags,
        # for the model card (its table gives the last launch's flags)

    def state_dict(self):
        return dict(vars(self))

    def load_state_dict(self, state):
        state = dict(state)
        if "layout" in state:  # the key imagenet-trainer 0.1.0 saved `batching` under
            state["batching"] = state.pop("layout")
        vars(self).update(state)


def main(argv=None):
    cfg = parse_config(TrainConfig, argv, description=__doc__.split("\n")[0],  # ranges: TrainConfig.__post_init__
                       accelerate_script="train.py")
    stop = StopSignal(cfg.save_every_minutes)
    run_dir = Path(cfg.output_dir or f"runs/{cfg.model}")
    ckpt_dir = run_dir / "checkpoints"
    accelerator = make_accelerator(cfg, run_dir)
    set_backends(accelerator)
    check_launch(cfg, accelerator, run_dir, ckpt_dir)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    startup = {"accelerator": time.monotonic()}  # each set-up phase's end, for run_info.json's startup_split_s

    # data and model
    ds, label_names = load_data(cfg.dataset, cfg.eval_split)
    model = build_model(cfg, label_names, print_fn=accelerator.print)
    startup["data_and_model"] = time.monotonic()
    data_cfg = resolve_data_config(model=model)  # mean/std/crop_pct/interpolation the model was defined with
    mean, std = data_cfg["mean"], data_cfg["std"]  # 0..1 units; normalize() runs on the device, after the uint8 copy
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    bad = load_run_record(accelerator, {"train": ds["train"], cfg.eval_split: ds[cfg.eval_split]}, cfg.max_bad_samples,
                          run_dir)  # rows repaired since an earlier launch count no more
    train_loader, eval_loader = build_loaders(cfg, ds, data_cfg, accelerator, bad)
    check_model_sizes(model, cfg, train_loader.dataset)  # on the CPU model, before FSDP, compile and the first step
    steps_per_epoch, total_steps = count_steps(cfg, train_loader, accelerator.num_processes)
    startup["loaders"] = time.monotonic()

    # SyncBatchNorm/channels_last, FSDP, optimizer, schedule
    model = convert_norm_and_memory_format(model, cfg, accelerator)
    model = prepare_fsdp(model, accelerator)  # a no-op unless the launch config asks for FSDP
    optimizer, lr_at = build_optimizer(model, cfg, accelerator.num_processes, steps_per_epoch, total_steps,
                                       print_fn=accelerator.print)
    accelerator.print(scaling_line(cfg, accelerator.num_processes))

    # prepare, compile, EMA, resume
    model, optimizer, eval_loader = accelerator.prepare(model, optimizer, eval_loader)
    model = compile_model(model, cfg.compile, accelerator)
    plain_model = accelerator.unwrap_model(model, keep_torch_compile=False)  # same parameters, no DDP/compile wrapper
    ema = ModelEmaV3(plain_model, decay=cfg.ema_decay) if cfg.ema_decay else None
    state = TrainState({"num_processes": accelerator.num_processes, "batch_size": cfg.batch_size,
                        "grad_accum_steps": cfg.grad_accum_steps}, len(train_loader.dataset))
    accelerator.register_for_checkpointing(state, *([ema] if ema else []))
    startup["prepare"] = time.monotonic()
    resumed_from = resume(accelerator, state, optimizer, cfg, ckpt_dir) if cfg.resume_from_checkpoint else None
    log_saved_row(accelerator, state.last_row, run_dir)
    if state.step >= total_steps and not state.eval_pending:  # resumed at or past the end this launch's flags set
        accelerator.print(nothing_to_do(state, cfg, total_steps, run_dir))
        accelerator.end_training()
        if accelerator.is_main_process and cfg.push_to_hub:  # the launch before ended in (or before) its push
            report_end(accelerator, state, cfg, run_dir / "final")
        return
    start_records(accelerator, cfg, run_dir, resumed=resumed_from is not None, startup=startup)
    # the flags as given, and what the optimizer took from them: a tracker's --lr is per 256 images, not the LR
    accelerator.init_trackers("imagenet-trainer", config={**asdict(cfg), **scaled(cfg, accelerator.num_processes)})

    # the loop: an epoch (or the part of it left), checkpoints when due; then evaluate, export the best, checkpoint, log
    model.train()
    plan = StepPlan(lr_at, total_steps, len(label_names), mean, std, memory_format)
    labels = (label_names, class_descriptions(ds))
    with tqdm(total=total_steps, initial=state.step, disable=not accelerator.is_main_process, desc="train") as bar:
        while state.step < total_steps or state.eval_pending:
            if not state.eval_pending:  # else a resume's first task: the evaluation a stop signal cut short
                started = time.perf_counter()
                trainer = EpochTrainer(accelerator, model, optimizer, train_loader, state, ema, cfg, plan, stop,
                                       ckpt_dir)
                while (stopped := trainer.train(bar)) not in (Stopped.EPOCH_END, Stopped.STEP_CAP):
                    state.epoch_loss = trainer.loss_so_far()  # a resumed epoch's train_loss covers the whole epoch
                    trainer.checkpoint_s += save_checkpoint(accelerator, model, state, ema, cfg, ckpt_dir)
                    stop.saved()
                    # or one that came during this save (seconds on a large model): stop on it, not a step later
                    exit_if_stopping(accelerator, stop, bad, state.step, ckpt_dir,
                                     signal=stopped is Stopped.STOP_SIGNAL or stop.agreed(accelerator))
                state.eval_pending = trainer.finish()
                # the next epoch's loss so far; or this one's, cut by --max_train_steps and resumed by a later launch
                state.epoch_loss = trainer.loss_so_far() if state.batch_in_epoch else (0.0, 0)
                state.train_seconds += time.perf_counter() - started
            scores = evaluate_and_export(accelerator, model, ema, eval_loader, plan, cfg, state, run_dir / "final",
                                         labels, data_cfg, steps_per_epoch, stop)
            if scores is None:  # a stop signal came during the evaluation: checkpoint with it pending, and exit
                save_checkpoint(accelerator, model, state, ema, cfg, ckpt_dir)
                exit_if_stopping(accelerator, stop, bad, state.step, ckpt_dir, signal=True)
            row, state.eval_pending = {**state.eval_pending, **scores}, None
            # the row goes into the checkpoint (a launch ended before log_epoch leaves it to the resume), its
            # checkpoint_s there without this save's seconds
            state.last_row = count_bad_samples(accelerator, row, bad, cfg.eval_split)
            checkpoint_s = save_checkpoint(accelerator, model, state, ema, cfg, ckpt_dir)
            stop.saved()
            log_epoch(accelerator, {**row, "checkpoint_s": row["checkpoint_s"] + checkpoint_s}, run_dir, bar)
            # a stop signal that came during the epoch's last step, the export or the checkpoint
            exit_if_stopping(accelerator, stop, bad, state.step, ckpt_dir,
                             signal=state.step < total_steps and stop.agreed(accelerator))
    accelerator.wait_for_everyone()  # no rank closes its gloo/NCCL connections while another is still using them
    accelerator.end_training()

    if accelerator.is_main_process:
        report_end(accelerator, state, cfg, run_dir / "final")


# -- set-up ------------------------------------------------------------------------------------------------------------

def make_accelerator(cfg: TrainConfig, run_dir: Path) -> Accelerator:
    """Accelerate owns device, precision and distribution. With no accelerator present, ask for the CPU explicitly:
    under torchrun/--multi_gpu a plain Accelerator() on a GPU-less machine either reports DistributedType.NO in
    every rank (accelerate 1.15, 1.16: N independent copies racing on one folder) or fails to start NCCL (torch 2.14);
    cpu=True gives real MULTI_CPU DDP over gloo. The default process group it starts is held in WORLD_GROUP until
    close_process_groups."""
    accelerator = Accelerator(
        cpu=not torch.accelerator.is_available(),
        gradient_accumulation_steps=cfg.grad_accum_steps,
        log_with=None if cfg.report_to == "none" else cfg.report_to,
        project_config=ProjectConfiguration(project_dir=str(run_dir)),
    )
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        WORLD_GROUP.append(torch.distributed.group.WORLD)
    return accelerator


def set_backends(accelerator: Accelerator) -> None:
    """On CUDA, as timm's train.py: the cuDNN autotuner (input shapes are fixed within an epoch, so each conv's
    fastest algorithm is searched once per shape) and TF32 matmuls (PyTorch's default for cuDNN convs already).
    record_launch writes both into run_info.json."""
    if accelerator.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True


def check_launch(cfg: TrainConfig, accelerator: Accelerator, run_dir: Path, ckpt_dir: Path) -> None:
    """Refuse what would fail later (or race, or mix two runs) before anything is written."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise SystemExit(f"error: the launcher started {launched} processes but Accelerate sees "
                         f"{accelerator.num_processes}; they would race on {run_dir}. Check `accelerate env`.")
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":  # accelerate 1.16 skips it there
        raise SystemExit("error: mixed_precision fp16 has no CPU path (Accelerate would train in fp32, and the run be "
                         "recorded and scored as fp16); launch with --mixed_precision bf16 or no on CPUs")
    fsdp = accelerator.state.fsdp_plugin if accelerator.distributed_type == DistributedType.FSDP else None
    if fsdp is None and os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        accelerator.print("note: the launch config asks for FSDP; Accelerate runs it as DDP without a GPU (checkpoints "
                          "are DDP's, which a later FSDP launch does not resume)")
    strategy = os.environ.get("FSDP_SHARDING_STRATEGY", "FULL_SHARD").upper()  # what accelerate launch passes on
    if fsdp is not None and fsdp.fsdp_version == 2 and strategy not in ("FULL_SHARD", "1"):
        raise SystemExit(f"error: fsdp_sharding_strategy {strategy} is FSDP1's setting, which FSDP2 ignores (the run "
                         "would be FULL_SHARD); remove it from the launch config: for SHARD_GRAD_OP set "
                         "fsdp_reshard_after_forward: false, for HYBRID_SHARD add --use_parallelism_config "
                         "--parallelism_config_dp_replicate_size NODES --parallelism_config_dp_shard_size "
                         "GPUS_PER_NODE to the launch, for NO_SHARD use DDP (accelerate_configs/multi_gpu.yaml)")
    if fsdp is not None and fsdp.fsdp_version != 2:
        raise SystemExit("error: FSDP1 (fsdp_version: 1) is not supported (its mixed precision has no fp32 norm "
                         "layers here); set fsdp_version: 2 in the launch config, as accelerate_configs/fsdp.yaml does")
    if fsdp is not None and fsdp.activation_checkpointing:  # accelerate wraps blocks with preserve_rng_state=False
        raise SystemExit("error: fsdp_activation_checkpointing recomputes each block in training mode without its "
                         "random state: BatchNorm statistics update twice a step and drop-path masks differ from the "
                         "forward's (a different model, silently); set it false in the launch config")
    if fsdp is not None and fsdp.cpu_ram_efficient_loading:  # accelerate launch's default for --use_fsdp
        fsdp.cpu_ram_efficient_loading = False
        os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"
        accelerator.print("note: fsdp_cpu_ram_efficient_loading off: every rank builds the whole model here, so it "
                          "saves nothing, and its reload would misread the fp32 norm layers' shards")
    if cfg.ema_decay and fsdp is not None:
        raise SystemExit("error: --ema_decay is not supported under FSDP (the EMA copy would be a full replica per "
                         "rank); use DDP (accelerate_configs/multi_gpu.yaml) or --ema_decay 0")
    if cfg.push_to_hub:  # fail now, not after days of training; one request, the main process's, for every rank
        refusal = None
        try:
            if accelerator.is_main_process:
                modeling.check_hub_ready(cfg.hub_model_id, private=cfg.hub_private)
        except ValueError as e:
            refusal = f"error: --push_to_hub: {e}"
        refuse_together(accelerator, refusal)
    # a live run in the folder is the news, more than that the folder "already holds a run"
    holder = in_use(run_dir) if accelerator.is_main_process else None
    refuse_together(accelerator, holder and f"error: --output_dir {run_dir} is in use by {holder}; wait for it to "
                    "end or give another --output_dir")
    check_output_dir(run_dir, ckpt_dir, cfg.resume_from_checkpoint)
    hold_output_dir(accelerator, run_dir)


def record_launch(accelerator: Accelerator, cfg: TrainConfig, folder: Path, **more) -> None:
    """config.yaml + run_info.json of this launch: in run_dir for the first, run_dir/resumes/<time>/ for each
    resume, and in every checkpoint it writes. `more`: further run_info.json keys."""
    if accelerator.is_main_process:
        write_run_info(folder, cfg, extra={**more, "num_processes": accelerator.num_processes,
                                           "distributed_type": str(accelerator.distributed_type),
                                           "mixed_precision": accelerator.mixed_precision,
                                           "device": str(accelerator.device),
                                           "cudnn_benchmark": torch.backends.cudnn.benchmark,
                                           "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                                           "tf32_cudnn": torch.backends.cudnn.allow_tf32})


def start_records(accelerator: Accelerator, cfg: TrainConfig, run_dir: Path, resumed: bool,
                  startup: dict[str, float]) -> None:
    """The launch's records, written once the start-up checks have passed (so a failed start leaves nothing that
    blocks its own command): run_dir's for a fresh start, run_dir/resumes/<UTC time>/ for a resume (names sort in
    launch order). A stop record of an earlier launch goes: this one is running. `startup`: each set-up phase's
    end (time.monotonic(), in main's order). A folder that refuses the writes ends the launch on every rank."""
    refusal = None
    if accelerator.is_main_process:
        try:
            write_start_records(accelerator, cfg, run_dir, resumed, startup)
        except OSError as e:  # a disk that filled since the lock was written, a quota
            refusal = cannot_write(run_dir, e)
    refuse_together(accelerator, refusal)


def write_start_records(accelerator: Accelerator, cfg: TrainConfig, run_dir: Path, resumed: bool,
                        startup: dict[str, float]) -> None:
    """start_records' writes, on the main process."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / STOPPED_RECORD).unlink(missing_ok=True)
    first = not resumed or not (run_dir / "run_info.json").exists()
    now = time.monotonic()
    ends = {"imports": IMPORTED, **startup, "resume": now}
    # startup_s: what a launch costs before its first step, in seconds; startup_split_s: the same by phase (the
    # accelerator: its device and process group; loaders: the run record, the loaders and their fork server's start;
    # prepare: norm layers, FSDP, optimizer, accelerate's prepare, compile's wrapping, EMA; resume: the checkpoint)
    split = {phase: end - begin for phase, begin, end in zip(ends, [STARTED, *ends.values()], ends.values())}
    record_launch(accelerator, cfg, run_dir if first else
                  run_dir / "resumes" / time.strftime("%Y%m%d-%H%M%SZ", time.gmtime()),
                  startup_s=round(now - STARTED, 2),
                  startup_split_s={phase: round(seconds, 2) for phase, seconds in split.items()},
                  # seconds into the launch when the workers' fork server started (null: no workers)
                  worker_server_started_s=round(worker_processes.started_at[0] - STARTED, 2)
                  if worker_processes.started_at else None)


def load_data(dataset: str, eval_split: str):
    """The DatasetDict and its class names; every row labelled, the same classes in the same order in both splits."""
    try:
        ds = load_image_dataset(dataset)
    except ValueError as e:
        raise SystemExit(f"error: --dataset {dataset}: {e}") from None
    if not {"train", eval_split} <= set(ds):
        raise SystemExit(f"error: --dataset {dataset} has splits {sorted(ds)}; train.py needs 'train' and "
                         f"--eval_split '{eval_split}' (preprocess.py writes train and validation)")
    label_names = None
    for split in ("train", eval_split):
        try:
            label_names = check_labels(ds[split], label_names)
        except ValueError as e:
            raise SystemExit(f"error: --dataset {dataset}, split '{split}': {e}") from None
    return ds, label_names


def build_model(cfg: TrainConfig, label_names: list[str], print_fn=print) -> torch.nn.Module:
    """--model with --pretrained/--drop_path/--drop_rate for the dataset's classes ``label_names``; a bad name or
    weights are a one-line error. Fine-tuning weights made for another class count gets a new head, and ``print_fn``
    states it (timm drops the old one silently); a head kept for as many classes that are not the dataset's (another
    order, other classes) is stated too."""
    num_classes = len(label_names)
    if cfg.model.startswith(("local-dir:", "hf-hub:")) and not cfg.pretrained:
        raise SystemExit(f"error: --model {cfg.model} names saved weights; add --pretrained to start from them "
                         "(or give the architecture name for a random init)")
    dropout = {**({"drop_path_rate": cfg.drop_path} if cfg.drop_path else {}),
               **({"drop_rate": cfg.drop_rate} if cfg.drop_rate is not None else {})}
    try:
        model = modeling.create_model(cfg.model, num_classes=num_classes, pretrained=cfg.pretrained, **dropout)
    except TypeError as e:
        if not dropout or not any(k in str(e) for k in dropout):
            raise SystemExit(f"error: --model {cfg.model}: {e}") from None
        raise SystemExit(f"error: --drop_path/--drop_rate: {cfg.model} takes no {' or '.join(dropout)}; leave them "
                         "unset") from None
    except (ValueError, OSError, RuntimeError) as e:  # unknown name, offline Hub, missing or mismatched weights
        raise SystemExit(f"error: --model {cfg.model}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                         ) from None
    try:  # an export that could not carry the family's code would be found out only after the last step
        modeling.check_exportable(model)
    except ValueError as e:
        raise SystemExit(f"error: --model {cfg.model}: {e}") from None
    weights_classes = (getattr(model, "pretrained_cfg", None) or {}).get("num_classes")
    if cfg.pretrained and weights_classes and weights_classes != num_classes:
        print_fn(f"--model {cfg.model}: new {num_classes}-class head (random init); the {weights_classes}-class head "
                 "of the pretrained weights is dropped")
    elif cfg.pretrained and weights_classes and (note := kept_head_note(model, cfg.model, label_names)):
        print_fn(f"--model {cfg.model}: {note}")
    return model


def kept_head_note(model, model_ref: str, label_names: list[str]) -> str | None:
    """What a pretrained head kept for the dataset's class count starts from when its classes are not the dataset's,
    compared as validate.py compares them (modeling.class_order); None when they are, or are not recorded. Class i of
    the data is trained from the head's row i whatever class that row learnt."""
    ids = descriptions = None
    if model_ref.startswith(("local-dir:", "hf-hub:")):
        # an export's own ids: for a class count timm takes for an ImageNet subset (1000, ...) the pretrained_cfg
        # timm builds holds the config's root label_names, human names there (modeling.hub, label_info)
        ids, descriptions = modeling.label_info(model_ref)
    if ids is None:
        ids, descriptions = modeling.pretrained_labels(getattr(model, "pretrained_cfg", None) or {})
    order = modeling.class_order(ids, descriptions, label_names) if ids else "same"
    if order == "reordered":
        return (f"the pretrained head has the dataset's classes in another index order ({ids[:3]}... against "
                f"{label_names[:3]}...): kept, each class starts from another's weights; re-export it in the "
                "dataset's order, or preprocess with the same class order")
    if order == "other":
        return (f"the pretrained {len(ids)}-class head is kept, though its classes are not the dataset's "
                f"({ids[:3]}... against {label_names[:3]}...): each class starts from another's weights")
    return None


def check_model_sizes(model: torch.nn.Module, cfg: TrainConfig, train_set: TrainSet) -> None:
    """Refuse every crop side (px) the run would feed ``model`` that it cannot take (a ViT's other sizes, a side too
    small for a CNN's pooling), before the first step: met in the loop, it is a traceback at a progressive-resizing
    epoch or at the first evaluation, an epoch lost. One blank image's forward per side (validate.py's check), in
    eval mode: a train-mode forward would move the BatchNorm statistics and fail on a 1x1 map at batch size 1."""
    flags = {cfg.image_size: "--image_size"}  # each side once, under the first flag that asks for it
    flags.setdefault(cfg.eval_image_size or cfg.image_size, "--eval_image_size")
    for side in sorted({train_set.size_at(epoch) for epoch in range(cfg.epochs)}):  # the ramp's, from --min_image_size
        flags.setdefault(side, "--min_image_size")
    fixes = {"--image_size": "give --image_size {own}", "--eval_image_size": "give {own}, or leave {flag} out "
             "(the --image_size)", "--min_image_size": "leave --min_image_size out, or raise it"}
    was_training = model.training
    model.eval()
    for side, flag in flags.items():
        check_input_sizes(model, [side], flag, cfg.model, fixes[flag])
    model.train(was_training)


LOADER_TIMEOUT_S = 300  # s the train loader waits for one batch before it takes its workers for hung (a read
# blocked on NFS) and EpochTrainer restarts them: torch's DataLoader `timeout`. Generous, as the first batch after
# the workers start can take a minute from cold storage. Not longer: the other ranks wait in a collective meanwhile
# (NCCL's default: 600 s). A dead worker is noticed within 5 s of a wait (loader_setup.WatchedLoader)


def build_loaders(cfg: TrainConfig, ds, data_cfg: dict, accelerator: Accelerator, bad: BadSamples):
    """(train loader over a ResumableSampler, eval loader). The train loader stays unprepared: its sampler already
    shards by rank and is positioned by the loop, which is what makes resume exact; it hands the rows it replaced
    (images that do not decode) to `bad`."""
    eval_size = cfg.eval_image_size or cfg.image_size
    try:
        # the architecture's own eval transform, crop_mode included (squash for tf_efficientnetv2_*, ...): the one its
        # export's pretrained_cfg names, so validate.py and timm's create_transform score what metrics.jsonl says
        eval_set = EvalSet(ds[cfg.eval_split], eval_size, crop_pct=data_cfg["crop_pct"],
                           interpolation=data_cfg["interpolation"], crop_mode=data_cfg.get("crop_mode") or "center",
                           mean=data_cfg["mean"])
    except ValueError as e:  # the split's columns are checked by load_data: this is the model's crop_pct, ...
        raise SystemExit(f"error: --model {cfg.model}: its pretrained_cfg eval transform: {e}") from None
    try:
        ramp = (cfg.min_image_size, cfg.ramp_start_epoch, cfg.ramp_end_epoch) if cfg.min_image_size else None
        train_set = TrainSet(ds["train"], cfg.image_size, cfg.seed, scale=(cfg.scale_min, 1.0), progressive=ramp,
                             auto_augment=cfg.auto_augment or None, mean=tuple(data_cfg["mean"]))
        sampler = ResumableSampler(len(train_set), cfg.batch_size, cfg.seed, num_replicas=accelerator.num_processes,
                                   rank=accelerator.process_index, grad_accum_steps=cfg.grad_accum_steps)
    except ValueError as e:  # the flags TrainSet takes are checked by TrainConfig: this is the sampler's batching
        raise SystemExit(f"error: {e} (check --batch_size, --grad_accum_steps)") from None
    workers = loader_workers(cfg.num_workers, print_fn=accelerator.print)
    largest = max(cfg.image_size, eval_size) ** 2 * 3 * cfg.batch_size  # bytes of a uint8 batch
    check_shm(workers, largest, local_processes())
    accelerator.wait_for_everyone()  # every rank checks before any makes its ring: one that checked later saw less free
    context = worker_context() if workers else None
    loader_kw = dict(num_workers=workers, collate_fn=collate, pin_memory=accelerator.device.type == "cuda",
                     persistent_workers=workers > 0, prefetch_factor=PREFETCH_FACTOR if workers else None,
                     multiprocessing_context=context,
                     generator=torch.Generator())  # own generator: creating an iterator must not consume global RNG
    # the train batches go through slots the workers reuse (data.ring), made before the workers start
    ring = (BatchRing(workers, RING_SLOTS, (cfg.batch_size, cfg.image_size, cfg.image_size, 3), context=context)
            if workers else None)
    train_loader = RecordingLoader(train_set, batch_sampler=sampler, bad=bad,
                                   **(loader_kw | ({"collate_fn": RingCollate(ring)} if ring else {})),
                                   timeout=LOADER_TIMEOUT_S if workers else 0)
    train_loader.worker_restarts = 0  # EpochTrainer.restart_workers' count, over the launch's epochs
    eval_loader = torch.utils.data.DataLoader(eval_set, batch_size=cfg.batch_size, shuffle=False, **loader_kw)
    return train_loader, eval_loader


def count_steps(cfg: TrainConfig, train_loader, num_processes: int) -> tuple[int, int]:
    """(optimizer steps per epoch, optimizer steps of the run: --epochs of them, or --max_train_steps if fewer)."""
    steps_per_epoch = len(train_loader.batch_sampler) // cfg.grad_accum_steps
    if steps_per_epoch == 0:
        raise SystemExit(f"error: --batch_size {cfg.batch_size} x {num_processes} processes x "
                         f"{cfg.grad_accum_steps} accumulation exceeds the {len(train_loader.dataset)} train images")
    total_steps = cfg.epochs * steps_per_epoch
    return steps_per_epoch, min(total_steps, cfg.max_train_steps) if cfg.max_train_steps else total_steps


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, num_processes: int, steps_per_epoch: int,
                    total_steps: int, print_fn=print):
    """(--optimizer over `model`'s parameters, the LR of each optimizer step): --lr scaled to the global batch.
    ``print_fn`` says so when the run ends within the warmup, which --max_train_steps does not shorten."""
    global_batch, peak_lr = (scaled(cfg, num_processes)[k] for k in ("global_batch", "peak_lr"))
    try:
        optimizer = create_optimizer_v2(model, opt=cfg.optimizer, lr=peak_lr, weight_decay=cfg.weight_decay,
                                        momentum=cfg.momentum,
                                        param_group_fn=functools.partial(decay_groups, weight_decay=cfg.weight_decay))
        model_order = [id(p) for p in model.parameters() if p.requires_grad]
        # on the optimizer that loads: timm's Lookahead passes its state on to the one it wraps (and has no hooks)
        loads = getattr(optimizer, "_base_optimizer", optimizer)
        loads.register_load_state_dict_pre_hook(functools.partial(split_one_group, model_order=model_order))
    except ValueError as e:
        raise SystemExit(f"error: --optimizer {cfg.optimizer}: {e}") from None
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    lr_at = functools.partial(cosine_lr, peak_lr=peak_lr, warmup_steps=warmup_steps, total_steps=total_steps,
                              min_lr=cfg.min_lr)
    if total_steps <= warmup_steps:
        ends = f"--max_train_steps {cfg.max_train_steps}" if cfg.max_train_steps else f"--epochs {cfg.epochs}"
        print_fn(f"note: {ends} ends the run within the {warmup_steps} warmup steps of --warmup_epochs "
                 f"{cfg.warmup_epochs:g}, which it does not shorten: the LR never leaves warmup (last step "
                 f"{lr_at(total_steps - 1):.3g}, peak {peak_lr:.3g})")
    if cfg.min_lr > peak_lr:  # the peak scales with the processes: a floor set for more of them can end above it
        print_fn(f"note: --min_lr {cfg.min_lr:g} is above the peak LR {peak_lr:.3g} (--lr {cfg.lr:g} x global batch "
                 f"{global_batch} / 256): the LR rises from the peak to --min_lr after warmup instead of decaying")
    return optimizer, lr_at


def scaled(cfg: TrainConfig, num_processes: int) -> dict:
    """{"global_batch": images per optimizer step, "peak_lr": the optimizer's LR at the end of warmup}: --batch_size
    is per device and --lr per 256 images of the global batch (Goyal et al. 2017), neither what a trainer with an
    absolute LR and one batch size takes."""
    global_batch = cfg.batch_size * cfg.grad_accum_steps * num_processes
    return {"global_batch": global_batch, "peak_lr": cfg.lr * global_batch / 256}


def scaling_line(cfg: TrainConfig, num_processes: int) -> str:
    """The start-up line: the global batch and peak LR this launch trains with, from the per-device and per-256
    flags."""
    got = scaled(cfg, num_processes)
    return (f"global batch {got['global_batch']} = {cfg.batch_size} x {cfg.grad_accum_steps} accumulation x "
            f"{num_processes} process{'es' if num_processes > 1 else ''}; peak lr {got['peak_lr']:.6g} ({cfg.lr:g} per "
            "256 images)")


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """timm's param groups (biases, norm layers and the model's no_weight_decay() names undecayed), laid out as for a
    decaying run whatever `weight_decay`: timm puts every parameter in one group at 0, two otherwise, and a
    checkpoint's optimizer state loads only into its own group count, so a resume across --weight_decay 0 would be
    refused where any other change of the value is applied (keep_launch_flags)."""
    no_decay = getattr(model, "no_weight_decay", lambda: set())()
    groups = param_groups_weight_decay(model, weight_decay=1.0, no_weight_decay_list=no_decay)
    return [{**group, "weight_decay": weight_decay if group["weight_decay"] else 0.0} for group in groups]


def split_one_group(optimizer, state_dict: dict, model_order: list[int]) -> dict | None:
    """A checkpoint's optimizer state in one param group (what timm built for --weight_decay 0 before decay_groups)
    laid out as `optimizer`'s groups, each parameter's state (momentum, ...) with it: that group held every trainable
    parameter in the model's order (`model_order`: their ids), where the state dict numbers them. None (loaded as
    it is) for any other layout. A load_state_dict pre-hook: accelerate's load_state calls load_state_dict."""
    groups = state_dict["param_groups"]
    mine = [id(p) for group in optimizer.param_groups for p in group["params"]]
    if len(groups) != 1 or len(optimizer.param_groups) == 1 or len(groups[0]["params"]) != len(model_order) or \
            sorted(mine) != sorted(model_order):
        return None
    saved = dict(zip(model_order, groups[0]["params"]))  # a parameter's id -> its number in the checkpoint
    settings = {k: v for k, v in groups[0].items() if k != "params"}
    state, split, number = {}, [], 0
    for group in optimizer.param_groups:
        numbers = list(range(number, number + len(group["params"])))
        state |= {n: state_dict["state"][saved[id(p)]] for n, p in zip(numbers, group["params"])
                  if saved[id(p)] in state_dict["state"]}
        split.append({**settings, "weight_decay": group["weight_decay"] and settings["weight_decay"],
                      "params": numbers})
        number += len(numbers)
    return {**state_dict, "state": state, "param_groups": split}


def convert_norm_and_memory_format(model: torch.nn.Module, cfg: TrainConfig,
                                   accelerator: Accelerator) -> torch.nn.Module:
    """--sync_bn and --channels_last, before the optimizer sees the parameters."""
    if cfg.sync_bn:
        if accelerator.device.type == "cpu" and accelerator.num_processes > 1:
            raise SystemExit("error: --sync_bn needs GPUs (SyncBatchNorm has no gloo/CPU path); drop it on CPU")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def compile_model(model, compile: bool, accelerator: Accelerator):
    """torch.compile after prepare: compiling the DDP module lets dynamo split the graph at DDP's gradient buckets, so
    their all-reduce overlaps the backward (torch/_dynamo/backends/distributed.py); DDP around a compiled module
    reduces only after the whole fused backward. Static shapes: one graph per train size (progressive resizing has a
    few) and one for eval, whose last, smaller batch runs eagerly (metrics.evaluate), never a dynamic-shape graph.
    FSDP2's hooks are not traced by dynamo, so compiling its root captures almost nothing: refused."""
    if not compile:
        return model
    if accelerator.distributed_type == DistributedType.FSDP:
        raise SystemExit("error: --compile with FSDP compiles almost nothing (FSDP2's hooks are not traced); "
                         "drop --compile, or use a DDP launch config (accelerate_configs/multi_gpu.yaml)")
    return torch.compile(model, dynamic=False)


def cosine_lr(step: int, *, peak_lr: float, warmup_steps: int, total_steps: int, min_lr: float) -> float:
    """LR of optimizer step `step` (0-based): linear warmup from 0 (Goyal et al. 2017), then cosine to min_lr
    (Loshchilov & Hutter 2017). Plain floats: a numpy scalar in param_groups breaks weights_only loading."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (peak_lr - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


ODD_BATCH = "even with --mixup_alpha or --cutmix_alpha (each image is mixed with its mirror in the batch)"


def odd_mixing_batch(cfg: TrainConfig) -> bool:
    """An odd --batch_size with mixup or cutmix on: the middle image would pair with itself (timm's Mixup asserts an
    even batch)."""
    return bool(cfg.mixup_alpha or cfg.cutmix_alpha) and cfg.batch_size % 2 == 1


def resume(accelerator: Accelerator, state: TrainState, optimizer, cfg: TrainConfig, ckpt_dir: Path) -> Path | None:
    """Load --resume_from_checkpoint into everything registered with `accelerator`; the checkpoint's folder, or
    None when "latest" finds nothing saved yet (a preempted job can be requeued with the same command). The
    optimizer's state comes from the checkpoint, its hyper-parameters from this launch's flags (what config.yaml and
    the model card record); checkpoints past the one resumed from are set aside."""
    picked = [None, None]  # (path, error)
    if accelerator.is_main_process:  # one process reads the files' CRCs, not every rank (a shared filesystem's load)
        try:
            picked = [checkpoints.pick(cfg.resume_from_checkpoint, ckpt_dir, print_fn=accelerator.print), None]
        except ValueError as e:
            picked = [None, str(e)]
    path, error = broadcast_object_list(picked) if accelerator.num_processes > 1 else picked
    if error is not None:
        raise SystemExit(f"error: --resume_from_checkpoint {error}")
    if path is None:
        if odd_mixing_batch(cfg):  # a fresh run after all
            raise SystemExit(f"error: --batch_size must be {ODD_BATCH}, got {cfg.batch_size}")
        accelerator.print(f"no checkpoint in {ckpt_dir} yet: starting from scratch")
        set_aside_later(accelerator, ckpt_dir, 0)
        return None
    if odd_mixing_batch(cfg):  # a saved run keeps its batch (a resume cannot change it): warned, not refused
        accelerator.print(f"warning: --batch_size {cfg.batch_size} is odd: the middle image of each batch is mixed "
                          "with itself (--mixup_alpha/--cutmix_alpha); a new run needs an even one")
    # the launch config first: a checkpoint of another one would be told to change flags this launch then refuses
    # (a DDP checkpoint's EMA, which FSDP runs without)
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    state_dict_type = getattr(accelerator.state.fsdp_plugin.state_dict_type, "name", None) if fsdp else None
    for other in (checkpoints.launch_mismatch(path, fsdp, state_dict_type), checkpoints.setting_mismatch(path, cfg)):
        if other is not None:
            raise SystemExit(f"error: --resume_from_checkpoint {path} {other}")
    batching, samples = dict(state.batching), state.train_samples
    flags = [{k: group[k] for k in OPTIMIZER_FLAGS if k in group} for group in optimizer.param_groups]
    try:
        accelerator.load_state(str(path))
    except (RuntimeError, KeyError, ValueError, OSError, SafetensorError, CheckpointException) as e:
        raise SystemExit(load_failure(e, path, cfg.resume_from_checkpoint, ckpt_dir)) from None
    check_train_set(path, cfg.dataset, samples, state)
    elastic = []  # the card's one entry for the process count and the accumulation that keeps the global batch
    if state.batching != batching:  # elastic: another process count with the same global micro-batches
        try:
            state.batch_in_epoch = elastic_position(state.batch_in_epoch, state.batching, batching)
        except ValueError as e:  # the saved position would point at other samples and another schedule
            raise SystemExit(f"error: --resume_from_checkpoint {path}: {e}") from None
        ratio = state.batching["num_processes"] / batching["num_processes"]  # the epoch's loss so far, in this
        state.epoch_loss = (state.epoch_loss[0] * ratio, round(state.epoch_loss[1] * ratio))  # launch's units
        accelerator.print(f"saved on {state.batching['num_processes']} processes, resumed on "
                          f"{batching['num_processes']} with --grad_accum_steps {batching['grad_accum_steps']}: the "
                          "same global batches")
        elastic = [f"num_processes {state.batching['num_processes']} -> {batching['num_processes']} (grad_accum_steps "
                   f"{state.batching['grad_accum_steps']} -> {batching['grad_accum_steps']}, the same global batch)"]
        state.batching = batching
    check_seed(path, cfg.seed, state)
    # accelerate's micro-batch count decides which micro-batch ends an accumulation: in this launch's units
    accelerator.step = state.step * batching["grad_accum_steps"]
    pending = ", first the evaluation a stop signal cut short there" if state.eval_pending else ""
    accelerator.print(f"resumed from {path} at epoch {state.epoch}, step {state.step}{pending}")
    if optimizer_changed := keep_launch_flags(optimizer, flags):
        accelerator.print(f"the checkpoint was saved with other optimizer settings; this launch's apply: "
                          f"{', '.join(optimizer_changed)}")
    if changed := checkpoints.changed_flags(path, cfg, skip=RESUME_CHECKED):
        accelerator.print(f"flags that differ from the checkpoint's config.yaml, this launch's apply: "
                          f"{', '.join(changed)}")
    launch = {"mixed_precision": accelerator.mixed_precision, "num_processes": accelerator.num_processes,
              "device": accelerator.device.type}
    if elastic:  # said above, with its accumulation
        del launch["num_processes"]
    launched = checkpoints.launch_changes(path, launch)
    if launched:
        accelerator.print(f"accelerate launch settings that differ from the checkpoint's run_info.json, this "
                          f"launch's apply: {', '.join(launched)}")
    if optimizer_changed or changed or elastic or launched:
        state.recipe_changes.append({"step": state.step, "flags": [*optimizer_changed, *changed, *elastic, *launched]})
    forget_best_exported_elsewhere(accelerator, state, ckpt_dir)
    accelerator.wait_for_everyone()  # every rank has picked its checkpoint (reading the folders) before any moves
    set_aside_later(accelerator, ckpt_dir, state.step, state.best_top1)
    return path


# what a checkpoint file that lost its end makes the readers say: torch.load's zip reader; pickle's (FSDP's .metadata,
# whose reader raises a new error with only the text: "metadata is None; global metadata read failed: ...")
CUT_FILE = ("PytorchStreamReader", "pickle data was truncated", "Ran out of input", "metadata is None")
CUSTOM_COUNT = "Number of custom checkpoints"  # accelerate's load_state, where a custom_checkpoint_N.pkl is absent
# what torch.distributed.checkpoint says loading a one-group optimizer state into decay_groups' two (split_one_group,
# a load_state_dict hook, is not on that path)
ONE_GROUP_SHARDED = "Missing key in checkpoint state_dict: optimizer.param_groups.1."


def load_failure(error: BaseException, path: Path, resume_from: str, ckpt_dir: Path) -> str:
    """resume's one line for a load_state that failed on the checkpoint `path`: damaged, where a file lost its end
    (safetensors' SafetensorError; torch.load's PytorchStreamReader error, or EOFError where an FSDP rank reads its
    part past the end of a shard), else a checkpoint this run does not fit. Under FSDP `error` is
    torch.distributed.checkpoint's CheckpointException, whose text is every rank's traceback: the ranks' own errors
    are read instead (checkpoints.causes)."""
    found = [e for e in checkpoints.causes(error) if not isinstance(e, CheckpointException)] or [error]
    damaged = [e for e in found if isinstance(e, (SafetensorError, EOFError)) or any(cut in str(e) for cut in CUT_FILE)]
    # a file accelerate loads is absent (an unsealed folder: a copy cut short, or not a checkpoint at all)
    missing = [e for e in found if isinstance(e, FileNotFoundError) or CUSTOM_COUNT in str(e)]
    if damaged or missing:
        then = (f"move it out of {ckpt_dir}, then --resume_from_checkpoint latest takes the one before"
                if resume_from == "latest" else
                "--resume_from_checkpoint latest takes the newest complete one")  # unsealed: found by the load
        if not damaged:
            return f"error: --resume_from_checkpoint {path} is incomplete ({first_line(missing[0])}); {then}"
        said = next((first_line(e) for e in damaged if str(e)), "a file ends before its data: EOFError")
        return f"error: --resume_from_checkpoint {path} is damaged ({said}); {then}"
    if any(ONE_GROUP_SHARDED in str(e) for e in found):
        return (f"error: --resume_from_checkpoint {path} holds FSDP optimizer shards in one param group "
                "(--weight_decay 0 before this version made two at any value), which a sharded load cannot split; "
                "resume it with the code that saved it (the git commit in its run_info.json)")
    return (f"error: --resume_from_checkpoint {path} does not fit this run ({first_line(found[0])}); resume with the "
            f"flags of {ckpt_dir.parent}/config.yaml")


def first_line(error: BaseException) -> str:
    """An error's first line for a one-line message (200 characters at most); its type where it has no text."""
    return (str(error).splitlines() or [type(error).__name__])[0][:200]


def forget_best_exported_elsewhere(accelerator: Accelerator, state: TrainState, ckpt_dir: Path) -> None:
    """A resumed best score whose model this run folder holds in neither final/ nor its step_N (a checkpoint copied
    into a new --output_dir) belongs to a model exported elsewhere. Kept, this run would export only above it,
    perhaps never (leaving nothing to push), and rotation would keep a best step_N this folder lacks: forgotten, in
    one line, so that this run's first evaluation exports. With its step_N here (final/ deleted or moved by hand) the
    best stays, and so does that checkpoint, the only copy of the best model left: said in one line. Decided by the
    main process for every rank: the export is a collective under FSDP."""
    final, best = ckpt_dir.parent / "final", checkpoints.step_folder(ckpt_dir, state.best_step)
    found = [accelerator.is_main_process and state.best_top1 >= 0 and not final.is_dir(), best.is_dir()]
    absent, kept = broadcast_object_list(found) if accelerator.num_processes > 1 else found
    if absent and kept:
        accelerator.print(f"{final} is absent: the best model (val top-1 {state.best_top1:.2f}% at step "
                          f"{state.best_step}) is in {best}, which rotation keeps; this run exports above it")
    elif absent:
        accelerator.print(f"{final} is absent: the checkpoint's best (val top-1 {state.best_top1:.2f}% at step "
                          f"{state.best_step}) was exported elsewhere; this run's first evaluation exports here")
        state.best_top1, state.best_step = -1.0, -1


def set_aside_later(accelerator: Accelerator, ckpt_dir: Path, step: int, best_top1: float = -1.0) -> None:
    """What the run a resume leaves wrote past `step`, its checkpoints and its metrics.jsonl rows (a rollback to an
    older checkpoint, or a newer one that was damaged), moved to ckpt_dir/set_aside/<time>/ by the main process.
    Where one of those rows beat `best_top1` (the best up to `step`), that run exported it to run_dir/final, which
    stays until this run's first evaluation above `best_top1`: said in one line."""
    if not accelerator.is_main_process:
        return
    stamp = time.strftime("%Y%m%d-%H%M%SZ", time.gmtime())
    folder = ckpt_dir / checkpoints.SET_ASIDE / stamp
    moved = ["checkpoints"] if checkpoints.set_aside_later_steps(ckpt_dir, step, stamp) else []
    rows, damaged = checkpoints.set_aside_later_rows(ckpt_dir.parent / "metrics.jsonl", step, folder)  # run_dir's
    if rows:
        moved.append(f"{rows} metrics.jsonl row{'s' * (rows != 1)}")
    if moved:
        accelerator.print(f"the {' and '.join(moved)} past step {step} belong to the run this resume leaves: moved "
                          f"to {folder} (delete it once not needed)")
    if damaged:
        accelerator.print(f"{damaged} damaged line{'s' * (damaged != 1)} of {ckpt_dir.parent / 'metrics.jsonl'} "
                          f"(no JSON row: an append a kill cut short, or changed bytes) moved to {folder}")
    top1 = max((row.get(k, -1.0) for row in checkpoints.rows_of(folder / "metrics.jsonl")
                for k in ("val_top1", "ema_val_top1")), default=-1.0) if rows else -1.0
    if top1 > best_top1 and (ckpt_dir.parent / "final").is_dir():  # absent: best_top1 is forgotten already
        accelerator.print(f"warning: {ckpt_dir.parent / 'final'} holds the model the run this resume leaves exported "
                          f"(val top-1 {top1:.2f}%), not this run's: it is replaced at this run's first evaluation "
                          f"above {best_top1:.2f}% (the best up to step {step})")


OPTIMIZER_FLAGS = ("weight_decay", "momentum")  # the optimizer hyper-parameters set from flags (lr: every step)
# the flags a resume refuses or reports on their own, or that say where the run is rather than what it trains:
# resume's list of the other changed ones leaves them out
RESUME_CHECKED = {"resume_from_checkpoint", "output_dir", "model", "optimizer", "batch_size", "grad_accum_steps",
                  *OPTIMIZER_FLAGS}


def check_seed(path: Path, seed: int, state: TrainState) -> None:
    """Refuse another --seed than the checkpoint's mid-epoch: the sampler's order comes from (seed, epoch), so the
    rest of the epoch would be another permutation's, some images read twice in the epoch and others never."""
    saved = (checkpoints.saved_config(path) or {}).get("seed", seed)
    if saved != seed and state.batch_in_epoch:
        raise SystemExit(f"error: --seed {seed}: --resume_from_checkpoint {path} was saved mid-epoch (epoch "
                         f"{state.epoch}, batch {state.batch_in_epoch}) with --seed {saved}, and another seed reorders "
                         f"the rest of the epoch (images seen twice or not at all); resume with --seed {saved}, or "
                         "from an epoch-end checkpoint")


def check_train_set(path: Path, dataset: str, samples: int, state: TrainState) -> None:
    """Refuse a train split of another length than the checkpoint's (`samples`: this launch's) mid-epoch: the epoch's
    order is a permutation of the saved length, so the saved position would read the rest of the epoch in another
    order, or lie past its end. A checkpoint without the length (saved before it was recorded) keeps this launch's:
    taken as it is. The state then records this launch's length."""
    if state.train_samples != samples and state.batch_in_epoch:
        raise SystemExit(f"error: --dataset {dataset}: --resume_from_checkpoint {path} was saved mid-epoch (epoch "
                         f"{state.epoch}, batch {state.batch_in_epoch}) with {state.train_samples} train images, "
                         f"this split has {samples}, and another length reorders the rest of the epoch (images seen "
                         "twice or not at all); resume on the train split it was saved with, or from an epoch-end "
                         "checkpoint")
    state.train_samples = samples


def keep_launch_flags(optimizer, flags: list[dict]) -> list[str]:
    """Put back each param group's OPTIMIZER_FLAGS as this launch set them (`flags`, read before the load, which
    restores the saved ones with the state); what differed, as "--flag saved -> now"."""
    changed = {f"--{k} {group[k]:g} -> {mine[k]:g}" for group, mine in zip(optimizer.param_groups, flags)
               for k in mine if group[k] != mine[k]}  # the no-decay group's 0 never differs
    for group, mine in zip(optimizer.param_groups, flags):
        group.update(mine)
    return sorted(changed)


def nothing_to_do(state: TrainState, cfg: TrainConfig, total_steps: int, run_dir: Path) -> str:
    """What a launch resumed at or past its end says before it exits 0, training nothing."""
    end = f"--max_train_steps {cfg.max_train_steps}" if cfg.max_train_steps and total_steps == cfg.max_train_steps \
        else f"--epochs {cfg.epochs}"
    final = run_dir / "final"
    model = f"the best model is in {final}" if final.is_dir() else f"no model was exported yet ({final} is absent)"
    return (f"nothing to do: the checkpoint is at step {state.step} (epoch {state.epoch}), and {end} ends this run at "
            f"step {total_steps}; raise {end.split()[0]} to train on. {model[0].upper()}{model[1:]}")


# -- the loop ----------------------------------------------------------------------------------------------------------

class Stopped(enum.Enum):
    """Why `EpochTrainer.train` returned: main checkpoints on all but the first two and then exits on STOP_SIGNAL
    and BAD_SAMPLES."""
    EPOCH_END = "epoch end"
    STEP_CAP = "step cap"  # total_steps reached (--epochs or --max_train_steps)
    STOP_SIGNAL = "stop signal"
    BAD_SAMPLES = "bad samples"  # the ranks' shared undecodable images passed --max_bad_samples
    CHECKPOINT_DUE = "checkpoint due"  # --save_every_steps or --save_every_minutes


@dataclass
class StepPlan:
    """What every optimizer step of the run needs besides the model: fixed once the run is set up."""
    lr_at: Callable[[int], float]  # LR of a 0-based optimizer step
    total_steps: int
    num_classes: int
    mean: tuple  # the model's normalization, 0..1 units
    std: tuple
    memory_format: torch.memory_format


LOADER_RESTARTS = 3  # train DataLoader worker failures a launch recovers from in place (EpochTrainer.next_batch):
# an OOM kill or a decoder crash is rare; more in one launch means that the cause repeats (too many workers for the
# memory, an image that crashes its decoder, storage that stays blocked), which restarting again would only hide
LOADER_FAILURES = ("DataLoader worker (pid", "DataLoader timed out after ")  # how torch's RuntimeErrors for a
# worker that died, or workers that sent no batch within the loader's timeout, begin (torch/utils/data/dataloader.py)


def loader_failure(error: RuntimeError, loader) -> str | None:
    """What happened to `loader`'s workers, from torch's `error` and their exit statuses; None when `error` is not a
    DataLoader worker's death or time-out."""
    message = str(error)
    if not message.startswith(LOADER_FAILURES):
        return None
    dead = dead_workers(loader)
    if dead:
        return ", ".join(dead)
    if message.startswith("DataLoader timed out"):
        return f"the DataLoader workers sent no batch in {loader.timeout} s (hung: a read blocked on storage?)"
    return message


def dead_workers(loader) -> list[str]:
    """One line for each of `loader`'s workers that has ended (persistent_workers keep them in its iterator)."""
    workers = getattr(getattr(loader, "_iterator", None), "_workers", [])
    return [f"DataLoader worker (pid {w.pid}) {ended(w.exitcode)}" for w in workers if w.exitcode is not None]


def ended(exitcode: int) -> str:
    """A process's end from its multiprocessing exitcode (-N: signal N)."""
    if exitcode >= 0:
        return f"exited with status {exitcode}"
    try:
        return f"was killed by {signal.Signals(-exitcode).name}"
    except ValueError:
        return f"was killed by signal {-exitcode}"


def shut_down_workers(loader) -> None:
    """Drop `loader`'s iterator with its workers (persistent_workers keep it in torch's `_iterator`), so the next
    iter() starts new ones. A worker left alive by torch's shutdown is SIGKILLed: a stopped or hung one does not act
    on torch's SIGTERM (nor does any: the workers block the stop signals, worker_processes.worker_context)."""
    loader = getattr(loader, "base_dataloader", loader)  # accelerate's prepared loader wraps the DataLoader
    iterator, loader._iterator = loader._iterator, None
    if iterator is None:
        return
    workers = list(iterator._workers)
    iterator._shutdown_workers()
    for worker in workers:
        if worker.is_alive():
            worker.kill()
            worker.join(timeout=10)  # s; one in uninterruptible sleep dies when its read returns
    del iterator
    gc.collect()  # the old iterator's unread ring batches give their slots back now, before BatchRing.reset


def restart_dead_workers(loader, rank: int, step: int) -> None:
    """Start `loader`'s persistent workers anew when one died since its last pass (the OOM killer picks idle
    processes too): before an evaluation's first batch no rank has entered its gathers, so nothing pairs wrongly."""
    dead = dead_workers(loader)
    if dead:
        shut_down_workers(loader)
        tqdm.write(f"warning: rank {rank}: eval {', '.join(dead)} since the last evaluation; started new eval "
                   f"workers at step {step}", file=sys.stderr)


class EpochTrainer:
    """Optimizer steps from `state`'s position to the end of its epoch. `train` runs until a reason to stop
    (Stopped) and can be called again to go on with the same loader iterator after a mid-epoch checkpoint; it
    advances `state`'s position and nothing else. The host waits for the device only in `stop.check`, once per
    --log_every_steps (and before a checkpoint): the rest of a step only queues work."""

    def __init__(self, accelerator: Accelerator, model, optimizer, train_loader, state: TrainState, ema,
                 cfg: TrainConfig, plan: StepPlan, stop: StopSignal, ckpt_dir: Path):
        self.accelerator, self.model, self.optimizer, self.loader = accelerator, model, optimizer, train_loader
        self.state, self.ema, self.cfg, self.plan, self.stop, self.ckpt_dir = state, ema, cfg, plan, stop, ckpt_dir
        self.sampler = train_loader.batch_sampler
        self.micro_batches = len(self.sampler) // cfg.grad_accum_steps * cfg.grad_accum_steps  # of a whole epoch
        self.plain_model = accelerator.unwrap_model(model, keep_torch_compile=False)  # what the EMA averages
        self.step_rng = torch.Generator()  # on the host: drawing mixup/erasing parameters never waits for the device
        self.loss_sum = torch.tensor(state.epoch_loss[0], device=accelerator.device)
        self.loss_count = state.epoch_loss[1]
        self.sampler.set_position(state.epoch, state.batch_in_epoch)
        self.started, self.data_wait, self.images = time.perf_counter(), 0.0, 0
        self.checkpoint_s = 0.0  # the epoch's mid-epoch checkpoints (main adds them): not training time
        self.first_batch_s = None  # the wait for the epoch's first batch: worker start-up and the prefetch fill
        self.batches = on_device(train_loader, accelerator.device)

    def train(self, bar) -> Stopped:
        state, cfg = self.state, self.cfg
        t = time.perf_counter()
        while (batch := self.next_batch()) is not None:
            x, y = batch
            waited = time.perf_counter() - t
            self.data_wait += waited
            if self.first_batch_s is None:
                self.first_batch_s = waited
            self.micro_batch(x, y)
            if self.accelerator.sync_gradients:
                state.step += 1
                if self.ema is not None:
                    self.ema.update(self.plain_model, step=state.step)
                bar.update(1)
                if state.step % cfg.log_every_steps == 0 or state.step == self.plan.total_steps:
                    self.log_progress(bar)
                if state.step >= self.plan.total_steps:
                    return Stopped.STEP_CAP
                if state.batch_in_epoch >= self.micro_batches:
                    return Stopped.EPOCH_END
                if self.loader.bad.over_limit():  # on the finds shared at the last check: alike on every rank
                    self.train_loss()  # no NaN into a checkpoint
                    return Stopped.BAD_SAMPLES
                stopping = self.stop.requested(self.accelerator.num_processes)
                if stopping or self.stop.save_due or cfg.save_every_steps and state.step % cfg.save_every_steps == 0:
                    self.train_loss()  # no NaN into a checkpoint
                    return Stopped.STOP_SIGNAL if stopping else Stopped.CHECKPOINT_DUE
            t = time.perf_counter()
        return Stopped.EPOCH_END

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The next (images, labels) on the device; None at the epoch's end. A train DataLoader worker's death or
        hang (torch's RuntimeError for it, nothing else) restarts the workers at this position: restart_workers.
        A row that no other row could stand in for (a dataset that mostly does not decode) ends the run in one
        line, the row recorded in bad_samples.json."""
        while True:
            try:
                return next(self.batches)
            except StopIteration:
                return None
            except UnreplaceableRow as error:  # from a worker too: torch rebuilds it in this process
                shut_down_workers(self.loader)  # now: the exit would wait forever for workers that block SIGTERM
                raise SystemExit(self.loader.bad.unreplaceable(error)) from None
            except RuntimeError as error:
                if (why := loader_failure(error, self.loader)) is None:
                    raise
            self.restart_workers(why)  # past the except: the error's frames hold the old iterator's batches

    def restart_workers(self, why: str) -> None:
        """New workers from `state`'s position on, as a resume starts them: the micro-batches trained so far (an
        accumulation's included) are skipped, and the step's randomness comes from the position too, so the run
        goes on as if nothing happened. The old workers are shut down and the ring's slots freed first. Past
        LOADER_RESTARTS in this launch, a one-line exit naming `why`."""
        loader, state, rank = self.loader, self.state, self.accelerator.process_index
        loader.worker_restarts += 1
        if loader.worker_restarts > LOADER_RESTARTS:
            raise SystemExit(f"error: rank {rank}: {why} at step {state.step}, past the {LOADER_RESTARTS} restarts "
                             "of the train DataLoader workers a launch makes: lower --num_workers if the kernel's OOM "
                             "killer ended them (dmesg), then resume with --resume_from_checkpoint latest")
        shut_down_workers(loader)
        if isinstance(loader.collate_fn, RingCollate):
            loader.collate_fn.ring.reset()
        self.sampler.set_position(state.epoch, state.batch_in_epoch)
        self.batches = on_device(loader, self.accelerator.device)
        tqdm.write(f"warning: rank {rank}: {why} at step {state.step}; restarted the DataLoader workers "
                   f"({loader.worker_restarts} of {LOADER_RESTARTS}) at the same batch: lower --num_workers if the "
                   "kernel's OOM killer ended it (dmesg)", file=sys.stderr)

    def micro_batch(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Forward and backward of one micro-batch; the optimizer steps at the end of an accumulation."""
        state, cfg, plan, accelerator = self.state, self.cfg, self.plan, self.accelerator
        # the micro-batch's own randomness comes from its place in the run, whichever rank computes it
        seed = micro_batch_seed(cfg.seed, state.epoch, self.sampler.global_micro_batch(state.batch_in_epoch))
        self.step_rng.manual_seed(seed)
        torch.manual_seed(seed)  # drop-path and dropout draw from the global generators
        x = normalize(x, plan.mean, plan.std).contiguous(memory_format=plan.memory_format)
        x = random_erasing(x, cfg.random_erase, generator=self.step_rng)  # per image, before mixing, as timm
        x, target = mixup_cutmix(x, y, plan.num_classes, cfg.mixup_alpha, cfg.cutmix_alpha, generator=self.step_rng)
        with accelerator.accumulate(self.model):
            # fp32 loss on every path: DDP's autocast wrapper returns fp32 logits, FSDP2 returns its param dtype
            loss = F.cross_entropy(self.model(x).float(), target, label_smoothing=cfg.label_smoothing)
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.clip_grad:
                accelerator.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
            for group in self.optimizer.param_groups:
                group["lr"] = plan.lr_at(state.step)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.loss_sum += loss.detach()
        self.loss_count += 1
        self.images += x.shape[0] * accelerator.num_processes
        state.batch_in_epoch += 1

    def train_loss(self) -> float:
        """The epoch's mean train loss so far over ranks (a collective, and the NaN guard: StopSignal.check)."""
        return self.stop.check(self.accelerator, self.model, self.loss_sum, self.loss_count, self.state.step,
                               self.ckpt_dir, self.loader.bad)

    def log_progress(self, bar) -> None:
        running = {"train/loss": self.train_loss(), "train/lr": self.plan.lr_at(self.state.step - 1)}
        self.accelerator.log(running, step=self.state.step)
        bar.set_postfix(loss=f"{running['train/loss']:.4f}", lr=f"{running['train/lr']:.3g}")

    def loss_so_far(self) -> tuple[float, int]:
        """(loss sum, rank mean; micro-batches) of the epoch so far, as TrainState.epoch_loss keeps it (a
        collective)."""
        return self.accelerator.reduce(self.loss_sum, "mean").item(), self.loss_count

    def finish(self) -> dict:
        """The epoch's train row for metrics.jsonl; a finished epoch moves `state` to the start of the next."""
        state = self.state
        train_loss = self.train_loss()
        elapsed = time.perf_counter() - self.started - self.checkpoint_s
        first = self.first_batch_s or 0.0
        epoch_done = state.batch_in_epoch >= self.micro_batches
        # data_wait_frac includes the wait for the first batch, which a short epoch (a benchmark's) weighs far more
        # than an ImageNet one does: the steady share, after it, is the one that says whether the loader keeps up
        row = {"epoch": state.epoch + (1 if epoch_done else state.batch_in_epoch / len(self.sampler)),
               "step": state.step, "train_loss": train_loss, "lr": self.plan.lr_at(state.step - 1),
               "images_per_sec": self.images / elapsed, "data_wait_frac": self.data_wait / elapsed,
               "first_batch_s": first,
               "images_per_sec_steady": self.images / max(elapsed - first, 1e-9),
               "data_wait_steady_frac": (self.data_wait - first) / max(elapsed - first, 1e-9),
               "image_size": self.loader.dataset.size_at(state.epoch),
               "train_s": elapsed, "checkpoint_s": self.checkpoint_s}
        if epoch_done:
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        return row


def evaluate_and_export(accelerator: Accelerator, model, ema, eval_loader, plan: StepPlan, cfg: TrainConfig,
                        state: TrainState, final_dir: Path, labels: tuple[list[str], list[str]], data_cfg: dict,
                        steps_per_epoch: int, stop: StopSignal) -> dict | None:
    """The epoch's val_ (and ema_val_) scores; the better net goes to final_dir when it beats the run's best so far
    (state.best_top1/best_step). With the seconds each took: eval_s, export_s (0 when the epoch is not the best).
    None when a stop signal came first (every rank asked at each batch): nothing is scored, exported or counted."""
    restart_dead_workers(eval_loader, accelerator.process_index, state.step)
    eval_started = time.perf_counter()
    try:
        scores = eval_scores(accelerator, model, stop.until_signal(accelerator, eval_loader), plan, cfg.eval_flip)
        ema_scores = None if ema is None else eval_scores(accelerator, ema.module,
                                                          stop.until_signal(accelerator, eval_loader), plan,
                                                          cfg.eval_flip)
    except StoppedDuringEval:
        return None
    except RuntimeError as error:  # not restarted as training's are: the ranks' per-batch gathers would pair wrongly
        if (why := loader_failure(error, eval_loader)) is None:
            raise
        raise SystemExit(f"error: rank {accelerator.process_index}: evaluation at step {state.step} stopped: {why}; "
                         "lower --num_workers if the kernel's OOM killer ended it (dmesg), then resume with "
                         "--resume_from_checkpoint latest") from None
    row = {f"val_{k}": v for k, v in scores.items()}
    best_net, best = model, scores
    if ema_scores is not None:
        row.update({f"ema_val_{k}": v for k, v in ema_scores.items()})
        if ema_scores["top1"] > scores["top1"]:
            best_net, best = ema.module, ema_scores
    state.train_seconds += time.perf_counter() - eval_started
    export_started = time.perf_counter()
    row["eval_s"] = export_started - eval_started
    if best["top1"] > state.best_top1:
        state.best_top1, state.best_step = best["top1"], state.step
        export(accelerator, best_net, final_dir, cfg, *labels, data_cfg,
               results={"top1": best["top1"], "top5": best["top5"], "split": cfg.eval_split, "n": best["n"],
                        "ema": best_net is not model},
               epochs=state.step / steps_per_epoch, scheduled_epochs=plan.total_steps / steps_per_epoch,
               train_seconds=state.train_seconds, recipe_changes=state.recipe_changes)
    return {**row, "export_s": time.perf_counter() - export_started}


def eval_scores(accelerator: Accelerator, net, batches, plan: StepPlan, flip: bool) -> dict:
    """top1/top5/n/loss of `net` on the eval loader's `batches` (every image once, on any number of processes)."""
    sync_buffers(net)
    net.eval()
    try:
        topk, loss = metrics.evaluate(accelerator, net, batches, plan.mean, plan.std, plan.memory_format, flip=flip)
    finally:
        net.train()
    return {**topk.compute(), "loss": loss, "left_out_rows": topk.left_out}  # log_epoch records the rows


def sync_buffers(module) -> None:
    """BatchNorm statistics differ per rank (DDP and FSDP sync gradients, not buffers; DDP broadcasts the model's
    only at the next forward, FSDP never): give every rank rank 0's, so evaluation, the export, a checkpoint and the
    resume from it all see one set (timm: distribute_bn). None (no EMA) is skipped."""
    if module is not None:
        for buffer in module.buffers():
            buffer.copy_(broadcast(buffer.clone(), from_process=0))


def save_checkpoint(accelerator: Accelerator, model, state: TrainState, ema, cfg: TrainConfig,
                    ckpt_dir: Path) -> float:
    """save_state into a temp folder, fsync it, list its files' sizes in it, then rename: a kill or a host crash
    mid-save never leaves a half checkpoint as 'latest'. Keeps the newest --keep_last and the best, deleting older
    ones only once the new one is on disk. Returns the seconds it took. A run whose run.lock another launch has
    taken (after a delete by hand) stops before it writes."""
    started = time.perf_counter()
    final = checkpoints.step_folder(ckpt_dir, state.step)
    still_held(accelerator, ckpt_dir.parent, f"checkpoint {final.name}")
    tmp = ckpt_dir / f"{checkpoints.TEMP}{final.name}"  # a kill's leftovers: checkpoints.clean_leftovers
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    sync_buffers(model)
    sync_buffers(ema.module if ema is not None else None)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        checkpoints.fsync_tree(tmp)  # every rank: on a shared filesystem each flushes the files it wrote
        accelerator.wait_for_everyone()
        record_launch(accelerator, cfg, tmp)  # each checkpoint says how it was made: validate.py scores it with its
        if accelerator.is_main_process:       # own eval settings
            share_tree(tmp)  # safetensors writes model.safetensors 0600: teammates must read checkpoints too
            checkpoints.seal(tmp)  # the file sizes, last: a folder without them is an unfinished save
    # safetensors' SafetensorError, torch.save's RuntimeError: no errno; under FSDP torch.distributed.checkpoint's
    # CheckpointException, no Exception, with each rank's error inside (checkpoints.is_disk_full reads them)
    except (Exception, CheckpointException) as e:  # noqa: BLE001
        if not (checkpoints.is_disk_full(e) or checkpoints.nearly_full(ckpt_dir)):
            raise
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)  # give the space back
        try:
            intact = checkpoints.newest_complete(ckpt_dir)[0]
            then = (f"{intact} is intact: free space, then --resume_from_checkpoint latest" if intact else
                    "no checkpoint was saved yet: free space, then run again (--resume_from_checkpoint latest then "
                    "starts from scratch)")
        except ValueError as e:  # one that cannot be read now: said, not taken for none
            then = f"free space; the last checkpoint: {e}"
        raise SystemExit(f"error: checkpoint {final.name}: no space left on {ckpt_dir} "
                         f"({checkpoints.free_space(ckpt_dir)}); {then}") from None
    if accelerator.is_main_process:
        # the step saved again (a resume that ran the evaluation a stop cut short): the earlier save steps aside by a
        # rename, not a delete, so the step has no checkpoint for the moment between two renames only (a kill there:
        # the next launch puts one back, checkpoints.clean_leftovers)
        earlier = ckpt_dir / f"{checkpoints.EARLIER}{final.name}"
        if final.is_dir():
            shutil.rmtree(earlier, ignore_errors=True)
            os.replace(final, earlier)
        os.replace(tmp, final)
        checkpoints.fsync_dir(ckpt_dir)  # the rename is on disk before any older checkpoint goes
        shutil.rmtree(earlier, ignore_errors=True)
        done = checkpoints.step_folders(ckpt_dir)
        keep = {*done[-cfg.keep_last:], final, checkpoints.step_folder(ckpt_dir, state.best_step)}
        for old in done:
            if old not in keep:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return time.perf_counter() - started


def count_bad_samples(accelerator: Accelerator, row: dict, bad: BadSamples, eval_split: str) -> dict:
    """`row` with `bad_samples`: the run's undecodable images so far, its evaluation's left-out rows among them,
    listed in run_dir/bad_samples.json (every rank's: a collective); past --max_bad_samples the run stops after the
    epoch's checkpoint (exit_if_stopping)."""
    for key in [k for k in row if k.endswith("left_out_rows")]:
        bad.add_left_out(eval_split, row.pop(key), warn=accelerator.is_main_process)
    bad.share(accelerator)
    row["bad_samples"] = len(bad.shared)
    return row


def log_epoch(accelerator: Accelerator, row: dict, run_dir: Path, bar) -> None:
    """One row to the trackers, run_dir/metrics.jsonl and the console. A disk that cannot take the row (full right
    after the checkpoint that holds it) ends every rank in one line: the resume appends the row from there."""
    accelerator.log(row, step=row["step"])
    refusal = None
    if accelerator.is_main_process:
        if (refusal := append_row(run_dir, row)) is None:
            bar.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    refuse_together(accelerator, refusal)


def append_row(run_dir: Path, row: dict) -> str | None:
    """One JSON line at the end of run_dir/metrics.jsonl, or none and the one-line error saying why (a full disk):
    a write cut short is taken back, so the row a resume appends from the checkpoint starts a line of its own."""
    try:
        fd = os.open(run_dir / "metrics.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as e:
        return cannot_append(run_dir, row, e)
    try:
        size, left = os.fstat(fd).st_size, (json.dumps(row) + "\n").encode()
        while left:  # a write may take part of the line, the next then fails
            left = left[os.write(fd, left):]
    except OSError as e:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        return cannot_append(run_dir, row, e)
    finally:
        os.close(fd)
    return None


def cannot_append(run_dir: Path, row: dict, error: OSError) -> str:
    return (f"error: {run_dir / 'metrics.jsonl'}: cannot append the row of step {row['step']} "
            f"({error.strerror or error}; {checkpoints.free_space(run_dir)}); its checkpoint holds it: free space, "
            "then --resume_from_checkpoint latest, which appends it")


def log_saved_row(accelerator: Accelerator, row: dict | None, run_dir: Path) -> None:
    """The epoch row a resumed checkpoint carries (TrainState.last_row), appended to run_dir/metrics.jsonl when that
    lacks its step: the launch that saved it ended before the append. Not sent to --report_to's trackers, which this
    launch has not started yet (and may never: nothing left to do)."""
    metrics_file, refusal = run_dir / "metrics.jsonl", None
    if accelerator.is_main_process and row is not None and not (metrics_file.is_file() and any(
            logged.get("step") == row["step"] for logged in checkpoints.rows_of(metrics_file))):
        if (refusal := append_row(run_dir, row)) is None:
            accelerator.print(f"{metrics_file}: appended the row of step {row['step']} from its checkpoint (the launch "
                              "that saved it ended before writing it; its checkpoint_s lacks that save, trackers do "
                              "not get it)")
    refuse_together(accelerator, refusal)  # every rank, or a rank left waiting in the next collective


def exit_if_stopping(accelerator: Accelerator, stop: StopSignal, bad: BadSamples, step: int, ckpt_dir: Path,
                     signal: bool) -> None:
    """After a checkpoint, every rank alike: past --max_bad_samples (on the finds all ranks share) the run ends with
    that error; on a stop `signal` it ends with STOPPED_STATUS."""
    if bad.over_limit():
        exit_bad_samples(accelerator, bad, step, ckpt_dir)
    if signal:
        exit_stopped(accelerator, step, ckpt_dir, stop.signal_name())


# -- outputs -----------------------------------------------------------------------------------------------------------

def export(accelerator: Accelerator, net, out_dir: Path, cfg: TrainConfig, label_names: list[str],
           label_descriptions: list[str], data_cfg: dict, results: dict, epochs: float, scheduled_epochs: float,
           train_seconds: float, recipe_changes: list[dict]) -> None:
    """`net`'s weights in the Hub format modeling/ defines, with its model card, at out_dir (run_dir/final): written
    whole or not at all (modeling.save_pretrained); a full disk ends the run on every rank in one line, as does a
    run.lock another launch has taken, before the export."""
    still_held(accelerator, out_dir.parent, f"the export to {out_dir}")
    eval_size = cfg.eval_image_size or cfg.image_size
    weights = accelerator.get_state_dict(net)  # collective under FSDP: every rank calls it
    full_disk = None
    if accelerator.is_main_process:
        # from the trained net itself, not cfg.model: a --model local-dir:/hf-hub: source may be gone or changed
        clean = modeling.rebuild(accelerator.unwrap_model(net, keep_torch_compile=False), len(label_names))
        clean.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in weights.items()})  # --compile
        try:
            modeling.save_pretrained(
                clean, out_dir, label_names=label_names, label_descriptions=label_descriptions,
                pretrained_cfg={**data_cfg, "input_size": (3, eval_size, eval_size)},
                model_card={"dataset": cfg.dataset, "dataset_id": cfg.hub_dataset_id or None,
                            "repo_id": cfg.hub_model_id, "train_time": train_seconds,
                            # with this launch's global batch and peak LR: an elastic resume keeps the global batch
                            "recipe": {**asdict(cfg), **scaled(cfg, accelerator.num_processes)},
                            "results": {**results, "image_size": eval_size, "crop_pct": data_cfg["crop_pct"],
                                        "crop_mode": data_cfg.get("crop_mode") or "center",
                                        "interpolation": data_cfg["interpolation"], "flip": cfg.eval_flip},
                            "epochs": epochs, "scheduled_epochs": scheduled_epochs, "hardware": hardware(accelerator),
                            "recipe_changes": recipe_changes})
        except Exception as e:  # noqa: BLE001 (safetensors' SafetensorError carries no errno)
            if not checkpoints.is_disk_full(e):
                raise
            earlier = "the earlier export there is unchanged" if out_dir.is_dir() else "nothing of it is left"
            full_disk = (f"error: export {out_dir}: no space left on {out_dir.parent} "
                         f"({checkpoints.free_space(out_dir.parent)}); {earlier}. Free space, "
                         "then --resume_from_checkpoint latest trains on from the last checkpoint and exports again")
    refuse_together(accelerator, full_disk)


def report_end(accelerator: Accelerator, state: TrainState, cfg: TrainConfig, final: Path) -> None:
    """The run's last line, on the main process: the best val top-1 and the folder of its model, which --push_to_hub
    then uploads. A final/ that is absent (deleted while the run went on) is said instead of named, and fails the
    push in one line."""
    where = f"model in {final}" if final.is_dir() else f"no model: {final} is absent"
    accelerator.print(f"best val top-1 {state.best_top1:.2f}% (step {state.best_step}); {where}")
    if cfg.push_to_hub and not final.is_dir():
        raise SystemExit(f"error: --push_to_hub: {final} is absent, so there is nothing to push")
    if cfg.push_to_hub:
        push(final, cfg.hub_model_id, cfg.hub_private, accelerator)


def push(folder: Path, repo_id: str, private: bool, accelerator: Accelerator) -> None:
    """Upload the export; on failure the folder stays and the error says how to retry."""
    try:
        url = modeling.push_to_hub(folder, repo_id, private=private)
        accelerator.print(f"pushed to {url}")
    except (ValueError, OSError) as e:
        private_flag = ", private=True" if private else ""  # a retry must not publish what was asked to be private
        raise SystemExit(f"error: push to {repo_id} failed: {e}\n{folder} is kept; retry "
                         f"with: python -c \"import modeling; modeling.push_to_hub('{folder}', "
                         f"'{repo_id}'{private_flag})\"") from None


def hardware(accelerator: Accelerator) -> str:
    """e.g. '8 x NVIDIA H100 80GB HBM3, MULTI_GPU, bf16' or '1 x cpu, fp32' for the model card."""
    device = torch.cuda.get_device_name() if accelerator.device.type == "cuda" else accelerator.device.type
    parts = [f"{accelerator.num_processes} x {device}"]
    if accelerator.num_processes > 1:
        parts.append(accelerator.distributed_type.value)
    parts.append("fp32" if accelerator.mixed_precision == "no" else accelerator.mixed_precision)
    return ", ".join(parts)


def close_process_groups() -> None:
    """On the way out, on every path: shut the process groups down (an error skips end_training) and free them while
    the interpreter is whole. Left to its teardown, a gloo group's worker threads can outlive it and abort the process
    (std::terminate) after its output is written; accelerate's state keeps the HSDP DeviceMesh, and with it the
    groups, alive until then (torch's proposal of the same fix: pytorch/pytorch#179291). Local, not a collective:
    the other ranks may be gone.

    The default group goes last, through WORLD_GROUP's Python handle, whose release lets the GIL go while the group's
    destructor joins gloo's worker threads. DDP's C++ reducer holds the group too; had its reference been the last
    (the model freed after end_training destroyed the group), the join ran with the GIL held, and a worker thread
    still freeing a finished collective's tensors (a barrier's record of the all-gathers before it) waited for the
    GIL: the rank hung after writing all its output (torch 2.11; tests/test_faults.py makes it certain; the GIL in
    such destructors: pytorch/pytorch#56297)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    AcceleratorState._reset_state(reset_partial_state=True)  # drops its device_mesh
    gc.collect()  # the model's DTensors and meshes sit in reference cycles: their groups go now, not at teardown
    WORLD_GROUP.clear()


# The default process group's Python handle, from make_accelerator to close_process_groups (why: there)
WORLD_GROUP: list = []


def run_and_close(entry: Callable[[list[str]], object], argv: list[str]) -> None:
    """entry(argv), then close_process_groups on every path. An error's frames (SystemExit too: the stop-signal and
    bad-sample exits) hold main's model, and DDP's reducer with it: they are freed first, so WORLD_GROUP's release
    stays the group's last."""
    try:
        entry(argv)
    except BaseException as error:
        traceback.clear_frames(error.__traceback__)
        raise
    finally:
        close_process_groups()


if __name__ == "__main__":
    run_and_close(main, sys.argv[1:])
    exit_now()  # everything is written: skip the interpreter's teardown (imagenet_trainer/process_exit.py)
