"""The models: one module per family, chosen by name.

`MODELS` maps a family to its constructor (`build(family, classes, **options)`); `ARCHS` maps the official
architecture names of the DC/DSA and IDC codes (`--model`, `--eval-arch`) to a family and its options, and
`EVAL_POOLS` the official evaluation pools (`M`, `W`, `D`, `A`, `P`, `N`) to names. `make_net` builds a pure `Net`
for a dataset's image shape. `common` (normalisation, init, loss), `conv_ops` (the interchangeable
convolution forms, `CONVS`: Winograd, im2col, XLA's, the fused RGB layer), `layers`, `norms` and `net` are shared.
"""
from __future__ import annotations

import inspect

from sm_jax.models.alexnet import make_alexnet
from sm_jax.models.common import cross_entropy, denormalize, normalize
from sm_jax.models.conv_ops import CONVS, resolve_conv
from sm_jax.models.convnet import make_convnet
from sm_jax.models.lenet import make_lenet
from sm_jax.models.mlp import make_mlp
from sm_jax.models.net import FnNet, Net
from sm_jax.models.norms import NORMS
from sm_jax.models.resnet import make_resnet10_ap, make_resnet18
from sm_jax.models.vgg import make_vgg11

# family -> constructor(num_classes, **options); the family's options are its constructor's keyword arguments
MODELS = {"convnet": make_convnet, "mlp": make_mlp, "lenet": make_lenet, "alexnet": make_alexnet,
          "vgg11": make_vgg11, "resnet18": make_resnet18, "resnet10_ap": make_resnet10_ap}

# official architecture name (lower case) -> (family, options); `convnet` itself takes the run's width/depth/norm
ARCHS: dict[str, tuple[str, dict]] = {
    "convnet": ("convnet", {}),
    "mlp": ("mlp", {}), "lenet": ("lenet", {}),
    "alexnet": ("alexnet", {}), "alexnetbn": ("alexnet", {"norm": "batchnorm"}),
    "vgg11": ("vgg11", {}), "vgg11bn": ("vgg11", {"norm": "batchnorm"}),
    "resnet18": ("resnet18", {}), "resnet18bn": ("resnet18", {"norm": "batchnorm"}),
    "resnet18bn_ap": ("resnet18", {"norm": "batchnorm", "avgpool_down": True}),
    "resnet10_ap": ("resnet10_ap", {}), "resnet10_ap_in": ("resnet10_ap", {"norm": "instancenorm"}),
    "resnet10_ap_imagenet": ("resnet10_ap", {"imagenet": True, "norm": "instancenorm"}),  # IDC on ImageNet
    **{f"convnetw{w}": ("convnet", {"width": w}) for w in (32, 64, 128, 256)},
    **{f"convnetd{d}": ("convnet", {"depth": d}) for d in range(1, 9)},
    "convnetas": ("convnet", {"act": "sigmoid"}), "convnetar": ("convnet", {"act": "relu"}),
    "convnetal": ("convnet", {"act": "leakyrelu"}), "convnetasw": ("convnet", {"act": "swish"}),
    "convnetnn": ("convnet", {"norm": "none"}), "convnetbn": ("convnet", {"norm": "batchnorm"}),
    "convnetln": ("convnet", {"norm": "layernorm"}), "convnetin": ("convnet", {"norm": "instancenorm"}),
    "convnetgn": ("convnet", {"norm": "groupnorm"}),
    "convnetnp": ("convnet", {"pooling": "none"}), "convnetmp": ("convnet", {"pooling": "maxpooling"}),
    "convnetap": ("convnet", {"pooling": "avgpooling"}),
}
# the official `--eval_mode` pools (DC/DSA utils.get_eval_pool)
EVAL_POOLS = {
    "M": ("mlp", "convnet", "lenet", "alexnet", "vgg11", "resnet18"),
    "B": ("convnetbn", "alexnetbn", "vgg11bn", "resnet18bn", "resnet18bn_ap"),
    "W": ("convnetw32", "convnetw64", "convnetw128", "convnetw256"),
    "D": ("convnetd1", "convnetd2", "convnetd3", "convnetd4"),
    "A": ("convnetas", "convnetar", "convnetal"),
    "P": ("convnetnp", "convnetmp", "convnetap"),
    "N": ("convnetnn", "convnetbn", "convnetln", "convnetin", "convnetgn"),
}


def build(name: str, num_classes: int = 10, **options):
    """The Flax module of family `name` (MODELS) or architecture `name` (ARCHS; `options` override its own).

    Raises:
      ValueError: for an unknown name or option value.
    """
    key = name.lower()
    if key in MODELS:
        return MODELS[key](num_classes, **options)
    if key in ARCHS:
        family, own = ARCHS[key]
        return MODELS[family](num_classes, **{**own, **options})
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(ARCHS)}")


def arch_names(text: str) -> tuple[str, ...]:
    """'a,b' or pool letters ('M', 'B', ...; mixable: 'M,convnetbn') -> architecture names, in order, once each.

    Raises:
      ValueError: naming the first unknown entry.
    """
    out: list[str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        names = EVAL_POOLS.get(part) or (part.lower(),)
        for n in names:
            if n not in ARCHS:
                raise ValueError(f"unknown architecture {part!r}; choose from {', '.join(ARCHS)} or a pool "
                                 f"{'/'.join(EVAL_POOLS)}")
            if n not in out:
                out.append(n)
    return tuple(out)


def make_net(name: str, num_classes: int, image_shape=(32, 32, 3), width: int = 128, depth: int = 3,
             norm: str = "instancenorm", conv_impl: str = "auto") -> Net:
    """A pure Net of architecture `name` for images of `image_shape`, its convolutions on the form `conv_impl`
    (conv_ops.CONVS or 'auto'); the plain `convnet` takes width / depth / norm (the run's matching network), named
    variants their official ones."""
    key = name.lower()
    if key not in ARCHS and key not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(ARCHS)}")
    family = ARCHS[key][0] if key in ARCHS else key
    options: dict = {}
    if "conv_impl" in inspect.signature(MODELS[family]).parameters:  # every family with a convolution
        options["conv_impl"] = conv_impl
    if "side" in inspect.signature(MODELS[family]).parameters:  # a form chosen by the image size
        options["side"] = image_shape[0]
    if key == "convnet":
        options.update(width=width, depth=depth, norm=norm)
    return Net(build(key, num_classes, **options), tuple(image_shape), key)


__all__ = ["ARCHS", "CONVS", "EVAL_POOLS", "MODELS", "NORMS", "FnNet", "Net", "arch_names", "build", "cross_entropy",
           "denormalize", "make_net", "normalize", "resolve_conv"]
