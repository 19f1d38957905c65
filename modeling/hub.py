"""Save, load and share trained models as timm Hub folders: ``config.json`` + ``model.safetensors`` + ``README.md``.

A saved folder of a zoo architecture loads with no project code installed:
``timm.create_model("local-dir:PATH", pretrained=True)`` (also ``features_only=True``),
``transformers.AutoModelForImageClassification.from_pretrained(PATH)`` and
``transformers.pipeline("image-classification", model=PATH)``; our own designs load the same way after
``import modeling``. Weights are safetensors only: nothing here unpickles.

Label keys in config.json (worked out against timm 1.0.31 and transformers 5.24, see tests/test_modeling.py):

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
  timm then reports those as its label_names (``label_info()`` still returns the ids).
* ``model_args`` never holds ``num_classes``: transformers passes ``num_classes`` itself and fails on a duplicate.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import safetensors.torch
import timm
import yaml
from huggingface_hub import (CommitOperationAdd, EvalResult, EvalResultEntry, HfApi, ModelCard, ModelCardData,
                             eval_result_entries_to_yaml, get_token, hf_hub_download)
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from timm.data import ImageNetInfo, infer_imagenet_subset
from timm.models import PretrainedCfg, get_model_args

from imagenet_trainer.runinfo import atomic_write_text, replace_dir, share_tree

from ._registry import list_models

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
EVAL_RESULTS_DIR = ".eval_results"  # huggingface_hub 2.x eval-results format, beside the legacy model-index

# pretrained_cfg keys that describe the saved weights' architecture and preprocessing; the rest of a zoo cfg (tag,
# url, hf_hub_id, license, paper, test_* sizes) describes timm's published weights, not ours
_ARCH_KEYS = ("input_size", "fixed_input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std",
              "pool_size", "first_conv", "classifier")
_CFG_FIELDS = {f.name for f in dataclasses.fields(PretrainedCfg)}
_CARD_KEYS = {"model_name", "repo_id", "description", "dataset", "dataset_id", "recipe", "epochs", "hardware",
              "results", "license", "tags"}
_RESULT_KEYS = {"top1", "top5", "split", "n", "dataset", "ema", "image_size", "crop_pct", "interpolation", "flip"}
REPO_PLACEHOLDER = "OWNER/NAME"  # the card's load snippets until the repo id is known; push_to_hub fills it in
_TRUE = {"1", "ON", "YES", "TRUE"}  # what huggingface_hub accepts as "true" in HF_HUB_OFFLINE


def save_pretrained(model, folder, *, label_names: list[str], label_descriptions: list[str] | None = None,
                    pretrained_cfg: dict | None = None, model_card: dict | None = None) -> Path:
    """Write ``folder`` (config.json, model.safetensors, README.md, .eval_results/) in one atomic step.

    ``label_names``: one unique id per class in index order (ImageNet wnids); ``label_descriptions``: the human names
    in the same order (duplicates allowed). ``pretrained_cfg``: the preprocessing the weights were trained/evaluated
    with (mean, std, input_size, crop_pct, interpolation, ...), over the architecture's defaults. ``model_card``: see
    ``model_card_text``. An older folder of that name is replaced only once the new one is complete.
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
    _check_results(card.get("results") or {}, "model_card")
    dataset_id = _card_dataset_id(card)

    config = hub_config(model, label_names, label_descriptions, pretrained_cfg)
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        # contiguous copies: safetensors refuses views and tensors that share memory
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        safetensors.torch.save_file(state, tmp / WEIGHTS_NAME, metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        num_params = sum(p.numel() for p in model.parameters())
        (tmp / CARD_NAME).write_text(model_card_text(config, card, num_params=num_params))
        entries = eval_result_entries(card.get("results") or {}, dataset_id) if dataset_id else []
        if entries:
            (tmp / EVAL_RESULTS_DIR).mkdir()
            (tmp / EVAL_RESULTS_DIR / f"{dataset_id.split('/')[-1]}.yaml").write_text(
                yaml.safe_dump(entries, sort_keys=False))
        share_tree(tmp)  # mkdtemp makes 0700, safetensors writes 0600: teammates must read the export
        replace_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _is_local(ref: str) -> bool:
    return ref.startswith(("/", "~", ".")) or os.path.exists(os.path.expanduser(ref))  # False on any OSError


def _public(value):
    """A string that names a local path, shown by its last component only: absolute paths leak user and cluster
    names into a public card. Other values are returned as they are."""
    if not isinstance(value, str) or not value:
        return value
    prefix = "local-dir:" if value.startswith("local-dir:") else ""
    path = value.removeprefix(prefix)
    return prefix + (Path(path).expanduser().resolve().name or path) if _is_local(path) else value


def is_repo_id(ref: str) -> bool:
    """``ref`` has the form of a Hub repo id with its owner, OWNER/NAME (huggingface_hub's rules)."""
    try:
        validate_repo_id(ref)
    except HFValidationError:
        return False
    return "/" in ref


def _hub_dataset_id(dataset) -> str | None:
    """``dataset`` when it is a Hub dataset id (OWNER/NAME, not a local folder), else None. A card links only a Hub
    dataset the weights were trained or scored on: a local folder of 1000 ImageNet wnids may hold other images
    (a demo tree, a re-split, a subset of ImageNet-21k), so none is guessed from one."""
    if not isinstance(dataset, str) or _is_local(dataset) or not is_repo_id(dataset):
        return None
    return dataset


def _card_dataset_id(card: dict) -> str | None:
    if "dataset_id" not in card:
        return _hub_dataset_id(card.get("dataset"))
    if card["dataset_id"] and _hub_dataset_id(card["dataset_id"]) != card["dataset_id"]:
        raise ValueError(f"model_card: dataset_id '{card['dataset_id']}' is not a Hub dataset id (OWNER/NAME); "
                         f"leave it out for a local dataset")
    return card["dataset_id"] or None


def _check_model(model) -> str:
    cfg = getattr(model, "pretrained_cfg", None)
    if not cfg or not cfg.get("architecture") or not hasattr(model, "num_classes"):
        raise ValueError(f"{type(model).__name__} is not a timm classifier (no pretrained_cfg/num_classes); pass the "
                         f"model from modeling.create_model, unwrapped (accelerator.unwrap_model(model)), not "
                         f"features_only")
    return cfg["architecture"]


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


def _metric_name(key: str) -> str:
    return f"{key[:3]}-{key[3:]} accuracy (%)"  # "top1" -> "top-1 accuracy (%)"


def _eval_transform(results: dict) -> str:
    """"48x48 px center crop (crop_pct 0.875, bicubic)": what the numbers were measured at, if recorded."""
    if not results.get("image_size"):
        return ""
    how = [f"crop_pct {results['crop_pct']}"] if results.get("crop_pct") is not None else []
    how += [str(results["interpolation"])] if results.get("interpolation") else []
    flip = ", logits averaged with the mirrored image's (flip TTA)" if results.get("flip") else ""
    return (f"{results['image_size']}x{results['image_size']} px center crop" + (f" ({', '.join(how)})" if how else "")
            + flip)


def eval_result_entries(results: dict, dataset_id: str) -> list[dict]:
    """``results`` in huggingface_hub's ``.eval_results/*.yaml`` format (``EvalResultEntry``), accuracy in %."""
    split = results.get("split", "validation")
    images = f", {results['n']} images" if results.get("n") else ""
    at = f", at {transform}" if (transform := _eval_transform(results)) else ""
    entries = [EvalResultEntry(dataset_id=dataset_id, task_id=f"{k}_accuracy", value=round(float(results[k]), 2),
                               notes=f"{_metric_name(k)} on the {split} split{images}{at}")
               for k in ("top1", "top5") if results.get(k) is not None]
    return eval_result_entries_to_yaml(entries)


def _model_index(results: dict, dataset: str, dataset_id: str) -> list[EvalResult]:
    """The legacy ``model-index`` entries of the card's front matter (still read by the Hub and papers-with-code)."""
    return [EvalResult(task_type="image-classification", task_name="Image Classification", dataset_type=dataset_id,
                       dataset_name=dataset, dataset_split=results.get("split", "validation"),
                       metric_type="accuracy", metric_name=_metric_name(k), metric_value=round(float(results[k]), 2))
            for k in ("top1", "top5") if results.get(k) is not None]


def _results_section(results: dict, dataset: str) -> list[str]:
    def pct(key):
        return f"{results[key]:.2f}" if results.get(key) is not None else "-"
    lines = ["## Results", "", "| dataset | split | images | top-1 (%) | top-5 (%) |", "|---|---|---|---|---|",
             f"| {_cell(_public(results.get('dataset') or dataset or '-'))} | {results.get('split', 'validation')} | "
             f"{results.get('n') or '-'} | {pct('top1')} | {pct('top5')} |", ""]
    if results.get("image_size"):
        lines += [f"Evaluated at {_eval_transform(results)}.", ""]
    if results.get("ema"):
        lines += ["Weights: the exponential moving average (EMA) of the trained weights.", ""]
    return lines


def _check_results(results: dict, where: str) -> None:
    unknown = set(results) - _RESULT_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown results keys {sorted(unknown)} (known: {sorted(_RESULT_KEYS)})")


def model_card_text(config: dict, card: dict, num_params: int | None = None) -> str:
    """README.md: YAML front matter (library, license, datasets, legacy model-index) and a card body.

    ``card`` keys (all optional): model_name, repo_id (Hub id, used in the load snippets; default OWNER/NAME, which
    push_to_hub fills in), description, dataset (as given to train.py: a Hub id, a local folder, shown by its name
    only, or a display name), dataset_id (Hub dataset id for ``datasets:`` and the eval results; default: ``dataset``
    when that is a Hub id, else none), recipe {hyper-parameter: value; local paths shown by their last component},
    epochs, hardware, results {top1, top5 (both %), split, n (images), dataset, ema (bool), image_size (px),
    crop_pct, interpolation, flip (bool: flip TTA)}, license (default apache-2.0), tags. Results go into the front
    matter only with a Hub dataset id: a local folder's numbers are in the Results table alone.
    """
    arch, pcfg = config["architecture"], config["pretrained_cfg"]
    name = card.get("model_name") or arch
    repo = card.get("repo_id") or REPO_PLACEHOLDER
    if repo != REPO_PLACEHOLDER:
        try:
            validate_repo_id(repo)
        except HFValidationError:
            raise ValueError(f"model_card: repo_id '{repo}' is not a Hub repo id (OWNER/NAME)") from None
    dataset = _public(str(card["dataset"])) if card.get("dataset") else None
    dataset_id = _card_dataset_id(card)
    results = card.get("results") or {}
    metrics = _model_index(results, dataset or dataset_id, dataset_id) if dataset_id else []
    tags = ["image-classification", "timm", "transformers", "imagenet-trainer", *card.get("tags", [])]
    data = ModelCardData(library_name="timm", pipeline_tag="image-classification", tags=tags,
                         license=card.get("license", "apache-2.0"), datasets=[dataset_id] if dataset_id else None,
                         model_name=name if metrics else None, eval_results=metrics or None)
    ours = arch in list_models()
    trained_on = f" trained on {dataset}" if dataset else ""
    shown = f"{dataset} (`{dataset_id}`)" if dataset and dataset_id and dataset != dataset_id else dataset or dataset_id

    lines = ["---", data.to_yaml(), "---", "", f"# {name}", "",
             card.get("description") or f"A `{arch}` image classifier{trained_on} with imagenet-trainer.", "",
             "## Model details", "",
             f"- **Architecture:** `{arch}`" + (" (defined in imagenet-trainer's `modeling` package)" if ours else ""),
             *([f"- **Parameters:** {num_params / 1e6:.2f} M"] if num_params else []),
             f"- **Classes:** {config['num_classes']}",
             *([f"- **Dataset:** {shown}"] if shown else []), ""]
    lines += _results_section(results, dataset) if results else []
    lines += ["## Training", ""]
    epochs = card.get("epochs")
    if epochs is not None:
        lines.append(f"- **Epochs:** {epochs:g}" if isinstance(epochs, (int, float)) else f"- **Epochs:** {epochs}")
    if card.get("hardware"):
        lines.append(f"- **Hardware:** {card['hardware']}")
    if card.get("recipe"):
        lines += ["", "| hyper-parameter | value |", "|---|---|"]
        lines += [f"| {_cell(k)} | {_cell(_public(v))} |" for k, v in card["recipe"].items()]
    if epochs is None and not card.get("hardware") and not card.get("recipe"):
        lines.append("No recipe was recorded.")

    size = pcfg["input_size"][-1]
    resize = int(size / pcfg.get("crop_pct", 1.0))  # timm's eval transform: resize the shorter side, center-crop
    lines += ["", "## Preprocessing", "",
              f"- Evaluation: resize the shorter side to {resize} px ({pcfg.get('interpolation', 'bilinear')}), "
              f"center-crop {size}x{size} (crop_pct {pcfg.get('crop_pct')})",
              f"- Normalize: mean {list(pcfg.get('mean', []))}, std {list(pcfg.get('std', []))} (RGB, 0-1 scale)",
              "", "## How to load", ""]
    if ours:
        lines += [f"`{arch}` is defined in imagenet-trainer's `modeling` package: run `import modeling` first "
                  "(it registers the architecture with timm), then every snippet below works.", ""]
    lines += ["```python", "import timm", "from PIL import Image",
              *(["import modeling  # registers the architecture with timm"] if ours else []),
              f'model = timm.create_model("hf-hub:{repo}", pretrained=True).eval()  # or "local-dir:PATH"',
              "cfg = timm.data.resolve_data_config({}, model=model)  # the preprocessing above",
              "transform = timm.data.create_transform(**cfg)",
              'image = Image.open("photo.jpg").convert("RGB")',
              "top5 = model(transform(image).unsqueeze(0)).softmax(-1).topk(5)",
              "ids = model.pretrained_cfg['label_names']  # class index -> wnid",
              "names = model.pretrained_cfg['label_descriptions']  # wnid -> human name",
              "", "# multi-scale feature maps (detection, segmentation)",
              f'backbone = timm.create_model("hf-hub:{repo}", pretrained=True, features_only=True)',
              "", "# transformers: the pipeline prints the human names",
              "from transformers import AutoModelForImageClassification, pipeline",
              f'classifier = pipeline("image-classification", model="{repo}")',
              f'model = AutoModelForImageClassification.from_pretrained("{repo}")',
              "```", "", "## Labels", "",
              f"<details><summary>{config['num_classes']} classes (index, id, name)</summary>", "",
              "| index | id | name |", "|---|---|---|"]
    descriptions = pcfg.get("label_descriptions") or {}
    lines += [f"| {i} | {_cell(label)} | {_cell(descriptions.get(label, label))} |"
              for i, label in enumerate(pcfg["label_names"])]
    lines += ["", "</details>", ""]
    return "\n".join(lines)


def update_model_card_results(folder, results: dict) -> None:
    """Put new results (e.g. from validate.py) into a saved folder's README.md (front matter ``model-index`` and
    the Results section) and ``.eval_results/``, leaving the rest of the card as written. Each file is replaced
    atomically. ``results``: top1, top5 (%), split, n (images), dataset (a Hub id or local folder; default: the
    card's), ema (default: as the card said; the weights are unchanged), image_size (px), crop_pct, interpolation,
    flip (bool: flip TTA).
    Results on a local folder replace the Results table only: the front matter keeps the Hub dataset's results,
    which still hold for these weights."""
    folder = Path(folder)
    if not (folder / CARD_NAME).is_file():
        raise ValueError(f"{folder}: no {CARD_NAME}; write the folder with modeling.save_pretrained first")
    _check_results(results, f"update_model_card_results({folder})")
    card = ModelCard.load(folder / CARD_NAME)
    body = card.text
    match = re.search(r"^## Results\n.*?(?=^## )", body, flags=re.S | re.M)
    results = {"ema": bool(match) and "(EMA)" in match.group(), **results}
    dataset_id = _hub_dataset_id(results["dataset"]) if results.get("dataset") else (card.data.datasets or [None])[0]
    old = (card.data.eval_results or [None])[0]
    dataset = _public(str(results.get("dataset") or (old.dataset_name if old else dataset_id) or "-"))
    if dataset_id:
        card.data.eval_results = _model_index(results, dataset, dataset_id) or None
    if card.data.eval_results and not card.data.model_name:
        card.data.model_name = json.loads((folder / CONFIG_NAME).read_text())["architecture"]
    section = "\n".join(_results_section(results, dataset))
    if match:
        body = body[:match.start()] + section + "\n" + body[match.end():]
    elif "## Training" in body:
        body = body.replace("## Training", section + "\n## Training", 1)
    else:
        body = body.rstrip("\n") + "\n\n" + section + "\n"
    atomic_write_text(folder / CARD_NAME, f"---\n{card.data.to_yaml()}\n---\n{body}")
    entries = eval_result_entries(results, dataset_id) if dataset_id else []
    if entries:
        atomic_write_text(folder / EVAL_RESULTS_DIR / f"{dataset_id.split('/')[-1]}.yaml",
                          yaml.safe_dump(entries, sort_keys=False))


def _cell(text) -> str:
    return str(text).replace("|", "\\|")  # a "|" inside a markdown table cell would split it


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
    except Exception as e:  # offline without a cached copy, no such repo or file, network errors: all one message
        raise ValueError(f"'{ref}' is no local folder, and fetching {', '.join(filenames)} of Hub repo '{repo_id}' "
                         f"failed ({type(e).__name__}: {_first_line(e)})") from e
    return Path(paths[0]).parent


def load_model(path_or_hub_id, num_classes: int | None = None):
    """A model with weights and ``pretrained_cfg`` from a saved folder, ``hf-hub:OWNER/NAME`` or ``OWNER/NAME``,
    in eval mode. ``num_classes`` different from the saved count gives a fresh classifier on the saved features."""
    folder = _resolve_folder(path_or_hub_id, (CONFIG_NAME, WEIGHTS_NAME))
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    # local-dir: reads config.json and model.safetensors (timm prefers it over pickles, which _resolve_folder
    # has made sure exists)
    return timm.create_model(f"local-dir:{folder.resolve()}", pretrained=True, **kwargs).eval()


def label_info(path_or_hub_id) -> tuple[list[str] | None, list[str] | None]:
    """(label ids, human names) in class-index order from a saved folder or Hub id; (None, None) if it has none."""
    config = json.loads((_resolve_folder(path_or_hub_id, (CONFIG_NAME,)) / CONFIG_NAME).read_text())
    pcfg = config.get("pretrained_cfg", {})
    # ours keep ids in pretrained_cfg; plain timm exports keep them at the root
    names = pcfg.get("label_names") or config.get("label_names")
    descriptions = pcfg.get("label_descriptions") or config.get("label_descriptions")
    if names is None:
        return None, None
    names = list(names.values()) if isinstance(names, dict) else list(names)
    return names, [descriptions.get(n, n) for n in names] if descriptions else None


def _hub_offline() -> bool:
    # the environment now (it may have changed since import) or huggingface_hub's copy from import time, which is
    # what its HTTP calls obey
    now = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return now.upper() in _TRUE or hf_constants.HF_HUB_OFFLINE


def check_hub_ready(repo_id: str, token: str | None = None) -> None:
    """Raise a one-line ValueError now, before hours of training, if a later push to ``repo_id`` cannot work."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ValueError(f"'{repo_id}' is not a valid Hub repo id (OWNER/NAME, letters, digits, -_.)") from None
    if _hub_offline():
        raise ValueError(f"cannot push to '{repo_id}': HF_HUB_OFFLINE=1 is set; unset it or do not ask for a push")
    if not (token or get_token()):
        raise ValueError(f"cannot push to '{repo_id}': no Hugging Face token; run `hf auth login` or set HF_TOKEN")


def push_to_hub(folder, repo_id: str, token: str | None = None, private: bool = False,
                commit_message: str = "Upload model trained with imagenet-trainer") -> str:
    """Upload a folder written by ``save_pretrained`` to ``repo_id`` (created if missing); returns the repo URL.

    A failed upload raises a one-line OSError (it is network I/O; bad input and a missing token are ValueErrors
    from ``check_hub_ready``); the local folder is never modified, so the push can be retried. A card saved without
    ``repo_id`` is uploaded with ``repo_id`` in its load snippets in place of OWNER/NAME.
    """
    check_hub_ready(repo_id, token)
    folder = Path(folder)
    missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME) if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"{folder}: no {', '.join(missing)}; write it with modeling.save_pretrained first")
    card = (folder / CARD_NAME).read_text().replace(REPO_PLACEHOLDER, repo_id).encode()
    # upload_folder's file set (everything but .git/), with the filled-in card in place of the local one
    files = sorted(p for p in folder.rglob("*") if p.is_file() and ".git" not in p.relative_to(folder).parts)
    operations = [CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(),
                                     path_or_fileobj=card if p == folder / CARD_NAME else str(p)) for p in files]
    api = HfApi(token=token, library_name="timm", library_version=timm.__version__)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.create_commit(url.repo_id, operations, commit_message=commit_message)
    except Exception as e:  # HTTP, network and auth errors come from several libraries; all end the same way
        message, secret = _first_line(e), token or get_token()
        if secret:
            message = message.replace(secret, "***")
        # from None: the chained error's text is not ours to vet for secrets
        raise OSError(f"push of {folder} to '{repo_id}' failed ({type(e).__name__}: {message}); "
                      f"the folder is unchanged, retry with modeling.push_to_hub") from None
    return str(url)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]
