"""One name space for backbones: our designs sit in timm's registry, so every tool that takes a timm name takes ours."""
from __future__ import annotations

import contextlib
import difflib
import inspect
import json
import os
import socket
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import timm
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors.torch import load_file
from timm.models import generate_default_cfgs, register_model

# name -> the variant function registered here: timm's registry is one mutable name space, and a trust_remote_code
# load of an export registers the export's copy of the family under the same names (our_names)
_OURS: dict[str, Callable] = {}
# modules of this package that define no backbones: the unknown-model error lists the other files not imported,
# and remote_code never copies them into an export
_SUPPORT = {"__init__", "_registry", "hub", "card", "card_sets", "remote_code", "refresh_code", "backbone",
            "transformers_saved"}


def register(fn):
    """``@register`` on a variant function: timm's ``register_model`` (which also picks up the module's
    ``default_cfgs``) plus a record that the name is one of ours, for ``list_models()``.

    Every variant needs its preprocessing cfg (mean/std, input size, crop_pct, interpolation, classifier name):
    a ``default_cfgs`` entry of its own name, or the family's ``FAMILY_CFG`` dict, defined above the variants
    (BlockNet's lets a new variant be three lines). Without either the import fails, naming the variant and file:
    timm's fallback cfg names no classifier and trains with bicubic resizing."""
    module = sys.modules[fn.__module__]
    cfgs = getattr(module, "default_cfgs", None)
    if cfgs is None or fn.__name__ not in cfgs:
        family = getattr(module, "FAMILY_CFG", None)
        if family is None:
            where = inspect.getsourcefile(fn) or fn.__module__
            known = sorted(cfgs) if cfgs else []
            raise ImportError(f"{Path(where).name}: variant '{fn.__name__}' has no default_cfgs entry (entries: "
                              f"{', '.join(known) or 'none'}); add one named '{fn.__name__}', or a FAMILY_CFG dict "
                              f"above the variants")
        if cfgs is None:
            cfgs = module.default_cfgs = {}
        cfgs.update(generate_default_cfgs({fn.__name__: dict(family)}))
    _OURS[fn.__name__] = fn
    return register_model(fn)


def _register_quietly(fn: Callable) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", f"Overwriting {fn.__name__} in registry", UserWarning)  # the point here
        register_model(fn)


@contextlib.contextmanager
def our_names():
    """Our variant functions under our names in timm's registry for the block's builds, and the registry as it was
    again after it. A trust_remote_code load of an export, or an ``import blocknet`` of an export's copy, registers
    that copy (possibly other code) under the same names: what this package builds, loads and exports is the code
    installed with it, while the copy's own callers (transformers, which imports an export's module once per process
    and builds by name each load) keep getting the copy."""
    displaced = {name: current for name, fn in _OURS.items()
                 if timm.is_model(name) and (current := timm.models.model_entrypoint(name)) is not fn}
    for name in displaced:
        _register_quietly(_OURS[name])
    try:
        yield
    finally:
        for current in displaced.values():
            _register_quietly(current)


def our_entrypoint(name: str) -> Callable | None:
    """The variant function this package registered as ``name``; None for a name not ours (timm's, or one only
    an export's copy registered)."""
    return _OURS.get(name)


def _not_imported() -> list[str]:
    """modeling/*.py files that define no module in sys.modules yet (a family whose import line is missing)."""
    here = Path(__file__).resolve().parent
    return [f"modeling/{p.name}" for p in sorted(here.glob("*.py"))
            if p.stem not in _SUPPORT and f"{__package__}.{p.stem}" not in sys.modules]


def list_models() -> list[str]:
    """Names of the backbones defined in this package (the timm zoo is ``timm.list_models()``)."""
    return sorted(_OURS)


