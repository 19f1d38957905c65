"""Evaluate a backbone: top-1/top-5, loss, images/s, per-class accuracy and the most-confused pairs.

    python validate.py --model runs/r50/final --dataset OUT [--split validation] [--batch_size 256] [--output r.json]
    accelerate launch validate.py --model user/resnet50-in1k --dataset OUT     # same numbers on 1 or N processes
    python validate.py --model runs/r50/final --dataset OUT --real_labels real.json --eval_sets V2,SKETCH,R,A,C \
        --image_sizes 192,224,256 --benchmark_batch_sizes 1,256 --output r.json   # the papers' suite, one run

--model is a train.py export (RUN/final), a training checkpoint (RUN/checkpoints/step_N), a Hub id (timm's or ours) or
a timm name with its pretrained tag (resnet50.a1_in1k: timm's weights, from the local Hub cache when offline).
The eval transform is the model's own, as timm's create_transform builds it: resize to image_size / crop_pct (the
shorter side; both for a pretrained_cfg crop_mode of squash; the longer, then pad, for border), center crop, its
mean/std; for a checkpoint it is the one train.py evaluated with (the run's --eval_image_size, else its --image_size,
and the architecture's crop_pct/mean/std), on the run's --eval_split, with its --eval_flip and under its mixed
precision (run_info.json), so the numbers equal the val_* rows of the run's metrics.jsonl. An export is scored with the
flip and precision its model card records. The summary says where each came from. Works offline: top-k is computed
here, not by `evaluate.load("accuracy")`, which needs the Hub (huggingface/evaluate #456).
"""
from __future__ import annotations

import os
import signal
import sys

if __name__ == "__main__":
    from imagenet_trainer.stop_signals import quit_while_importing

    # Ctrl-C or SIGTERM in the imports below: one line (until the end of this file takes over)
    interrupted_while_starting = quit_while_importing("interrupted ({signal}) while starting: nothing was scored or "
                                                      "written", (signal.SIGINT, signal.SIGTERM))
    # before the heavy imports: the DataLoader workers' fork server imports what they need beside this process's
    # imports, not after them (imagenet_trainer/worker_processes.py)
    from imagenet_trainer import worker_processes

    worker_processes.start_early(sys.argv[1:])

import contextlib
import dataclasses
import json
import multiprocessing
import pickle
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
import timm
import torch
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from huggingface_hub.utils import get_session
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch.distributed.checkpoint.api import CheckpointException
from tqdm.auto import tqdm

import modeling
from imagenet_trainer import checkpoints
from imagenet_trainer.bad_samples import BadSamples
from imagenet_trainer.config import parse_config
from imagenet_trainer import eval_suite
from imagenet_trainer.data import check_labels, load_image_dataset
from imagenet_trainer.ilsvrc import class_descriptions
from imagenet_trainer.loader_setup import loader_workers
from imagenet_trainer.metrics import evaluate
from imagenet_trainer.process_exit import exit_now
from imagenet_trainer.runinfo import atomic_write_text, git_sha, library_versions

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP's and torch.compile's, in the order train.py nests them
PRECISIONS = {"no": "no", "fp32": "no", "fp16": "fp16", "bf16": "bf16", "fp8": "fp8"}  # accelerate names fp32 "no"
# The Training section train.py writes into an export's card (modeling/card.py); validate.py --update_model_card
# rewrites only the Results section, so these lines keep saying how train.py scored the weights
CARD_HARDWARE = re.compile(r"^- \*\*Hardware:\*\* .*, (fp32|fp16|bf16|fp8)[ \t]*$", re.M)
CARD_EVAL_FLIP = re.compile(r"^\| eval_flip \| (True|False) \|[ \t]*$", re.M)
CARD_LINES = ("(Hardware line)", "(eval_flip row)")  # how recorded_settings names the card line a setting came from


@dataclass(kw_only=True)  # kw_only: required fields stand among fields with defaults
class ValidateConfig:
    model: str  # RUN/final, RUN/checkpoints/step_N, a Hub model id (OWNER/NAME) or a timm name (resnet50.a1_in1k)
    dataset: str = ""  # preprocess.py output folder or Hub dataset id
    split: str = ""  # --dataset's split; empty: a checkpoint's run's --eval_split, else validation (ImageNet-C: all)
    batch_size: int = 256  # images per device per forward pass
    image_size: int = 0  # eval crop side in px; 0 uses the model's (a checkpoint's: the run's); not with --image_sizes
    num_workers: int = -1  # DataLoader processes per device; -1: every core this process may use, less one
    # (train.py's rule: loader_workers). JPEG decoding is the CPU cost
    channels_last: bool = True  # NHWC: faster convolutions on GPUs
    flip: bool | None = None  # mean logits of each image and its mirror; none: the run's --eval_flip, else off
    # autocast of the forward passes; bf16/fp16 logits differ from fp32's in the last digits, enough to move a top-1
    mixed_precision: str = ""  # no (fp32), bf16, fp16 or fp8; empty: the run's, else the launcher's, else no
    # the suite keeps each split's scores in <stem>_parts/ until the end, so that a rerun scores only what is missing
    output: str = ""  # JSON summary; beside it: <stem>_per_class.json, _confused.json (suite: _results.csv, _parts/)
    update_model_card: bool = False  # write the results into --model's README.md and metadata (local exports only)
    hub_dataset_id: str = ""  # Hub id of --dataset's data (OWNER/NAME) for the card's metadata; full ILSVRC: automatic
    # Scoring like the papers (imagenet_trainer/eval_suite.py): any of these scores every set in one run
    eval_sets: str = ""  # comma-separated preprocess.py outputs of ImageNet-V2/-Sketch/-R/-A/-C, scored after --dataset
    real_labels: str = ""  # ReaL's real.json (Beyer et al. 2020): --dataset's ILSVRC-2012 val also scored against it
    image_sizes: str = ""  # px, comma-separated (160,192,224): each scored, the best named (FixRes, Touvron 2019)
    crop_pct: float = 0.0  # centre crop / resized side (0.875: resize 256, crop 224); 0 = the model's own
    mce_reference: str = ""  # validate.py --output JSON of a reference model on ImageNet-C: mCE relative to it too
    benchmark_batch_sizes: str = ""  # e.g. 1,256: inference images/s at each on random input (timm's benchmark.py)
    benchmark_steps: int = 20  # timed forward passes per batch size (a quarter as many warm-up passes first)
    benchmark_train: bool = False  # also time a training step (forward, backward, SGD update) at those batch sizes
    # a flipped byte costs one image; more than a few mean a damaged copy, which preprocess.py --verify names
    max_bad_samples: int = 10  # undecodable images left out of the scores (and named) before it fails instead


