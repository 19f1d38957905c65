"""Architectures that timm does not ship travel with their weights: the exporter copies the file that defines the
architecture next to ``model.safetensors`` and adds a small ``modeling_<file>.py`` plus an ``auto_map`` in
config.json, so ``AutoModelForImageClassification.from_pretrained(PATH, trust_remote_code=True)`` and
``pipeline(..., trust_remote_code=True)`` work with only timm and transformers installed.

What that load runs: the copied family file (it builds the network and registers its variant names with timm's
registry), the modules of the user's own it imports as ``from .mylayers import MyBlock`` (copied too: transformers'
dynamic-module loader follows that form, recursively; it follows no ``from . import mylayers``), and the wrapper:
subclasses of transformers' ``TimmWrapperForImageClassification`` and ``TimmWrapperModel`` (``AutoModel``, the route
of ``pipeline("image-feature-extraction")``) that add nothing, plus ``<Class>Backbone``, a ``TimmBackbone`` named
in ``auto_map`` for ``AutoBackbone`` whose ``from_pretrained`` keeps the export's weights and BatchNorm statistics
(``TimmBackbone.from_pretrained`` resets the statistics; see modeling/backbone.py). The copies must stand alone:
they may import torch, timm, the standard library and each other, and the registry import of a family file
(``from ._registry import register``) is replaced by timm's own ``register_model``, which is all that ``register``
adds to (besides ``modeling.list_models()``). ``check_exportable`` applies these rules to a model at start-up, so a
family that cannot travel is refused before training, not after.
"""
from __future__ import annotations

import ast
import inspect
import re
import sys
from pathlib import Path

import timm

from ._registry import _SUPPORT

# the lines of a family file that import our registry decorator; in the copy, timm's decorator takes their place
_REGISTER_IMPORT = re.compile(r"^from\s+(?:\._registry|modeling\._registry|modeling)\s+import\s+register\s*(?:#.*)?$",
                              re.M)
_TIMM_REGISTER = "from timm.models import register_model as register  # standalone copy: timm's registry decorator"
_STDLIB = set(sys.stdlib_module_names) | {"__future__"}
_ALLOWED_TOP = {"torch", "timm"} | _STDLIB
# this package's own modules: project code, never copied (a family imports only _registry's register, replaced above)
_PROJECT = _SUPPORT


class NotBundleable(ValueError):
    """The architecture's file cannot be copied as a standalone module (it imports project code)."""


def defining_module(model):
    """The module that defines the model's variant function (its timm entrypoint), falling back to the module of
    the model's class; None for an architecture timm itself ships."""
    arch = model.pretrained_cfg["architecture"]
    module = None
    if timm.is_model(arch):
        module = sys.modules.get(timm.models.model_entrypoint(arch).__module__)
    if module is None:
        module = inspect.getmodule(type(model))
    if module is None or module.__name__.split(".")[0] in ("timm", "torch", "torchvision"):
        return None
    return module


def _refusal(path: Path, lineno: int, what: str) -> NotBundleable:
    return NotBundleable(f"{path.name} line {lineno} imports '{what}': an exported architecture file may import only "
                         f"torch, timm, the standard library and modules of its own folder as `from .module import "
                         f"Name`")


