"""FSDP2 for CNNs on the device mesh accelerate shards over, with fp32 norm layers in one FSDP unit.

accelerate's `fsdp2_prepare_model` (accelerate/utils/fsdp_utils.py) shards every block and the root over
`mesh[parallelism_config.fsdp_dim_names]`: ("dp_shard_cp",) for FSDP, ("dp_replicate", "dp_shard_cp") for HSDP, where
fully_shard replicates over the first dimension and shards over the second. Units built here must use that same
sub-mesh: the whole mesh differs from it as soon as a tensor- or context-parallel dimension exists, and units on two
meshes cannot share one root.
"""
from __future__ import annotations

import functools
import importlib

import torch
from accelerate.utils import DistributedType

# timm's norm layers that subclass none of torch's (its BatchNormAct2d, LayerNorm2d, GroupNorm1 ... do): RMS/simple
# norms, EvoNorm (Liu et al. 2020), FRN (Singh & Krishnan 2020), ConvNeXt-V2's GRN; a name this timm lacks is skipped
_TIMM_NORMS = {
    "timm.layers.norm": ("RmsNorm", "RmsNorm2d", "RmsNormFp32", "RmsNorm2dFp32", "SimpleNorm", "SimpleNorm2d",
                         "SimpleNormFp32", "SimpleNorm2dFp32"),
    "timm.layers.norm_act": ("RmsNormAct", "RmsNormAct2d", "RmsNormActFp32", "RmsNormAct2dFp32"),
    "timm.layers.evo_norm": ("EvoNorm2dB0", "EvoNorm2dB1", "EvoNorm2dB2", "EvoNorm2dS0", "EvoNorm2dS0a", "EvoNorm2dS1",
                             "EvoNorm2dS1a", "EvoNorm2dS2", "EvoNorm2dS2a"),
    "timm.layers.filter_response_norm": ("FilterResponseNormAct2d", "FilterResponseNormTlu2d"),
    "timm.layers.grn": ("GlobalResponseNorm",),
}
NORM_LAYERS = (torch.nn.modules.batchnorm._NormBase, torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.RMSNorm,
               *(cls for module, names in _TIMM_NORMS.items() for name in names
                 if (cls := getattr(importlib.import_module(module), name, None)) is not None))


def fsdp_mesh(accelerator):
    """The device mesh accelerate passes to fully_shard, or None (no parallelism config: fully_shard's default, the
    whole world as one shard dimension)."""
    mesh = getattr(accelerator, "torch_device_mesh", None)
    if mesh is None:
        return None
    return mesh[tuple(accelerator.parallelism_config.fsdp_dim_names)]


def norm_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Norm layers with parameters of their own, in module order."""
    return [m for m in model.modules()
            if isinstance(m, NORM_LAYERS) and any(True for _ in m.parameters(recurse=False))]


def shard_norm_layers(model: torch.nn.Module, compute_dtype: torch.dtype, mesh) -> int:
    """Make every norm layer of `model` part of ONE FSDP unit whose parameters are gathered in fp32; returns how many.

    One unit for all norms: an all-gather in forward and a reduce-scatter in backward per step for all of them
    (ResNet-50: 53 BatchNorms, ~0.2 MB of fp32 parameters), where a unit per norm layer issued two collectives of a few
    KB per layer. Each norm layer's input is cast to fp32 and its output back to `compute_dtype`, as a unit per norm
    layer did (PyTorch's test_fully_shard_mixed_precision.py, _test_norm_modules). fully_shard of a module list does
    that itself in torch 2.13 and 2.14 (torch/distributed/fsdp/_fully_shard/_fsdp_state.py,
    _register_group_forward_hooks); torch 2.11's group hooks cast the first module's input and the last one's output
    only, which left every other norm computing in bf16, so each layer also gets hooks of our own (`_inputs_to_fp32`,
    `_output_to`). The parameters stay gathered from forward to backward (reshard_after_forward=False): they are small,
    and resharding would add an all-gather in backward. Call it before the blocks are sharded, which then leave these
    parameters to this unit."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # noqa: PLC0415 (FSDP launches only)

    norms = norm_layers(model)
    if norms:
        policy = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32, output_dtype=compute_dtype)
        fully_shard(norms, mp_policy=policy, reshard_after_forward=False, mesh=mesh)
        for norm in norms:  # after fully_shard's hooks: on torch 2.13+ these find the dtypes already cast
            norm.register_forward_pre_hook(_inputs_to_fp32)
            norm.register_forward_hook(functools.partial(_output_to, compute_dtype))
    return len(norms)


def _inputs_to_fp32(module: torch.nn.Module, args: tuple) -> tuple:
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _output_to(dtype: torch.dtype, module: torch.nn.Module, args: tuple, output):
    return output.to(dtype) if torch.is_tensor(output) and output.is_floating_point() else output


# Gradients are reduce-scattered in fp32 under FSDP mixed precision: the regime of DDP + autocast, whose gradients of
# the fp32 parameters are all-reduced in fp32. bf16 would halve that traffic at the cost of 8-bit mantissa sums.
FSDP_REDUCE_DTYPE = torch.float32


def prepare_fsdp(model: torch.nn.Module, accelerator: Accelerator) -> torch.nn.Module:
    """What FSDP2 needs from a CNN before accelerate's prepare shards its blocks and root (a no-op otherwise).

    - Contiguous parameters: fully_shard refuses non-contiguous ones, and a k x k conv weight in channels_last is one.
      The input stays channels_last, which still selects cuDNN's NHWC kernels (the weight is converted per call).
    - Norm layers keep fp32 parameters and statistics under bf16/fp16: all of them form one FSDP unit with an fp32
      policy that casts each one's input up and its output back down (shard_norm_layers); one bf16 policy for
      all would make BatchNorm's weight bf16 beside fp32 running stats. It uses accelerate's own FSDP sub-mesh, so
      HSDP (--parallelism_config_dp_replicate_size) replicates and shards it as it does the blocks.
    - The reduction dtype for the rest is FSDP_REDUCE_DTYPE (accelerate's default would reduce in bf16).
    Call it before the optimizer is built: sharding replaces the parameters."""
    if accelerator.distributed_type != DistributedType.FSDP:
        return model
    from torch.distributed.fsdp import MixedPrecisionPolicy  # noqa: PLC0415 (FSDP launches only)

    plugin = accelerator.state.fsdp_plugin
    model = model.to(memory_format=torch.contiguous_format)
    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision)
    if compute is None:
        return model
    plugin.mixed_precision_policy = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=FSDP_REDUCE_DTYPE)
    shard_norm_layers(model, compute, fsdp_mesh(accelerator))
    return model
