"""One frozen config per run, with presets reproducing the papers and a reduced CPU budget."""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from sm_jax.data.registry import dataset_info

METHODS = ("dc", "dsa", "idc")
PRESETS = ("paper", "cpu")
CONV_IMPLS = ("auto", "fast", "patches", "winograd", "xla")  # auto + sorted(models.CONVS)
PRECISIONS = ("float32", "tensorfloat32", "bfloat16")  # names of jax_default_matmul_precision (backend.py)
AUTO_CHUNK = -1  # class_chunk: backend.auto_class_chunk decides per device
DISTANCE_NAMES = ("cosine", "mse", "l1")  # keys of matching.DISTANCES
METHOD_DISTANCE = {"dc": "cosine", "dsa": "cosine", "idc": "mse"}  # each method's own (Config.distance '')
AUG_OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")  # DSA's ops (augmentation.OPS)
EVAL_AUGS = ("none", "dc_crop_scale_rotate", "dc_crop_noise", *AUG_OPS)  # --eval-aug values besides ''


# DC/DSA (outer_loop, inner_loop) by ipc, from the official code.
_DC_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


class ConfigError(ValueError):
    """An invalid configuration (one line, user-facing)."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that determines a run.

    For DC/DSA, one iteration = a fresh network, then `outer_loop` matching steps, each followed (except the
    last) by `inner_loop` epochs of network training on the synthetic set. For IDC, one iteration = a fresh
    network, then `outer_loop` matching steps, each followed (except the last) by `inner_loop` network
    steps on real data (IDC's 100 inner steps x 32 net steps).
    """

    method: str = "dc"
    ipc: int = 10
    dataset: str = "cifar10"  # a name of data.DATASETS
    # subset matching
    subset_k: int = 2
    subset_lambda: float = 1.0
    subset_only: bool = False
    subset_batch_real: int = 0  # real images per (class, subset) term; 0 = batch_real
    # condensation budget
    iterations: int = 1000
    outer_loop: int = 10
    inner_loop: int = 50
    batch_real: int = 256
    batch_train: int = 256
    max_syn_per_class: int = 0  # IDC: decoded images matched per class per step (128); 0 = all
    factor: int = 1  # IDC multi-formation factor (2); 1 = no decoding
    init: str = "noise"  # 'noise' | 'real' | 'idc'
    distance: str = ""  # matching distance: '' = the method's own (cosine DC/DSA, mse IDC); 'mse', 'l1', 'cosine'
    aug_drop: str = ""  # comma-separated augmentation ops removed from the method's policies (e.g. 'flip' for digits)
    cutmix_prob: float = 0.5  # IDC: CutMix probability in network training and evaluation (0 = none)
    eval_aug: str = ""  # evaluation augmentation: '' = the method's own, 'none', or one op (e.g. DC's on MNIST)
    lr_img: float = 0.1
    momentum_img: float = 0.5
    lr_net: float = 0.01
    momentum_net: float = 0.0
    weight_decay_net: float = 0.0
    # network
    model: str = "convnet"  # the matching network: a name of models.ARCHS (the official --model)
    width: int = 128
    depth: int = 3
    norm: str = "instancenorm"
    conv_impl: str = "auto"  # the ConvNet's convolution: auto (fast on CPU, xla on accelerators), fast, patches, xla
    # evaluation
    eval_epochs: int = 300
    eval_models: int = 20
    eval_every: int = 0
    eval_batch: int = 256
    eval_lr: float = 0.01
    eval_parallel: int = 1  # evaluation networks trained together (vmapped) per compiled call
    eval_arch: str = ""  # architectures evaluated: comma-separated models.ARCHS names or pools (M, B, W, D, A, P, N);
    # '' = the matching network
    class_chunk: int = AUTO_CHUNK  # classes per vmapped program (bounds memory); 0 = all at once; -1 = auto
    precision: str = "float32"  # fp32 matmul / convolution precision on GPU/TPU (see backend.py for why)
    devices: int = 1  # devices the class axis (and evaluation networks) are sharded over; 0 = all visible
    holdout: int = 0  # >0: hold this many training images per class out and evaluate on them, not the test set
    eval_test_per_class: int = 0  # >0: evaluate on the first N test images of each class only (cheaper studies)
    # bookkeeping
    checkpoint_every: int = 100
    checkpoint_minutes: float = 5.0  # also checkpoint when this much wall time passed since the last save; 0 = off
    stop_grace: float = 20.0  # seconds a stopped run waits for the iteration in flight before saving the last one
    log_every: float = 30.0  # seconds between progress lines when the output is not a terminal
    seed: int = 0
    data_dir: str | None = None
    workdir: str = "runs/default"
    preset: str = "paper"

    @property
    def subset_real(self) -> int:
        return self.subset_batch_real or self.batch_real

    @property
    def syn_per_class(self) -> int:
        """Synthetic images per class that are matched and evaluated (decoded ones for IDC)."""
        return self.ipc * self.factor ** 2

    @property
    def use_subsets(self) -> bool:
        return self.subset_k > 1 and (self.subset_only or self.subset_lambda != 0)

    def replace(self, **kw) -> Config:
        return dataclasses.replace(self, **kw)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def identity(self) -> dict[str, Any]:
        """Fields a resumed run must share with the checkpoint (what changes the synthetic set); the distance as
        resolved, so that '' and the method's own name are the same run."""
        skip = {"eval_epochs", "eval_models", "eval_aug", "eval_arch", "eval_every", "eval_batch", "eval_parallel",
                "checkpoint_every", "data_dir", "workdir", "preset", "devices", "class_chunk", "conv_impl",
                "checkpoint_minutes", "stop_grace", "log_every", "precision", "eval_test_per_class"}
        out = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        out["distance"] = self.distance or METHOD_DISTANCE.get(self.method, "")
        return out