@dataclass
class Recorded:
    """How train.py scored --model, as far as the files beside its weights say (None: they say nothing)."""
    split: str | None = None  # the run's --eval_split
    flip: bool | None = None  # the run's --eval_flip
    mixed_precision: str | None = None  # accelerate's mode of the launch that evaluated it: no, bf16, fp16, fp8
    ema_decay: float = 0.0  # a checkpoint's run: > 0 means its EMA copy (not scored here) made the export
    config: str = ""  # the file the split, flip and EMA come from
    precision_file: str = ""  # the file the precision comes from


def local_folder(ref: str) -> Path | None:
    """--model's folder on this machine (``local-dir:`` taken off, ``~`` expanded), or None (a Hub id, a timm name)."""
    path = Path(ref.removeprefix("local-dir:")).expanduser()
    return path if path.is_dir() else None


HUB_PROBE_S = 3  # s: one request tells whether the Hub answers before a model card is fetched from it; an unreachable
# Hub would otherwise cost huggingface_hub's five retries (~22 s) before every score of a model it already cached


def hub_folder(ref: str) -> Path | None:
    """The folder of a Hub export's config.json and model card, so that it is scored with the settings its card
    records, as its local copy is: fetched from a Hub that answers at once (the repo's current card: a re-pushed
    model's, whose weights the load fetches too), else the card in the Hugging Face cache (HF_HUB_OFFLINE=1, or no
    answer). None for a timm name, a local path, or a repo without both."""
    repo_id, _, revision = ref.removeprefix("hf-hub:").partition("@")
    if is_timm_name(ref) or "/" not in repo_id or Path(ref.removeprefix("local-dir:")).expanduser().exists():
        return None
    try:
        if not huggingface_hub.constants.HF_HUB_OFFLINE:
            try:  # any answer, a 401 or 404 included, means the Hub is there
                get_session().head(huggingface_hub.hf_hub_url(repo_id, "README.md", revision=revision or None),
                                   timeout=HUB_PROBE_S)
            except Exception:  # unreachable: the cached card, as the model's load takes its cached files
                pass
            else:
                return modeling.hub._resolve_folder(ref, ("config.json", "README.md"))
        cached = huggingface_hub.try_to_load_from_cache(repo_id, "README.md", revision=revision or None)
    except ValueError:  # no repo id, or no such card: the model's load says what is wrong
        return None
    return Path(cached).parent if isinstance(cached, str) and Path(cached).with_name("config.json").is_file() else None


def first_file(*paths: Path) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


def recorded_settings(ref: str) -> Recorded:
    """A checkpoint's config.yaml and run_info.json (its own, else the run's, two levels up, as imagenet-trainer 0.1.0
    left them); an export's model card. Unreadable records count as none: loading the model names what is wrong."""
    folder = local_folder(ref) or hub_folder(ref)
    if folder is None:
        return Recorded()
    found = Recorded()
    try:
        if (folder / "config.json").is_file():
            card = folder / "README.md"
            text = card.read_text() if card.is_file() else ""
            if hardware := CARD_HARDWARE.search(text):
                found.mixed_precision, found.precision_file = PRECISIONS[hardware[1]], f"{card} (Hardware line)"
            if flip := CARD_EVAL_FLIP.search(text):
                found.flip, found.config = flip[1] == "True", f"{card} (eval_flip row)"
            return found
        config = first_file(folder / "config.yaml", folder.parent.parent / "config.yaml")
        run = yaml.safe_load(config.read_text()) if config else None
        if isinstance(run, dict):
            found.config = str(config)
            found.split = run.get("eval_split") if isinstance(run.get("eval_split"), str) else None
            found.flip = bool(run.get("eval_flip"))
            found.ema_decay = float(run.get("ema_decay") or 0)
        info_file = first_file(folder / "run_info.json", folder.parent.parent / "run_info.json")
        info = json.loads(info_file.read_text()) if info_file else None
        if isinstance(info, dict) and info.get("mixed_precision") in PRECISIONS:
            found.mixed_precision, found.precision_file = PRECISIONS[info["mixed_precision"]], str(info_file)
    except (OSError, ValueError, yaml.YAMLError):
        pass
    return found


def choose_precision(cfg: ValidateConfig, recorded: Recorded, main_process: bool) -> tuple[str, str]:
    """(accelerate's mixed_precision, where it comes from): --mixed_precision, else the run's records, else the
    launcher's (accelerate launch sets ACCELERATE_MIXED_PRECISION from its config), else fp32."""
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "").lower()
    if cfg.mixed_precision:
        precision, source = PRECISIONS[cfg.mixed_precision.lower()], "--mixed_precision"
    elif recorded.mixed_precision:
        precision, source = recorded.mixed_precision, recorded.precision_file
        if launcher in PRECISIONS and PRECISIONS[launcher] != precision and main_process:
            shown = {"no": "fp32"}
            print(f"note: scoring in {shown.get(precision, precision)} as {source} records, not in the launcher's "
                  f"{shown.get(launcher, launcher)} (--mixed_precision {launcher} to use it)", file=sys.stderr)
    elif launcher in PRECISIONS:
        precision, source = PRECISIONS[launcher], "the launcher (ACCELERATE_MIXED_PRECISION)"
    else:
        precision, source = "no", "not recorded for --model: fp32"
    if precision == "fp16" and not torch.accelerator.is_available():  # accelerate autocasts fp16 on devices only
        if main_process:
            print(f"warning: fp16 ({source}) needs a GPU: scoring in fp32, which may differ from the run's numbers in "
                  "the last digits", file=sys.stderr)
        precision, source = "no", f"{source} says fp16, which needs a GPU: fp32"
    return precision, source


def origin(source: str) -> str:
    """Where a setting came from, as the printed summary names it (the --output JSON has the whole ``source``): the
    flag, the card, the run's config.yaml or run_info.json, the launcher, or the default."""
    if "needs a GPU" in source:  # choose_precision's fp32 in place of fp16 on a host without one
        return "fp16 needs a GPU"
    if source.startswith("--"):
        return source
    if source.endswith(CARD_LINES):
        return "card"
    if source.startswith("the launcher"):
        return "launcher"
    if source.startswith("not recorded"):
        return "default"
    return f"run's {Path(source).name}"


