"""The models: one module per family, chosen by name through `MODELS`.

`common` (normalisation, init, loss), `conv_ops` (the interchangeable 3x3 convolutions, Winograd and the fused RGB
layer, usable by any model), `layers`, and one module per architecture family: `convnet` (DC/DSA/IDC's
ConvNet-D), `mlp` and `lenet` (the DC/DSA code's MLP and LeNet).
"""
from __future__ import annotations

from sm_jax.models.common import MEAN, STD, cross_entropy, denormalize, init_params, normalize, torch_uniform
from sm_jax.models.conv_ops import (CONVS, FEW_CHANNELS, conv3x3_fast, conv3x3_instancenorm, conv3x3_patches,
                                    conv3x3_winograd, conv3x3_xla, resolve_conv_impl)
from sm_jax.models.convnet import NORMS, ConvNet, make_convnet
from sm_jax.models.layers import Conv3x3, InstanceNorm, avg_pool2
from sm_jax.models.lenet import LeNet, make_lenet
from sm_jax.models.mlp import MLP, make_mlp

# name -> constructor(num_classes, **options); the family's options are its constructor's keyword arguments
MODELS = {"convnet": make_convnet, "mlp": make_mlp, "lenet": make_lenet}


def build(name: str, num_classes: int = 10, **options):
    """The model `name` of MODELS with its family's options; ValueError for an unknown name."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name](num_classes, **options)


def make_model(num_classes: int = 10, width: int = 128, depth: int = 3, norm: str = "instancenorm",
               conv_impl: str = "auto") -> ConvNet:
    """ConvNet-D, the network the methods match with; raises ValueError for an unknown norm or convolution."""
    return build("convnet", num_classes, width=width, depth=depth, norm=norm, conv_impl=conv_impl)


__all__ = ["CONVS", "FEW_CHANNELS", "MEAN", "MLP", "MODELS", "NORMS", "STD", "Conv3x3", "ConvNet", "InstanceNorm",
           "LeNet", "avg_pool2", "build", "conv3x3_fast", "conv3x3_instancenorm", "conv3x3_patches",
           "conv3x3_winograd", "conv3x3_xla", "cross_entropy", "denormalize", "init_params", "make_convnet",
           "make_lenet", "make_mlp", "make_model", "normalize", "resolve_conv_impl", "torch_uniform"]
