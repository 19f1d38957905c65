"""timm's model contract, checked for every registered family the way timm's tests/test_models.py checks its own:
the default cfg and the head (pooled, unpooled), in_chans, forward_intermediates and prune_intermediate_layers,
features_only through hooks, the getter and FX, output_stride by dilation, TorchScript, FX then TorchScript, grad
checkpointing.

Parametrized over ``modeling.list_models()``, so a user's family is held to it by being registered (README section
6; tests/test_modeling.py runs this file on the README's template family and a three-stage BlockNet variant), with
timm's own resnet18 as the reference that every check must also pass.
"""
import timm
import torch
from timm.layers import create_feature_extractor

import modeling

FAMILIES = modeling.list_models() + ["resnet18"]
# strides in max pools and an unpadded stride-4 conv, no stage to dilate: output_stride below 32 is refused
NO_DILATION = {"alexnet"}


def pytest_generate_tests(metafunc):
    if "name" in metafunc.fixturenames:
        metafunc.parametrize("name", FAMILIES)


def image(size: int = 64, batch: int = 2) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(batch, 3, size, size)


def build(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return modeling.create_model(name, **kwargs).eval()


def test_default_cfg_and_head(name):
    """As timm's test_model_default_cfgs: forward_features is pool_size at input_size; reset_classifier(0) pools to
    head_hidden_size; reset_classifier(0, '') and global_pool='' give the unpooled map; the cfg names real layers."""
    model = build(name)
    cfg = model.pretrained_cfg
    assert {"num_classes", "input_size", "pool_size", "crop_pct", "interpolation", "mean", "std", "first_conv",
            "classifier"} <= set(cfg), sorted(cfg)
    state = model.state_dict()
    assert f"{cfg['first_conv']}.weight" in state and f"{cfg['classifier']}.weight" in state
    x = image(cfg["input_size"][-1], batch=1)
    with torch.no_grad():
        assert tuple(model.forward_features(x).shape[-2:]) == tuple(cfg["pool_size"])
        model.reset_classifier(0)
        assert model.forward(x).shape == (1, model.head_hidden_size)
        model.reset_classifier(0, "")
        unpooled = model.forward(x)
        assert unpooled.ndim == 4 and tuple(unpooled.shape[-2:]) == tuple(cfg["pool_size"])
        assert torch.equal(unpooled, model.forward_features(x))
        headless = build(name, num_classes=0, global_pool="")
        assert tuple(headless(x).shape) == tuple(unpooled.shape)


def test_in_chans_is_what_timm_reads(name):
    """timm takes a network's channel count from its in_chans attribute, else its cfg's 3 (get_model_input_config):
    a family that does not keep it builds a one-channel network that timm's data config, validate.py and the export
    (input_size, mean/std, the one-channel processor) take for a three-channel one."""
    model = build(name, in_chans=1)
    assert timm.models.get_model_input_config(model)["input_size"][0] == 1, \
        f"{name}(in_chans=1) does not say so: keep self.in_chans = in_chans in its __init__"
    assert model(image(batch=1)[:, :1]).shape == (1, model.num_classes)


def test_forward_intermediates_and_pruning(name):
    model = build(name)
    x = image()
    info = timm.models.FeatureInfo(model.feature_info, range(len(model.feature_info)))
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        assert [m.shape[1] for m in maps] == info.channels()
        for m, reduction in zip(maps, info.reduction()):
            assert abs(m.shape[-1] - 64 / reduction) <= 1, (m.shape, reduction)  # AlexNet: 15 px, not 16
        n = len(maps)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [torch.equal(a, b) for a, b in zip(last_two, maps[-2:])] == [True, True]
        early = model.forward_intermediates(x, indices=[0, 1], stop_early=True, intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(early, maps[:2]))
        # the final map of an early stop is the last map computed: a head layer sized for the last stage's channels
        # (BlockNet's head conv, EfficientNet's conv_head) runs only when that stage ran, as in timm's EfficientNet
        last, early = model.forward_intermediates(x, indices=[0, 1], stop_early=True)
        assert all(torch.equal(a, b) for a, b in zip(early, maps[:2]))
        assert torch.equal(last, final if n == 2 else maps[1])
        kept = model.prune_intermediate_layers(indices=[0, 1])
        assert list(kept) == [0, 1]
        pruned = model.forward_intermediates(x, intermediates_only=True, indices=[0, 1])
        assert all(torch.equal(a, b) for a, b in zip(pruned, maps[:2]))
        assert torch.equal(model(x), maps[1]) or n == 2  # the head goes with the pruned layers: the last kept map
        assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in build(name).parameters())


