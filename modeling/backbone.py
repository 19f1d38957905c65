"""An export (a folder or a Hub id) as a transformers backbone whose weights, BatchNorm statistics included, are the
export's.

transformers 5.24 and 5.25 build timm backbones with the wrong weights and says nothing (read in its
``models/timm_backbone/modeling_timm_backbone.py``, ``backbone_utils.py`` and ``models/auto/auto_factory.py``):

- ``TimmBackbone.from_pretrained(name)`` and ``AutoBackbone.from_pretrained(timm name)`` create the timm model with
  its weights, then ``post_init`` runs ``_init_weights``, which sets every ``BatchNorm2d``'s running mean and
  variance to 0 and 1 (the convolutions stay loaded): features of a network that never saw its data's statistics.
- The config routes (``DetrConfig(use_timm_backbone=True, use_pretrained_backbone=True)``, ``UperNetConfig(
  backbone_config=TimmBackboneConfig(...))``, ``AutoBackbone.from_config``) drop ``use_pretrained_backbone``
  (``consolidate_backbone_kwargs_to_config`` pops it) and build a randomly initialised backbone.
- ``AutoBackbone.from_pretrained(local folder)`` asks the Hub whether the path is a repository (``repo_exists``) and
  fails with ``HFValidationError`` before any ``auto_map`` is read.

The route around them: build the transformers model as usual, then ``load_backbone_weights(model, export)`` copies
the state dict of timm's ``features_only`` model of the export, loaded strictly from its ``model.safetensors``
(``transformers_saved.exported_features``: timm's own features_only load is not strict), into every timm feature
extractor inside it: ``TimmBackbone._backbone``, DETR's ``conv_encoder.model`` after its BatchNorms became frozen
ones, UperNet's ``backbone``. ``timm_backbone(export)`` does both for a bare ``TimmBackbone``.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import timm
import torch
from timm.layers import BatchNormAct2d, FrozenBatchNormAct2d, SyncBatchNormAct
from timm.layers.norm_act import freeze_batch_norm_2d
from timm.models._features import FeatureDictNet, FeatureGetterNet, FeatureHookNet, FeatureInfo, FeatureListNet
from timm.models._features_fx import FeatureGraphNet

from ._registry import our_names
from .hub import CONFIG_NAME, WEIGHTS_NAME, _resolve_folder, check_weights
from .remote_code import PORTABLE_ARGS
from .transformers_saved import exported_features

# timm's generic feature extractors and the feature_cls that builds each: a family whose features_only default is
# its own class (EfficientNetFeatures, ...) or another wrapper builds this one only when asked for it by name
WRAPPER_CLS = ((FeatureGetterNet, "getter"), (FeatureListNet, "list"), (FeatureHookNet, "hook"),
               (FeatureGraphNet, "fx"), (FeatureDictNet, "dict"))
# buffers a frozen BatchNorm (DETR's, timm's FrozenBatchNorm2d) does not keep: the only keys allowed to differ
_BN_COUNTER = "num_batches_tracked"
# the stride (input pixels per map pixel) from which a feature_info tap is a stage's, not a stem's: FPN-style necks
# take strides 4-32 (C2-C5; torchvision's resnet_fpn_backbone, timm's features_only of ConvNeXt and Swin)
STEM_STRIDE = 4
# anchor size (px, one side) per input pixel of a map's stride: FPN's anchors of 32-512 px on P2-P6, strides 4-64
# (Lin et al., "Feature Pyramid Networks for Object Detection", 2017, section 4.1; torchvision's default)
ANCHOR_PER_STRIDE = 8


def export_folder(export) -> Path:
    """The local folder of an export folder or Hub id (the Hub copy read from its cache), checked to be loadable."""
    folder = _resolve_folder(export, (CONFIG_NAME, WEIGHTS_NAME)).resolve()
    arch = str(json.loads((folder / CONFIG_NAME).read_text()).get("architecture", ""))
    if not timm.is_model(arch.split(".")[0]):
        raise ValueError(f"architecture '{arch}' of {export} is not registered with timm: import the module that "
                         f"defines it first (import modeling; a family file of your own: import it too)")
    return folder


def saved_model_args(folder: Path) -> dict:
    """The ``model_args`` of an export's config.json (timm's keyword arguments of the saved network)."""
    return json.loads((folder / CONFIG_NAME).read_text()).get("model_args") or {}


def timm_name(export) -> str:
    """timm's name for an export folder or Hub id: what ``TimmBackboneConfig(backbone=...)`` and ``DetrConfig(
    backbone=...)`` take. It is the export's architecture (``blocknet_tiny``), not its folder: a UperNet or DETR
    saved with ``save_pretrained`` writes it into its config.json and reloads wherever timm knows the name
    (``import modeling`` for our designs), the backbone's weights coming from its own checkpoint. The export's
    ``model_args`` that change its feature maps are the config's to carry: ``num_channels`` and ``output_stride``,
    which ``load_backbone_weights`` checks. An export built with others (a width, an activation: no config carries
    them) is named ``local-dir:ABSOLUTE_PATH``, with a warning: a saved model built from it needs the folder there."""
    folder = export_folder(export)
    other = sorted(set(saved_model_args(folder)) - PORTABLE_ARGS)
    if not other:
        return str(json.loads((folder / CONFIG_NAME).read_text())["architecture"])
    warnings.warn(f"{export} was built with model_args {', '.join(other)}, which no transformers config carries: "
                  f"backbone= names its folder, and a model saved with it loads only where {folder} is", stacklevel=2)
    return f"local-dir:{folder}"


def feature_extractors(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(module name, module) of every timm ``features_only`` model inside ``model``, outermost only: what
    ``timm.create_model(..., features_only=True)`` returned, known by its ``FeatureInfo``. That is timm's
    FeatureListNet for most families (ResNet, BlockNet: what TimmBackbone holds), a family's own class for others
    (EfficientNetFeatures for EfficientNet/MNASNet/FBNet, MobileNetV3Features for MobileNetV3/V4 and LCNet,
    HighResolutionNetFeatures for HRNet), FeatureHookNet or FeatureGetterNet for some."""
    found: list[tuple[str, torch.nn.Module]] = []
    for path, module in model.named_modules():
        if any(path.startswith(f"{outer}." if outer else "") for outer, _ in found):
            continue  # inside one already found (a FeatureGetterNet's model)
        if isinstance(getattr(module, "feature_info", None), FeatureInfo):  # a classifier's is a list of dicts
            found.append((path, module))
    return found


