"""Architectures that timm does not ship travel with their weights: the exporter copies the file that defines the
architecture next to ``model.safetensors`` and adds a small ``modeling_<file>.py`` plus an ``auto_map`` in
config.json, so ``AutoModelForImageClassification.from_pretrained(PATH, trust_remote_code=True)`` and
``pipeline(..., trust_remote_code=True)`` work with only timm and transformers installed.

What that load runs: the copied family file (it builds the network and registers its variant names with timm's
registry) and the wrapper, a subclass of transformers' ``TimmWrapperForImageClassification`` that adds nothing.
transformers' dynamic-module loader copies the files a repo's ``modeling_*.py`` imports in the form
``from .family import Name`` (it follows no ``from . import family``), so the wrapper imports the model class that
way. The copy must stand alone: it may import torch, timm and the standard library, and the registry import of a
family file (``from ._registry import register``) is replaced by timm's own ``register_model``, which is all that
``register`` adds to (besides ``modeling.list_models()``).
"""
from __future__ import annotations

import ast
import inspect
import re
import sys
from pathlib import Path

import timm

# the lines of a family file that import our registry decorator; in the copy, timm's decorator takes their place
_REGISTER_IMPORT = re.compile(r"^from\s+(?:\._registry|modeling\._registry|modeling)\s+import\s+register\s*(?:#.*)?$",
                              re.M)
_TIMM_REGISTER = "from timm.models import register_model as register  # standalone copy: timm's registry decorator"
_STDLIB = set(sys.stdlib_module_names) | {"__future__"}
_ALLOWED_TOP = {"torch", "timm"} | _STDLIB


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


def standalone_source(module) -> str:
    """The source of ``module`` with its registry import replaced by timm's; raises NotBundleable naming the import
    that keeps it from standing alone."""
    path = inspect.getsourcefile(module)
    if not path:
        raise NotBundleable(f"module {module.__name__} has no source file to copy")
    text = _REGISTER_IMPORT.sub(_TIMM_REGISTER, Path(path).read_text())
    for node in ast.walk(ast.parse(text, filename=path)):
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
            if node.level:
                raise NotBundleable(f"{Path(path).name} line {node.lineno} imports '.{node.module or ''}': a copied "
                                    f"architecture file may import only torch, timm and the standard library")
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] not in _ALLOWED_TOP:
                raise NotBundleable(f"{Path(path).name} line {node.lineno} imports '{name}': a copied architecture "
                                    f"file may import only torch, timm and the standard library")
    return text


def remote_code_files(model) -> tuple[dict[str, str], dict]:
    """({file name: text}, auto_map) for an architecture timm does not ship; ({}, {}) for one it does. Raises
    NotBundleable when the defining file imports project code."""
    module = defining_module(model)
    if module is None:
        return {}, {}
    cls = type(model)
    if inspect.getmodule(cls) is not module:
        raise NotBundleable(f"{cls.__name__} is defined in {cls.__module__}, its variant in {module.__name__}: put the "
                            f"class and its registered variants in one file")
    stem = Path(inspect.getsourcefile(module)).stem
    wrapper = f"modeling_{stem}"
    if stem.startswith("modeling_"):
        raise NotBundleable(f"{stem}.py: a family file named modeling_* would collide with the wrapper file")
    name = "TimmWrapperForImageClassification"  # pipeline() checks the class name: transformers' own, no warning
    files = {
        f"{stem}.py": f"# {stem}.py, the architecture of these weights (torch + timm only).\n" + standalone_source(module),
        f"{wrapper}.py": WRAPPER.format(stem=stem, cls=cls.__name__, name=name),
    }
    return files, {"AutoModelForImageClassification": f"{wrapper}.{name}"}


WRAPPER = '''"""transformers entry point for these weights: importing {stem}.py registers its variants with timm, then
transformers' TimmWrapper builds the network by name from config.json as it does for timm's own architectures."""
from transformers import TimmWrapperForImageClassification as TimmWrapper

from .{stem} import {cls}  # noqa: F401  this form is what transformers' loader follows to copy {stem}.py


class {name}(TimmWrapper):  # transformers' name: pipeline() knows it as an image classifier
    pass
'''