def settings_said(flip: bool, flip_from: str, precision: str, precision_from: str) -> str:
    """The flip and the precision of a score, each with where it came from (``flip on (--flip), bf16 (card)``)."""
    return (f"flip {'on' if flip else 'off'} ({origin(flip_from)}), {'fp32' if precision == 'no' else precision} "
            f"({origin(precision_from)})")


def make_accelerator(precision: str, source: str) -> Accelerator:
    """The Accelerator scoring under ``precision``. Accelerate keeps one state per process: an earlier main() in this
    process (a notebook, the tests) with another precision is set aside first."""
    if AcceleratorState._shared_state and AcceleratorState._shared_state.get("_mixed_precision") != precision:
        AcceleratorState._reset_state()  # the process group (PartialState) stays
    try:
        return Accelerator(cpu=not torch.accelerator.is_available(),  # cpu=True: DDP on GPU-less hosts
                           mixed_precision=precision)
    except ValueError as e:  # fp8 without transformer_engine/torchao
        raise SystemExit(f"error: --mixed_precision {precision} ({source}): {str(e).rstrip('.')}; give "
                         "--mixed_precision bf16 or no") from None


def check_output(output: str, companions: tuple[str, ...]) -> None:
    """--output (and the files written beside it) must be writable before the model and data load: a full
    evaluation (ImageNet-C: 75 splits) must not end in a traceback at the write."""
    out = Path(output)
    for path in (out, *(out.with_name(out.stem + c) for c in companions)):
        if path.is_dir() or output.endswith(os.sep):
            raise SystemExit(f"error: --output {output}: {path} is a folder; give a file path such as "
                             f"{(out if out.is_dir() else out.parent) / 'val.json'}")
    above = next(p for p in out.absolute().parents if p.exists())
    if not above.is_dir():
        raise SystemExit(f"error: --output {output}: {above} is a file, not a folder; give a path in a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise SystemExit(f"error: --output {output}: cannot write in {out.parent} ({e.strerror or e}); give a path "
                         "in a writable folder") from None


def write_or_exit(output: str, files: dict[Path, str]) -> None:
    """Each file replaced atomically; an OSError at the end (a full disk) is one line naming --output."""
    try:
        for path, text in files.items():
            atomic_write_text(path, text)
    except OSError as e:
        raise SystemExit(f"error: --output {output}: writing {path} failed ({e.strerror or e}); the scores above are "
                         "all there is of this run") from None


@contextlib.contextmanager
def card_errors(folder: Path, output: str):
    """--update_model_card's write, after the scoring: a card that cannot be written (removed or made read-only
    meanwhile, a full disk) is one line that says where the scores are."""
    try:
        yield
    except (OSError, ValueError) as e:
        kept = f"the scores are in --output {output}" if output else "the scores printed above are all there is"
        raise SystemExit(f"error: --update_model_card: writing the results into {folder / 'README.md'} failed "
                         f"({getattr(e, 'strerror', None) or e}); {kept}") from None


def check_input_sizes(model: torch.nn.Module, sizes: list[int], flag: str, ref: str, fix: str | None = None) -> None:
    """One forward of a blank image at each size other than the model's own, on the CPU before any scoring: a
    fixed-input-size model (timm's ViTs, DeiT) refuses another size only when its first batch arrives. ``fix``: what
    the error tells the user to do (train.py's flags mean other things; default: give the model's own size, or
    leave ``flag`` out)."""
    channels, *_, own = timm.models.get_model_input_config(model)["input_size"]  # in_chans, as the network reads
    for size in sorted(set(sizes) - {own}):
        try:
            with torch.no_grad():
                model(torch.zeros(1, channels, size, size))
        except (AssertionError, RuntimeError, ValueError) as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            takes = (f"takes only {own} px input" if model.pretrained_cfg.get("fixed_input_size") else
                     f"cannot take {size} px input")
            fix = (fix or "give {own}, or leave {flag} out").format(own=own, flag=flag)
            raise SystemExit(f"error: {flag} {size}: --model {ref} {takes} ({reason}); {fix}") from None


def results_name(ref: str) -> str:
    """--model as results.csv's model column names it: a run's name for its export (runs/r50/final -> r50), the
    run's name and step for a checkpoint (r50.step_00001000), else the folder's name or the id."""
    folder = local_folder(ref)
    if folder is None:
        return ref.removeprefix("hf-hub:")
    folder = folder.resolve()
    if folder.name == "final":
        return folder.parent.name
    if folder.parent.name == "checkpoints":
        return f"{folder.parent.parent.name}.{folder.name}"
    return folder.name


def describe(cfg: ValidateConfig, model: torch.nn.Module, data_cfg: dict, precision: tuple[str, str],
             flip_from: str, recorded: Recorded, num_processes: int) -> dict:
    """What made a set of scores, for the summary and each file beside it: a file read apart from the others, or
    one left by an earlier run beside a new summary, still says which weights, data, transform and precision."""
    folder = local_folder(cfg.model)
    dataset = Path(cfg.dataset).expanduser() if cfg.dataset else None
    weights = "as saved"
    if recorded.ema_decay and folder is not None and not (folder / "config.json").is_file():
        weights = (f"the raw weights: the run's --ema_decay {recorded.ema_decay} copy is not scored here (its export, "
                   "RUN/final, holds it when it won)")
    return {"model": cfg.model, "model_name": results_name(cfg.model),
            "model_path": str(folder.resolve()) if folder else None,
            "weights_sha256": eval_suite.weights_digest(model), "weights": weights,
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 6),
            "dataset": cfg.dataset, "dataset_path": str(dataset.resolve()) if dataset and dataset.exists() else None,
            "split": cfg.split, "eval_sets": cfg.eval_sets or None,
            "crop_pct": cfg.crop_pct or data_cfg["crop_pct"], "crop_mode": data_cfg.get("crop_mode", "center"),
            "interpolation": data_cfg["interpolation"],
            "mean": list(data_cfg["mean"]), "std": list(data_cfg["std"]), "channels_last": cfg.channels_last,
            "flip": cfg.flip, "flip_from": flip_from,
            "mixed_precision": precision[0], "mixed_precision_from": precision[1],
            "batch_size": cfg.batch_size, "num_processes": num_processes,
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "git_sha": git_sha(), "versions": library_versions()}


