"""Architectures that timm does not ship travel with their weights: the exporter copies the file that defines the
architecture next to ``model.safetensors`` and adds a small ``modeling_<file>.py`` plus an ``auto_map`` in
config.json, so ``AutoModelForImageClassification.from_pretrained(PATH, trust_remote_code=True)`` and
``pipeline(..., trust_remote_code=True)`` work with only timm and transformers installed.

What that load runs: the copied family file (it builds the network and registers its variant names with timm's
registry), the modules of the user's own it imports as ``from .mylayers import MyBlock`` (copied too: transformers'
dynamic-module loader follows that form, recursively; it follows no ``from . import mylayers``), and the wrapper:
subclasses of transformers' ``TimmWrapperForImageClassification`` and ``TimmWrapperModel`` (``AutoModel``, the route
of ``pipeline("image-feature-extraction")``), plus ``<Class>Backbone``, a ``TimmBackbone`` named in ``auto_map``
for ``AutoBackbone`` whose ``from_pretrained`` keeps the export's weights and BatchNorm statistics
(``TimmBackbone.from_pretrained`` resets the statistics; see modeling/backbone.py). Each builds with the copy's
variant under its name in timm's registry, put back as it was after the build: transformers imports the copy once per
process, and by a later load another export's copy or this package may hold the name. The copies must stand alone:
they may import torch, timm, the standard library and each other, and the registry import of a family file
(``from ._registry import register``) is replaced by timm's own ``register_model``, which is all that ``register``
adds to (besides ``modeling.list_models()``). ``check_exportable`` applies these rules to a model at start-up, so a
family that cannot travel is refused before training, not after.

A network that reads one channel (``in_chans=1``: grayscale), of any family, timm's included, also gets
``modeling_one_channel.py`` and ``auto_map["AutoImageProcessor"]``: transformers' pipelines open every image as RGB
(``load_image``) and ``TimmWrapperImageProcessor`` has no setting for the channel count (transformers 5.24-5.25; a
grayscale option exists only in SuperPoint-style processors), so the network would get three channels. The processor
makes every image one channel (PIL's "L", as timm's own scripts open images when ``input_size[0]`` is 1) before
timm's transforms; ``pipeline(..., trust_remote_code=True)`` picks it up, and without ``trust_remote_code``
transformers uses its own, as before. transformers' ``save_pretrained`` of a loaded model keeps config.json's
``auto_map`` but copies only the file of the model's class when it is remote code, and the files that one imports as
``from .module import Name`` (``custom_object_save``): the family's wrapper imports the processor that way, and for
timm's architectures the processor's file also holds the model classes ``auto_map`` names, so a re-save carries it.
Those classes save timm's key names, as transformers' own class does: transformers applies its timm_wrapper key
conversion to its own classes only, and timm has no filter that strips the "timm_model." prefix for its families.
"""
from __future__ import annotations

import ast
import inspect
import re
import sys
from pathlib import Path

import timm
from timm.models import get_model_input_config

from ._registry import _SUPPORT, our_entrypoint
from .transformers_saved import exported_features

# the lines of a family file that import our registry decorator; in the copy, timm's decorator takes their place
_REGISTER_IMPORT = re.compile(r"^from\s+(?:\._registry|modeling\._registry|modeling)\s+import\s+register\s*(?:#.*)?$",
                              re.M)
_TIMM_REGISTER = "from timm.models import register_model as register  # standalone copy: timm's registry decorator"
_STDLIB = set(sys.stdlib_module_names) | {"__future__"}
_ALLOWED_TOP = {"torch", "timm"} | _STDLIB
# this package's own modules: project code, never copied (a family imports only _registry's register, replaced above)
_PROJECT = _SUPPORT


# an export's model_args that a transformers backbone config does without, so that it can name the architecture
# rather than the export's folder: in_chans and output_stride it carries itself (num_channels=, output_stride=), the
# classifier's pooling and the training-time dropout rates leave the feature maps of given weights as they are
PORTABLE_ARGS = frozenset({"in_chans", "output_stride", "global_pool", "drop_rate", "drop_path_rate"})

