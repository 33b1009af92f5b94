"""What a condensed set is once it leaves its run: images per class in the networks' input space, with the class
names and the normalisation that travel with it, and the metadata that says how it was made and scored."""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from sm_jax.errors import UserError

LABEL_FORMAT = "integer class index 0..C-1 in the order of class_names (folder: the sorted class folders)"
SOFT_LABEL_FORMAT = ("soft_labels: (N, C) float32 logits, one row per trained-on image in their order; the targets "
                     "are softmax(logits / T), T the evaluation's temperature")


class SetError(UserError):
    """A set that cannot be read or written as asked (one line)."""


@dataclasses.dataclass(frozen=True)
class ImageSet:
    """A condensed set as networks train on it.

    Attributes:
      images: (classes, n, H, W, C) float32, normalised with mean/std (IDC: the decoded images).
      class_names: one per class.
      mean, std: per-channel statistics of [0, 1] pixels the images are normalised with.
      metadata: metadata.json's content ({} for a set that came without one).
      stored: IDC's stored images (classes, ipc, H, W, C), normalised, or None.
      source: where it was read from (for messages).
      learned: what the method learned beside the images that its evaluation uses (MTT: {'lr': ...}), or {}.
      soft_labels: (classes, n, classes) float32 logits of soft targets, one row per trained-on image (the
        `learned` protocol trains on softmax(logits / T)), or None for hard labels only.
    """

    images: np.ndarray
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    metadata: dict = dataclasses.field(default_factory=dict)
    stored: np.ndarray | None = None
    source: str = ""
    learned: dict = dataclasses.field(default_factory=dict)
    soft_labels: np.ndarray | None = None

    @property
    def per_class(self) -> int:
        return self.images.shape[1]

    def pixels(self, images: np.ndarray | None = None) -> np.ndarray:
        """[0, 1] pixels (clipped) of `images` (default: the trained-on images)."""
        x = self.images if images is None else images
        return np.clip(x * np.asarray(self.std, np.float32) + np.asarray(self.mean, np.float32), 0, 1)