CHECKPOINT_WEIGHTS = checkpoints.SAVED_WEIGHTS  # a train.py checkpoint's weights, each with the plain model's keys


def checkpoint_weights(path: Path) -> dict:
    """The whole model state at ``path`` (one of CHECKPOINT_WEIGHTS), FSDP's shards gathered in this process."""
    if path.name.endswith(".safetensors"):
        return load_file(path)
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    import torch.distributed.checkpoint as dcp  # noqa: PLC0415 (FSDP checkpoints only)
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata  # noqa: PLC0415

    # the shards are read into tensors of the sizes their metadata gives, in memory (no file of the whole model)
    stored = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    weights = {key: torch.empty(meta.size, dtype=meta.properties.dtype) for key, meta in stored.items()
               if key.startswith("model.") and isinstance(meta, TensorStorageMetadata)}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(weights, checkpoint_id=path, no_dist=True)
    return {key.removeprefix("model."): value for key, value in weights.items()}


def load_checkpoint(path: Path) -> torch.nn.Module:
    """The model of a train.py checkpoint (accelerate save_state folder): architecture and eval settings from the
    config.yaml train.py saves in it (imagenet-trainer 0.1.0's may lack it: then the run's, two levels up), class
    count from the saved classifier. Its pretrained_cfg gets that size, as train.py's export does, so the eval
    transform is the one train.py evaluated with. These are the raw weights: with --ema_decay the EMA copy sits in
    custom_checkpoint_*.pkl (pickled, not read here); its export is RUN/final."""
    run_config = path / "config.yaml" if (path / "config.yaml").is_file() else path.parent.parent / "config.yaml"
    if (path / "checkpoints").is_dir():
        raise ValueError("this is a run folder: give RUN/final or RUN/checkpoints/step_N")
    weights_at = next((path / name for name in CHECKPOINT_WEIGHTS if (path / name).exists()), None)
    if weights_at is None or not run_config.is_file():
        raise ValueError(f"neither an export folder (config.json) nor a train.py checkpoint (model.safetensors, or "
                         f"FSDP's {' or '.join(CHECKPOINT_WEIGHTS[1:])}, with {run_config})")
    try:
        run = yaml.safe_load(run_config.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:  # an edit's typo, or a damaged byte
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where else ""
        why = getattr(e, "problem", None) or (e.reason if isinstance(e, UnicodeDecodeError) else e)
        raise ValueError(f"{run_config} does not read as YAML{at} ({why}): fix the edit, or copy the run's own "
                         "config.yaml there") from None
    if not isinstance(run, dict) or not run.get("model"):
        raise ValueError(f"{run_config} names no model; it is not the config.yaml train.py writes")
    if (damaged := checkpoints.problem(path)) is not None:
        raise ValueError(f"damaged checkpoint: {damaged}; give another step_N of the run")
    try:
        saved = checkpoint_weights(weights_at)
    except (SafetensorError, RuntimeError, OSError, EOFError, pickle.UnpicklingError, CheckpointException) as e:
        # torch.distributed.checkpoint's CheckpointException (a BaseException) holds the reader's own error
        cause = next((c for c in checkpoints.causes(e) if not isinstance(c, CheckpointException)), e)
        reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise ValueError(f"{weights_at} is damaged ({reason}); give another step_N of the run") from None
    weights = {}
    for key, value in saved.items():
        for prefix in WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        weights[key] = value
    try:
        model = modeling.create_model(run["model"])
    except (ValueError, OSError) as e:  # a relative local-dir: path is read from the current folder
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{run_config} names --model {run['model']}, which does not load from {Path.cwd()} "
                         f"({reason}); run validate.py where train.py ran, or make that path reachable") from None
    head = weights.get(f"{model.pretrained_cfg.get('classifier')}.weight")
    if head is not None and head.shape[0] != model.num_classes:
        model = modeling.create_model(run["model"], num_classes=head.shape[0])
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:  # the checkpoint is of another architecture than config.yaml says
        raise ValueError(f"its weights do not fit {run['model']} from {run_config} "
                         f"({str(e).strip().splitlines()[0]})") from None
    # train.py evaluates at --eval_image_size when it is > 0 (FixRes: train small, test large), else at --image_size
    size = next((s for s in (run.get("eval_image_size"), run.get("image_size")) if isinstance(s, int) and s > 0),
                model.pretrained_cfg["input_size"][-1])
    # train.py scored at that size and the architecture's crop_pct: timm's test_* sizes of its own weights (which
    # eval_suite.data_config prefers) are not what metrics.jsonl's val_* rows used
    model.pretrained_cfg = {**{k: v for k, v in model.pretrained_cfg.items() if not k.startswith("test_")},
                            "input_size": (3, size, size)}
    model.eval_flip = bool(run.get("eval_flip"))  # the run's --eval_flip: metrics.jsonl's numbers used it
    return model.eval()


def is_timm_name(ref: str) -> bool:
    """``resnet50`` or ``resnet50.a1_in1k``: a timm architecture (with a pretrained tag), not a path or Hub repo."""
    return "/" not in ref and not Path(ref).expanduser().exists() and timm.is_model(ref.split(".")[0])


def load_timm_name(name: str) -> torch.nn.Module:
    """timm's weights for ``name``, as ``timm.create_model(name, pretrained=True)`` resolves them; an architecture of
    this project (it publishes none) and an unknown tag are ValueErrors saying what to give instead."""
    arch, _, tag = name.partition(".")
    if arch in modeling.list_models():
        raise ValueError(f"'{arch}' is one of this project's architectures, with no published weights; score a saved "
                         "export: --model RUN/final or local-dir:PATH")
    try:
        timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # timm's "Invalid pretrained tag"
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
        known = f"known: {', '.join(tags[:6])}{', ...' if len(tags) > 6 else ''}" if tags else "it has none"
        raise ValueError(f"timm has no pretrained tag '{tag}' for {arch} ({known})") from None
    return modeling.create_model(name, pretrained=True).eval()