def reference_features(folder: Path, module: torch.nn.Module) -> torch.nn.Module:
    """The export's ``features_only`` model built as ``module`` was (its class, its taps), holding every saved
    weight: the family's default for a family class, the named feature_cls for timm's generic wrappers."""
    return features_like(module, lambda **kwargs: exported_features(str(folder), **kwargs))


def features_like(module: torch.nn.Module, build) -> torch.nn.Module:
    """``build(**kwargs)`` (a features_only model) with ``module``'s taps and feature class: the family's default for
    a family class, the named feature_cls for timm's generic wrappers."""
    kwargs = {"out_indices": tuple(module.feature_info.out_indices)}
    cls = next((name for wrapper, name in WRAPPER_CLS if type(module) is wrapper), None)
    with our_names():
        reference = build(**kwargs)
        if type(reference) is not type(module) and cls is not None:  # e.g. a FeatureListNet of EfficientNet
            reference = build(feature_cls=cls, **kwargs)
    return reference


def restore_norm_activations(module: torch.nn.Module, reference: torch.nn.Module) -> list[str]:
    """Put back the activations DETR took out; returns the module names replaced.

    DETR's ``replace_batch_norm`` (transformers 5.24-5.25, copied by Conditional/Deformable DETR and Table
    Transformer) swaps every ``BatchNorm2d`` of the backbone for its frozen BatchNorm, timm's ``BatchNormAct2d``
    included (a subclass), and the activation that layer applies goes with it: EfficientNet and MobileNetV3 lose the
    SiLU/ReLU after each norm, with nothing said. Each such layer becomes timm's ``FrozenBatchNormAct2d`` of the
    reference's layer (what ``TimmBackbone(freeze_batch_norm_2d=True)`` builds): frozen, as DETR wants, and computing
    what the export computes. Run once ``module`` holds the reference's weights: the layers carry them over."""
    replaced = []
    for name, ref in reference.named_modules():
        if not name or not isinstance(ref, (BatchNormAct2d, SyncBatchNormAct)):
            continue
        current = module.get_submodule(name)
        if isinstance(current, (BatchNormAct2d, SyncBatchNormAct, FrozenBatchNormAct2d)) or hasattr(current, "act"):
            continue
        own = dict(current.named_parameters(recurse=False))  # DETR's frozen norm holds buffers only
        layer = ref if own else freeze_batch_norm_2d(ref)
        # the values are the current layer's (the export's after a load; a fine-tune's after from_pretrained): the
        # reference gives the structure, its eps and its activation
        held = current.state_dict()
        with torch.no_grad():
            for key, tensor in layer.state_dict().items():
                if key in held and held[key].shape == tensor.shape:
                    tensor.copy_(held[key])
        # the reference is float32 on the CPU and in eval mode: the layer joins a model that may be cast, moved or
        # training, and must run as the layer it replaces did
        like = next((t for t in (*own.values(), *current.buffers(recurse=False)) if t.is_floating_point()), None)
        if like is not None:
            layer.to(device=like.device, dtype=like.dtype)
        layer.train(current.training)
        for key, param in layer.named_parameters():
            if key in own:
                param.requires_grad_(own[key].requires_grad)
        parent, _, child = name.rpartition(".")
        module.get_submodule(parent).add_module(child, layer)
        replaced.append(name)
    return replaced


