"""ResNets: the DC/DSA code's ResNet-18 (`networks.ResNet18`, `ResNet18BN`, `ResNet18BN_AP`) and IDC's ResNet-10
with average-pool downsampling (`models/resnet_ap.py`: its CIFAR form, widths 32-256, and its ImageNet form, widths
64-512 with a stem by image size).

`avgpool_down` ('AP'): a strided block convolves at stride 1 and average-pools 2x2 after its first activation, and
its shortcut is a 1x1 convolution, 2x2 average pooling, then the norm (instead of strided convolutions).
"""
from __future__ import annotations

import math

import jax
from flax import linen as nn

from sm_jax.models.conv_ops import resolve_conv
from sm_jax.models.layers import avg_pool2, conv, dense
from sm_jax.models.norms import apply_norm, make_norm


def _he_normal(k: int, out: int):
    """IDC's init: N(0, sqrt(2 / (k * k * out)))."""
    std = math.sqrt(2.0 / (k * k * out))
    return lambda key, shape, dtype=jax.numpy.float32: std * jax.random.normal(key, shape, dtype)


class BasicBlock(nn.Module):
    planes: int
    stride: int = 1
    norm: str = "instancenorm"
    avgpool_down: bool = False
    he_init: bool = False
    conv_impl: str = "fast"  # a name of conv_ops.CONVS (resolved)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        cin = x.shape[-1]
        init = (lambda k: _he_normal(k, self.planes)) if self.he_init else (lambda k: None)
        conv_stride = 1 if self.avgpool_down else self.stride
        out = conv(self.planes, 3, cin, 1, "conv1", self.conv_impl, conv_stride, bias=False, kernel_init=init(3))(x)
        out = nn.relu(apply_norm(make_norm(self.norm, "norm1"), out, train))
        if self.avgpool_down and self.stride != 1:
            out = avg_pool2(out)
        out = conv(self.planes, 3, self.planes, 1, "conv2", self.conv_impl, bias=False, kernel_init=init(3))(out)
        out = apply_norm(make_norm(self.norm, "norm2"), out, train)
        short = x
        if self.stride != 1 or cin != self.planes:
            short = conv(self.planes, 1, cin, 0, "short_conv", self.conv_impl, conv_stride, bias=False,
                         kernel_init=init(1))(x)
            if self.avgpool_down and self.stride != 1:
                short = avg_pool2(short)
            short = apply_norm(make_norm(self.norm, "short_norm"), short, train)
        return nn.relu(out + short)


class ResNet(nn.Module):
    """stem conv3x3 -> norm -> ReLU, four stages of BasicBlocks (strides 1, 2, 2, 2), pooling, dense.

    Attributes:
      blocks: blocks per stage; widths: channels per stage (the stem has widths[0]).
      head: 'avg4' (4x4 average pooling: ResNet-18), 'flatten' (ResNet18BN_AP flattens the 4x4x512 map), or
        'global' (global average pooling: IDC's ResNet-AP).
    """

    num_classes: int = 10
    blocks: tuple = (2, 2, 2, 2)
    widths: tuple = (64, 128, 256, 512)
    norm: str = "instancenorm"
    avgpool_down: bool = False
    head: str = "avg4"
    he_init: bool = False
    conv_impl: str = "fast"  # a name of conv_ops.CONVS (resolved)
    stem: str = "small"  # IDC's IntroBlock: small conv3x3; mid conv3x3 + 2x2 avg pool; large conv7x7 + 4x4 avg pool

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        # x: (batch, H, W, C) normalised images -> (batch, num_classes) logits
        k = 7 if self.stem == "large" else 3
        init = _he_normal(k, self.widths[0]) if self.he_init else None
        x = conv(self.widths[0], k, x.shape[-1], k // 2, "stem", self.conv_impl, bias=False, kernel_init=init)(x)
        x = nn.relu(apply_norm(make_norm(self.norm, "stem_norm"), x, train))
        if self.stem == "large":
            x = nn.avg_pool(x, (4, 4), (4, 4))
        elif self.stem == "mid":
            x = avg_pool2(x)
        for s, (n, planes) in enumerate(zip(self.blocks, self.widths)):
            for b in range(n):
                x = BasicBlock(planes, (1 if s == 0 else 2) if b == 0 else 1, self.norm, self.avgpool_down,
                               self.he_init, self.conv_impl, name=f"stage{s}_block{b}")(x, train)
        if self.head == "avg4":  # F.avg_pool2d(out, 4)
            x = nn.avg_pool(x, (4, 4), (4, 4))
        elif self.head == "global":
            x = x.mean((1, 2), keepdims=True)
        x = x.reshape(x.shape[0], -1)
        return dense(self.num_classes, x.shape[-1], "fc")(x)


def make_resnet18(num_classes: int = 10, norm: str = "instancenorm", avgpool_down: bool = False,
                  conv_impl: str = "auto") -> ResNet:
    """DC/DSA's ResNet18 (instance norm), ResNet18BN (norm='batchnorm') and ResNet18BN_AP (+ avgpool_down)."""
    make_norm(norm, "check")
    return ResNet(num_classes=num_classes, norm=norm, avgpool_down=avgpool_down,
                  head="flatten" if avgpool_down else "avg4", conv_impl=resolve_conv(conv_impl))


def make_resnet10_ap(num_classes: int = 10, norm: str = "batchnorm", conv_impl: str = "auto", imagenet: bool = False,
                     side: int = 32) -> ResNet:
    """IDC's ResNet-10 with average-pool downsampling (`models/resnet_ap.py`, one block per stage).

    Args:
      imagenet: False: its CIFAR form (widths 32-256, a 3x3 stem); True: its ImageNet form (widths 64-512), whose
        stem depends on the image side: 3x3 up to 64 pixels, 3x3 + 2x2 average pooling up to 128, else 7x7 + 4x4.
      side: the image side (the ImageNet form's stem).
    """
    make_norm(norm, "check")
    widths, stem = (32, 64, 128, 256), "small"
    if imagenet:
        widths, stem = (64, 128, 256, 512), "small" if side <= 64 else "mid" if side <= 128 else "large"
    return ResNet(num_classes=num_classes, blocks=(1, 1, 1, 1), widths=widths, norm=norm, avgpool_down=True,
                  head="global", he_init=True, conv_impl=resolve_conv(conv_impl), stem=stem)