def load_any(path_or_id: str) -> torch.nn.Module:
    """An export folder (config.json), a train.py checkpoint, a Hub id (``modeling.load_model``) or a timm name
    with its pretrained tag (timm's weights, as ``timm.create_model(name, pretrained=True)`` resolves them)."""
    if path_or_id.startswith(("hf-hub:", "local-dir:")):
        return modeling.load_model(path_or_id)
    if is_timm_name(path_or_id):
        return load_timm_name(path_or_id)
    path = Path(path_or_id).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        return load_checkpoint(path)
    if not path.exists() and (path_or_id.startswith(("/", ".", "~")) or path_or_id.count("/") > 1):
        step = re.fullmatch(r"step_(\d+)", path.name)  # the logs say step 217, the folder is step_00000217
        padded = checkpoints.step_folder(path.parent, int(step[1])) if step else None
        near = f"; {padded} exists" if padded and padded.is_dir() else ""
        raise ValueError(f"no such folder (give RUN/final, RUN/checkpoints/step_N or a Hub id OWNER/NAME){near}")
    if not path.exists() and "/" not in path_or_id:  # no Hub id either: those are OWNER/NAME
        try:
            modeling.create_model(path_or_id)  # only for its message: the closest names timm and modeling know
        except ValueError as e:
            raise ValueError(f"no such folder, no Hub id (OWNER/NAME), and {e}") from None
    return modeling.load_model(path_or_id)


def check_model_classes(model_ref: str, label_names: list[str]) -> str | None:
    """Same classes in the same index order, or the accuracy is computed against the wrong labels: a ValueError when
    only the order differs, a warning (returned) when the names cannot be compared. Ids (wnids) are compared and so
    are human names, since Hub copies of ImageNet may name their ClassLabels by description."""
    if is_timm_name(model_ref):  # timm's ImageNet weights: their classes are its ImageNet subset's, if any
        pretrained_cfg = timm.models.get_pretrained_cfg(model_ref)
        ids, descriptions = modeling.pretrained_labels(pretrained_cfg.to_dict() if pretrained_cfg else {})
    else:
        ids, descriptions = modeling.label_info(model_ref)
    order = modeling.class_order(ids, descriptions, label_names) if ids is not None else "same"
    if order == "same":
        return None
    if order == "reordered":
        raise ValueError(f"it has the dataset's classes in another index order (model: {ids[:3]}..., dataset: "
                         f"{label_names[:3]}...); re-export it or preprocess with the same class order")
    return (f"warning: --model's class names ({ids[:3]}...) are not the dataset's ({label_names[:3]}...); scoring "
            "by class index")


def check_classes(model_ref: str, model: torch.nn.Module, label_names: list[str], data: str) -> str | None:
    """``model``'s classes against those of ``data`` (``--dataset PATH``): a ValueError for another count or index
    order, the warning (returned) for class names that cannot be compared (check_model_classes)."""
    if model.num_classes != len(label_names):
        raise ValueError(f"it predicts {model.num_classes} classes but {data} has {len(label_names)}")
    local = Path(model_ref).expanduser()
    if local.is_dir() and not (local / "config.json").is_file():
        return None  # a checkpoint has no labels of its own: its classes are its run's dataset's
    return check_model_classes(model_ref, label_names)


def check_set_classes(cfg, model: torch.nn.Module, targets: list, main_process: bool) -> None:
    """The suite's sets after the first (which load_scored_model checked), each as --dataset is: a set in another
    class order than the model's would score by index, near 0% and without a word. A one-line SystemExit naming
    the set; each warning once per class list."""
    checked = [targets[0].label_names]
    for target in targets[1:]:
        if target.label_names in checked:  # the sets in ImageNet-1k's sorted wnids: one check for them all
            continue
        checked.append(target.label_names)
        try:
            warning = check_classes(cfg.model, model, target.label_names, f"--eval_sets {target.path}")
        except (ValueError, OSError) as e:
            raise SystemExit(f"error: --model {cfg.model} (scoring --eval_sets {target.path}): {e}") from None
        if warning and main_process:
            print(warning, file=sys.stderr)


def check_export_config(folder: Path) -> list[str]:
    """An export folder's config.json, read before timm builds from it: a ValueError (one line) for a file that is no
    timm model config (a cut copy, a transformers model's config, a hand edit that left a field out), else the
    warnings for what it lacks and what is used instead (the eval transform, the class names)."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} does not read ({getattr(e, 'strerror', None) or e})") from None
    except ValueError as e:
        raise ValueError(f"{path} is not JSON ({e}): a cut or damaged copy? copy or export it again") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} holds a JSON {type(config).__name__}, not the object a timm config.json is")
    if not isinstance(config.get("architecture"), str) or not config["architecture"]:
        other = config.get("architectures") or config.get("model_type")
        raise ValueError(f"{path} names no timm 'architecture'" + (
            f" (it is a transformers config: {other}); validate.py scores timm models and this project's exports"
            if other else "; give a folder written by modeling.save_pretrained (train.py's RUN/final) or timm"))
    pretrained_cfg = config.get("pretrained_cfg", {})
    if not isinstance(pretrained_cfg, dict):
        raise ValueError(f"{path}: 'pretrained_cfg' is a {type(pretrained_cfg).__name__}, not an object")
    for key, where in (("num_classes", config), ("num_classes", pretrained_cfg), ("num_features", config)):
        if key in where and (not isinstance(where[key], int) or isinstance(where[key], bool)):
            raise ValueError(f"{path}: '{key}' is {where[key]!r}, not a whole number")
    warnings = []
    if "pretrained_cfg" in config:  # a legacy one-level config keeps these at its top level
        missing = [k for k in ("input_size", "crop_pct", "interpolation", "mean", "std") if k not in pretrained_cfg]
        if missing:
            flags = [f for k, f in (("input_size", "--image_size"), ("crop_pct", "--crop_pct")) if k in missing]
            warnings.append(f"warning: --model {folder}: its config.json's pretrained_cfg has no {', '.join(missing)}: "
                            "scored with timm's defaults, which may not be the eval transform of these weights"
                            + (f" ({' and '.join(flags)} set it)" if flags else ""))
        if not (pretrained_cfg.get("label_names") or config.get("label_names")):
            warnings.append(f"warning: --model {folder}: its config.json names no classes: scoring by class index, "
                            "unchecked against the dataset's class names and order")
    return warnings


def edited_config_note(folder: Path) -> str | None:
    """A note when a checkpoint's config.yaml is not the one sealed with it (size or CRC-32 in checkpoint_files.json):
    its eval settings are read as they are now, which an edit means and a damaged byte does not (the state files are
    checked in full by ``load_checkpoint``; a resume reads the flags from the run folder's unchanged copy:
    checkpoints.config_source)."""
    config = folder / checkpoints.CONFIG
    if not config.is_file() or checkpoints.problem(folder, config=True, only=checkpoints.CONFIG) is None:
        return None
    return (f"note: {config} is not the one saved with the checkpoint (its size or CRC-32 differs): scoring with the "
            "settings it holds now (an edit; if not, a damaged copy: the run's own config.yaml has them)")


def load_scored_model(cfg, label_names: list[str], flag: str, main_process: bool) -> torch.nn.Module:
    """--model, checked against the classes of the data ``flag`` names; a one-line SystemExit when it cannot
    score them, a warning on stderr when its class names are not the data's."""
    notes = []
    try:
        folder = local_folder(cfg.model)
        export = folder is not None and (folder / "config.json").is_file()
        if export:
            notes = check_export_config(folder)
        elif folder is not None and (folder / checkpoints.FILE_LIST).is_file():
            notes = [edited_config_note(folder)]
        try:
            model = load_any(cfg.model)
        except (KeyError, TypeError, AttributeError) as e:  # timm's reading of a config.json that passed the checks
            if not export:
                raise
            raise ValueError(f"{folder / 'config.json'} does not build a timm model ({type(e).__name__}: {e}); give "
                             "a folder written by modeling.save_pretrained (train.py's RUN/final) or timm") from None
        warning = check_classes(cfg.model, model, label_names,
                                f"{flag} {cfg.dataset if flag == '--dataset' else cfg.eval_sets}")
    except (ValueError, OSError) as e:
        raise SystemExit(f"error: --model {cfg.model}: {e}") from None
    except SafetensorError as e:  # a copy or download cut short, or bytes a disk damaged: the header does not read
        local = local_folder(cfg.model)
        weights = local / "model.safetensors" if local is not None else "its model.safetensors"
        raise SystemExit(f"error: --model {cfg.model}: {weights} does not read ({e}): a cut or damaged copy; copy, "
                         "download or export it again") from None
    for line in [*notes, warning] if main_process else []:
        if line:
            print(line, file=sys.stderr)
    return model