def legacy_identity(stored: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's identity with the fields that older versions did not record set to what they used
    (CIFAR-10, the method's own distance, no dropped augmentation, IDC's CutMix 0.5)."""
    old = {"dataset": "cifar10", "distance": METHOD_DISTANCE.get(stored.get("method"), ""), "aug_drop": "",
           "cutmix_prob": 0.5, "model": "convnet"}
    return {**old, **stored}


# IDC's per-dataset settings (its code's misc/reproduce.py and argument.py): matching distance, lr_img at ipc 10
# (scaled by ipc / 10 and, as its `tune_lr_img` does, by (28 / 32)^2 for Fashion-MNIST), images seen per network
# update (n_data; 64 per step), augmentation ops removed. CIFAR-100 is not in reproduce.py: CIFAR-10's distance
# and lr with the default n_data. MNIST at factor > 1 also drops cutout and CutMix (set in paper_preset).
IDC_DATASETS: dict[str, dict[str, Any]] = {
    "cifar10": dict(distance="mse", lr_img=5e-3, n_data=2000, aug_drop=""),
    "cifar100": dict(distance="mse", lr_img=5e-3, n_data=500, aug_drop=""),
    "svhn": dict(distance="mse", lr_img=5e-3, n_data=500, aug_drop="flip"),
    "mnist": dict(distance="l1", lr_img=1e-4, n_data=500, aug_drop="flip"),
    "fashion_mnist": dict(distance="l1", lr_img=1e-4 * (28 / 32) ** 2, n_data=500, aug_drop=""),
}


def paper_preset(method: str, ipc: int, dataset: str = "cifar10") -> dict[str, Any]:
    """The published budget of `method` at `ipc` on `dataset` (METHOD.md; the official codes for the other
    datasets); IDC uses the subset-matching paper's 200 iterations on every dataset."""
    if method in ("dc", "dsa"):
        outer, inner = _DC_LOOPS.get(ipc, (10, 50))
        dc_mnist = method == "dc" and dataset == "mnist"  # utils.get_daparam: augmented evaluation, 1000 epochs
        return dict(iterations=1000, outer_loop=outer, inner_loop=inner, batch_real=256, batch_train=256,
                    factor=1, init="noise" if method == "dc" else "real", lr_img=0.1, momentum_img=0.5,
                    lr_net=0.01, momentum_net=0.0, weight_decay_net=0.0, max_syn_per_class=0,
                    eval_epochs=300 if method == "dc" and not dc_mnist else 1000, eval_models=20, eval_batch=256,
                    eval_aug="dc_crop_scale_rotate" if dc_mnist else "",
                    checkpoint_every=50)
    d = IDC_DATASETS.get(dataset, IDC_DATASETS["cifar10"])  # an image folder: CIFAR-10's settings
    p = dict(iterations=200, outer_loop=100, inner_loop=-(-d["n_data"] // 64), batch_real=64, batch_train=64,
             factor=2, init="idc", lr_img=d["lr_img"] * ipc / 10, momentum_img=0.5, lr_net=0.01, momentum_net=0.9,
             weight_decay_net=5e-4, max_syn_per_class=128, eval_epochs=1000, eval_models=20, eval_batch=64,
             checkpoint_every=10, distance=d["distance"], aug_drop=d["aug_drop"], cutmix_prob=0.5)
    if dataset == "mnist":  # factor 2 > 1: "cutmix or cutout is not much effective" (reproduce.py)
        p.update(aug_drop="flip,cutout", cutmix_prob=0.0)
    return p


def cpu_preset(method: str, ipc: int, dataset: str = "cifar10") -> dict[str, Any]:
    """A reduced budget that finishes on 2 CPU cores in minutes (same algorithm, fewer/smaller steps)."""
    p = paper_preset(method, ipc, dataset)
    if method in ("dc", "dsa"):
        p.update(iterations=6, outer_loop=min(p["outer_loop"], 3), inner_loop=min(p["inner_loop"], 5),
                 batch_real=32, eval_epochs=40, eval_models=3, checkpoint_every=2)
    else:
        p.update(iterations=4, outer_loop=8 if ipc < 10 else 6, inner_loop=3, batch_real=32,
                 eval_epochs=40 if ipc < 10 else 20, eval_models=3, checkpoint_every=1)
    return p


_PRESETS = {"paper": paper_preset, "cpu": cpu_preset}


def default_subset_k(syn_per_class: int) -> int:
    """K when none is given: 2 (the paper's) where 2 divides the per-class synthetic count, else 1 (the base
    method): DC/DSA at odd ipc, e.g. the common first run at ipc 1."""
    return 2 if syn_per_class % 2 == 0 else 1


def make_config(method: str, ipc: int, preset: str = "paper", dataset: str = "cifar10", **overrides: Any) -> Config:
    """Resolves preset then explicit overrides (None values are ignored) and validates.

    Raises:
      ConfigError: for an unknown method/preset or invalid values.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if not isinstance(ipc, int) or ipc < 1:
        raise ConfigError(f"--ipc must be a positive integer, got {ipc}")
    dataset = _dataset_name(dataset)
    fields = dict(_PRESETS[preset](method, ipc, dataset), method=method, ipc=ipc, preset=preset, dataset=dataset)
    fields.update({k: v for k, v in overrides.items() if v is not None})
    if isinstance(fields.get("model"), str):
        fields["model"] = fields["model"].lower()  # official names are CamelCase: ConvNetBN = convnetbn
    fields.setdefault("subset_k", default_subset_k(ipc * fields.get("factor", 1) ** 2))
    cfg = Config(**fields)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Raises ConfigError naming the first invalid field."""
    if cfg.method not in METHODS:
        raise ConfigError(f"unknown method {cfg.method!r}; choose one of {', '.join(METHODS)}")
    if cfg.ipc < 1:
        raise ConfigError(f"--ipc must be >= 1, got {cfg.ipc}")
    if cfg.subset_k < 1:
        raise ConfigError(f"--subset-k must be >= 1, got {cfg.subset_k}")
    if cfg.syn_per_class % cfg.subset_k:
        what = f"{cfg.syn_per_class} decoded images" if cfg.factor > 1 else f"ipc {cfg.ipc}"
        raise ConfigError(f"--subset-k {cfg.subset_k} does not divide the per-class synthetic count ({what})")
    if cfg.subset_only and cfg.subset_k < 2:
        raise ConfigError("--subset-only needs --subset-k >= 2")
    for name in ("checkpoint_minutes", "stop_grace", "log_every"):
        if not getattr(cfg, name) >= 0:  # also refuses nan
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    if not (cfg.lr_img > 0 and math.isfinite(cfg.lr_img)):
        raise ConfigError(f"--lr-img must be a positive finite number, got {cfg.lr_img}")
    for name in ("iterations", "eval_epochs", "eval_models", "eval_every", "checkpoint_every", "subset_batch_real",
                 "max_syn_per_class", "inner_loop", "holdout", "devices", "eval_test_per_class"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    for name in ("outer_loop", "batch_real", "batch_train", "eval_batch", "width", "depth", "factor",
                 "eval_parallel"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if cfg.subset_lambda < 0:
        raise ConfigError(f"--subset-lambda must be >= 0, got {cfg.subset_lambda}")
    if cfg.init not in ("noise", "real", "idc"):
        raise ConfigError(f"unknown init {cfg.init!r}; choose noise, real or idc")
    from sm_jax.models import ARCHS, NORMS, arch_names  # here: the models pull in jax, the config does not

    if cfg.norm not in NORMS:
        raise ConfigError(f"unknown norm {cfg.norm!r}; choose one of {', '.join(NORMS)}")
    if cfg.model.lower() not in ARCHS:
        raise ConfigError(f"unknown model {cfg.model!r}; choose one of {', '.join(ARCHS)}")
    try:
        arch_names(cfg.eval_arch)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if cfg.class_chunk < AUTO_CHUNK:
        raise ConfigError(f"--class-chunk must be auto or >= 0, got {cfg.class_chunk}")
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {cfg.precision!r}; choose one of {', '.join(PRECISIONS)}")
    if cfg.conv_impl not in CONV_IMPLS:
        raise ConfigError(f"unknown conv implementation {cfg.conv_impl!r}; choose one of {', '.join(CONV_IMPLS)}")
    _dataset_name(cfg.dataset)
    if cfg.distance and cfg.distance not in DISTANCE_NAMES:
        raise ConfigError(f"unknown distance {cfg.distance!r}; choose one of {', '.join(DISTANCE_NAMES)}")
    if not 0 <= cfg.cutmix_prob <= 1:
        raise ConfigError(f"--cutmix-prob must be in [0, 1], got {cfg.cutmix_prob}")
    if cfg.eval_aug and cfg.eval_aug not in EVAL_AUGS:
        raise ConfigError(f"unknown evaluation augmentation {cfg.eval_aug!r}; choose one of {', '.join(EVAL_AUGS)}")
    unknown = [op for op in aug_drop_ops(cfg) if op not in AUG_OPS]
    if unknown:
        raise ConfigError(f"unknown augmentation op {unknown[0]!r} in --aug-drop; known: {', '.join(AUG_OPS)}")


def aug_drop_ops(cfg: Config) -> tuple[str, ...]:
    return tuple(op.strip() for op in cfg.aug_drop.split(",") if op.strip())


def _dataset_name(name: str) -> str:
    """The registry name of `name`; ConfigError for an unknown one."""
    try:
        return dataset_info(name).name
    except ValueError as e:
        raise ConfigError(str(e)) from None