# the one-channel image processor's file and class (generated, as modeling_<family>.py is: never a family file)
PROCESSOR_FILE = "modeling_one_channel.py"
PROCESSOR_CLASS = "TimmWrapperOneChannelImageProcessor"


class NotBundleable(ValueError):
    """The architecture's file cannot be copied as a standalone module (it imports project code)."""


def defining_module(model):
    """The module that defines the model's variant function (the one this package registered, else timm's
    entrypoint), falling back to the module of the model's class; None for an architecture timm itself ships.
    Raises ValueError for the copy a trust_remote_code load imported (``transformers_modules.*``): its source is an
    export's file in transformers' module cache, not code to copy into another export or to name on its card."""
    arch = model.pretrained_cfg["architecture"]
    module = None
    entrypoint = our_entrypoint(arch) or (timm.models.model_entrypoint(arch) if timm.is_model(arch) else None)
    if entrypoint is not None:
        module = sys.modules.get(entrypoint.__module__)
    if module is None:
        module = inspect.getmodule(type(model))
    if module is None or module.__name__.split(".")[0] in ("timm", "torch", "torchvision"):
        return None
    if module.__name__.startswith("transformers_modules."):
        raise ValueError(f"'{arch}' is registered from {module.__name__}, a copy transformers loaded with "
                         f"trust_remote_code: import the module that defines it (import modeling; a family file of "
                         f"your own: import it too) before building the model, or export in a fresh interpreter")
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


def reads_one_channel(model) -> bool:
    """The network's first layer takes one image channel (in_chans=1)."""
    return get_model_input_config(model)["input_size"][0] == 1


def source_file(module) -> Path | None:
    """The file ``module``'s source is in; None where no file holds it (a notebook, ``python -c``)."""
    try:
        path = inspect.getsourcefile(module)
    except TypeError:  # no __file__
        return None
    # python - (stdin) and IPython name a source no file holds: "<stdin>", "<ipython-input-...>"
    return Path(path) if path and Path(path).is_file() else None


def remote_code_files(model) -> tuple[dict[str, str], dict]:
    """({file name: text}, auto_map) for an architecture timm does not ship, plus the one-channel image processor
    for a network that reads one channel (any architecture); ({}, {}) for a three-channel one timm ships. Raises
    NotBundleable when the defining files import project code."""
    one_channel = reads_one_channel(model)
    processor = Path(PROCESSOR_FILE).stem
    processor_files = {PROCESSOR_FILE: ONE_CHANNEL_PROCESSOR} if one_channel else {}
    processor_map = {"AutoImageProcessor": f"{processor}.{PROCESSOR_CLASS}"} if one_channel else {}
    module = defining_module(model)
    if module is None:
        if not one_channel:
            return {}, {}
        # transformers' save_pretrained copies only the file of a remote-code model class (and what it imports):
        # with transformers' own class, a re-save would keep the processor's auto_map entry without its file
        return {PROCESSOR_FILE: ONE_CHANNEL_PROCESSOR + ONE_CHANNEL_MODELS}, {
            "AutoModelForImageClassification": f"{processor}.TimmWrapperForImageClassification",
            "AutoModel": f"{processor}.TimmWrapperModel", **processor_map}
    cls = type(model)
    path = source_file(module)
    if path is None:
        raise NotBundleable(f"module {module.__name__} has no source file to copy")
    stem = path.stem
    wrapper = f"modeling_{stem}"
    if stem.startswith("modeling_"):
        raise NotBundleable(f"{stem}.py: a family file named modeling_* would collide with the wrapper file")
    if f"{wrapper}.py" == PROCESSOR_FILE:
        raise NotBundleable(f"{stem}.py: its wrapper would be {PROCESSOR_FILE}, the one-channel image processor's "
                            f"file: rename the family file")
    name = "TimmWrapperForImageClassification"  # pipeline() checks the class name: transformers' own, no warning
    sources = standalone_sources(path)
    class_file = inspect.getsourcefile(cls) or ""
    if Path(class_file).name not in sources or Path(class_file).parent != path.parent:
        raise NotBundleable(f"{cls.__name__} is defined in {cls.__module__}, its variant in {module.__name__}, which "
                            f"does not import it as `from .module import {cls.__name__}`: put the class next to its "
                            f"registered variants")
    roles = {f"{stem}.py": "the architecture of these weights"}
    files = {fname: f"# {fname}, {roles.get(fname, f'imported by {stem}.py')} (torch + timm only).\n" + text
             for fname, text in sources.items()}
    # the import makes transformers' save_pretrained of the loaded model copy the processor file as well
    processor_import = (f"from .{Path(PROCESSOR_FILE).stem} import {PROCESSOR_CLASS}  # noqa: F401  a re-save "
                        f"(save_pretrained) keeps the image processor auto_map names\n") if one_channel else ""
    files[f"{wrapper}.py"] = WRAPPER.format(stem=stem, cls=cls.__name__, name=name, processor_import=processor_import,
                                            features=inspect.getsource(exported_features),
                                            portable=sorted(PORTABLE_ARGS))
    # every Auto class transformers maps timm_wrapper to: one left out falls back to transformers' own class, which
    # builds the network by name without importing the file that registers it
    return {**files, **processor_files}, {
        "AutoModelForImageClassification": f"{wrapper}.{name}", "AutoModel": f"{wrapper}.TimmWrapperModel",
        "AutoBackbone": f"{wrapper}.{cls.__name__}Backbone", **processor_map}