def check_flags(cfg: ValidateConfig) -> Path | None:
    """Every flag that can be checked without the data or the model, so a mistake costs no loading or scoring;
    returns --model's export folder when the results go into its card."""
    if not cfg.dataset and not cfg.eval_sets:
        raise SystemExit("error: --dataset is required (or --eval_sets)")
    if cfg.split and not cfg.dataset:  # a checkpoint's recorded --eval_split is not cfg.split yet: only the flag's
        raise SystemExit(f"error: --split {cfg.split} picks a split of --dataset, and there is no --dataset: "
                         "--eval_sets scores every split of its sets (ImageNet-C: all); drop --split, or give the set "
                         "as --dataset to score that split alone")
    for flag, low in (("batch_size", 1), ("image_size", 0), ("benchmark_steps", 1), ("max_bad_samples", 0)):
        if getattr(cfg, flag) < low:  # image_size 0: the model's own
            raise SystemExit(f"error: --{flag} must be at least {low}, got {getattr(cfg, flag)}")
    for flag in ("image_sizes", "benchmark_batch_sizes"):  # read again where used (eval_suite.run)
        eval_suite.int_list(getattr(cfg, flag), f"--{flag}")
    if cfg.image_size and cfg.image_sizes:  # --image_sizes would win, silently
        sizes = eval_suite.int_list(cfg.image_sizes, "--image_sizes")
        both = ",".join(map(str, dict.fromkeys([*sizes, cfg.image_size])))
        raise SystemExit(f"error: --image_size {cfg.image_size} and --image_sizes {cfg.image_sizes} both set the eval "
                         f"size; give one of them (--image_sizes {both} scores every size)")
    if cfg.num_workers < -1:
        raise SystemExit(f"error: --num_workers must be >= 0, or -1 (the cores this process may use, less one), "
                         f"got {cfg.num_workers}")
    if not 0 <= cfg.crop_pct <= 2:  # above 1 the crop is padded, as timm evaluates volo_d5_512 (1.15)
        raise SystemExit(f"error: --crop_pct must be in (0, 2] (0 = the model's own), got {cfg.crop_pct}")
    if cfg.mixed_precision and cfg.mixed_precision.lower() not in PRECISIONS:
        raise SystemExit(f"error: --mixed_precision must be one of {', '.join(PRECISIONS)}, "
                         f"got {cfg.mixed_precision!r}")
    folder = local_folder(cfg.model)
    if cfg.update_model_card and not (folder and (folder / "config.json").is_file()):  # fail before the long eval
        raise SystemExit(f"error: --update_model_card needs a local export folder (RUN/final), not {cfg.model}")
    if cfg.update_model_card and not (folder / "README.md").is_file():
        raise SystemExit(f"error: --update_model_card: {folder} has no README.md (model card) to write the results "
                         "into; export it with modeling.save_pretrained (train.py does), or leave the flag out")
    if cfg.hub_dataset_id and not modeling.is_repo_id(cfg.hub_dataset_id):
        raise SystemExit(f"error: --hub_dataset_id must be a Hub dataset id OWNER/NAME, got {cfg.hub_dataset_id!r}")
    if cfg.mce_reference:  # its content is checked with the data (eval_suite.run)
        try:
            Path(cfg.mce_reference).expanduser().open("rb").close()
        except OSError as e:
            raise SystemExit(f"error: --mce_reference {cfg.mce_reference}: cannot read it "
                             f"({e.strerror or e})") from None
    if cfg.output:
        suite = eval_suite.wanted(cfg) or is_eval_set(cfg.dataset)
        check_output(cfg.output, ("_results.csv",) if suite else ("_per_class.json", "_confused.json"))
    return folder if cfg.update_model_card else None


