"""Save, load and share trained models as timm Hub folders: ``config.json`` + ``model.safetensors`` + ``README.md``.

A saved folder of a zoo architecture loads with no project code installed:
``timm.create_model("local-dir:PATH", pretrained=True)`` (also ``features_only=True``),
``transformers.AutoModelForImageClassification.from_pretrained(PATH)`` and
``transformers.pipeline("image-classification", model=PATH)``. An architecture timm does not ship (ours, a user's)
carries its defining file (``modeling.remote_code``): transformers loads it with ``trust_remote_code=True``, timm
after ``import modeling`` of an installed copy (``pip install``). Weights are safetensors only: nothing here unpickles.

Label keys in config.json (worked out against timm 1.0.31 and transformers 5.24-5.25, see tests/test_modeling.py):

* ``pretrained_cfg.label_names`` = class ids (ImageNet wnids) and ``pretrained_cfg.label_descriptions`` =
  {id: human name}: timm's own fields, so ``model.pretrained_cfg`` exposes both.
* No root ``label_names``: timm copies a root list over ``pretrained_cfg.label_names``, and transformers'
  ``TimmWrapperConfig`` turns a root list into ``id2label`` as written, so wnids there make the pipeline print
  "n01440764" (TimmWrapperConfig.from_dict in transformers/models/timm_wrapper/configuration_timm_wrapper.py;
  timm #1646, transformers PR #34637).
* Root ``id2label``/``label2id`` = human names, which the pipeline prints. A name that occurs twice (ImageNet has
  two "crane") gets its id appended ("crane (n02012849)") so ``label2id`` stays one-to-one.
* Exception: for class counts timm maps to an ImageNet subset (1000, 11821, 21841, ...) transformers replaces
  ``id2label`` with timm's own ImageNet names unless a root ``label_names`` exists. Those are right for ILSVRC-2012
  in sorted-wnid order; for any other labelling with such a count we write root ``label_names`` = human names, and
  timm then reports those as its label_names (``label_info()`` still returns the ids). A ``save_pretrained`` by
  transformers writes its substitute as root ``label_names`` (two plain "crane"): ``label_info()`` knows that list
  as the same classes.
* ``model_args`` never holds ``num_classes``: transformers passes ``num_classes`` itself and fails on a duplicate.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
import threading
import warnings
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import safetensors.torch
import timm
import torch
import yaml
from huggingface_hub import (CommitOperationAdd, CommitOperationDelete, HfApi, ModelCard, get_token, hf_hub_download,
                             set_client_factory)
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects, validate_repo_id
from safetensors import SafetensorError, safe_open
from timm.data import ImageNetInfo, infer_imagenet_subset
from timm.layers.format import get_spatial_dim
from timm.models import PretrainedCfg, get_model_args, get_model_input_config

from imagenet_trainer.checkpoints import fsync_dir, fsync_tree
from imagenet_trainer.runinfo import WRITE_LEFTOVER, atomic_write_text, replace_dir, share_tree

from ._registry import our_names
from .card import (card_for_repo, card_text, check_results, eval_result_entries, family_file, is_repo_id,
                   merge_model_index, model_index, model_stats, output_shapes, public, resolve_dataset,
                   results_section)
from .remote_code import PROCESSOR_FILE, NotBundleable, defining_module, remote_code_files
from .transformers_saved import (head_labels, load_saved_weights, saved_by_transformers,
                                 saved_headless, saved_keys, wrapper_saved_state)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
WEIGHTS_CRC_KEY = "crc32"  # model.safetensors header metadata: weights_crc32 of its tensors, beside {"format": "pt"}
EVAL_RESULTS_DIR = ".eval_results"  # huggingface_hub 2.x eval-results format, beside the legacy model-index

# pretrained_cfg keys that describe the saved weights' architecture and preprocessing; the rest of a zoo cfg (tag,
# url, hf_hub_id, license, paper, test_* sizes) describes timm's published weights, not ours
_ARCH_KEYS = ("input_size", "fixed_input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std",
              "pool_size", "first_conv", "classifier")
_CFG_FIELDS = {f.name for f in dataclasses.fields(PretrainedCfg)}
_CARD_KEYS = {"model_name", "repo_id", "description", "dataset", "dataset_id", "recipe", "recipe_changes", "epochs",
              "scheduled_epochs", "train_time", "hardware", "results", "license", "tags"}
_TRUE = {"1", "ON", "YES", "TRUE"}  # what huggingface_hub accepts as "true" in HF_HUB_OFFLINE
# seconds without a byte before a Hub call gives up: the start-up check (whoami) and each connect, read or write
# of an upload (a stall, not the whole transfer: 100 MB of weights take what they take)
HUB_CHECK_S = 10.0
HUB_STALL_S = 60.0


def save_pretrained(model, folder, *, label_names: list[str], label_descriptions: list[str] | None = None,
                    pretrained_cfg: dict | None = None, model_card: dict | None = None) -> Path:
    """Write ``folder`` (config.json, model.safetensors, README.md, .eval_results/) in one atomic step.

    An architecture timm does not ship also gets its defining file and a ``modeling_*.py`` for transformers'
    ``trust_remote_code`` load (``modeling.remote_code``).

    ``label_names``: one unique id per class in index order (ImageNet wnids); ``label_descriptions``: the human names
    in the same order (duplicates allowed). ``pretrained_cfg``: the preprocessing the weights were trained/evaluated
    with (mean, std, input_size, crop_pct, interpolation, ...), over the architecture's defaults. ``model_card``: see
    ``modeling.card.card_text``. An older folder of that name is replaced only once the new one is complete and on
    disk (a host crash never leaves a folder of that name with truncated files); a failed save (a full disk) leaves
    the older folder as it was and removes its own temp folder.
    """
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper prefixes every state_dict key
    _check_model(model)
    num_classes = model.num_classes
    label_names, label_descriptions = list(label_names), label_descriptions and list(label_descriptions)
    if len(label_names) != num_classes:
        raise ValueError(f"label_names has {len(label_names)} entries but the model has {num_classes} classes")
    if len(set(label_names)) != len(label_names):
        raise ValueError("label_names must be unique class ids (e.g. wnids); put human names in label_descriptions")
    if label_descriptions is not None and len(label_descriptions) != num_classes:
        raise ValueError(f"label_descriptions has {len(label_descriptions)} entries, label_names {num_classes}")
    unknown = set(pretrained_cfg or {}) - _CFG_FIELDS
    if unknown:
        raise ValueError(f"pretrained_cfg: unknown keys {sorted(unknown)} (timm PretrainedCfg fields only)")
    card = dict(model_card or {})
    if set(card) - _CARD_KEYS:
        raise ValueError(f"model_card: unknown keys {sorted(set(card) - _CARD_KEYS)} (known: {sorted(_CARD_KEYS)})")
    results = card.get("results") or {}
    check_results(results, "model_card")
    try:
        _, dataset_id = resolve_dataset(card.get("dataset"), card.get("dataset_id"), results.get("split", "validation"))
    except ValueError as e:
        raise ValueError(f"model_card: {e}; leave dataset_id out for a local dataset") from None

    config = hub_config(model, label_names, label_descriptions, pretrained_cfg)
    try:
        code, auto_map = remote_code_files(model)
    except NotBundleable as e:  # still a valid timm folder; it loads wherever the package defining it is installed
        warnings.warn(f"{config['architecture']}: the export carries no code for transformers' trust_remote_code "
                      f"load ({e})", stacklevel=2)
        code, auto_map = {}, {}
    if auto_map:
        config["auto_map"] = auto_map
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        # contiguous copies: safetensors refuses views and tensors that share memory
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        safetensors.torch.save_file(state, tmp / WEIGHTS_NAME,
                                    metadata={"format": "pt", WEIGHTS_CRC_KEY: weights_crc32(state)})
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        for name, text in code.items():
            (tmp / name).write_text(text)
        module = defining_module(model)
        defined_in, script = family_file(module) if module else (None, False)
        family_code = any(not name.startswith("modeling_") for name in code)  # beside the generated files
        (tmp / CARD_NAME).write_text(card_text(config, card, stats=model_stats(model, config), defined_in=defined_in,
                                               remote_code=family_code, one_channel_processor=PROCESSOR_FILE in code,
                                               shapes=output_shapes(model, config), script=script))
        entries = eval_result_entries(results, dataset_id) if dataset_id else []
        if entries:
            (tmp / EVAL_RESULTS_DIR).mkdir()
            (tmp / EVAL_RESULTS_DIR / f"{dataset_id.split('/')[-1]}.yaml").write_text(
                yaml.safe_dump(entries, sort_keys=False))
        share_tree(tmp)  # mkdtemp makes 0700, safetensors writes 0600: teammates must read the export
        fsync_tree(tmp)
        replace_dir(tmp, folder)
        fsync_dir(folder.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


# An export's seal. safetensors checks that the header parses and that the sizes add up, not the bytes of the
# tensors: a bit flipped on a disk or in a copy (to an air-gapped cluster, say) would load as other weights without
# a word. The CRC-32 sits in the header's metadata, which timm's loader never reads and transformers' reads only for
# "format": both load a sealed file as before. It covers the tensors, not the file's bytes, so that it is known
# before the file is written (the header holding it is part of the file) and does not depend on the order
# safetensors lays tensors out in. A file without it (timm's own Hub weights, a transformers save_pretrained of the
# loaded model, which writes {"format": "pt"} only, an export from before the seal) is loaded unchecked.

def weights_crc32(state: Mapping[str, torch.Tensor]) -> str:
    """zlib's CRC-32 (8 lowercase hex digits) of each tensor's key, dtype, shape and raw bytes in sorted key order:
    what ``save_pretrained`` seals ``model.safetensors`` with (a damaged key name would otherwise pass, and a damaged
    classifier key quietly give a fresh head). ``state`` may read its tensors lazily: one is held at a time."""
    crc = 0
    for key in sorted(state.keys()):
        tensor = state[key].detach().to("cpu").contiguous()
        crc = zlib.crc32(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}".encode(), crc)
        crc = zlib.crc32(tensor.reshape(-1).view(torch.uint8).numpy(), crc)
    return f"{crc:08x}"


class _SavedTensors(Mapping):
    """An open safetensors file as a mapping that reads each tensor when asked (memory stays at one tensor)."""

    def __init__(self, handle):
        self._handle = handle

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._handle.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._handle.keys())

    def __len__(self) -> int:
        return len(self._handle.keys())


def unreadable(weights, e: SafetensorError) -> ValueError:
    """The one line for a safetensors file whose header does not parse (validate.py says the same)."""
    return ValueError(f"{weights} does not read ({_first_line(e)}): a cut or damaged copy; copy, download or export "
                      f"it again")


def check_weights(weights) -> None:
    """A one-line ValueError when ``weights`` (a model.safetensors) does not parse, or when its tensors differ from
    the CRC-32 saved with them; a file without one passes. The tensors are read once, one at a time (resnet50's
    98 MiB: ~0.1 s on a warm page cache)."""
    try:
        with safe_open(str(weights), "pt") as f:
            saved = (f.metadata() or {}).get(WEIGHTS_CRC_KEY)
            if saved is None:
                return
            crc = weights_crc32(_SavedTensors(f))
    except SafetensorError as e:
        raise unreadable(weights, e) from None
    if crc != saved:
        raise ValueError(f"{weights}: its tensors differ from the CRC-32 saved with them (a damaged copy); copy the "
                         f"export again or re-export it")


def _check_model(model) -> str:
    cfg = getattr(model, "pretrained_cfg", None)
    if not cfg or not cfg.get("architecture") or not hasattr(model, "num_classes"):
        raise ValueError(f"{type(model).__name__} is not a timm classifier (no pretrained_cfg/num_classes); pass the "
                         f"model from modeling.create_model, unwrapped (accelerator.unwrap_model(model)), not "
                         f"features_only")
    return cfg["architecture"]


def _input_channels(model, arch: str) -> int:
    """The image channels the network reads, as timm reads them (its in_chans, else its cfg's input_size); refused
    where it has no in_chans and its first conv reads another number: a family that does not keep in_chans would
    export a one-channel net with a three-channel input_size and mean/std, and no one-channel processor. (With
    in_chans kept, the first conv may read more: TResNet's follows a space-to-depth of the image.)"""
    channels = get_model_input_config(model)["input_size"][0]
    if hasattr(model, "in_chans") or "in_chans" in getattr(model, "_traits", {}):
        return channels
    name = model.pretrained_cfg.get("first_conv")
    try:
        conv = model.get_submodule(name) if isinstance(name, str) else None
    except AttributeError:  # a pruned or wrapped network: nothing to compare
        conv = None
    weight = getattr(conv, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.ndim == 4 and getattr(conv, "groups", 1) == 1 \
            and weight.shape[1] != channels:
        raise ValueError(f"{arch}: its first conv ({name}) reads {weight.shape[1]} channels, but it has no in_chans "
                         f"attribute, so timm takes it for {channels} (its cfg's input_size): keep self.in_chans = "
                         f"in_chans in the family's __init__")
    return channels


def display_names(label_names: list[str], label_descriptions: list[str] | None) -> list[str]:
    """Human names for ``id2label``: the description, plus the id where a description is not unique."""
    names = label_descriptions or label_names
    counts = Counter(names)
    return [f"{name} ({label})" if counts[name] > 1 else name for name, label in zip(names, label_names)]


def hub_config(model, label_names: list[str], label_descriptions: list[str] | None,
               pretrained_cfg: dict | None = None) -> dict:
    """The config.json dict (see the module docstring for why each label key sits where it does)."""
    arch = _check_model(model)
    cfg = {k: model.pretrained_cfg[k] for k in _ARCH_KEYS if model.pretrained_cfg.get(k) is not None}
    cfg.update(pretrained_cfg or {})
    channels = _input_channels(model, arch)
    if cfg.get("input_size"):  # as timm's save_config_for_hf
        cfg["input_size"] = (channels, *cfg["input_size"][1:])
    for key in ("mean", "std"):  # one per channel, their mean where the counts differ, as timm's exporter reduces
        # them (resolve_input_data_config): transformers' image processor asserts one value or in_chans values
        if cfg.get(key) is not None and len(cfg[key]) not in (1, channels):
            cfg[key] = (sum(cfg[key]) / len(cfg[key]),) * channels
    if cfg.get("pool_size") and "pool_size" not in (pretrained_cfg or {}):
        cfg["pool_size"] = feature_map_size(model, cfg["input_size"])
    cfg["custom_load"] = False  # a plain state_dict, whatever the zoo cfg said about its own weights
    cfg["num_classes"] = model.num_classes
    cfg["label_names"] = list(label_names)
    if label_descriptions is not None:
        cfg["label_descriptions"] = dict(zip(label_names, label_descriptions))
    args = {k: v for k, v in get_model_args(model).items() if k != "num_classes"}
    names = display_names(label_names, label_descriptions)
    config = {
        "architecture": arch,
        "num_classes": model.num_classes,
        "num_features": model.num_features,
        **({"global_pool": args["global_pool"]} if args.get("global_pool") else {}),
        "model_args": args,
        "pretrained_cfg": cfg,
        "id2label": {str(i): name for i, name in enumerate(names)},
        "label2id": {name: i for i, name in enumerate(names)},
    }
    subset = infer_imagenet_subset({"num_classes": model.num_classes})
    if subset and list(label_names) != list(ImageNetInfo(subset).label_names()):
        config["label_names"] = names
    return config


def feature_map_size(model, input_size) -> tuple[int, int] | None:
    """``pool_size``: the spatial size of ``forward_features`` at ``input_size``, from one forward pass on the model's
    device; None when the model cannot run on a blank image.

    The architecture's default describes its default input size and output stride, not an export at another size or
    dilated. timm's ``save_config_for_hf`` writes None once the size differs; the measured size is as cheap to get
    and is what a neck or head sized from ``pool_size`` needs."""
    import torch

    like = next(model.parameters())  # a bfloat16 or float16 model takes an image of its own dtype, not float32
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval().forward_features(torch.zeros(1, *input_size, device=like.device, dtype=like.dtype))
    except Exception:  # an architecture that needs another input: unknown, as timm leaves it
        return None
    finally:
        model.train(was_training)
    return tuple(out.shape[i] for i in get_spatial_dim(getattr(model, "output_fmt", "NCHW"))) if out.ndim == 4 else None


def update_model_card_results(folder, results: dict) -> None:
    """Put new results (e.g. from validate.py) into a saved folder's README.md (front matter ``model-index``, and
    ``datasets:`` for a Hub dataset, and the Results section) and ``.eval_results/``, leaving the rest of the card
    as written. Each file is replaced atomically. ``results``: top1, top5 (%), split, n (images), dataset (a Hub
    id or local folder; default: the card's), dataset_id (its Hub id, ``--hub_dataset_id``), ema (default: as
    the card said; the weights are unchanged), image_size (px), crop_pct, interpolation, flip (bool: flip TTA).
    The metadata's entries for other datasets or splits stay: they still hold for these weights."""
    folder = Path(folder)
    if not (folder / CARD_NAME).is_file():
        raise ValueError(f"{folder}: no {CARD_NAME}; write the folder with modeling.save_pretrained first")
    check_results(results, f"update_model_card_results({folder})")
    card = ModelCard.load(folder / CARD_NAME)
    body = card.text
    match = re.search(r"^## Results\n.*?(?=^## )", body, flags=re.S | re.M)
    results = {"ema": bool(match) and "(EMA)" in match.group(), **results}
    split = results.get("split", "validation")
    if results.get("dataset") or results.get("dataset_id"):
        name, dataset_id = resolve_dataset(results.get("dataset"), results.get("dataset_id"), split)
    else:  # the card's own dataset: the one its Results table names (other sets' entries and ids come and go)
        named = _results_dataset(match.group()) if match else None
        entries = card.data.eval_results or []
        old = next((r for r in entries if r.dataset_name == named), None) if named else next(iter(entries), None)
        dataset_id = old.dataset_type if old and is_repo_id(old.dataset_type) else None
        name = old.dataset_name if old else named
    if name:
        card.data.eval_results = merge_model_index(card.data.eval_results, model_index(results, name, dataset_id))
    if dataset_id and dataset_id not in (card.data.datasets or []):
        card.data.datasets = [*(card.data.datasets or []), dataset_id]
    if card.data.eval_results and not card.data.model_name:
        card.data.model_name = json.loads((folder / CONFIG_NAME).read_text())["architecture"]
    section = "\n".join(results_section(results, name))
    if match:
        body = body[:match.start()] + section + "\n" + body[match.end():]
    elif "## Training" in body:
        body = body.replace("## Training", section + "\n## Training", 1)
    else:
        body = body.rstrip("\n") + "\n\n" + section + "\n"
    from .card_sets import SECTION, section as sets_section  # card_sets imports this module
    table = re.search(rf"^{SECTION}\n.*?(?=^## |\Z)", body, flags=re.S | re.M)
    if table:  # validate.py's suite wrote it from the model-index: rebuilt, so that it shows these results too
        body = body[:table.start()] + sets_section(card.data.eval_results) + "\n" + body[table.end():]
    atomic_write_text(folder / CARD_NAME, f"---\n{card.data.to_yaml()}\n---\n{body}")
    if dataset_id:
        write_eval_results(folder, results, dataset_id)


def _results_dataset(section: str) -> str | None:
    """The dataset the card's Results table names (its first cell below the header), or None."""
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    if len(rows) < 2:
        return None
    first = re.split(r"(?<!\\) \| ", rows[1][2:])[0].replace("\\|", "|")
    return None if first == "-" else first


def write_eval_results(folder: Path, results: dict, dataset_id: str) -> None:
    """``results`` into ``folder``'s ``.eval_results/<dataset>.yaml``, replacing the entries of the same task ids; the
    file's other entries (other metrics, other splits) stay, as they do in the model-index."""
    path = folder / EVAL_RESULTS_DIR / f"{dataset_id.split('/')[-1]}.yaml"
    new = eval_result_entries(results, dataset_id)
    try:
        old = yaml.safe_load(path.read_text()) if path.is_file() else []
    except (OSError, yaml.YAMLError):
        old = []  # unreadable: written anew

    def key(entry):
        return (entry.get("dataset") or {}).get("id"), (entry.get("dataset") or {}).get("task_id")

    replaced = {key(e) for e in new}
    kept = [e for e in (old if isinstance(old, list) else []) if isinstance(e, dict) and key(e) not in replaced]
    if new or kept:
        atomic_write_text(path, yaml.safe_dump([*kept, *new], sort_keys=False))


def _resolve_folder(ref: str, filenames: tuple[str, ...]) -> Path:
    """A local folder holding ``filenames``, from a path, ``local-dir:PATH``, ``hf-hub:OWNER/NAME[@REV]`` or a bare
    repo id (downloaded into, or with HF_HUB_OFFLINE=1 read from, the Hugging Face cache)."""
    ref = str(ref)
    local = ref.removeprefix("local-dir:")
    if local != ref or Path(local).is_dir() or local.startswith(("/", ".", "~")):
        folder = Path(local).expanduser()
        missing = [name for name in filenames if not (folder / name).is_file()]
        if missing:
            raise ValueError(f"{folder}: no {', '.join(missing)} (need a folder written by modeling.save_pretrained; "
                             f"pickled .bin/.pth weights are not loaded)")
        return folder
    repo_id, _, revision = ref.removeprefix("hf-hub:").partition("@")
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ValueError(f"'{ref}' is neither a folder nor a Hub repo id (OWNER/NAME)") from None
    try:
        paths = [hf_hub_download(repo_id, name, revision=revision or None) for name in filenames]
    except Exception as e:  # no such repo or file, network errors: all one message
        if isinstance(e, LocalEntryNotFoundError) and _hub_offline():  # online, it means the Hub was out of reach
            raise ValueError(f"'{ref}' is no local folder, and with {_offline_var()}=1 set Hub repo '{repo_id}' "
                             f"({', '.join(filenames)}) is not in the Hugging Face cache {hf_constants.HF_HUB_CACHE}: "
                             f"load it once online, or point HF_HOME at a cache that holds it") from e
        raise ValueError(f"'{ref}' is no local folder, and fetching {', '.join(filenames)} of Hub repo '{repo_id}' "
                         f"failed ({type(e).__name__}: {_first_line(e)})") from e
    return Path(paths[0]).parent


def load_model(path_or_hub_id, num_classes: int | None = None):
    """A model with weights and ``pretrained_cfg`` from a saved folder, ``hf-hub:OWNER/NAME`` or ``OWNER/NAME``,
    in eval mode. ``num_classes`` different from the saved count gives a fresh classifier on the saved features.
    Weights saved without a classifier (``save_pretrained`` of transformers' ``AutoModel``, whose config.json keeps
    the class count) give the headless model (``num_classes=0``) unless ``num_classes`` asks for a fresh one.
    A ``model.safetensors`` that is cut short, or whose tensors differ from the CRC-32 saved with them
    (``check_weights``), is a one-line ValueError naming it."""
    folder = _resolve_folder(path_or_hub_id, (CONFIG_NAME, WEIGHTS_NAME))
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    config = json.loads((folder / CONFIG_NAME).read_text())
    arch = str(config.get("architecture", ""))
    if arch and not timm.is_model(arch.split(".")[0]):
        bundled = sorted(p.name for p in folder.glob("*.py") if not p.name.startswith("modeling_"))
        hint = (f"; the export carries its source ({', '.join(bundled)}): load it with transformers' "
                f"AutoModelForImageClassification.from_pretrained(..., trust_remote_code=True)" if bundled else "")
        raise ValueError(f"architecture '{arch}' of {path_or_hub_id} is not registered with timm: install the package "
                         f"that defines it (imagenet-trainer: pip install git+<its repository url>, or "
                         f"pip install -e . in a checkout) and import it (import modeling; a family file of your own: "
                         f"import it too)"
                         f"{hint}")
    # before anything else reads the file: a cut one would fail deep inside timm, a damaged one load as other weights
    check_weights(folder / WEIGHTS_NAME)
    from .refresh_code import installed_code_warning  # refresh_code imports this module
    if (line := installed_code_warning(folder)) is not None:  # the network is built from the installed code
        warnings.warn(line)
    headless = saved_headless(config, saved_keys(folder / WEIGHTS_NAME))
    if headless and num_classes is None:
        kwargs["num_classes"] = 0
    # local-dir: reads config.json and model.safetensors (timm prefers it over pickles, which _resolve_folder
    # has made sure exists)
    state = wrapper_saved_state(folder / WEIGHTS_NAME)
    with our_names():
        if state is None and not headless:
            return timm.create_model(f"local-dir:{folder.resolve()}", pretrained=True, **kwargs).eval()
        model = timm.create_model(f"local-dir:{folder.resolve()}", pretrained=False, **kwargs)
    if state is None:  # timm's loader would fill a classifier the weights lack without a word (it loads non-strictly)
        state = safetensors.torch.load_file(folder / WEIGHTS_NAME)
    # no classifier asked for, another class count, or none saved: the saved one goes, a fresh one (if any) stays
    # as built, as timm's own loader does
    load_saved_weights(model, state, config, path_or_hub_id)
    return model.eval()


def label_info(path_or_hub_id) -> tuple[list[str] | None, list[str] | None]:
    """(label ids, human names) in class-index order from a saved folder or Hub id; (None, None) if it has none."""
    config = json.loads((_resolve_folder(path_or_hub_id, (CONFIG_NAME,)) / CONFIG_NAME).read_text())
    pcfg = config.get("pretrained_cfg", {})
    # ours keep ids in pretrained_cfg; plain timm exports keep them at the root
    names = pcfg.get("label_names") or config.get("label_names")
    descriptions = pcfg.get("label_descriptions") or config.get("label_descriptions")
    names, described = ordered_labels(names, descriptions)
    if names is None:
        return None, None
    head = head_labels(config) if saved_by_transformers(config) else None
    if head and head not in (names, display_names(names, described), timm_imagenet_names(names)):
        return head, None  # a fine-tune's head: its own labels
    return names, described


def ordered_labels(names, descriptions) -> tuple[list[str] | None, list[str] | None]:
    """(label ids, human names) in class-index order from a config's ``label_names`` (a list, or a dict by index)
    and ``label_descriptions`` (a dict by id, or a list); (None, None) without ids."""
    if names is None:
        return None, None
    names = list(names.values()) if isinstance(names, dict) else list(names)
    if isinstance(descriptions, dict):
        return names, [descriptions.get(n, n) for n in names]
    return names, list(descriptions) if descriptions else None


def pretrained_labels(pretrained_cfg: dict) -> tuple[list[str] | None, list[str] | None]:
    """(label ids, human names) of a model's pretrained_cfg: its own, else those of the ImageNet subset its class
    count names (timm's ImageNet weights record none); (None, None) when neither."""
    ids, described = ordered_labels(pretrained_cfg.get("label_names"), pretrained_cfg.get("label_descriptions"))
    if ids is None and (subset := infer_imagenet_subset(pretrained_cfg)):
        info = ImageNetInfo(subset)
        return info.label_names(), info.label_descriptions()
    return ids, described


def class_order(ids: list[str], descriptions: list[str] | None, label_names: list[str]) -> str:
    """How a dataset's classes ``label_names`` stand to a model's (``ids``, ``descriptions``: class-index order):
    "same", by id or by human name (Hub copies of ImageNet may name their ClassLabels by description); "reordered",
    the same classes in another index order; else "other"."""
    if label_names in (list(ids), list(descriptions or ())):
        return "same"
    if set(label_names) in (set(ids), set(descriptions or ())):
        return "reordered"
    return "other"


def timm_imagenet_names(label_ids: list[str]) -> list[str] | None:
    """The ``id2label`` transformers gives classes that are an ImageNet subset's wnids in timm's order when config.json
    has no root ``label_names`` (``TimmWrapperConfig.from_dict``): timm's descriptions, duplicates as they are; None
    for other classes."""
    subset = infer_imagenet_subset({"num_classes": len(label_ids)})
    if not subset:
        return None
    info = ImageNetInfo(subset)
    return info.label_descriptions() if list(label_ids) == list(info.label_names()) else None


def _hub_offline() -> bool:
    return _offline_var() is not None


def _offline_var() -> str | None:
    """The variable that makes the Hub offline, for messages to name what the user set: the environment now (it may
    have changed since import), else huggingface_hub's copy from import time, which is what its HTTP calls obey
    (HF_HUB_OFFLINE, or TRANSFORMERS_OFFLINE where that is unset)."""
    var = "HF_HUB_OFFLINE" if os.environ.get("HF_HUB_OFFLINE") else "TRANSFORMERS_OFFLINE"
    if os.environ.get(var, "").upper() in _TRUE:
        return var
    return "HF_HUB_OFFLINE" if hf_constants.HF_HUB_OFFLINE else None


def check_hub_ready(repo_id: str, token: str | None = None, *, private: bool = False,
                    repo_type: str = "model") -> None:
    """Raise a one-line ValueError now, before hours of training, if a later push to ``repo_id`` cannot work: a bad
    repo id, HF_HUB_OFFLINE=1, no token, a token the Hub refuses (401), a read-only token, a namespace that is
    neither the token's user nor one of their organizations, a Hub that gives no answer within ``HUB_CHECK_S``
    seconds, or (``private``) a repo that exists and is public. A Hub that cannot be reached otherwise (no DNS,
    refused, rate limited) is a warning: it may be back when training ends. (A fine-grained token's scopes are not
    read: the push says what they lack.)"""
    _check_push_args(repo_id, token)
    api = HfApi(token=token)
    try:
        with stall_limit(HUB_CHECK_S):
            _check_write_access(repo_id, api.whoami())
            if private:
                refuse_public(api, repo_id, repo_type, HUB_CHECK_S)
    except (NotPrivate, NoWriteAccess):
        raise
    except Exception as e:  # HTTP, network and auth errors come from several libraries
        if getattr(getattr(e, "response", None), "status_code", None) == 401:
            raise ValueError(f"cannot push to '{repo_id}': the Hub refuses the Hugging Face token (401: invalid or "
                             f"expired); run `hf auth login --force` or set HF_TOKEN to a token with write "
                             f"access") from None
        if _timed_out(e):
            raise ValueError(f"cannot push to '{repo_id}': the Hub ({hf_constants.ENDPOINT}) gave no answer within "
                             f"{HUB_CHECK_S:g} s (a firewall or proxy dropping the connection?); fix the network "
                             f"from this machine or do not ask for a push") from None
        warnings.warn(f"could not check the Hugging Face token for '{repo_id}' ({type(e).__name__}: "
                      f"{_masked(_first_line(e), token)}); the push at the end may fail", stacklevel=2)


class NoWriteAccess(ValueError):
    """A push the token cannot make: read-only, or a namespace its user is not in."""


def _check_write_access(repo_id: str, who: dict) -> None:
    """What the Hub's whoami says of the token that rules a push to ``repo_id`` out: a read token (role "read") can
    write nowhere, and a repo is created only in the user's own namespace or one of their organizations'."""
    role = ((who.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise NoWriteAccess(f"cannot push to '{repo_id}': the Hugging Face token is read-only; create one with "
                            f"write access (huggingface.co/settings/tokens) and run `hf auth login --force` or set "
                            f"HF_TOKEN")
    owner, orgs = repo_id.partition("/")[0] if "/" in repo_id else None, who.get("orgs")
    if not (owner and who.get("name") and isinstance(orgs, list)):  # nothing to tell from
        return
    members = {str(n).casefold() for n in (who["name"], *(o.get("name") for o in orgs if isinstance(o, dict)))}
    if owner.casefold() not in members:  # the Hub's names ignore case
        raise NoWriteAccess(f"cannot push to '{repo_id}': the Hugging Face token is {who['name']}'s, who is not a "
                            f"member of '{owner}'; push under {who['name']}/ or one of their organizations, or use a "
                            f"token of '{owner}'")


def _check_push_args(repo_id: str, token: str | None) -> None:
    """What a push needs before any request: a valid repo id, online, a token."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ValueError(f"'{repo_id}' is not a valid Hub repo id (OWNER/NAME, letters, digits, -_.)") from None
    if _hub_offline():
        raise ValueError(f"cannot push to '{repo_id}': {_offline_var()}=1 is set; unset it or do not ask for a "
                         "push")
    if not (token or get_token()):
        raise ValueError(f"cannot push to '{repo_id}': no Hugging Face token; run `hf auth login` or set HF_TOKEN")


class NotPrivate(ValueError):
    """A private push asked of a repo that exists and is public."""


def refuse_public(api: HfApi, repo_id: str, repo_type: str, timeout: float) -> None:
    """Raise NotPrivate if ``repo_id`` exists and is public. ``create_repo(private=True, exist_ok=True)`` leaves an
    existing repo's visibility as it is, and ImageNet's terms forbid redistributing its images; flipping a user's
    repo to private unasked would break their links, so the push stops and says what to do."""
    try:
        info = api.repo_info(repo_id, repo_type=repo_type, timeout=timeout)  # its timeout=None default waits forever
    except RepositoryNotFoundError:
        return
    if not info.private:
        dataset = repo_type == "dataset"
        how = "pass --public (push_dataset: private=False)" if dataset else \
            "leave out --hub_private (push_to_hub: private=False)"
        raise NotPrivate(f"'{repo_id}' is a public {'dataset ' if dataset else ''}repo on the Hub and a private one "
                         f"was asked for; nothing was uploaded: make it private in its settings "
                         f"({hf_constants.ENDPOINT}/{'datasets/' if dataset else ''}{repo_id}/settings) or {how}")


_STALL_LOCK = threading.RLock()  # one stall_limit block at a time in this process (the client factory is global)


@contextmanager
def stall_limit(seconds: float):
    """Within this block, each connect, read and write of huggingface_hub's HTTP client gives up after ``seconds``
    without progress. Its client waits forever by default (``default_client_factory`` in huggingface_hub/utils/
    _http.py: timeout=None), so a firewall that drops packets after the handshake would hold a push for good. The
    limit goes into the client factory, wrapped around the one in place (a user's proxy settings stay): after a
    connection error huggingface_hub's retries build a new client from it (``close_session``), which a limit set on
    the old client alone would not reach. Blocks in other threads wait for this one (nested ones in this thread
    do not). Calls that pass their own timeout (``repo_info``'s None) are not covered: pass one."""
    from huggingface_hub.utils import _http  # the factory in place: huggingface_hub has no public getter for it

    with _STALL_LOCK:
        previous = _http._GLOBAL_CLIENT_FACTORY

        def limited():
            client = previous()
            client.timeout = seconds  # httpx: one number is the connect, read, write and pool limit
            return client

        set_client_factory(limited)  # closes the current client: the next call builds a limited one
        try:
            yield
        finally:
            set_client_factory(previous)


def _timed_out(e: BaseException) -> bool:
    # httpx2's TimeoutException (huggingface_hub 2.x's HTTP client) by name: this module imports no HTTP library
    return isinstance(e, TimeoutError) or any(c.__name__ == "TimeoutException" for c in type(e).__mro__)


def stale_deletions(api: HfApi, repo_id: str, kept: set[str]) -> list[CommitOperationDelete]:
    """Deletions of the repo files an export owns that are not in ``kept`` (the paths being uploaded): every
    ``.eval_results/`` file (another model's scores would show beside these weights) and every top-level ``*.py``
    (remote code of another architecture). A user's other files (images, notes, scripts in folders) stay."""
    return [CommitOperationDelete(path) for path in api.list_repo_files(repo_id) if path not in kept and
            (path.startswith(EVAL_RESULTS_DIR + "/") or "/" not in path and path.endswith(".py"))]


def push_to_hub(folder, repo_id: str, token: str | None = None, private: bool = False,
                commit_message: str = "Upload model trained with imagenet-trainer") -> str:
    """Upload a folder written by ``save_pretrained`` to ``repo_id`` (created if missing); returns the repo URL.
    The files are those ``upload_folder`` would take, less bytecode and temp files a kill left (``upload_paths``).

    A failed upload raises a one-line OSError (it is network I/O; bad input and a missing token are ValueErrors,
    as in ``check_hub_ready``); the upload leaves the local folder as it was, so the push can be retried. Before it,
    the folder's remote code is brought up to date with the installed project (``modeling.refresh_code``; weights
    and card untouched; an architecture file the installed one does not compute alike with is kept). The card is
    uploaded with ``repo_id`` in its load snippets in place of OWNER/NAME or of the repo id it was saved with
    (``card_for_repo``). Weights that are cut short or differ from their CRC-32 (``check_weights``) are a ValueError
    before anything is uploaded, and so is ``private`` asked of a repo that exists and is public (``refuse_public``).
    The same commit deletes the repo's ``.eval_results/`` files and top-level ``*.py`` the folder lacks (another
    model's scores and code, ``stale_deletions``). A stall of ``HUB_STALL_S`` seconds ends in the OSError.
    """
    from .refresh_code import refresh_before_upload  # it imports this module

    _check_push_args(repo_id, token)
    folder = Path(folder)
    missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME) if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"{folder}: no {', '.join(missing)}; write it with modeling.save_pretrained first")
    check_weights(folder / WEIGHTS_NAME)  # damaged weights are never published, nor their code refreshed
    refresh_before_upload(folder)
    card = card_for_repo((folder / CARD_NAME).read_text(), repo_id).encode()
    operations = [CommitOperationAdd(path_in_repo=path,  # the filled-in card in place of the local one
                                     path_or_fileobj=card if path == CARD_NAME else str(folder / path))
                  for path in upload_paths(folder)]
    api = HfApi(token=token, library_name="timm", library_version=timm.__version__)
    try:
        with stall_limit(HUB_STALL_S):
            url = api.create_repo(repo_id, private=private, exist_ok=True)
            if private:
                refuse_public(api, url.repo_id, "model", HUB_STALL_S)
            kept = {op.path_in_repo for op in operations}
            api.create_commit(url.repo_id, [*operations, *stale_deletions(api, url.repo_id, kept)],
                              commit_message=commit_message)
    except NotPrivate:
        raise
    except Exception as e:  # HTTP, network and auth errors come from several libraries; all end the same way
        # from None: the chained error's text is not ours to vet for secrets
        raise push_failed(e, f"{folder} to '{repo_id}'", token, "modeling.push_to_hub") from None
    return str(url)


def upload_paths(folder: Path) -> list[str]:
    """The files of ``folder`` a push uploads, as repo paths: what ``upload_folder`` takes (huggingface_hub's own
    ignore patterns: .git/, and the .cache/huggingface/ that ``hf download --local-dir`` writes, which the Hub
    refuses), less bytecode (importing the family file from the folder, as the card says to, leaves __pycache__/
    there) and the temp files of atomic writes a kill cut short (a card update's ``.README.md.<8 chars>.tmp``)."""
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return [path for path in filter_repo_objects(paths, ignore_patterns=DEFAULT_IGNORE_PATTERNS)
            if not path.endswith(".pyc") and "__pycache__" not in path.split("/")
            and not WRITE_LEFTOVER.fullmatch(path.rsplit("/", 1)[-1])]


def push_failed(e: BaseException, what: str, token: str | None, retry: str) -> OSError:
    """The one line a failed upload of ``what`` ends in: the client's error, with the Hub's own reason where it
    gave one (e.g. "Invalid credentials in Authorization header" behind a 401), every copy of the token masked."""
    message = f"no answer for {HUB_STALL_S:g} s" if _timed_out(e) else _first_line(e)
    reason = (getattr(e, "server_message", None) or "").strip().splitlines()
    if reason and reason[0] not in message:
        message += f"; the Hub says: {reason[0][:200]}"
    message = _masked(message, token)
    return OSError(f"push of {what} failed ({type(e).__name__}: {message}); the folder is unchanged, retry with "
                   f"{retry}")


def _masked(text: str, token: str | None) -> str:
    secret = token or get_token()
    return text.replace(secret, "***") if secret else text


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]