def first_conv_channels(module: torch.nn.Module) -> int | None:
    """The image channels the first convolution of a network takes (its stem's); None without one."""
    return next((m.in_channels for m in module.modules() if isinstance(m, torch.nn.Conv2d)), None)


def reload_norm_activations(model: torch.nn.Module, backbone: str | None = None) -> list[str]:
    """After ``from_pretrained`` of a DETR: put back the activations its build took out of the backbone's norm
    layers again (``restore_norm_activations``), keeping every value the checkpoint loaded (a fine-tune's); returns
    the module names replaced. No export is needed: the architecture (``backbone``, by default the one its config
    names, ``timm_name``'s) gives the layers' structure. A family without activations in its norms (ResNet,
    BlockNet) has none to put back."""
    backbone = backbone or model.config.backbone_config.backbone
    replaced = []
    for path, module in feature_extractors(model):
        reference = features_like(module, lambda **kwargs: timm.create_model(backbone, features_only=True, **kwargs))
        replaced += [f"{path}.{name}" if path else name for name in restore_norm_activations(module, reference)]
    name_hidden_layers(model)
    return replaced


def name_hidden_layers(model: torch.nn.Module) -> None:
    """Key every TimmBackbone's ``output_hidden_states`` layers inside ``model`` by the names its timm feature
    extractor gave them. TimmBackbone keys them by ``feature_info``'s module names (``stages.0``), while timm's
    FeatureListNet of a family built with ``flatten_sequential`` (BlockNet, AlexNet, ConvNeXt) names its layers
    ``stages_0``: ``output_hidden_states=True`` raised an IndexError and left the backbone returning no maps."""
    for module in model.modules():
        built = getattr(getattr(module, "_backbone", None), "return_layers", None)
        if not isinstance(built, dict) or not isinstance(getattr(module, "_all_layers", None), dict):
            continue
        names = dict(module._backbone.named_children())
        module._all_layers, module._return_layers = (
            {(k if k in names else k.replace(".", "_")): v for k, v in layers.items()}  # timm's _module_list
            for layers in (module._all_layers, module._return_layers))