def standalone_sources(path: Path, files: dict[str, str] | None = None) -> dict[str, str]:
    """{file name: text} of the architecture file at ``path`` (its registry import replaced by timm's) and of the
    modules of its folder it imports with ``from .module import Name``, recursively; raises NotBundleable naming
    the first import that keeps them from standing alone."""
    files = {} if files is None else files
    text = _REGISTER_IMPORT.sub(_TIMM_REGISTER, path.read_text())
    files[path.name] = text
    for node in ast.walk(ast.parse(text, filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level:
            local = path.parent / f"{node.module}.py" if node.level == 1 and node.module else None
            if local is None or node.module in _PROJECT or node.module.startswith("modeling_") \
                    or not local.is_file():
                raise _refusal(path, node.lineno, "." * node.level + (node.module or ""))
            if local.name not in files:
                standalone_sources(local, files)
            continue
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        for name in names:
            if name.split(".")[0] not in _ALLOWED_TOP:
                raise _refusal(path, node.lineno, name)
    return files


def check_exportable(model) -> None:
    """Raise ValueError (one line, naming the file and import) when the export of ``model`` could not carry the
    code that defines it; nothing for timm's own architectures."""
    remote_code_files(model)


def remote_code_files(model) -> tuple[dict[str, str], dict]:
    """({file name: text}, auto_map) for an architecture timm does not ship; ({}, {}) for one it does. Raises
    NotBundleable when the defining files import project code."""
    module = defining_module(model)
    if module is None:
        return {}, {}
    cls = type(model)
    path = inspect.getsourcefile(module)
    if not path:
        raise NotBundleable(f"module {module.__name__} has no source file to copy")
    stem = Path(path).stem
    wrapper = f"modeling_{stem}"
    if stem.startswith("modeling_"):
        raise NotBundleable(f"{stem}.py: a family file named modeling_* would collide with the wrapper file")
    name = "TimmWrapperForImageClassification"  # pipeline() checks the class name: transformers' own, no warning
    sources = standalone_sources(Path(path))
    class_file = inspect.getsourcefile(cls) or ""
    if Path(class_file).name not in sources or Path(class_file).parent != Path(path).parent:
        raise NotBundleable(f"{cls.__name__} is defined in {cls.__module__}, its variant in {module.__name__}, which "
                            f"does not import it as `from .module import {cls.__name__}`: put the class next to its "
                            f"registered variants")
    roles = {f"{stem}.py": "the architecture of these weights"}
    files = {fname: f"# {fname}, {roles.get(fname, f'imported by {stem}.py')} (torch + timm only).\n" + text
             for fname, text in sources.items()}
    files[f"{wrapper}.py"] = WRAPPER.format(stem=stem, cls=cls.__name__, name=name)
    # every Auto class transformers maps timm_wrapper to: one left out falls back to transformers' own class, which
    # builds the network by name without importing the file that registers it
    return files, {"AutoModelForImageClassification": f"{wrapper}.{name}", "AutoModel": f"{wrapper}.TimmWrapperModel",
                   "AutoBackbone": f"{wrapper}.{cls.__name__}Backbone"}


WRAPPER = '''"""transformers entry points for these weights: importing {stem}.py registers its variants with timm, then
transformers' TimmWrapper builds the network by name from config.json as it does for timm's own architectures;
{cls}Backbone serves AutoBackbone."""
import json
import os

import timm
import torch
from huggingface_hub import hf_hub_download
from transformers import TimmBackbone, TimmBackboneConfig, TimmWrapperConfig
from transformers import TimmWrapperForImageClassification as TimmWrapper
from transformers import TimmWrapperModel as TimmWrapperHeadless

from .{stem} import {cls}  # noqa: F401  this form is what transformers' loader follows to copy {stem}.py


class {name}(TimmWrapper):  # transformers' name: pipeline() knows it as an image classifier
    pass


class TimmWrapperModel(TimmWrapperHeadless):  # transformers' name, for AutoModel: the features, no classifier
    pass


class {cls}Backbone(TimmBackbone):
    """The feature maps of these weights, for DETR/UperNet-style models. TimmBackbone.from_pretrained resets every
    BatchNorm's running statistics to 0/1 (transformers 5.24-5.25); this one loads them with the weights, from timm's
    own features_only load. out_indices: feature_info taps (default: every one after the stem's); output_stride: 8 or
    16 for dilated last stages."""

    # the class of config.json (model_type timm_wrapper): AutoBackbone.from_pretrained registers this class for it
    # and refuses a class whose config_class has another name (transformers/models/auto/auto_factory.py, register)
    config_class = TimmWrapperConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, out_indices=None, output_stride=None,
                        revision=None, cache_dir=None, token=None, **kwargs):
        folder = str(pretrained_model_name_or_path)
        if not os.path.isdir(folder):  # a Hub id: the two files timm's local-dir: reads
            for fname in ("config.json", "model.safetensors"):
                path = hf_hub_download(folder, fname, revision=revision, cache_dir=cache_dir, token=token)
            folder = os.path.dirname(path)
        name = "local-dir:" + os.path.abspath(folder)
        if out_indices is None:
            with torch.device("meta"):  # shapes only: the number of taps
                out_indices = tuple(range(1, len(timm.create_model(name).feature_info)))
        exported = timm.create_model(name, pretrained=True, features_only=True, out_indices=tuple(out_indices))
        with open(os.path.join(folder, "config.json")) as f:  # TimmBackbone passes in_chans=num_channels (default 3)
            channels = json.load(f).get("model_args", {{}}).get("in_chans", 3)
        model = cls(TimmBackboneConfig(backbone=name, out_indices=tuple(out_indices), output_stride=output_stride,
                                       num_channels=channels))
        model._backbone.load_state_dict(exported.state_dict())
        return model.eval()
'''
