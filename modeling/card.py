"""The model card (README.md) of an export, laid out like timm's own cards: stats, usage, results, training, labels.

Results go into the metadata whenever the weights were scored: a ``model-index`` entry named after the dataset
(huggingface_hub's ``ModelCard.load(...).data.eval_results`` reads it) and, when the dataset is on the Hub,
``datasets:`` and ``.eval_results/`` too. A ``preprocess.py`` folder says where its images came from in
``source.json``; only a full ILSVRC-2012 tree (Kaggle's, all 1000 classes and 50,000 validation images) is linked
to the Hub's ``ILSVRC/imagenet-1k``, and only for its validation split, which is that dataset's validation split.
"""
from __future__ import annotations

import inspect
import json
import os
import re
import sys
from pathlib import Path

from huggingface_hub import EvalResult, EvalResultEntry, ModelCardData, eval_result_entries_to_yaml
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from imagenet_trainer.eval_sets import V2_VARIANTS
from imagenet_trainer.manifest import SOURCE_FILE

REPO_PLACEHOLDER = "OWNER/NAME"  # the card's load snippets until the repo id is known; push_to_hub fills it in
ILSVRC_HUB_ID = "ILSVRC/imagenet-1k"  # the Hub's ILSVRC-2012 classification data (train/validation/test)
INSTALL = ("pip install git+<url of the imagenet-trainer repository>  # or, in a checkout: pip install -e .")  # when
# the run's code has no public origin (otherwise the card names git+URL@SHA: the code that trained it)
# TrainConfig fields that say where a run reads, writes and reports, not how the weights were made: left out of
# the card's hyper-parameter table (the dataset, split and epochs have their own lines)
PLUMBING = {"dataset", "eval_split", "output_dir", "num_workers", "save_every_steps", "keep_last",
            "resume_from_checkpoint", "log_every_steps", "report_to", "push_to_hub", "hub_model_id", "hub_private",
            "hub_dataset_id", "channels_last", "compile", "epochs", "config"}
HEADLINE_VARIANTS = {V2_VARIANTS[0]}  # of a Hub dataset that holds several: its task ids carry no variant name
RESULT_KEYS = {"top1", "top5", "split", "n", "dataset", "dataset_id", "ema", "image_size", "crop_pct",
               "crop_mode", "interpolation", "flip"}
# recipe fields -> the papers the card cites for them when they are on
_CITATIONS = {
    "timm": ("wightman2019timm", "@misc{rw2019timm,\n  author = {Ross Wightman},\n  title = {PyTorch Image Models},\n"
             "  year = {2019},\n  publisher = {GitHub},\n  howpublished = {\\url{https://github.com/huggingface/"
             "pytorch-image-models}}\n}"),
    "goyal": ("goyal2017", "@article{goyal2017accurate,\n  title = {Accurate, Large Minibatch SGD: Training ImageNet"
              " in 1 Hour},\n  author = {Goyal, Priya and others},\n  journal = {arXiv:1706.02677},\n"
              "  year = {2017}\n}"),
    "label_smoothing": ("szegedy2016", "@inproceedings{szegedy2016rethinking,\n  title = {Rethinking the Inception"
                        " Architecture for Computer Vision},\n  author = {Szegedy, Christian and others},\n"
                        "  booktitle = {CVPR},\n  year = {2016}\n}"),
    "mixup_alpha": ("zhang2018", "@inproceedings{zhang2018mixup,\n  title = {mixup: Beyond Empirical Risk "
                    "Minimization},\n  author = {Zhang, Hongyi and others},\n  booktitle = {ICLR},\n"
                    "  year = {2018}\n}"),
    "cutmix_alpha": ("yun2019", "@inproceedings{yun2019cutmix,\n  title = {CutMix: Regularization Strategy to Train"
                     " Strong Classifiers with Localizable Features},\n  author = {Yun, Sangdoo and others},\n"
                     "  booktitle = {ICCV},\n  year = {2019}\n}"),
    "random_erase": ("zhong2020", "@inproceedings{zhong2020random,\n  title = {Random Erasing Data Augmentation},\n"
                     "  author = {Zhong, Zhun and others},\n  booktitle = {AAAI},\n  year = {2020}\n}"),
    "eval_image_size": ("touvron2019", "@inproceedings{touvron2019fixres,\n  title = {Fixing the train-test "
                        "resolution discrepancy},\n  author = {Touvron, Hugo and others},\n  booktitle = {NeurIPS},\n"
                        "  year = {2019}\n}"),
}


def is_local(ref: str) -> bool:
    return ref.startswith(("/", "~", ".")) or os.path.exists(os.path.expanduser(ref))  # False on any OSError


def public(value):
    """A string that names a local path, shown by its last component only: absolute paths leak user and cluster
    names into a public card. Other values are returned as they are."""
    if not isinstance(value, str) or not value:
        return value
    prefix = "local-dir:" if value.startswith("local-dir:") else ""
    path = value.removeprefix(prefix)
    return prefix + (Path(path).expanduser().resolve().name or path) if is_local(path) else value