ONE_CHANNEL_PROCESSOR = f'''"""transformers' image processor for these weights, which read one image channel
(grayscale): every image is made one channel before timm's transforms from config.json. transformers' pipelines open
each image as RGB, and its own TimmWrapperImageProcessor keeps the three channels, which a one-channel network cannot
take."""
import torch
import transformers
from transformers import TimmWrapperImageProcessor
from transformers.image_transforms import to_pil_image
from transformers.image_utils import make_flat_list_of_images


class {PROCESSOR_CLASS}(TimmWrapperImageProcessor):
    """TimmWrapperImageProcessor with each image (PIL, numpy or torch; RGB, RGBA, palette or already gray) converted
    to PIL's "L" (ITU-R 601-2 luma) first: how timm's own train.py and validate.py open images for a network whose
    input_size has one channel."""

    def preprocess(self, images, return_tensors="pt"):
        if isinstance(images, torch.Tensor):  # to PIL as a numpy array would go
            images = images.cpu().numpy()
        images = [to_pil_image(image).convert("L") for image in make_flat_list_of_images(images)]
        return super().preprocess(images, return_tensors=return_tensors)
'''

# appended for an architecture timm ships: config.json's auto_map names these, so a model loaded with
# trust_remote_code is of a class in this file, and its save_pretrained copies the file along
ONE_CHANNEL_MODELS = '''
try:  # timm_wrapper's key conversion as transformers declares it (its conversion_mapping.py)
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping
except ImportError:  # a transformers that declares none
    get_checkpoint_conversion_mapping = None


class TimmLayout:
    """save_pretrained writes timm's key layout, as transformers' own class does. transformers applies timm_wrapper's
    declared conversion (a PrefixChange: "timm_model." added on load, removed again on save) to its own classes only,
    never to remote code (conversion_mapping.get_model_conversion_mapping), so a re-save from this class would prefix
    every key and timm's local-dir: loads (train.py --pretrained, features_only) would match none of them."""

    def save_pretrained(self, *args, **kwargs):
        # the conversions a load applied are reverted on save (core_model_loading.revert_weight_conversion)
        used = list(getattr(self, "_weight_conversions", None) or [])
        declared = (get_checkpoint_conversion_mapping(self.config.model_type)
                    if get_checkpoint_conversion_mapping is not None else None) or []
        applied = {repr(c) for c in used}
        self._weight_conversions = [c for c in declared if repr(c) not in applied] + used
        return super().save_pretrained(*args, **kwargs)


class TimmWrapperForImageClassification(TimmLayout, transformers.TimmWrapperForImageClassification):
    """transformers' class, saving timm's layout (its name: pipeline() knows it as an image classifier)."""


class TimmWrapperModel(TimmLayout, transformers.TimmWrapperModel):
    """transformers' class, saving timm's layout: AutoModel's, for pipeline("image-feature-extraction")."""
'''


