"""One frozen config per run. Each field carries its metadata (help, choices from the registries, bounds, whether it
belongs to the run's identity), from which the command line, the validation and "is this the same run?" derive.

A config is built by `make_config(method, ipc, preset, dataset, **fields)`: the method's preset (its own module in
sm_jax.methods), then the fields given.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from sm_jax.augmentation import DSA_OPS, OPS
from sm_jax.backend import AUTO_CHUNK, AUTO_PARALLEL, FUSED, PRECISIONS
from sm_jax.data import DATASETS, dataset_info
from sm_jax.errors import ConfigError
from sm_jax.evaluation import BASELINES, PROTOCOLS
from sm_jax.matching import DISTANCES
from sm_jax.methods import INITS, METHODS, PRESETS
from sm_jax.models import ARCHS, CONVS, NORMS, arch_names

# What a field is to a run: IDENTITY fields change the synthetic set (a checkpoint resumes only under the same
# ones); RESULT fields change the recorded final evaluation, not the set; the others change neither (where and how
# the run goes: devices, logging, convolution form, ...).
IDENTITY, RESULT, OTHER = "identity", "result", "other"


def _field(default: Any, help: str, *, kind: str = IDENTITY, choices: Callable[[], tuple] | None = None,
           low: float | None = None, label: str | None = None, words: dict[str, int] | None = None,
           flag: bool = True) -> Any:
    """A Config field with its metadata.

    Args:
      help: the --flag's help (choices and the default are appended).
      kind: IDENTITY, RESULT or OTHER.
      choices: () -> the allowed values (read from a registry; '' is also allowed where it is the default).
      low: the smallest allowed value.
      label: the name in "unknown <label>" errors (default: the field's name).
      words: an int field's named values below `low` ({"auto": -1}): the flag takes the names, errors list them.
      flag: whether the command line sets it (False: a record the preset writes).
    """
    return dataclasses.field(default=default, metadata={"help": help, "kind": kind, "choices": choices, "low": low,
                                                         "label": label, "words": words or {}, "flag": flag})


def _evaluation_augmentations() -> tuple[str, ...]:
    return ("none", *OPS)


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that determines a run.

    For DC/DSA, one iteration = a fresh network, then `outer_loop` matching steps, each followed (except the
    last) by `inner_loop` epochs of network training on the synthetic set. For IDC, one iteration = a fresh
    network, then `outer_loop` matching steps, each followed (except the last) by `inner_loop` network
    steps on real data (IDC's 100 inner steps x 32 net steps).
    """

    method: str = _field("dc", "condensation method", choices=lambda: tuple(METHODS))
    ipc: int = _field(10, "stored images per class", low=1)
    dataset: str = _field("cifar10", "dataset (folder: any {train,test}/<class>/ image folder or archive given by "
                          "--data-dir)", choices=lambda: tuple(DATASETS))
    # subset matching
    subset_k: int = _field(2, "subsets per class K (1 = the base method; default 2 where 2 divides the per-class "
                           "synthetic count, else 1)", low=1)
    subset_lambda: float = _field(1.0, "lambda_0 of the subset term, decayed linearly to 0", low=0)
    subset_only: bool = _field(False, "optimise the subset term alone")
    subset_batch_real: int = _field(0, "real images per (class, subset) term (0 = --batch-real)", low=0)
    # condensation budget
    iterations: int = _field(1000, "condensation iterations (0 = evaluate the initial set)", low=0)
    outer_loop: int = _field(10, "matching steps per iteration", low=1)
    inner_loop: int = _field(50, "network training per matching step (epochs DC/DSA, steps IDC)", low=0)
    batch_real: int = _field(256, "real images per class per matching step", low=1)
    batch_train: int = _field(256, "batch of the inner-loop network training", low=1)
    max_syn_per_class: int = _field(0, "IDC: decoded images matched per class per step (0 = all)", low=0)
    factor: int = _field(1, "IDC multi-formation factor (1 = no decoding)", low=1)
    init: str = _field("noise", "initial synthetic images", choices=lambda: tuple(INITS))
    distance: str = _field("", "matching distance ('' = the method's own, or the dataset's preset)",
                           choices=lambda: tuple(DISTANCES))
    aug_drop: str = _field("", "comma-separated augmentation ops removed from the method's policies (e.g. flip "
                           "for digits)")
    cutmix_prob: float = _field(0.5, "IDC: CutMix probability in network training and evaluation (0 = none)", low=0)
    eval_aug: str = _field("", "evaluation augmentation ('' = the method's own, or the dataset's preset)",
                           kind=RESULT, choices=_evaluation_augmentations, label="evaluation augmentation")
    lr_img: float = _field(0.1, "synthetic-image learning rate")
    momentum_img: float = _field(0.5, "synthetic-image momentum", low=0)
    lr_net: float = _field(0.01, "inner-loop network learning rate", low=0)
    momentum_net: float = _field(0.0, "inner-loop network momentum", low=0)
    weight_decay_net: float = _field(0.0, "inner-loop network weight decay", low=0)
    # trajectory matching (MTT): the student's unroll, the learned lr, the experts
    syn_steps: int = _field(50, "MTT: student SGD steps unrolled per iteration", low=1)
    expert_epochs: int = _field(2, "MTT: expert epochs the student's steps are matched to", low=1)
    max_start_epoch: int = _field(2, "MTT: the start epoch is drawn from [0, N)", low=1)
    batch_syn: int = _field(0, "MTT: synthetic images per student step (0 = all)", low=0)
    lr_lr: float = _field(1e-7, "MTT: learning rate of the learned student lr", low=0)
    lr_teacher: float = _field(0.01, "MTT: the experts' SGD lr and the learned student lr's initial value", low=0)
    tesla: bool = _field(False, "MTT: TESLA's constant-memory approximation of the gradient instead of the exact one")
    remat: bool = _field(True, "MTT: recompute the unrolled steps in the backward pass (memory constant in "
                         "--syn-steps; --no-remat keeps every step's activations, as the official code does); the "
                         "same gradient either way", kind=OTHER)
    zca: bool = _field(False, "ZCA-whiten every image (eps 0.1, fitted on the training split; MTT)")
    num_experts: int = _field(100, "MTT: expert trajectories (and as many per subset with --subset-k > 1)", low=1)
    expert_train_epochs: int = _field(50, "MTT: epochs of each expert", low=1)
    expert_batch: int = _field(256, "MTT: the experts' batch", low=1)
    expert_per_class: int = _field(0, "MTT: experts train on the first N training images of each class (0 = all)",
                                   low=0)
    expert_seed: int = _field(0, "MTT: the experts' seed (their inits, batches, augmentation and subsets)")
    experts_dir: str | None = _field(None, "MTT: the experts' directory, shared by every run of the same experts "
                                     "(default: <cache>/experts/<dataset>_<hash of their settings>)", kind=OTHER)
    # network
    model: str = _field("convnet", "matching network: a name of the model zoo, official spelling accepted (ConvNet, "
                        "ConvNetBN, ResNet18BN_AP, ...)", choices=lambda: tuple(ARCHS))
    width: int = _field(128, "ConvNet width", low=1)
    depth: int = _field(3, "ConvNet depth", low=1)
    norm: str = _field("instancenorm", "ConvNet norm", choices=lambda: tuple(NORMS))
    conv_impl: str = _field("auto", "every network's convolution (auto: fast on CPU, xla on GPU/TPU); all give the "
                            "same network up to float rounding", kind=OTHER, choices=lambda: ("auto", *CONVS),
                            label="conv implementation")
    # evaluation
    eval_epochs: int = _field(300, "epochs of each evaluation network", kind=RESULT, low=0)
    eval_models: int = _field(20, "evaluation networks", kind=RESULT, low=0)
    eval_every: int = _field(0, "evaluate every N iterations (0 = only at the end)", kind=OTHER, low=0)
    eval_batch: int = _field(256, "evaluation batch", kind=RESULT, low=1)
    eval_lr: float = _field(0.01, "evaluation learning rate", kind=RESULT, low=0)
    eval_protocol: str = _field("", "what the evaluation networks learn from: hard (the class labels), teacher (a "
                                "teacher's soft outputs on each augmented batch), learned (the set's soft labels and "
                                "learned lr where it has them); '' = the method's own (hard; MTT: learned)",
                                kind=RESULT, choices=lambda: tuple(PROTOCOLS))
    metrics: str = _field("", "also score the set with DD-Ranking's HLR, IOR, LRS and ARS (evaluation.ddranking: a "
                          "real-data reference and teacher trained once and cached, a random subset, an lr grid on "
                          "held-out training images; '' = none)", kind=RESULT, choices=lambda: ("ddranking",))
    eval_temperature: float = _field(1.0, "temperature of soft targets (the teacher protocol, a set's soft labels)",
                                     kind=RESULT, low=0)
    eval_parallel: int = _field(AUTO_PARALLEL, "evaluation networks trained together (vmapped) per compiled call "
                                "(auto: one per device, or 20 where an accelerator's estimate finds them clearly "
                                "faster, see docs/gpu.md)",
                                kind=OTHER, low=1, words={"auto": AUTO_PARALLEL})
    eval_arch: str = _field("", "architectures evaluated: comma-separated names and/or official pools M (MLP, "
                            "ConvNet, LeNet, AlexNet, VGG11, ResNet18), B (the batch-norm ones), W, D, A, P, N ('' = "
                            "the matching network)", kind=RESULT)
    class_chunk: int = _field(AUTO_CHUNK, "classes matched per vmapped program; lower = less memory (0 = all at "
                              "once; auto: 1 on CPU, the fastest there, and on GPU/TPU the largest chunk predicted to "
                              "fit the device's memory)", kind=OTHER, low=0, words={"auto": AUTO_CHUNK})
    syn_chunk: int = _field(AUTO_CHUNK, "classes per program of the matching's synthetic side, taken after the "
                            "real side's gradients (--class-chunk classes per program; 0 = all; fused: both sides "
                            "in one program per class chunk; auto: fused on CPU, and on GPU/TPU split where "
                            "estimated faster in no more memory, see docs/gpu.md); the same losses either way",
                            kind=OTHER, low=0, words={"auto": AUTO_CHUNK, "fused": FUSED})
    precision: str = _field("float32", "float32 matmul/convolution precision on GPU/TPU: float32 (faithful, see "
                            "docs/gpu.md), tensorfloat32 or bfloat16 (faster); no effect on CPU", kind=OTHER,
                            choices=lambda: PRECISIONS)
    devices: int = _field(1, "shard the class axis and the evaluation networks over N devices (0 = all)", kind=OTHER,
                          low=0)
    holdout: int = _field(0, "hold N training images per class out and evaluate on them instead of the test set "
                          "(for choosing hyper-parameters)", low=0)
    eval_test_per_class: int = _field(0, "evaluate on the first N test images of each class only (a cheaper, fixed "
                                      "test subset for studies; 0 = the whole test set)", kind=RESULT, low=0)
    baseline: str = _field("", "also evaluate a random real subset of the training split, as many images per class "
                           "as the set trains on, with the same protocol and networks, and report the difference "
                           "('' = none: it doubles the evaluation's cost)", kind=RESULT, choices=lambda: BASELINES)
    # bookkeeping
    checkpoint_every: int = _field(100, "checkpoint every N iterations", kind=OTHER, low=0)
    checkpoint_minutes: float = _field(5.0, "also checkpoint when N minutes passed since the last save (0 = off)",
                                       kind=OTHER, low=0)
    stop_grace: float = _field(20.0, "on SIGTERM / Ctrl-C, seconds to wait for the iteration in flight before "
                               "saving the last finished one (SLURM's default grace is 30)", kind=OTHER, low=0)
    log_every: float = _field(30.0, "seconds between progress lines when the output is not a terminal", kind=OTHER,
                              low=0)
    tensorboard: bool = _field(True, "write the metrics and the synthetic grid at each evaluation to TensorBoard "
                               "event files in <workdir>/tensorboard (--no-tensorboard: off)", kind=OTHER)
    seed: int = _field(0, "run seed: the partitions, the initial set, every draw")
    experiments: int = _field(1, "condensations of this configuration, from seeds seed, seed+1, ..., each in "
                              "<workdir>/exp<i>, results.json aggregating all their networks (the papers report 5: "
                              "num_exp = 5 in the official DC / DSA / DM codes; 1 = the plain run in <workdir>)",
                              kind=OTHER, low=1)
    data_dir: str | None = _field(None, "TFDS data dir, image-folder archive/directory, or the dataset's official "
                                  "archive (or its extracted folder); default: TFDS download", kind=OTHER)
    res: int = _field(0, "image side an ImageNet subset is resized to when its cache is built (0 = the dataset's "
                      "own: 128 for MTT's subsets)", low=0)
    data_on: str = _field("auto", "where the real training images stay while condensing: device (the whole split "
                          "on the device), host (each program gathers the rows it draws, so the device holds only "
                          "batches), auto (host when the split is over 2 GiB or 1/8 of the device's memory); the same "
                          "result either way", kind=OTHER, choices=lambda: ("auto", "device", "host"))
    workdir: str = _field("runs/default", "run directory", kind=OTHER)
    preset: str = _field("paper", "budget preset", kind=OTHER, choices=lambda: PRESETS)
    preset_note: str = _field("", "whose settings the preset took where (dataset, ipc) has none of its own ('' = "
                              "its own; Method.preset_note)", kind=OTHER, flag=False)

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

    @property
    def aug_drop_ops(self) -> tuple[str, ...]:
        return tuple(op.strip() for op in self.aug_drop.split(",") if op.strip())

    def replace(self, **kw) -> Config:
        return dataclasses.replace(self, **kw)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """A Config from a recorded one (config.json, a checkpoint's metadata): fields it lacks, added by later
        versions, take their defaults, which is what those versions ran with."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def fields_of(self, *kinds: str) -> dict[str, Any]:
        """The fields of the given kinds, as JSON values; the distance as resolved ('' = the method's own)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata["kind"] in kinds}
        if "distance" in out:
            out["distance"] = self.distance or METHODS[self.method].distance
        return json.loads(json.dumps(out))

    def identity(self) -> dict[str, Any]:
        """The fields that change the synthetic set: what a resumed run must share with its checkpoint."""
        return self.fields_of(IDENTITY)


def run_differences(recorded: dict[str, Any], cfg: Config, results: bool = False) -> str:
    """Whether a run recorded with the config `recorded` (a dict of Config fields) is the run `cfg` describes: ''
    if so, else the differing fields for a message. `results`: also the fields of the recorded final evaluation.

    The one answer to "is this the same run?" (resume, a finished run, a study's finished runs).
    """
    kinds = (IDENTITY, RESULT) if results else (IDENTITY,)
    a, b = Config.from_dict(recorded).fields_of(*kinds), cfg.fields_of(*kinds)
    keys = sorted(k for k in a if a[k] != b[k])
    return ", ".join(f"{k}: {a[k]!r} (recorded) vs {b[k]!r} (now)" for k in keys[:4])


def default_subset_k(syn_per_class: int) -> int:
    """K when none is given: 2 (the paper's) where 2 divides the per-class synthetic count, else 1 (the base
    method): DC/DSA at odd ipc, e.g. the common first run at ipc 1."""
    return 2 if syn_per_class % 2 == 0 else 1


def default_workdir(cfg: Config) -> str:
    """runs/[<dataset>_]<method>_ipc<N>_k<K>_s<seed> (no dataset prefix for CIFAR-10)."""
    prefix = "" if cfg.dataset == "cifar10" else f"{cfg.dataset}_"
    return f"runs/{prefix}{cfg.method}_ipc{cfg.ipc}_k{cfg.subset_k}_s{cfg.seed}"


def make_config(method: str, ipc: int, preset: str = "paper", dataset: str = "cifar10", **fields: Any) -> Config:
    """The method's `preset` at `ipc` on `dataset`, then the given fields (None values are ignored), validated.

    Raises:
      ConfigError: for an unknown name, an unknown field or an invalid value.
    """
    for name, value, known in (("method", method, METHODS), ("preset", preset, PRESETS)):
        if value not in known:
            raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(known)}")
    if not isinstance(ipc, int) or isinstance(ipc, bool) or ipc < 1:
        raise ConfigError(f"--ipc must be a positive integer, got {ipc}")
    names = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(fields) - names)
    if unknown:
        raise ConfigError(f"unknown config field {unknown[0]!r}")
    dataset = _dataset_name(dataset)
    out = dict(METHODS[method].preset(preset, ipc, dataset), method=method, ipc=ipc, preset=preset, dataset=dataset,
               preset_note=METHODS[method].preset_note(ipc, dataset))
    out.setdefault("depth", default_depth(dataset, fields.get("res") or 0))
    out.update({k: v for k, v in fields.items() if v is not None})
    if isinstance(out.get("model"), str):
        out["model"] = out["model"].lower()  # official names are CamelCase: ConvNetBN = convnetbn
    out.setdefault("subset_k", default_subset_k(ipc * out.get("factor", 1) ** 2))
    cfg = Config(**out)
    validate(cfg)
    return cfg