def load_backbone_weights(model: torch.nn.Module, export) -> list[str]:
    """Copy the export's weights and BatchNorm statistics into every timm feature extractor inside ``model`` (a
    transformers model or any module); returns their module names. Raises ValueError when there is none, or when
    its layers do not match the export's (another architecture or width), or when its ``model.safetensors`` is cut
    short or differs from the CRC-32 saved with it (``modeling.hub.check_weights``). A norm layer whose activation
    DETR dropped gets it back (``restore_norm_activations``)."""
    folder = export_folder(export)
    check_weights(folder / WEIGHTS_NAME)  # exported_features reads it unchecked: it is copied alone into exports
    loaded = []
    for path, module in feature_extractors(model):
        reference = reference_features(folder, module)
        channels, built = first_conv_channels(reference), first_conv_channels(module)
        if channels != built:  # transformers' configs build 3 unless told (TimmBackbone's in_chans=num_channels)
            raise ValueError(f"{export} reads {channels}-channel images, {type(model).__name__}.{path or 'self'} "
                             f"takes {built}: build it with num_channels={channels} (TimmBackboneConfig(..., "
                             f"num_channels={channels}), DetrConfig(..., num_channels={channels}))")
        if type(reference) is not type(module):
            wrong = [f"{type(module).__name__}, the export's features_only model is {type(reference).__name__}"]
        else:
            try:
                result = module.load_state_dict(reference.state_dict(), strict=False)
                wrong = [k for k in (*result.missing_keys, *result.unexpected_keys) if not k.endswith(_BN_COUNTER)]
            except RuntimeError as e:  # shapes differ: torch lists every tensor, one line names the first
                wrong = [str(e).split("\n")[1].strip()]
        if wrong:
            raise ValueError(f"{export} does not fit {type(model).__name__}.{path or 'self'} "
                             f"({', '.join(wrong[:3])}): build the model with backbone={timm_name(export)!r}")
        check_output_stride(folder, export, f"{type(model).__name__}.{path or 'self'}", module, reference)
        restore_norm_activations(module, reference)  # the same modules as the reference's: it fits
        loaded.append(path)
    if not loaded:
        raise ValueError(f"{type(model).__name__} holds no timm backbone (build it with a TimmBackboneConfig, or "
                         f"DetrConfig(use_timm_backbone=True, backbone=...))")
    name_hidden_layers(model)
    return loaded


def check_output_stride(folder: Path, export, where: str, module: torch.nn.Module,
                        reference: torch.nn.Module) -> None:
    """A one-line warning when the export was saved dilated (``output_stride`` in its model_args) and ``module``
    (named ``where``) is built at other strides: its name (``timm_name``) carries no model_args, so a config without
    ``output_stride`` builds it undilated. The weights fit any stride (DETR-DC5, DeepLab choose theirs): a choice,
    not an error; the warning says how to get the export's own maps."""
    stride = saved_model_args(folder).get("output_stride")
    saved, built = reference.feature_info.reduction(), module.feature_info.reduction()
    if stride and saved != built:
        warnings.warn(f"{export} was saved with output_stride={stride} (maps at strides {saved}), {where} gives "
                      f"strides {built}; for the export's maps build it with output_stride={stride} "
                      f"(TimmBackboneConfig(..., output_stride={stride}); DETR: DetrConfig(backbone_config="
                      f"TimmBackboneConfig(backbone=..., output_stride={stride}, out_indices=...)))", stacklevel=3)


def default_taps(name: str) -> tuple[int, ...]:
    """Every ``feature_info`` tap of timm model ``name`` after the stem's: the strides FPN-style necks take (4 to 32,
    C2-C5, for BlockNet, ResNet, ConvNeXt and AlexNet). A stem's tap is one at a stride under 4 (ResNet's act1,
    BlockNet's stem.2, EfficientNet's blocks.0: 2); a family without one (ConvNeXt's stages.0 and AlexNet's
    features.1 are at 4) keeps every tap, as timm's features_only does."""
    strides = tap_strides(name)
    return tuple(i for i, stride in enumerate(strides) if stride >= STEM_STRIDE) or tuple(range(len(strides)))