def create_model(name: str, num_classes: int | None = None, pretrained: bool = False, **kwargs):
    """A backbone by name: ours first, then the timm zoo (resnet18, resnet50, vgg16, convnext_tiny, ...).

    ``name`` may also be ``local-dir:FOLDER`` or ``hf-hub:OWNER/NAME`` (timm's sources). ``num_classes`` defaults to
    1000 (the ImageNet-1k head) for an architecture name and to the saved class count for a folder or Hub id; 0 gives
    the pooled features. Other keyword arguments go to timm (``features_only=True``, ``drop_path_rate=0.1``, ...).
    A folder or Hub repo transformers saved (keys under "timm_model.", or no classifier: AutoModel's) loads strictly,
    with a fresh head where the saved one does not fit or is missing.
    """
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    source, where = timm.models.parse_model_name(name)
    folder = _saved_folder(source, where) if pretrained else None
    if folder is not None:
        from .hub import check_weights  # modeling.hub imports this module

        check_weights(folder / "model.safetensors")  # a damaged copy would start training from other weights
        saved = _transformers_saved(folder, kwargs)
        if saved is not None:
            declare_blocks(saved)
            return saved
    if source is None:
        arch = name.split(".")[0]  # a timm pretrained tag ("resnet50.a1_in1k") names weights, not the architecture
        if not timm.is_model(arch):
            close = difflib.get_close_matches(arch, list_models() + timm.list_models(), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            missing = _not_imported()
            imports = (f"; not imported: {', '.join(missing)} (add `from . import "
                       f"{', '.join(Path(m).stem for m in missing)}` to modeling/__init__.py)" if missing else "")
            raise ValueError(f"unknown model '{name}'{hint}{imports}; see modeling.list_models() and "
                             f"timm.list_models()")
        if pretrained and arch in _OURS:
            raise ValueError(f"'{name}' has no published weights; start from a saved export with "
                             "--model local-dir:PATH --pretrained (or modeling.load_model(PATH))")
    url_file = _url_weights(name, kwargs) if pretrained and source is None else None
    # torch.hub fetches a URL with no timeout and obeys no offline flag: behind a firewall that drops packets the
    # download would hang for good, so offline a file not in torch.hub's cache ends here, and online a stall ends it
    fetch = url_file is not None and not url_file[1].is_file()
    if fetch and _offline():
        raise ValueError(_weights_missing(name, None, kwargs))
    try:
        with _url_timeout(fetch), our_names():
            model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except OSError as e:  # huggingface_hub's LocalEntryNotFoundError when offline without a cached copy, HTTP errors
        # timm reads config.json from the Hub even without pretrained weights
        if source == "hf-hub" and isinstance(e, LocalEntryNotFoundError) and _offline():
            raise ValueError(_hub_repo_missing(name, pretrained)) from None
        if not pretrained or source is not None:
            raise
        raise ValueError(_weights_missing(name, e, kwargs)) from None
    declare_blocks(model)
    return model


def rebuild(model, num_classes: int | None = None):
    """A new network (fresh weights) of ``model``'s architecture, from what is in memory: its name, the arguments it
    was built with (timm's get_model_args: what an export's config.json records and its loaders build from) and its
    pretrained_cfg. It never reads ``model``'s source again: a local-dir: folder deleted or saved over during a run,
    or an hf-hub: repo updated, cannot change (or fail) an export of the trained weights."""
    from timm.models import get_model_args

    from .hub import _CFG_FIELDS  # modeling.hub imports this module

    pretrained_cfg = {k: v for k, v in model.pretrained_cfg.items() if k in _CFG_FIELDS}
    args = get_model_args(model, None if num_classes is None else {"num_classes": num_classes})
    return create_model(pretrained_cfg["architecture"], pretrained_cfg=pretrained_cfg, **args)


def _saved_folder(source: str | None, where: str) -> Path | None:
    """The folder holding config.json and model.safetensors of a ``local-dir:`` or ``hf-hub:`` source (a Hub repo's
    are fetched into the Hugging Face cache, where timm's own load would read them); None for other sources, or when
    they are not to be had: timm's load then says why, in the words its users know."""
    if source == "local-dir":
        return Path(where) if (Path(where) / "model.safetensors").is_file() else None
    if source != "hf-hub":
        return None
    from .hub import _resolve_folder  # modeling.hub imports this module

    try:
        return _resolve_folder(f"hf-hub:{where}", ("config.json", "model.safetensors"))
    except ValueError:
        return None


def _transformers_saved(folder: Path, kwargs: dict):
    """The model of a local folder whose weights transformers saved in its own layout, loaded strictly; None for
    timm's layout with its classifier, which timm's loader reads strictly itself. timm's loader is not strict for a
    new class count or features_only: weights a remote-code wrapper saved under "timm_model." would all be skipped
    and training would start from random ones; and it refuses, in a bare traceback, weights that hold no classifier
    (transformers' AutoModel) when the class count is the saved one."""
    from .transformers_saved import (exported_features, load_saved_weights, saved_headless, saved_keys,
                                     wrapper_saved_state)

    weights, config_file = folder / "model.safetensors", folder / "config.json"
    if not config_file.is_file():
        return None
    config = json.loads(config_file.read_text())
    state = wrapper_saved_state(weights)
    headless = saved_headless(config, saved_keys(weights))
    if state is None and not headless:
        return None
    if kwargs.get("features_only"):  # no classifier: its class count does not matter
        with our_names():
            return exported_features(str(folder), **{k: v for k, v in kwargs.items()
                                                     if k not in ("features_only", "num_classes")})
    if headless and "num_classes" not in kwargs:  # as modeling.load_model: the model that was saved
        kwargs = {**kwargs, "num_classes": 0}
    with our_names():
        model = timm.create_model(f"local-dir:{folder.resolve()}", pretrained=False, **kwargs)
    new_head = load_saved_weights(model, state if state is not None else load_file(weights), config,
                                  f"local-dir:{folder}")
    # at another class count train.py says itself that the head is new
    if new_head and headless and model.num_classes == config.get("num_classes"):
        warnings.warn(f"local-dir:{folder}: model.safetensors holds no classifier (transformers' AutoModel saved "
                      f"it): new {model.num_classes}-class head (random init)")
    return model


URL_TIMEOUT_S = 60.0  # s a connect or a read of a URL download may stall: a dropped packet is not a slow server


@contextlib.contextmanager
def _url_timeout(active: bool):
    """torch.hub's download (urllib.request.urlopen) passes no timeout, so it takes the socket default, None: online
    behind a firewall that drops packets it would wait for good. Here a stall of URL_TIMEOUT_S is an OSError, which
    create_model turns into its one line naming the URL and where to put the file."""
    if not active:
        yield
        return
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(URL_TIMEOUT_S)
    try:
        yield
    finally:
        socket.setdefaulttimeout(before)


def _offline() -> str | None:
    """The variable that makes the Hub offline (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE), or None."""
    from .hub import _offline_var  # modeling.hub imports this module

    return _offline_var()


def _url_weights(name: str, kwargs: dict) -> tuple[str, Path] | None:
    """(URL, file in torch.hub's cache) for a tag whose weights timm downloads from a URL rather than the Hub; None
    for Hub-hosted weights, a local file or state dict given through ``pretrained_cfg(_overlay)``, or no weights."""
    cfg = timm.models.resolve_pretrained_cfg(name, pretrained_cfg=kwargs.get("pretrained_cfg"),
                                             pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"))
    if not cfg.url or cfg.hf_hub_id or cfg.file or cfg.state_dict is not None or cfg.source in ("hf-hub", "local-dir"):
        return None
    import torch.hub

    # where timm's load_pretrained has torch.hub look: its cache_dir, else $TORCH_HOME/hub/checkpoints
    folder = Path(kwargs["cache_dir"]) if kwargs.get("cache_dir") else Path(torch.hub.get_dir(), "checkpoints")
    return cfg.url, folder / os.path.basename(urlparse(cfg.url).path)


def _weights_missing(name: str, error: BaseException | None, kwargs: dict | None = None) -> str:
    """One line for timm weights that could not be fetched: where they come from (a Hub repo or a URL), where a
    copy would have to be, and what HF_HUB_OFFLINE says."""
    from huggingface_hub import constants

    offline = _offline()
    reason = error and f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"
    url_file = _url_weights(name, kwargs or {})
    if url_file:
        url, path = url_file
        torch_home = os.environ.get("TORCH_HOME", "unset")
        where = f"{path} (torch.hub's cache, $TORCH_HOME/hub/checkpoints; TORCH_HOME={torch_home})"
        why = (f"{offline}=1 is set and there is no copy at {where}; download that file on a connected "
               f"machine and put it there" if offline else
               f"saving it to {where} failed ({reason}); download the file by hand and put it there")
        return (f"timm's pretrained weights for '{name}' are not available: they come from {url}, not from a Hugging "
                f"Face Hub repo; {why}")
    cfg = timm.models.get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None) or "(no Hub id)"
    why = (f"{offline}=1 is set and the local Hub cache ({constants.HF_HUB_CACHE}) has no copy of Hub repo "
           f"'{repo}' (model.safetensors); fetch it once online, e.g. python -c \"import timm; "
           f"timm.create_model('{name}', pretrained=True)\", or copy the cache over" if offline else
           f"fetching Hub repo '{repo}' failed ({reason})")
    return f"timm's pretrained weights for '{name}' are not available: {why}"


def _hub_repo_missing(name: str, pretrained: bool) -> str:
    """One line for ``hf-hub:OWNER/NAME[@REV]`` offline without a cached copy, as modeling.hub says it for
    load_model: offline mode, the repo, the cache folder, what to do."""
    from huggingface_hub import constants

    repo = name.removeprefix("hf-hub:").partition("@")[0]
    files = "config.json, model.safetensors" if pretrained else "config.json"
    return (f"{_offline()}=1 is set and Hub repo '{repo}' ({files}) is not in the Hugging Face cache "
            f"{constants.HF_HUB_CACHE}: load it once online (the same HF_HOME), or point HF_HOME at a cache that "
            f"holds it")


# Residual-block classes of timm's CNN families (ResNet/ResNeXt/RegNet, ConvNeXt, EfficientNet/MobileNet, DenseNet)
# and ours, plus timm's transformer Block: the units FSDP shards one by one.
BLOCK_CLASSES = ("BasicBlock", "Bottleneck", "ConvNeXtBlock", "InvertedResidual", "DepthwiseSeparableConv",
                 "EdgeResidual", "UniversalInvertedResidual", "DenseLayer", "Block")


def declare_blocks(model) -> None:
    """Set ``model._no_split_modules`` to the block classes it contains. Accelerate's FSDP TRANSFORMER_BASED_WRAP
    shards each instance of those classes separately when the launch config names none (a config that names classes
    fails on every model lacking one of them; accelerate #3195), so one fsdp.yaml serves every backbone. A model
    that declares its own list keeps the classes of it that it contains. No block class (VGG, AlexNet): no list,
    and FSDP shards the model as one unit (use SIZE_BASED_WRAP for those)."""
    present = {type(m).__name__ for m in model.modules()}
    declared = getattr(model, "_no_split_modules", None) or []
    blocks = [c for c in dict.fromkeys([*declared, *BLOCK_CLASSES]) if c in present]
    if blocks:
        model._no_split_modules = blocks