def load_split(cfg: ValidateConfig, split_from: str):
    """(--dataset, its --split, the split's class names); each failure one line naming the flag, and the run's
    --eval_split where --split came from it (``split_from``)."""
    if unpacked := eval_suite.unpacked_set_line(cfg.dataset, "--dataset"):  # datasets would read it as a train split
        raise SystemExit(unpacked)
    try:
        ds = load_image_dataset(cfg.dataset)
    except ValueError as e:  # an unpacked set that was not preprocessed: said so, not its missing label column
        raise SystemExit(eval_suite.image_tree_line(cfg.dataset, "--dataset") or f"error: --dataset {cfg.dataset}: {e}"
                         ) from None
    came = f" (the run's --eval_split, {split_from})" if split_from not in ("--split", "the default") else ""
    if cfg.split not in ds:
        others = [s for s in ds if s != "train"]
        hint = f"; pass --split {' or '.join(others)}" if others else ""
        raise SystemExit(f"error: --split {cfg.split}{came}: the dataset has {', '.join(ds)}{hint}")
    split = ds[cfg.split]
    if len(split) == 0:
        raise SystemExit(f"error: --split {cfg.split}{came} of --dataset {cfg.dataset} has no images")
    try:
        return ds, split, check_labels(split)
    except ValueError as e:
        raise SystemExit(f"error: --split {cfg.split}{came}: {e}") from None


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, or SIGTERM (a scheduler's stop, ``timeout``, ``docker stop``), ended validate.py before its outputs
    were written; ``str()``: the one line that says what was kept. A SIGTERM unwinds as Ctrl-C does, so the DataLoader
    workers are shut down with the process (they block the stop signals: killed by SIGTERM's default action, the
    process would leave them running)."""

    def __init__(self, line: str = "", signal_name: str = "SIGINT"):
        super().__init__(line)
        self.signal_name = signal_name
        self.status = 128 + signal.Signals[signal_name].value  # as a shell reports a process the signal ended


def stop_on_sigterm(signum, frame) -> None:
    """SIGTERM's handler in the script: raised where the main thread is, once; a second SIGTERM ends the process at
    once (its default action), as the scheduler's SIGKILL that comes next would."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Interrupted(signal_name="SIGTERM")


def end_workers() -> None:
    """The DataLoader workers a stop left running: killed. They block the stop signals (worker_processes), and a
    loader stopped while it started them never tells them to leave; the exit's join would wait for them for good."""
    for child in multiprocessing.active_children():
        child.kill()
    for child in multiprocessing.active_children():
        child.join(5)


def interrupted_line(cfg: ValidateConfig, interrupt: KeyboardInterrupt) -> str:
    """What an interrupted run leaves: a suite run with --output keeps each split it finished (SplitParts)."""
    name = getattr(interrupt, "signal_name", "SIGINT")
    said = f"interrupted ({'Ctrl-C' if name == 'SIGINT' else name}): "
    if not (eval_suite.wanted(cfg) or is_eval_set(cfg.dataset)):
        return said + "nothing was written (a split is scored whole): the same command scores it again"
    parts = eval_suite.parts_folder(cfg.output) if cfg.output else None
    kept = sum(eval_suite.read_part(f) is not None for f in parts.glob("*.json")) if parts and parts.is_dir() else 0
    if kept:
        return (said + f"the scores of the {kept} split(s) finished are kept in {parts}: the same command scores only "
                "the others")
    return said + ("no split was finished" if cfg.output else "nothing is kept without --output (with it, each "
                   "split finished is)") + ": the same command starts over"


def main(argv=None):
    cfg = parse_config(ValidateConfig, argv, description=__doc__.split("\n")[0])
    if cfg.output:
        cfg.output = str(Path(cfg.output).expanduser())
    try:
        return score(cfg)
    except KeyboardInterrupt as e:
        interrupt = Interrupted(interrupted_line(cfg, e), getattr(e, "signal_name", "SIGINT"))
        # a loader stopped while it started its workers fails in its __del__ (torch's half-built iterator): "Exception
        # ignored in", a traceback after the one line, of nothing left to do
        sys.unraisablehook = lambda unraisable: None
    raise interrupt  # outside the except block: the scoring's frames (and its loader's workers) are let go


def score(cfg: ValidateConfig):
    card_folder = check_flags(cfg)
    recorded = recorded_settings(cfg.model)
    main_process = int(os.environ.get("RANK", "0")) == 0  # the Accelerator comes after the precision is chosen
    precision = choose_precision(cfg, recorded, main_process)
    flip_from = ("--flip" if cfg.flip is not None else recorded.config if recorded.flip is not None
                 else "not recorded for --model: off")
    split_from = "--split" if cfg.split else recorded.config if recorded.split else "the default"
    accelerator = make_accelerator(*precision)
    cfg = dataclasses.replace(cfg, split=cfg.split or recorded.split or "validation",
                              flip=bool(recorded.flip) if cfg.flip is None else cfg.flip,
                              num_workers=loader_workers(cfg.num_workers, print_fn=accelerator.print))
    if eval_suite.wanted(cfg) or is_eval_set(cfg.dataset):
        return score_suite(cfg, accelerator, card_folder, recorded, precision, flip_from, split_from == "--split")

    ds, split, label_names = load_split(cfg, split_from)  # before the model, whose download may be long
    model = load_scored_model(cfg, label_names, "--dataset", accelerator.is_main_process)
    data_cfg = eval_suite.data_config(model)  # timm's test size and crop where its pretrained_cfg has them
    if cfg.crop_pct:
        data_cfg["crop_pct"] = cfg.crop_pct
    data_cfg["crop_mode"] = eval_suite.eval_transform(cfg, data_cfg, model)["crop_mode"]  # one line if unknown
    image_size = cfg.image_size or data_cfg["input_size"][-1]
    check_input_sizes(model, [image_size], "--image_size", cfg.model)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format).eval()
    # evaluation_mode: device placement and mixed precision, but no DDP/FSDP wrapper (there is nothing to sync);
    # every rank keeps a full replica and scores its shard of the batches
    model = accelerator.prepare_model(model, evaluation_mode=True)
    loader = eval_suite.eval_loader(accelerator, split, image_size, data_cfg["crop_pct"], data_cfg["interpolation"],
                                    cfg.batch_size, cfg.num_workers, data_cfg["crop_mode"], data_cfg["mean"])
    mean, std = data_cfg["mean"], data_cfg["std"]  # 0..1 units; normalize() runs on the device, after the uint8 copy

    start = time.perf_counter()
    batches = tqdm(loader, disable=not accelerator.is_main_process, desc=f"validate {cfg.split}")
    topk, loss = evaluate(accelerator, model, batches, mean, std, memory_format, flip=cfg.flip)  # train.py's code
    elapsed = time.perf_counter() - start
    bad = BadSamples({cfg.split: split}, cfg.max_bad_samples)
    bad.add_left_out(cfg.split, topk.left_out, warn=accelerator.is_main_process)
    bad.check()
    summary = {"model": cfg.model, "dataset": cfg.dataset, "split": cfg.split, **topk.compute(),
               "loss": loss, "images_per_sec": topk.n / elapsed,
               "image_size": image_size, "crop_pct": data_cfg["crop_pct"], "crop_mode": data_cfg["crop_mode"],
               "interpolation": data_cfg["interpolation"],
               "flip": cfg.flip, "flip_from": flip_from, "mixed_precision": accelerator.mixed_precision,
               "mixed_precision_from": precision[1], "num_processes": accelerator.num_processes}
    accelerator.end_training()  # destroys the process group under DDP
    if not accelerator.is_main_process:
        return summary
    print(f"{cfg.split}: top-1 {summary['top1']:.2f}%  top-5 {summary['top5']:.2f}%  loss {summary['loss']:.4f}  "
          f"n={summary['n']}  {summary['images_per_sec']:.1f} img/s  "
          + settings_said(cfg.flip, flip_from, summary["mixed_precision"], precision[1])
          + (f"  ({summary['left_out']} left out: they do not decode)" if summary["left_out"] else ""))
    if cfg.output:
        out = Path(cfg.output)
        meta = {**describe(cfg, model, data_cfg, precision, flip_from, recorded, accelerator.num_processes),
                "image_size": image_size, "split_from": split_from}
        summary["meta"] = meta
        descriptions = class_descriptions(ds)
        per_class = [{**row, "wnid": label_names[row["label"]], "name": descriptions[row["label"]]}
                     for row in topk.per_class()]
        confused = [{**row, "true_name": descriptions[row["true"]], "predicted_name": descriptions[row["predicted"]]}
                    for row in topk.most_confused(20)]
        # the companions first: a summary is there only once the files it describes are
        write_or_exit(cfg.output, {
            out.with_name(out.stem + "_per_class.json"): json.dumps({"meta": meta, "rows": per_class}, indent=1),
            out.with_name(out.stem + "_confused.json"): json.dumps({"meta": meta, "rows": confused}, indent=1),
            out: json.dumps(summary, indent=2)})
        print(f"wrote {out} and its _per_class/_confused companions")
    if card_folder is not None:
        # the eval transform goes with the numbers: --image_size may differ from the export's own input size
        with card_errors(card_folder, cfg.output):
            modeling.update_model_card_results(card_folder, {
                **{k: summary[k] for k in ("top1", "top5", "n", "image_size", "crop_pct", "crop_mode", "interpolation",
                                           "flip")},
                "split": cfg.split, "dataset": cfg.dataset, "dataset_id": cfg.hub_dataset_id or None})
        print(f"wrote the results into {card_folder / 'README.md'}")
    return summary