# The card's load snippets name the repo in these forms only (``_usage``, ``package_import``): what a push to
# another repo rewrites, and nothing else of the card (a dataset id of the same name stays)
SNIPPET_FORMS = ('"hf-hub:{}"', 'model="{}"', 'from_pretrained("{}"', 'snapshot_download("{}"')


def card_for_repo(text: str, repo_id: str) -> str:
    """A saved card's text with ``repo_id`` in its load snippets: in place of OWNER/NAME, or of the repo id it was
    saved with (a folder saved for one repo and pushed to another would tell its readers to load the first)."""
    saved = re.search(r'timm\.create_model\("hf-hub:([^"@]+)"', text)
    for old in {REPO_PLACEHOLDER, saved.group(1) if saved else REPO_PLACEHOLDER}:
        for form in SNIPPET_FORMS:
            text = text.replace(form.format(old), form.format(repo_id))
    return text


def is_repo_id(ref: str) -> bool:
    """``ref`` has the form of a Hub repo id with its owner, OWNER/NAME (huggingface_hub's rules)."""
    try:
        validate_repo_id(ref)
    except HFValidationError:
        return False
    return "/" in ref


def dataset_source(dataset) -> dict:
    """The ``source.json`` preprocess.py wrote beside a local dataset folder; {} for a Hub id or an older folder."""
    if not isinstance(dataset, str) or not dataset or not is_local(dataset):
        return {}
    try:
        source = json.loads((Path(dataset).expanduser() / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return source if isinstance(source, dict) else {}


def resolve_dataset(dataset, dataset_id=None, split: str = "validation") -> tuple[str | None, str | None]:
    """(display name, Hub dataset id or None) of the data some results were measured on.

    ``dataset_id`` (train.py's/validate.py's ``--hub_dataset_id``) wins; a Hub id given as ``dataset`` is its own;
    a local folder whose ``source.json`` says it is the full ILSVRC-2012 is ``ILSVRC/imagenet-1k`` for the
    validation split. Nothing else is guessed: a folder of 1000 wnids may hold other images (a demo tree, a
    re-split, a subset of ImageNet-21k)."""
    if dataset_id:
        if not is_repo_id(dataset_id) or is_local(dataset_id):
            raise ValueError(f"dataset id '{dataset_id}' is not a Hub dataset id (OWNER/NAME)")
    source = dataset_source(dataset)
    name = source.get("name") or (public(str(dataset)) if dataset else None)
    if not dataset_id and isinstance(dataset, str) and dataset and not is_local(dataset) and is_repo_id(dataset):
        dataset_id = dataset
    if not dataset_id and source.get("ilsvrc2012_full") and split == "validation":
        dataset_id = ILSVRC_HUB_ID
    return name or dataset_id, dataset_id


def check_results(results: dict, where: str) -> None:
    unknown = set(results) - RESULT_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown results keys {sorted(unknown)} (known: {sorted(RESULT_KEYS)})")


def _metric_name(key: str) -> str:
    return f"{key[:3]}-{key[3:]} accuracy (%)"  # "top1" -> "top-1 accuracy (%)"


def eval_transform(results: dict) -> str:
    """"48x48 px center crop (crop_pct 0.875, bicubic)": what the numbers were measured at, if recorded; timm's
    crop_mode when it is not the classic one (squash: both sides resized, the aspect ratio not kept)."""
    if not results.get("image_size"):
        return ""
    how = [f"crop_pct {results['crop_pct']}"] if results.get("crop_pct") is not None else []
    how += [f"crop_mode {results['crop_mode']}"] if results.get("crop_mode") not in (None, "center") else []
    how += [str(results["interpolation"])] if results.get("interpolation") else []
    flip = ", logits averaged with the mirrored image's (flip TTA)" if results.get("flip") else ""
    return (f"{results['image_size']}x{results['image_size']} px center crop" + (f" ({', '.join(how)})" if how else "")
            + flip)


def eval_result_entries(results: dict, dataset_id: str) -> list[dict]:
    """``results`` in huggingface_hub's ``.eval_results/*.yaml`` format (``EvalResultEntry``), accuracy in %."""
    split, variant = results.get("split", "validation"), results.get("variant")
    images = f", {results['n']} images" if results.get("n") else ""
    at = f", at {transform}" if (transform := eval_transform(results)) else ""
    # a split other than the one a benchmark is scored on has task ids of its own: a train-split score never stands in
    # for the validation one on the dataset's leaderboard, and the two stay side by side in the file; so has a
    # variant other than the Hub dataset's headline one (ImageNet-V2's threshold0.7 and top-images beside
    # matched-frequency, the one papers report, all three in vaishaal/ImageNetV2)
    suffix = (("" if split in ("validation", "all") else f"_{split}")
              + (f"_{variant}" if variant and variant not in HEADLINE_VARIANTS else ""))
    where = f"on the {split} split" + (f" of the {variant} variant" if variant else "") + f"{images}{at}"
    entries = [EvalResultEntry(dataset_id=dataset_id, task_id=f"{k}_accuracy{suffix}",
                               value=round(float(results[k]), 2), notes=f"{_metric_name(k)} {where}")
               for k in ("top1", "top5") if results.get(k) is not None]
    return eval_result_entries_to_yaml(entries)


def model_index(results: dict, name: str, dataset_id: str | None) -> list[EvalResult]:
    """The ``model-index`` entries of the front matter (the Hub and huggingface_hub's parser read them). Without a
    Hub id the dataset is named by ``name`` alone (``dataset_type`` is required: it gets the name too)."""
    return [EvalResult(task_type="image-classification", task_name="Image Classification",
                       dataset_type=dataset_id or name, dataset_name=name or dataset_id,
                       dataset_split=results.get("split", "validation"), metric_type="accuracy",
                       metric_name=_metric_name(k), metric_value=round(float(results[k]), 2),
                       metric_config=f"{results['image_size']}px" if results.get("image_size") else None)
            for k in ("top1", "top5") if results.get(k) is not None]


def merge_model_index(old: list[EvalResult] | None, new: list[EvalResult]) -> list[EvalResult] | None:
    """``old`` with the entries for the same (dataset, config, split) as ``new`` replaced by ``new``: results on
    other data (a Hub dataset's, another ImageNet-V2 variant's: its config) still hold for these weights and stay."""
    keys = {(e.dataset_type, e.dataset_config, e.dataset_split) for e in new}
    kept = [e for e in old or [] if (e.dataset_type, e.dataset_config, e.dataset_split) not in keys]
    return (kept + new) or None


def results_section(results: dict, name: str | None) -> list[str]:
    def pct(key):
        return f"{results[key]:.2f}" if results.get(key) is not None else "-"
    lines = ["## Results", "", "| dataset | split | images | top-1 (%) | top-5 (%) |", "|---|---|---|---|---|",
             f"| {cell(name or '-')} | {results.get('split', 'validation')} | "
             f"{results.get('n') or '-'} | {pct('top1')} | {pct('top5')} |", ""]
    if results.get("image_size"):
        lines += [f"Evaluated at {eval_transform(results)}.", ""]
    if results.get("ema"):
        lines += ["Weights: the exponential moving average (EMA) of the trained weights.", ""]
    return lines


def cell(text) -> str:
    return str(text).replace("|", "\\|")  # a "|" inside a markdown table cell would split it


def _duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


def _source_line(source: dict) -> str:
    counts = ", ".join(f"{n:,} {split}" for split, n in (source.get("counts") or {}).items())
    from imagenet_trainer.hub_dataset import PACKAGINGS  # here: datasets and pyarrow load with it

    how = {"ilsvrc-kaggle": "Kaggle's ILSVRC-2012 tree", "class-folders": "class folders",
           "class-folders-split": "class folders, validation split carved from train"}.get(source.get("layout"), "")
    # ImageNet read from its archives in place is listed in Kaggle's tree's layout: name what was read
    how = PACKAGINGS.get(source.get("packaging"), source.get("packaging")) or how
    how = source.get("generated") or how  # a demo tree has ILSVRC's layout, not its images
    split = (f"; {source['val_fraction']:.0%} of each class held out with seed {source.get('split_seed')}"
             if source.get("val_fraction") else "")
    full = " (the full ILSVRC-2012)" if source.get("ilsvrc2012_full") else ""
    return (f"- **Data:** {source.get('name')}{full}, {source.get('num_classes')} classes" + (f", {counts} images"
            if counts else "") + (f", from {how}" if how else "") + f"{split}, converted with preprocess.py")


def model_stats(model, config: dict) -> dict | None:
    """Params (M), GMACs and activations (M) of one image at the saved input size, counted the way timm's model
    cards count them (fvcore: a multiply-add per weight use in convolutions and linear layers; activations = their
    output elements). Runs one forward pass on the model's device, in its dtype; None if the model cannot run on a
    blank image."""
    import torch

    macs, activations = [0], [0]

    def count(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            macs[0] += output.numel() * module.in_channels // module.groups * module.kernel_size[0] * \
                module.kernel_size[1]
        else:
            macs[0] += output.numel() * module.in_features
        activations[0] += output.numel()

    size = config["pretrained_cfg"]["input_size"]
    like = next(model.parameters())  # a bfloat16 or float16 model takes an image of its own dtype, not float32
    was_training = model.training
    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        with torch.no_grad():
            # eval: BatchNorm statistics stay as they are
            model.eval()(torch.zeros(1, *size, device=like.device, dtype=like.dtype))
    except Exception:  # an architecture that needs another input: the card leaves the stats out
        return None
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return {"params": sum(p.numel() for p in model.parameters()) / 1e6, "gmacs": macs[0] / 1e9,
            "activations": activations[0] / 1e6}


def output_shapes(model, config: dict) -> dict:
    """What the card's feature-map and embedding snippets print: ``strides``, the reductions of the maps
    ``features_only=True`` gives (the family's default taps, built on the meta device from the saved architecture
    and model_args; None where that build fails), and ``embedding``, the width ``num_classes=0`` gives
    (``head_hidden_size``: AlexNet's fc7, 4096, not its 256 ``num_features``)."""
    import timm
    import torch

    from ._registry import our_names

    try:
        with torch.device("meta"), our_names():  # shapes only
            strides = timm.create_model(config["architecture"], features_only=True,
                                        **config["model_args"]).feature_info.reduction()
    except Exception:  # an architecture without features_only: the snippet's comment names no strides
        strides = None
    return {"strides": strides, "embedding": getattr(model, "head_hidden_size", None) or model.num_features}


def card_text(config: dict, card: dict, shapes: dict, stats: dict | None = None, remote_code: bool = False,
              defined_in: str | None = None, one_channel_processor: bool = False, script: bool = False) -> str:
    """README.md for a saved folder: front matter (library, license, datasets, model-index) and a body.

    ``card`` keys (all optional): model_name, repo_id (Hub id, used in the load snippets; default OWNER/NAME, which
    push_to_hub fills in), description, dataset (as given to train.py: a Hub id or a local folder, shown by its
    ``source.json`` name or its last path component), dataset_id (a Hub dataset id: ``--hub_dataset_id``), recipe
    {field: value} (run plumbing such as output_dir or num_workers is left out; global_batch and peak_lr, the images
    per optimizer step and the absolute LR after warmup, head its table), recipe_changes [{step, flags:
    ["--lr 1.6 -> 0.8", ...]}] (resumes that changed flags; the recipe is the last launch's), epochs (trained, for these
    weights), scheduled_epochs (the run's schedule, where --max_train_steps cut the recipe's epochs), train_time
    (seconds), hardware, results {top1, top5 (%), split, n (images), ema (bool), image_size (px), crop_pct,
    interpolation, flip (bool)}, license (default apache-2.0), tags.
    ``stats``: {params, gmacs, activations} (M, G, M) at the image size; ``remote_code``: the folder carries the
    architecture's file for transformers' trust_remote_code load; ``defined_in``: the file that defines it
    (``family_file``), ``script``: one that ran as ``__main__``;
    ``one_channel_processor``: the folder carries ``modeling.remote_code``'s image processor for a one-channel network.
    ``shapes``: ``output_shapes``, for the snippets' comments.
    """
    arch, pcfg = config["architecture"], config["pretrained_cfg"]
    name = card.get("model_name") or arch
    repo = card.get("repo_id") or REPO_PLACEHOLDER
    if repo != REPO_PLACEHOLDER and not is_repo_id(repo):
        raise ValueError(f"model_card: repo_id '{repo}' is not a Hub repo id (OWNER/NAME)")
    results = card.get("results") or {}
    dataset = card.get("dataset")
    shown, dataset_id = resolve_dataset(dataset, card.get("dataset_id"), results.get("split", "validation"))
    source = dataset_source(dataset)
    metrics = model_index(results, shown, dataset_id) if results and shown else []
    tags = ["image-classification", "timm", "transformers", "imagenet-trainer", *card.get("tags", [])]
    data = ModelCardData(library_name="timm", pipeline_tag="image-classification", tags=tags,
                         license=card.get("license", "apache-2.0"), datasets=[dataset_id] if dataset_id else None,
                         model_name=name if metrics else None, eval_results=metrics or None)
    num_classes, size = config["num_classes"], pcfg["input_size"][-1]
    k = min(5, num_classes)
    trained_on = f" trained on {shown}" if shown else ""

    lines = ["---", data.to_yaml(), "---", "", f"# {name}", "",
             card.get("description") or f"A `{arch}` image classifier{trained_on} with imagenet-trainer.", "",
             "## Model details", "",
             "- **Model type:** image classification / feature backbone",
             f"- **Architecture:** `{arch}`" + (f", defined in {_where(defined_in, script)}" if defined_in else "")]
    if stats:
        lines += ["- **Model stats:**", f"  - Params (M): {stats['params']:.2f}", f"  - GMACs: {stats['gmacs']:.3g}",
                  f"  - Activations (M): {stats['activations']:.3g}", f"  - Image size: {size} x {size}"]
    else:
        lines.append(f"- **Image size:** {size} x {size}")
    lines.append(f"- **Classes:** {num_classes}")
    if shown:
        lines.append(f"- **Dataset:** {shown}" + (f" (`{dataset_id}`)" if dataset_id and dataset_id != shown else ""))
    if source:
        lines.append(_source_line(source))
    lines.append("")
    lines += _usage(arch, repo, k, remote_code, defined_in, shapes, channels=pcfg["input_size"][0],
                    test_size=bool(pcfg.get("test_input_size") or pcfg.get("test_crop_pct")),
                    one_channel_processor=one_channel_processor, script=script)
    if results:
        lines += results_section(results, shown)
    lines += _training(card)

    lines += ["## Preprocessing", "", f"- Evaluation: {preprocessing(pcfg)}",
              f"- Normalize: mean {list(pcfg.get('mean', []))}, std {list(pcfg.get('std', []))} (RGB, 0-1 scale)", ""]
    lines += _citations(card.get("recipe") or {})
    lines += ["## Labels", "", f"<details><summary>{num_classes} classes (index, id, name)</summary>", "",
              "| index | id | name |", "|---|---|---|"]
    descriptions = pcfg.get("label_descriptions") or {}
    lines += [f"| {i} | {cell(label)} | {cell(descriptions.get(label, label))} |"
              for i, label in enumerate(pcfg["label_names"])]
    lines += ["", "</details>", ""]
    return "\n".join(lines)


def preprocessing(pcfg: dict) -> str:
    """The eval transform timm's ``create_transform`` builds from ``pcfg`` (``transforms_imagenet_eval``), in words: at
    its test_input_size and test_crop_pct where it has them, as validate.py and timm's own validate.py score it."""
    size, mode = (pcfg.get("test_input_size") or pcfg["input_size"])[-1], pcfg.get("crop_mode") or "center"
    crop_pct = pcfg.get("test_crop_pct") or pcfg.get("crop_pct", 1.0)
    resize = int(size / crop_pct)  # timm's scale_size: floor(size / crop_pct)
    how = {"center": f"resize the shorter side to {resize} px",
           "squash": f"resize both sides to {resize} px, the aspect ratio not kept",
           "border": f"resize the longer side to {resize} px, pad to at least {size} px with the mean color"}
    named = f", crop_mode {mode}" if mode != "center" else ""
    padded = " padded with black" if mode != "border" and resize < size else ""  # crop_pct > 1: torchvision pads 0
    return (f"{how.get(mode, f'crop_mode {mode}')} ({pcfg.get('interpolation', 'bilinear')}), "
            f"center-crop {size}x{size}{padded} (crop_pct {crop_pct}{named})")


def _install_line() -> str:
    from imagenet_trainer.runinfo import git_install_url  # modeling.hub imports imagenet_trainer the same way

    url = git_install_url()
    return f"pip install '{url}'" if url else INSTALL


NO_FILE = "__main__"  # family_file's name for code run as __main__ that no file holds


def family_file(module) -> tuple[str, bool]:
    """(the file a card names as defining a family, whether it ran as a script) for the family's ``module``: its
    path under its import root ("modeling/blocknet.py", "usernet.py"); for ``__main__``, the script's own file name,
    which a copy is saved as and which imports it ("train_mine.py"; a ``python -m`` module's path), else ``NO_FILE``
    (a notebook, ``python -c``, ``python -`` reading stdin)."""
    if module.__name__ != "__main__":
        return module.__name__.replace(".", "/") + ".py", False
    spec = getattr(module, "__spec__", None)
    if spec is not None and spec.name != "__main__":  # python -m pkg.mod: importable as pkg.mod
        return spec.name.replace(".", "/") + ".py", True
    from .remote_code import source_file  # noqa: PLC0415 (as carried_files: the registry it imports)

    path = source_file(module)
    return (path.name if path is not None else NO_FILE), True


def _where(defined_in: str, script: bool) -> str:
    if defined_in == NO_FILE:
        return f"code run as `{NO_FILE}` that no file holds (a notebook, `python -c`, `python -` from stdin)"
    return f"the script `{defined_in}`" if script else f"`{defined_in}`"


def carried_files(defined_in: str | None) -> list[str]:
    """The family files an export of the architecture defined in ``defined_in`` carries: that file first, then the
    modules of its folder it imports (``modeling.remote_code.standalone_sources``); [] for none."""
    if not defined_in:
        return []
    from .remote_code import standalone_sources  # it imports the registry, which the card needs nowhere else

    module = sys.modules.get(defined_in.removesuffix(".py").replace("/", "."))
    try:
        path = module and inspect.getsourcefile(module)
        return list(standalone_sources(Path(path))) if path else [Path(defined_in).name]
    except (OSError, TypeError, ValueError):  # no source, or not bundleable: the card names the one file
        return [Path(defined_in).name]


def package_import(repo: str, module: str, arch: str, siblings: list[str]) -> list[str]:
    """Code that imports ``module`` from this repository's files as a module of their folder, a package: the form
    that works when the family file imports its neighbours (``from .layers import Block``), which a plain
    ``import module`` of the file refuses ("attempted relative import with no known parent package")."""
    return ["import importlib", "import sys", "from pathlib import Path",
            "from huggingface_hub import snapshot_download", "",
            f'folder = Path(snapshot_download("{repo}", allow_patterns="*.py"))  # or a local copy\'s folder',
            f"sys.path.insert(0, str(folder.parent))  # the folder is the package: {module}.py imports "
            f"{', '.join(siblings)} relative to it",
            f'importlib.import_module(f"{{folder.name}}.{module}")  # registers {arch} with timm']


def _usage(arch: str, repo: str, k: int, remote_code: bool, defined_in: str | None, shapes: dict, channels: int = 3,
           one_channel_processor: bool = False, test_size: bool = False, script: bool = False) -> list[str]:
    """The card's code blocks; each one runs on its own (tests execute every one against the saved folder).
    ``channels``: the network's image channels (1: photos are opened as grayscale); ``test_size``: the pretrained_cfg
    has a test_input_size or test_crop_pct, which classification is scored at."""
    test_args = ", use_test_size=True" if test_size else ""
    at = f", strides {', '.join(map(str, shapes['strides']))} from the input" if shapes["strides"] else ""
    intro, register = _registration(arch, repo, remote_code, defined_in, script) if defined_in else ([], [])
    lines = ["## Model usage", "", *intro]
    image = [f'image = Image.open("photo.jpg").convert("{"L" if channels == 1 else "RGB"}")'
             + ("  # one channel: what the network reads" if channels == 1 else "")]
    lines += ["### Image classification", "", "```python", "import timm", "import torch", "from PIL import Image",
              *register, "",
              f'model = timm.create_model("hf-hub:{repo}", pretrained=True).eval()  # or "local-dir:PATH"',
              f"config = timm.data.resolve_data_config({{}}, model=model{test_args})  # the preprocessing below",
              "transform = timm.data.create_transform(**config)", *image, "with torch.no_grad():",
              "    probabilities = model(transform(image).unsqueeze(0)).softmax(-1)",
              "ids = model.pretrained_cfg[\"label_names\"]  # class index -> id (wnid)",
              "names = model.pretrained_cfg.get(\"label_descriptions\") or {}  # id -> human name",
              f"top = probabilities.topk({k})  # {k}: at most the number of classes",
              "for p, i in zip(top.values[0].tolist(), top.indices[0].tolist()):",
              "    print(f\"{names.get(ids[i], ids[i])}: {p:.1%}\")", "```", "",
              "### Feature maps", "", "```python", "import timm", "import torch", "from PIL import Image",
              *register, "",
              f'model = timm.create_model("hf-hub:{repo}", pretrained=True, features_only=True).eval()',
              "transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))", *image,
              "with torch.no_grad():", "    for feature_map in model(transform(image).unsqueeze(0)):",
              f"        print(feature_map.shape)  # (1, channels, height, width){at}",
              "print(model.feature_info.channels(), model.feature_info.reduction())", "```", "",
              "### Image embeddings", "", "```python", "import timm", "import torch", "from PIL import Image",
              *register, "",
              f'model = timm.create_model("hf-hub:{repo}", pretrained=True, num_classes=0).eval()  # no classifier',
              "transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))", *image,
              "with torch.no_grad():", "    embedding = model(transform(image).unsqueeze(0))",
              f"print(embedding.shape)  # (1, {shapes['embedding']}): the features the classifier reads "
              "(head_hidden_size)", "```", ""]
    return lines + _transformers_usage(arch, repo, k, remote_code, defined_in, register, one_channel_processor,
                                       test_size)


def _registration(arch: str, repo: str, remote_code: bool, defined_in: str,
                  script: bool) -> tuple[list[str], list[str]]:
    """(the card's words on where ``arch``, which timm does not ship, is defined, the lines that register it with
    timm): the copy in this repository when ``remote_code`` (the export carries the family's files), else the
    module the user must get and import."""
    carried = carried_files(defined_in) if remote_code else []
    siblings = carried[1:]  # more than one file: the copy imports its neighbours and is imported as a package
    if defined_in.startswith("modeling/"):
        stem = Path(defined_in).stem
        lines = [f"`{arch}` is not one of timm's architectures: it is defined in imagenet-trainer's `{defined_in}`. "
                 "For timm, install that package once and `import modeling` (it registers the name with timm):", "",
                 "```bash", _install_line(), "```", ""]
        if remote_code and siblings:
            lines += [f"Or, without the package: this repository holds a copy of `{stem}.py` and of the modules it "
                      f"imports ({', '.join(f'`{name}`' for name in siblings)}; torch and timm only). Import it as a "
                      f"module of the repository's folder: put the folder's parent on your Python path and run "
                      f'`importlib.import_module(f"{{folder.name}}.{stem}")` instead.', ""]
        elif remote_code:
            lines += [f"Or, without the package: this repository holds a copy of `{stem}.py` (torch and timm only); "
                      f"put it on your Python path and `import {stem}` instead.", ""]
        else:
            lines.append("")
        return lines, ["import modeling  # registers " + arch + " with timm"]
    module = Path(defined_in).stem
    if siblings:  # a family of several files outside the package: the copy, imported as a package
        return [f"`{arch}` is not one of timm's architectures: it is defined in {_where(defined_in, script)}, which "
                f"this repository holds a copy of, with the modules it imports ({', '.join(siblings)}). For timm, "
                f"import it as a module of the repository's folder, as below (it registers the name with timm).",
                ""], package_import(repo, module, arch, siblings)
    if remote_code:  # a family module outside the package: the copy in this repository is the one to import
        return [f"`{arch}` is not one of timm's architectures: it is defined in {_where(defined_in, script)}, which "
                f"this repository holds a copy of. For timm, put that file on your Python path and import it (it "
                f"registers the name with timm).", ""], [f"import {module}  # registers {arch} with timm"]
    return _not_carried(arch, defined_in, script)


def _not_carried(arch: str, defined_in: str, script: bool) -> tuple[list[str], list[str]]:
    """``_registration`` for a family whose code the export does not carry (it imports more than torch and timm:
    this package's ``modeling``, say): the user gets the file and imports it under its own module name."""
    why = "no file to copy" if defined_in == NO_FILE else "it imports more than torch and timm"
    head = (f"`{arch}` is not one of timm's architectures: it is defined in {_where(defined_in, script)}, and this "
            f"repository does NOT include that code ({why}).")
    install = ["```bash", _install_line(), "```", ""]
    needs = "install what it imports: imagenet-trainer, where it imports `modeling`:"
    if defined_in == NO_FILE:
        return [f"{head} For timm, move the family into a module file, put its folder on your Python path and "
                f"import it where the code below says (importing it registers the name with timm); {needs}", "",
                *install], [f"# import the module you moved {arch}'s family into here: it registers it with timm"]
    module = defined_in.removesuffix(".py").replace("/", ".")
    ran = (" Importing a script runs its top level: keep its training steps under "
           "`if __name__ == \"__main__\":`." if script else "")
    return [f"{head} For timm, get `{defined_in}` from its author, put the folder it is imported from on your Python "
            f"path and `import {module}` (it registers the name with timm).{ran} Also {needs}", "", *install], [
        f"import {module}  # registers {arch} with timm"]


def _transformers_usage(arch: str, repo: str, k: int, remote_code: bool, defined_in: str | None,
                       register: list[str], one_channel_processor: bool, test_size: bool = False) -> list[str]:
    """The card's transformers section: ``register``, the lines that register a family timm does not ship;
    ``test_size``: the pretrained_cfg has a test size, which transformers' image processor does not read."""
    lines = ["### transformers", ""]
    trust = ", trust_remote_code=True" if remote_code or one_channel_processor else ""
    if remote_code:
        lines += [f"`trust_remote_code=True` runs the Python files of this repository: `{Path(defined_in).name}` "
                  f"(the architecture: torch and timm only, with any module of its own it imports; importing it "
                  f"registers `{arch}` with timm) and `modeling_{Path(defined_in).stem}.py` (transformers' "
                  "`TimmWrapperForImageClassification`, unchanged, and a `TimmBackbone` for `AutoBackbone` that keeps "
                  "the BatchNorm statistics). Read them before you run them; nothing else of imagenet-trainer is "
                  "needed.", ""]
    elif defined_in:
        line = register[-1].split("  # ")[0]  # the import alone; a comment line (no file to import) is not named
        lines += [f"transformers needs `{arch}` registered first, as above"
                  + ("." if line.startswith("#") else f" (`{line}`)."), ""]
    if one_channel_processor:
        lines += ["The network reads one image channel (grayscale), and transformers' pipelines open every image as "
                  "RGB: with `trust_remote_code=True` transformers takes the image processor `config.json`'s "
                  "`auto_map` names, in `modeling_one_channel.py` of this repository (its own "
                  "`TimmWrapperImageProcessor`, each image made one channel first, PIL's \"L\"); without it, its "
                  "own, and the network gets three channels."
                  + ("" if defined_in else " The file also holds transformers' `TimmWrapperForImageClassification` "
                     "and `TimmWrapperModel`, unchanged, which `auto_map` names: the `save_pretrained` of a model "
                     "loaded with `trust_remote_code=True` then copies the file along."), ""]
    own = register if defined_in and not remote_code else []
    if not test_size:
        return lines + ["```python", *own, "from transformers import AutoModelForImageClassification, pipeline", "",
                        f'classifier = pipeline("image-classification", model="{repo}"{trust})',
                        f'print(classifier("photo.jpg", top_k={k}))  # human class names',
                        f'model = AutoModelForImageClassification.from_pretrained("{repo}"{trust})', "```", ""]
    lines += ["transformers' image processor (`TimmWrapperImageProcessor`) preprocesses at the pretrained_cfg's "
              "`input_size` and `crop_pct`, the training size; validate.py, and timm's own, score this model at its "
              "`test_input_size` / `test_crop_pct`. Give the processor that preprocessing, as timm's `use_test_size` "
              "does:", ""]
    return lines + ["```python", "import timm", *own,
                    "from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline", "",
                    f'model = AutoModelForImageClassification.from_pretrained("{repo}"{trust})',
                    f'processor = AutoImageProcessor.from_pretrained("{repo}"{trust})',
                    "config = timm.data.resolve_data_config({}, pretrained_cfg=model.config.pretrained_cfg, "
                    "use_test_size=True)",
                    "processor.val_transforms = timm.data.create_transform(**config)  # what it preprocesses with",
                    'classifier = pipeline("image-classification", model=model, image_processor=processor)',
                    f'print(classifier("photo.jpg", top_k={k}))  # human class names', "```", ""]


# the rows train.py adds to its flags: what the optimizer used, which head the table
RECIPE_LABELS = {"global_batch": "global batch (images per optimizer step: batch_size x grad_accum_steps x processes)",
                 "peak_lr": "peak lr (absolute, the schedule's at the end of warmup: lr x global batch / 256)"}


def _training(card: dict) -> list[str]:
    lines = ["## Training", ""]
    given = card.get("recipe") or {}
    recipe = {k: v for k, v in given.items() if k not in PLUMBING}
    recipe = {**{k: recipe.pop(k) for k in ("global_batch", "peak_lr") if k in recipe}, **recipe}
    if isinstance(recipe.get("peak_lr"), float):
        recipe["peak_lr"] = f"{recipe['peak_lr']:.6g}"  # --lr x batch / 256 in floats: 0.30000000000000004
    scheduled = card.get("scheduled_epochs", given.get("epochs"))
    numbers = isinstance(scheduled, (int, float)) and isinstance(given.get("epochs"), (int, float))
    cut = f" (--max_train_steps {given.get('max_train_steps')} of --epochs {given.get('epochs')})" \
        if numbers and scheduled < given["epochs"] else ""
    epochs = card.get("epochs")
    if epochs is not None:
        done = f"{epochs:g}" if isinstance(epochs, (int, float)) else str(epochs)
        if isinstance(scheduled, (int, float)) and isinstance(epochs, (int, float)) and epochs < scheduled:
            done += f" of {scheduled:g}{cut} (these weights are from the epoch with the best validation top-1)"
        elif cut:
            done += cut
        lines.append(f"- **Epochs:** {done}")
    elif scheduled is not None:
        lines.append(f"- **Epochs:** {scheduled:g}{cut}" if numbers else f"- **Epochs:** {scheduled}")
    if card.get("train_time"):
        lines.append(f"- **Training time:** {_duration(float(card['train_time']))}")
    if card.get("hardware"):
        lines.append(f"- **Hardware:** {card['hardware']}")
    if "lr" in recipe or "batch_size" in recipe:  # not the absolute LR and batch another trainer's flags take
        lines += ["", "`lr` is per 256 images of the global batch and `batch_size` images per device (train.py's "
                  "flags)" + ("; the global batch is what each optimizer step took and the peak lr what its schedule "
                              "rose to (a run cut short in warmup stops below it), the numbers a trainer with an "
                              "absolute LR (timm's or torchvision's train.py `--lr`) takes."
                              if "peak_lr" in recipe else ".")]
    if recipe:
        lines += ["", "| hyper-parameter | value |", "|---|---|"]
        lines += [f"| {cell(RECIPE_LABELS.get(k, k))} | {cell(public(v))} |" for k, v in recipe.items()]
    changes = [(c["step"], shown) for c in card.get("recipe_changes") or []
               # --epochs is plumbing in the table (the Epochs line gives it), not as a change: the cosine restarts
               if (shown := [f for f in c["flags"] if f.split()[0].removeprefix("--") not in PLUMBING - {"epochs"}])]
    if changes:  # the table holds the last launch's flags: a run resumed with others trained with both
        lines += ["", "Resumed with other flags (the table gives the last launch's): "
                  + "; ".join(f"at step {step}, {', '.join(f'`{f}`' for f in flags)}" for step, flags in changes)
                  + "."]
    if len(lines) == 2:
        lines.append("No recipe was recorded.")
    return lines + [""]


def _citations(recipe: dict) -> list[str]:
    """BibTeX of timm (the model format and layers) and of the recipe's techniques that were on."""
    keys = ["timm"]
    if recipe.get("warmup_epochs") or recipe.get("lr"):
        keys.append("goyal")  # linear LR scaling and warmup
    keys += [k for k in ("label_smoothing", "mixup_alpha", "cutmix_alpha", "random_erase", "eval_image_size")
             if recipe.get(k)]
    lines = ["## Citation", ""]
    for key in keys:
        lines += ["```bibtex", _CITATIONS[key][1], "```", ""]
    return lines