def tap_strides(name: str) -> list[int]:
    """The stride of each ``feature_info`` tap of timm model ``name``, in tap order."""
    with torch.device("meta"), our_names():  # shapes only: the taps' strides
        return [tap["reduction"] for tap in timm.create_model(name).feature_info]


def chosen_taps(name: str, out_indices, export) -> tuple[int, ...]:
    """``out_indices`` of timm model ``name`` (the export ``export``'s), ``default_taps`` when None; a one-line
    ValueError for an index its ``feature_info`` lacks (timm's own is an IndexError from deep inside its build)."""
    if out_indices is None:
        return default_taps(name)
    count = len(tap_strides(name))
    if any(not -count <= i < count for i in out_indices):
        raise ValueError(f"out_indices {list(out_indices)}: {export} has {count} feature maps, so out_indices are "
                         f"0 to {count - 1} (or -{count} to -1, from the last)")
    return tuple(out_indices)


def image_channels(export) -> int:
    """The image channels the export was built for (its ``model_args``; 3 when it names none)."""
    folder = _resolve_folder(export, (CONFIG_NAME,))
    return int(json.loads((folder / CONFIG_NAME).read_text()).get("model_args", {}).get("in_chans", 3))


def _dilations(name: str) -> str:
    """Which of the dilated output strides (8, 16) timm builds the architecture ``name`` with, in words."""
    built = []
    for stride in (8, 16):
        try:
            with torch.device("meta"), our_names():  # shapes only: whether it builds
                timm.create_model(name, features_only=True, output_stride=stride)
        except AssertionError:
            continue
        built.append(str(stride))
    return f"it takes {' or '.join(built)}" if built else "no dilated stages: it takes neither 8 nor 16"


def backbone_config(export, out_indices: tuple[int, ...] | None = None, output_stride: int | None = None,
                    **config):
    """transformers' ``TimmBackboneConfig`` of an export, what ``UperNetConfig(backbone_config=...)`` and
    ``DetrConfig(backbone_config=...)`` take: its architecture (``timm_name``), the taps of its own ``feature_info``
    (``out_indices``: default every tap after the stem's, as ``timm_backbone``'s; any count, any strides), its image
    channels and its saved ``output_stride`` unless one is given; ``config``: more TimmBackboneConfig fields.
    ``DetrConfig(backbone=...)`` asks every family for taps 1-4, which a family with fewer has not."""
    from transformers import TimmBackboneConfig

    name = timm_name(export)
    if output_stride is None:  # the export's own: the name carries no model_args
        output_stride = saved_model_args(export_folder(export)).get("output_stride")
    # TimmBackbone passes in_chans=num_channels (default 3) to timm, over the export's own model_args
    return TimmBackboneConfig(backbone=name, out_indices=chosen_taps(name, out_indices, export),
                              output_stride=output_stride, num_channels=image_channels(export), **config)


def timm_backbone(export, out_indices: tuple[int, ...] | None = None, output_stride: int | None = None,
                  freeze_batch_norm_2d: bool = False):
    """transformers' ``TimmBackbone`` of an export with its exact weights, in eval mode. ``out_indices``: the
    ``feature_info`` taps returned (default every tap after the stem's, the strides FPN-style necks take);
    ``output_stride`` 8 or 16: dilated last stages (DeepLab, DETR-DC5)."""
    from transformers import TimmBackbone

    explicit = output_stride is not None
    config = backbone_config(export, out_indices, output_stride, freeze_batch_norm_2d=freeze_batch_norm_2d)
    with our_names():
        try:
            model = TimmBackbone(config)
        except AssertionError:  # timm's families assert what they cannot build (HRNet: output_stride == 32)
            if config.output_stride is None:
                raise
            raise ValueError(f"{export}: timm cannot build its architecture with output_stride={config.output_stride} "
                             f"({_dilations(config.backbone)}); leave output_stride out") from None
    with warnings.catch_warnings():
        if explicit:  # the caller's own stride: no warning that it is not the export's
            warnings.filterwarnings("ignore", message=".* was saved with output_stride=")
        load_backbone_weights(model, export)
    return model.eval()