def npz_schema(stored_pixels: np.ndarray, trained: np.ndarray, class_names, mean, std,
               decoded_pixels: np.ndarray | None = None, learned: dict | None = None,
               soft_labels: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The arrays of the npz schema (formats' module docstring), shared by a run's synthetic.npz and `--format npz`.

    Args:
      stored_pixels: (classes, ipc, H, W, C) stored images in [0, 1].
      trained: (classes, n, H, W, C) what networks train on, normalised with mean/std.
      class_names, mean, std: as ImageSet's.
      decoded_pixels: IDC's decoded images (classes, n, H, W, C) in [0, 1], or None where stored = trained.
      learned: scalars the method learned (Method.learned), stored as `learned_<name>` (MTT: `learned_lr`).
      soft_labels: (classes, n, classes) logits (ImageSet.soft_labels), stored as `soft_labels` (M, classes) in the
        rows of `train_normalized`, or None.
    Returns:
      name -> array, flattened over classes with integer labels in class order.
    """
    c, ipc = stored_pixels.shape[:2]
    n = trained.shape[1]
    out = {"images": np.asarray(stored_pixels, np.float32).reshape(-1, *stored_pixels.shape[2:]),
           "labels": np.repeat(np.arange(c), ipc), "class_names": np.asarray(class_names),
           "train_normalized": np.asarray(trained, np.float32).reshape(-1, *trained.shape[2:]),
           "train_labels": np.repeat(np.arange(c), n), "mean": np.asarray(mean, np.float32),
           "std": np.asarray(std, np.float32)}
    if decoded_pixels is not None:
        out["decoded_images"] = np.asarray(decoded_pixels, np.float32).reshape(-1, *decoded_pixels.shape[2:])
        out["decoded_labels"] = out["train_labels"]
    for name, value in (learned or {}).items():
        out[f"learned_{name}"] = np.asarray(value, np.float64)
    if soft_labels is not None:
        out["soft_labels"] = np.asarray(soft_labels, np.float32).reshape(-1, soft_labels.shape[-1])
    return out


def learned_of(arrays) -> dict[str, float]:
    """The `learned_<name>` scalars of an npz schema's arrays, as {name: float}."""
    return {k[len("learned_"):]: float(arrays[k]) for k in arrays if k.startswith("learned_")}


def normalise(pixels: np.ndarray, mean, std) -> np.ndarray:
    return ((pixels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype(np.float32)


def by_class(x: np.ndarray, labels: np.ndarray, where: str, num_classes: int | None = None) -> np.ndarray:
    """(N, ...) images with labels 0..C-1, every class the same count -> (C, n, ...) in label order, stable.

    Raises:
      SetError: for labels outside 0..C-1, a missing class or classes of different sizes.
    """
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if len(labels) != len(x):
        raise SetError(f"{where}: {len(x)} images but {len(labels)} labels")
    c = int(labels.max()) + 1 if num_classes is None else num_classes
    if len(labels) == 0 or labels.min() < 0 or labels.max() >= c:
        raise SetError(f"{where}: labels must lie in 0..{c - 1}, got {labels.min() if len(labels) else 'none'}.."
                       f"{labels.max() if len(labels) else ''}")
    counts = np.bincount(labels, minlength=c)
    if counts.min() != counts.max():
        raise SetError(f"{where}: every class needs the same number of images (found {counts.min()} to "
                       f"{counts.max()} per class)")
    order = np.argsort(labels, kind="stable")
    return np.asarray(x)[order].reshape(c, counts[0], *np.asarray(x).shape[1:])


def protocol_dict(method, arch: str | None = None, epochs: int | None = None,
                  learned: dict | None = None) -> dict[str, Any]:
    """The evaluation protocol of `method` on `arch` as plain JSON: what another framework needs to reproduce it
    (with a learned lr, `learned`, the lr is that one)."""
    p = method.eval_protocol(epochs, arch, learned)
    return {"architecture": arch or method.net.name, "epochs": p.epochs, "batch": p.batch, "lr": p.lr,
            "momentum": p.momentum, "weight_decay": p.weight_decay,
            "lr_schedule": [{"from_epoch": e, "factor": g} for e, g in p.milestones],
            "augmentation": [list(group) for group in p.policy], "cutmix_prob": p.cutmix_prob,
            "optimizer": "SGD (momentum reset at each lr step)" if p.reset_momentum_at_milestones else "SGD",
            "loss": "cross-entropy", "accuracy": "top-1 on the test split after the last epoch"}


def metadata_of(cfg, results: dict | None, class_names, per_class: int, mean, std, image_shape,
                learned: dict | None = None, soft_labels: bool = False) -> dict[str, Any]:
    """metadata.json of a run's set: the data it lives in, how it was made, what the method learned beside the
    images (`learned`), and every recorded accuracy with the protocol that produced it."""
    import sm_jax
    from sm_jax.data import DataSpec
    from sm_jax.evaluation import per_arch
    from sm_jax.methods import make_method

    method = make_method(cfg, DataSpec(len(class_names), tuple(image_shape), tuple(mean), tuple(std)))
    evaluations = []
    if results and results.get("accuracies"):
        for arch, r in per_arch(results, method.net.name).items():
            evaluations.append({"protocol": protocol_dict(method, arch, r.get("eval_epochs"), learned),
                                "accuracies": r["accuracies"], "accuracy_mean": r["accuracy_mean"],
                                "accuracy_std": r["accuracy_std"], "networks": len(r["accuracies"]),
                                **({"baseline": r["baseline"]} if "baseline" in r else {})})
    h, w, c = image_shape
    return {"format_version": 1, "sm_jax_version": sm_jax.__version__, "dataset": cfg.dataset,
            "image_size": [h, w], "channels": c, "mean": list(mean), "std": list(std), "label_format": LABEL_FORMAT,
            "class_names": list(class_names), "ipc_stored": cfg.ipc, "ipc_trained": per_class, "method": cfg.method,
            "subset_k": cfg.subset_k, "subset_lambda": cfg.subset_lambda, "iterations": cfg.iterations,
            "seed": cfg.seed, "identity": cfg.identity(), "config": json.loads(cfg.to_json()),
            "learned": dict(learned or {}), "evaluation_protocol": protocol_dict(method, learned=learned),
            "evaluations": evaluations, **({"soft_label_format": SOFT_LABEL_FORMAT} if soft_labels else {})}


def require_torch(needed_by: str, other: str = ""):
    """torch, or the one-line SetError saying what needs it (and `other`: what does not)."""
    try:
        import torch
    except ImportError:
        raise SetError(f"{needed_by} needs PyTorch (pip install torch){other}") from None
    return torch