def is_eval_set(dataset: str) -> bool:
    """A preprocess.py output of ImageNet-R, -C, ...: scored the way its paper does (mask, mCE) by the suite."""
    return bool(modeling.card.dataset_source(dataset).get("eval_set"))


def score_suite(cfg: ValidateConfig, accelerator: Accelerator, card_folder: Path | None, recorded: Recorded,
                precision: tuple[str, str], flip_from: str, split_given: bool = False) -> dict:
    """--eval_sets, --real_labels, --image_sizes, --benchmark_batch_sizes: every set and size in one run, into the
    summary, <stem>_results.csv and the card (imagenet_trainer/eval_suite.py). ``split_given``: --split was given
    (an ImageNet-C --dataset is then scored in that split alone)."""
    loaded = {}

    def load(cfg, targets, main_process):  # every set's classes and every size are checked before any scoring
        model = load_scored_model(cfg, targets[0].label_names, "--dataset" if cfg.dataset else "--eval_sets",
                                  main_process)
        check_set_classes(cfg, model, targets, main_process)
        own = eval_suite.data_config(model)["input_size"][-1]
        sizes = eval_suite.int_list(cfg.image_sizes, "--image_sizes") or [cfg.image_size or own]
        check_input_sizes(model, sizes, "--image_sizes" if cfg.image_sizes else "--image_size", cfg.model)
        loaded["model"] = model
        return model

    summary = eval_suite.run(cfg, accelerator, load, split_given)
    accelerator.end_training()
    summary.update(flip_from=flip_from, mixed_precision=accelerator.mixed_precision, mixed_precision_from=precision[1])
    if not accelerator.is_main_process:
        return summary
    print(f"every set scored with {settings_said(cfg.flip, flip_from, accelerator.mixed_precision, precision[1])}")
    if "best_image_size" in summary:
        best = summary["best_image_size"]
        print(f"best image size on {best['dataset']}: {best['image_size']} px (top-1 {best['top1']:.2f}%)")
    for row in summary.get("throughput", []):
        train = f", train {row['train_samples_per_sec']:.1f} img/s" if row.get("train_samples_per_sec") else ""
        print(f"throughput at batch {row['batch_size']}: inference {row['infer_samples_per_sec']:.1f} img/s{train} "
              f"({summary['params_m']:.2f} M params, {summary['gmacs']:.3g} GMACs)")
    if cfg.output:
        model = accelerator.unwrap_model(loaded["model"])
        summary["meta"] = describe(cfg, model, eval_suite.data_config(model), precision, flip_from, recorded,
                                   accelerator.num_processes)
        if cfg.dataset:  # the split scored: ImageNet-C's "all" without --split, not the defaulted "validation"
            summary["meta"]["split"] = summary["results"][0]["split"]
        out = Path(cfg.output)
        csv_path = out.with_name(out.stem + "_results.csv")
        # the CSV's model column names the run, not the folder: every export is a "final"
        write_or_exit(cfg.output, {csv_path: eval_suite.results_csv({**summary, "model": results_name(cfg.model)}),
                                   out: json.dumps(summary, indent=2)})
        print(f"wrote {out} and {csv_path}")
    if card_folder is not None:
        with card_errors(card_folder, cfg.output):
            eval_suite.update_card(card_folder, summary, cfg)
        print(f"wrote the results into {card_folder / 'README.md'}")
    if cfg.output:
        shutil.rmtree(eval_suite.parts_folder(cfg.output), ignore_errors=True)  # every split is in the outputs now
    return summary


if __name__ == "__main__":
    if signal.getsignal(signal.SIGINT) is interrupted_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C: a KeyboardInterrupt (Interrupted)
    if signal.getsignal(signal.SIGTERM) is interrupted_while_starting:
        signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        main(sys.argv[1:])
    except Interrupted as e:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"\n{e}", file=sys.stderr)
        end_workers()
        sys.exit(e.status)  # the interpreter's usual exit: its teardown ends what the scoring left running
    exit_now()  # everything is written: skip the interpreter's teardown (imagenet_trainer/process_exit.py)