class TimmFPN(torch.nn.Module):
    """An export's ``features_only`` maps through torchvision's ``FeaturePyramidNetwork``: the backbone torchvision's
    detectors (FasterRCNN, RetinaNet, MaskRCNN) take, an ordered dict of maps plus ``out_channels``. torchvision's own
    ``BackboneWithFPN`` reaches only a model's direct children (ResNet's ``layer1``), not BlockNet's ``stages.0``;
    timm's ``feature_info`` knows every family's taps. ``out_indices``: as ``timm_backbone``'s.

    The maps are named ``"0"`` to ``"N-1"`` (one per tap) plus ``"pool"`` (the last one's max-pooled by 2);
    ``strides`` gives each name's stride. torchvision's default anchor generator and RoI pooler fit 4 taps at
    strides 4-32 only: ``anchor_generator()`` and ``roi_pool()`` fit this family's (FasterRCNN's
    ``rpn_anchor_generator`` and ``box_roi_pool``)."""

    def __init__(self, export, out_channels: int = 64, out_indices: tuple[int, ...] | None = None):
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        super().__init__()
        folder = export_folder(export)
        check_weights(folder / WEIGHTS_NAME)
        self.export, self.architecture = export, json.loads((folder / CONFIG_NAME).read_text())["architecture"]
        # the taps of timm_name, as backbone_config's: the architecture's for an export saved dilated (a stem's tap
        # stays one), the export's own where other model_args change them (a ViT of another depth)
        out_indices = chosen_taps(timm_name(export), out_indices, export)
        with our_names():
            self.body = exported_features(str(folder), out_indices=out_indices)
        self.fpn = FeaturePyramidNetwork(self.body.feature_info.channels(), out_channels, LastLevelMaxPool())
        self.out_channels = out_channels
        reductions = self.body.feature_info.reduction()
        self.strides = {**{str(i): r for i, r in enumerate(reductions)}, "pool": 2 * reductions[-1]}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.fpn({str(i): m for i, m in enumerate(self.body(x))})

    def anchor_generator(self, aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)):
        """torchvision's ``AnchorGenerator`` with one anchor size per map, ``ANCHOR_PER_STRIDE`` times its stride:
        torchvision's default (32-512 px on strides 4-64) for 4 taps at 4-32."""
        from torchvision.models.detection.anchor_utils import AnchorGenerator

        sizes = tuple((ANCHOR_PER_STRIDE * stride,) for stride in self.strides.values())
        return AnchorGenerator(sizes, (tuple(aspect_ratios),) * len(sizes))

    def roi_pool(self, output_size: int = 7, sampling_ratio: int = 2):
        """torchvision's ``MultiScaleRoIAlign`` over the maps it can pool (``"pool"`` not among them, as in
        torchvision's default): FasterRCNN's ``box_roi_pool`` (MaskRCNN's ``mask_roi_pool``: ``output_size=14``).
        It sends a box to the map at stride 2**k, k counted up from its first map's (its scale read as a power of two
        from the map's size): the maps it gets are the deepest at each stride, from the last tap down while each
        stride is half the one above: all four at 4-32, the last of a family whose taps all sit at 16 (ViT-like)."""
        from torchvision.ops import MultiScaleRoIAlign

        taps = [(name, stride) for name, stride in self.strides.items() if name != "pool"]
        last = taps[-1][1]
        if last & (last - 1):  # not a power of two
            raise ValueError(f"TimmFPN of {self.export} ({self.architecture}): its maps are at strides "
                             f"{[s for _, s in taps]}, and torchvision's MultiScaleRoIAlign pools power-of-two "
                             f"strides only: pass out_indices whose last tap is at one, or a box_roi_pool of your own")
        chain = [taps[-1]]
        for name, stride in reversed(taps[:-1]):
            if stride * 2 == chain[-1][1]:
                chain.append((name, stride))
            elif stride != chain[-1][1]:  # a gap: a map past it would be pooled as the next stride's
                break
        return MultiScaleRoIAlign([name for name, _ in reversed(chain)], output_size, sampling_ratio)