def fit_batches(cfg: Config, data, log=print) -> Config:
    """`cfg` with its real batches capped at the smallest class (and the smallest real subset), as the official
    codes' `get_images` returns a whole class smaller than the batch; the cap is logged and recorded in the config."""
    smallest = int(np.bincount(data.train_y, minlength=data.num_classes).min())
    changes = {}
    if cfg.batch_real > smallest:
        changes["batch_real"] = smallest
    if cfg.use_subsets and cfg.subset_real > smallest // cfg.subset_k:
        changes["subset_batch_real"] = max(1, smallest // cfg.subset_k)
    if changes:
        log(f"the smallest class has {smallest} training images: " + ", ".join(
            f"--{k.replace('_', '-')} {getattr(cfg, k) or cfg.batch_real} -> {v}" for k, v in changes.items()))
        cfg = cfg.replace(**changes)
    return cfg


def default_depth(dataset: str, res: int = 0) -> int:
    """ConvNet's depth for the dataset's image side, as the official codes choose it: 3 up to 32 pixels (a 4x4 map
    before the classifier; MNIST's 28 is padded to 32), 4 at 64 (ConvNetD4: TinyImageNet), 5 at 128 (ConvNetD5: the
    ImageNet subsets), one more per doubling."""
    shape = dataset_info(dataset).shape
    side = res or (shape[0] if shape else 32)
    return max(3, round(math.log2(side)) - 2)


def validate(cfg: Config) -> None:
    """Raises ConfigError naming the first invalid field: its type, bounds and choices (from each field's
    metadata), then what ties fields together."""
    for f in dataclasses.fields(cfg):
        v, meta = getattr(cfg, f.name), f.metadata
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("int", "float") and (isinstance(v, bool) or not isinstance(v, (int, float))
                                           or (f.type == "int" and not isinstance(v, int))):
            raise ConfigError(f"{flag} must be a{'n integer' if f.type == 'int' else ' number'}, got {v!r}")
        if meta["low"] is not None and not v >= meta["low"] and v not in meta["words"].values():  # `not >=`: nan
            names = ", ".join(meta["words"]) + " or " if meta["words"] else ""
            raise ConfigError(f"{flag} must be {names}>= {meta['low']:g}, got {v}")
        if meta["choices"] is not None and v != "" and v not in meta["choices"]():
            raise ConfigError(f"unknown {meta['label'] or f.name} {v!r}; choose one of {', '.join(meta['choices']())}")
    _dataset_name(cfg.dataset)
    if cfg.res and not dataset_info(cfg.dataset).resize:
        raise ConfigError(f"--res applies to the ImageNet subsets (resized when their cache is built), not to "
                          f"{cfg.dataset}")
    if not (cfg.lr_img > 0 and math.isfinite(cfg.lr_img)):
        raise ConfigError(f"--lr-img must be a positive finite number, got {cfg.lr_img}")
    METHODS[cfg.method].check(cfg)
    if cfg.zca and not METHODS[cfg.method].uses_zca:
        raise ConfigError(f"--zca does not apply to {cfg.method} (methods whose images live in ZCA space: "
                          f"{', '.join(n for n, m in METHODS.items() if m.uses_zca)})")
    if cfg.syn_per_class % cfg.subset_k:
        what = f"{cfg.syn_per_class} decoded images" if cfg.factor > 1 else f"ipc {cfg.ipc}"
        raise ConfigError(f"--subset-k {cfg.subset_k} does not divide the per-class synthetic count ({what})")
    if cfg.subset_only and cfg.subset_k < 2:
        raise ConfigError("--subset-only needs --subset-k >= 2")
    if cfg.cutmix_prob > 1:
        raise ConfigError(f"--cutmix-prob must be in [0, 1], got {cfg.cutmix_prob}")
    try:
        arch_names(cfg.eval_arch)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    unknown = [op for op in cfg.aug_drop_ops if op not in DSA_OPS]
    if unknown:
        raise ConfigError(f"unknown augmentation op {unknown[0]!r} in --aug-drop; known: {', '.join(DSA_OPS)}")


def _dataset_name(name: str) -> str:
    """The registry name of `name` (official spellings accepted); ConfigError for an unknown one."""
    try:
        return dataset_info(name).name
    except ValueError as e:
        raise ConfigError(str(e)) from None