WRAPPER = '''"""transformers entry points for these weights: importing {stem}.py registers its variants with timm, then
transformers' TimmWrapper builds the network by name from config.json as it does for timm's own architectures, with
this folder's variant in timm's registry for the build; {cls}Backbone serves AutoBackbone."""
import contextlib
import json
import os
import warnings

import timm
import torch
from huggingface_hub import hf_hub_download
from safetensors.torch import load_file
from timm.models import register_model
from transformers import TimmBackbone, TimmBackboneConfig, TimmWrapperConfig
from transformers import TimmWrapperForImageClassification as TimmWrapper
from transformers import TimmWrapperModel as TimmWrapperHeadless

from . import {stem} as family  # its variants: what own_code registers
from .{stem} import {cls}  # noqa: F401  this form is what transformers' loader follows to copy {stem}.py
{processor_import}
PREFIX = "timm_model."  # TimmWrapperModel/ForImageClassification's attribute holding the timm network
# what AutoBackbone.from_pretrained passes on by itself besides config and the Hub arguments taken below
# (transformers/models/auto/auto_factory.py); proxies: huggingface_hub's downloads take none
AUTO_KWARGS = {{"_from_auto", "trust_remote_code", "adapter_kwargs", "code_revision", "proxies"}}
# model_args the backbone's config carries (num_channels, output_stride) or that leave its feature maps as they are:
# with no others, the config names the architecture, which a saved UperNet/DETR resolves on any machine
PORTABLE_ARGS = set({portable})


def _register_quietly(fn):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", f"Overwriting {{fn.__name__}} in registry", UserWarning)  # the point here
        register_model(fn)


@contextlib.contextmanager
def own_code(architecture):
    """This folder's variant of ``architecture`` in timm's registry for the block's builds, and the registry as it
    was again after it: transformers imports this code once per process, and since then another export's copy of the
    family or an installed one may have registered the same name."""
    name = architecture.split(".")[0]
    own = getattr(family, name, None)
    current = timm.models.model_entrypoint(name) if timm.is_model(name) else None
    if own is None or current is own:
        yield
        return
    _register_quietly(own)
    try:
        yield
    finally:
        if current is not None:
            _register_quietly(current)


class OwnCode:
    """transformers' wrappers build the network by name in __init__: the name is this folder's variant there."""

    def __init__(self, config, *args, **kwargs):
        with own_code(config.architecture):
            super().__init__(config, *args, **kwargs)


class {name}(OwnCode, TimmWrapper):  # transformers' name: pipeline() knows it as an image classifier
    pass


class TimmWrapperModel(OwnCode, TimmWrapperHeadless):  # transformers' name, for AutoModel: the features, no classifier
    pass


{features}

class {cls}Backbone(TimmBackbone):
    """The feature maps of these weights, for DETR/UperNet-style models. TimmBackbone.from_pretrained resets every
    BatchNorm's running statistics to 0/1 (transformers 5.24-5.25); this one loads them with the weights, strictly.
    out_indices (or out_features, feature_info's module names): the taps returned (default: every one after the
    stem's); output_stride: 8 or 16 for dilated last stages; freeze_batch_norm_2d: frozen BatchNorms; config: a
    TimmBackboneConfig choosing these where the call does not."""

    # the class of config.json (model_type timm_wrapper): AutoBackbone.from_pretrained registers this class for it
    # and refuses a class whose config_class has another name (transformers/models/auto/auto_factory.py, register)
    config_class = TimmWrapperConfig

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        # TimmBackbone keys output_hidden_states' layers by feature_info's module names ("stages.0"); timm's
        # FeatureListNet of a family built with flatten_sequential names them "stages_0" (an IndexError otherwise)
        built = getattr(self._backbone, "return_layers", None)
        names = dict(self._backbone.named_children())
        if isinstance(built, dict):
            self._all_layers, self._return_layers = (
                {{(k if k in names else k.replace(".", "_")): v for k, v in layers.items()}}
                for layers in (self._all_layers, self._return_layers))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, out_indices=None,
                        out_features=None, output_stride=None, freeze_batch_norm_2d=None, revision=None,
                        cache_dir=None, token=None, force_download=False, local_files_only=False, subfolder="",
                        **kwargs):
        unknown = [repr(a) for a in model_args] + sorted(set(kwargs) - AUTO_KWARGS)
        if not isinstance(config, (type(None), TimmWrapperConfig, TimmBackboneConfig)):
            unknown.append(f"config of type {{type(config).__name__}}")
        if unknown:
            raise TypeError(f"{{cls.__name__}}.from_pretrained: unexpected {{', '.join(unknown)}}; it takes "
                            f"out_indices, out_features, output_stride, freeze_batch_norm_2d, a TimmBackboneConfig "
                            f"as config, and the Hub's revision, cache_dir and token")
        if isinstance(config, TimmBackboneConfig):  # AutoBackbone's own is config.json's TimmWrapperConfig
            if out_indices is None and out_features is None:
                out_indices = config.out_indices
            output_stride = config.output_stride if output_stride is None else output_stride
            if freeze_batch_norm_2d is None:
                freeze_batch_norm_2d = config.freeze_batch_norm_2d
        folder = os.path.join(str(pretrained_model_name_or_path), subfolder)
        if not os.path.isdir(folder):  # a Hub id: the two files read here
            for fname in ("config.json", "model.safetensors"):
                path = hf_hub_download(str(pretrained_model_name_or_path), fname, subfolder=subfolder or None,
                                       revision=revision, cache_dir=cache_dir, token=token,
                                       force_download=force_download, local_files_only=local_files_only)
            folder = os.path.dirname(path)
        name = "local-dir:" + os.path.abspath(folder)
        with open(os.path.join(folder, "config.json")) as f:
            saved = json.load(f)
        with own_code(saved["architecture"]):  # every build below: this folder's code
            with torch.device("meta"):  # shapes only: the taps
                info = timm.create_model(name).feature_info
            taps = [tap["module"] for tap in info]
            if out_features is not None:  # TimmBackbone's stage names are feature_info's module names
                if not set(out_features) <= set(taps):
                    raise ValueError(f"out_features {{list(out_features)}}: this network's feature maps are {{taps}}")
                chosen = tuple(taps.index(f) for f in out_features)
                if out_indices is not None and [taps[i] for i in out_indices] != list(out_features):
                    raise ValueError(f"out_features {{list(out_features)}} and out_indices {{list(out_indices)}} name "
                                     f"different maps of {{taps}}: pass one of them")
                out_indices = chosen
            if out_indices is None:  # a stem's tap is at a stride under 4: FPN-style necks take strides 4-32
                out_indices = tuple(i for i, tap in enumerate(info) if tap["reduction"] >= 4) or tuple(
                    range(len(taps)))
            out_indices = tuple(out_indices)
            if any(not -len(taps) <= i < len(taps) for i in out_indices):  # timm's is an IndexError deep in its build
                raise ValueError(f"out_indices {{list(out_indices)}}: this network has {{len(taps)}} feature maps, so "
                                 f"out_indices are 0 to {{len(taps) - 1}} (or -{{len(taps)}} to -1, from the last)")
            exported = exported_features(folder, out_indices=out_indices)
            args = saved.get("model_args") or {{}}
            # the config names the architecture, not this folder: a model saved with this backbone inside writes it
            # into its config.json and must reload once the folder is gone (its weights are in its own checkpoint)
            backbone = saved["architecture"] if set(args) <= PORTABLE_ARGS else name
            output_stride = args.get("output_stride") if output_stride is None else output_stride
            # TimmBackbone passes in_chans=num_channels (default 3)
            model = cls(TimmBackboneConfig(backbone=backbone, out_indices=out_indices, output_stride=output_stride,
                                           num_channels=args.get("in_chans", 3)))
            model._backbone.load_state_dict(exported.state_dict())
            if freeze_batch_norm_2d:  # after the load: a frozen BatchNorm keeps no num_batches_tracked to load into
                model.config.freeze_batch_norm_2d = True
                model.freeze_batch_norm_2d()
            return model.eval()
'''