def test_features_only_by_hooks_getter_and_fx(name):
    """features_only through each of timm's feature classes gives the maps of forward_intermediates."""
    model = build(name)
    x = image()
    with torch.no_grad():
        expected = model.forward_intermediates(x, intermediates_only=True)
        for feature_cls in (None, "getter", "fx"):
            kwargs = {"feature_cls": feature_cls} if feature_cls else {}
            backbone = build(name, features_only=True, **kwargs)
            got = backbone(x)
            got = list(got.values()) if isinstance(got, dict) else got
            assert len(got) == len(expected), feature_cls
            assert all(torch.equal(a, b) for a, b in zip(got, expected)), feature_cls


def test_feature_cfg_of_the_caller_goes_over_the_familys(name):
    """features_only=True with a feature_cfg (how timm's tests ask for FX features): the caller's keys win, the
    family's defaults (flatten_sequential, its taps) fill in the rest."""
    model = build(name)
    x = image()
    with torch.no_grad():
        expected = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        backbone = build(name, features_only=True, feature_cfg={"feature_cls": "fx", "out_indices": (0, 1)})
        got = backbone(x)
    assert type(backbone).__name__ == "FeatureGraphNet"
    assert len(got) == 2 and all(torch.equal(a, b) for a, b in zip(got, expected))


def test_output_stride_by_dilation(name):
    model = build(name, features_only=True)
    x = image()
    natural = model.feature_info.reduction()[-1]
    for output_stride in (8, 16):
        if name in NO_DILATION:
            try:
                build(name, output_stride=output_stride)
            except ValueError as e:
                assert "output_stride" in str(e) and "\n" not in str(e)
            else:
                raise AssertionError(f"{name} accepted output_stride={output_stride}")
            continue
        dense = build(name, features_only=True, output_stride=output_stride)
        dense.load_state_dict(model.state_dict())  # the same weights, strict
        reductions = dense.feature_info.reduction()
        assert reductions[-1] == min(natural, output_stride)
        with torch.no_grad():
            maps = dense(x)
        assert [m.shape[-1] for m in maps] == [64 // r for r in reductions]
        classifier = build(name, output_stride=output_stride, num_classes=3)
        assert classifier(x).shape == (2, 3)


def test_torchscript(name):
    with timm.layers.set_layer_config(scriptable=True):
        model = build(name)
    scripted = torch.jit.script(model)
    x = image()
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-5)


def test_fx_then_torchscript(name):
    """As timm's test_model_forward_fx_torchscript: trace with torchvision's FX feature extraction (timm's leaf
    modules), then script the traced graph."""
    model = build(name)
    traced = create_feature_extractor(model, return_nodes=timm.layers.get_graph_node_names(model)[1][-1:])
    scripted = torch.jit.script(traced)
    x = image()
    with torch.no_grad():
        expected = model(x)
        assert torch.allclose(next(iter(traced(x).values())), expected, atol=1e-5)
        assert torch.allclose(next(iter(scripted(x).values())), expected, atol=1e-5)


def saved_activation_bytes(model: torch.nn.Module, run) -> int:
    """Bytes of the tensors autograd keeps for backward while ``run()`` computes, parameters left out: what grad
    checkpointing is for (it keeps a segment's input and recomputes the rest in backward)."""
    params = {p.data_ptr() for p in model.parameters()}
    kept = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in params:
            kept[t.data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(kept.values())


def test_grad_checkpointing_changes_memory_not_results(name):
    """set_grad_checkpointing(True) keeps fewer activations for backward in forward and in forward_intermediates
    (transformers' gradient_checkpointing_enable() and timm's --grad-checkpointing call it), with the same gradients."""
    model = build(name, num_classes=3)
    x = image()

    def intermediates():
        final, maps = model.forward_intermediates(x)
        return final.sum() + sum(m.sum() for m in maps)

    runs = {"forward": lambda: model(x).sum(), "forward_intermediates": intermediates}
    plain = {}
    for route, run in runs.items():
        plain[route] = saved_activation_bytes(model, run)
        model.zero_grad()
        run().backward()
        plain[f"{route} grads"] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.set_grad_checkpointing(True)
    for route, run in runs.items():
        assert saved_activation_bytes(model, run) < plain[route], route
        model.zero_grad()
        run().backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        assert grads.keys() == plain[f"{route} grads"].keys(), route
        for n, grad in grads.items():
            assert torch.allclose(plain[f"{route} grads"][n], grad, atol=1e-6), (route, n)
