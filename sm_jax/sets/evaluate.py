"""Scoring any condensed set with sm_jax's protocols: the set's own run config when it travels with one, else a
method's preset; optionally beside a random real subset of the same size."""
from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from sm_jax import artifacts
from sm_jax.config import Config, make_config
from sm_jax.experiment import EvalStopped, Run
from sm_jax.lifecycle import Stopped, StopSignals
from sm_jax.methods import METHODS
from sm_jax.sets.core import SetError
from sm_jax.sets.readers import load_set


def run_config(base: Config, overrides: dict) -> Config:
    """A set's run config `base` with evaluation `overrides` (Config fields): a `preset` other than the run's first
    takes that preset's evaluation budget (networks, epochs; with `metrics` the reference's), then the others."""
    overrides = dict(overrides)
    preset = overrides.pop("preset", None)
    if preset and preset != base.preset:
        fields = METHODS[base.method].preset(preset, base.ipc, base.dataset)
        overrides = {**{k: fields[k] for k in ("eval_models", "eval_epochs") if k in fields}, "preset": preset,
                     **overrides}
    return base.replace(**overrides)


def evaluate_set_path(path: str | Path, overrides: dict | None = None, dataset: str | None = None,
                      method: str | None = None, factor: int | None = None, index: int = 0,
                      out: str | Path | None = None, progress: bool = True, log=print) -> dict:
    """Evaluates any condensed set (sets.load_set: an exported folder / npz / pt, a run's synthetic.npz, the official
    codes' saved sets) with an sm_jax protocol, and writes the results as JSON.

    The protocol is the set's own run config when its metadata has one (then the networks' keys are those of the
    run's final evaluation: the same accuracies for the same images), else `method`'s preset at the set's images per
    class on `dataset`. `overrides` (Config fields: eval_models, eval_epochs, eval_arch, baseline, data_dir, ...)
    replace the config's values; a `preset` other than the run's takes that preset's evaluation budget (networks,
    epochs, and with `metrics` the reference's) before the other overrides.

    Returns:
      the results (evaluation.evaluate_archs's, with `set`, `method`, `dataset`, `images_per_class`, `results_file`).
    Raises:
      UserError: for an unreadable set, a missing --dataset / --method, or a bad field.
    """
    s = load_set(path, dataset=dataset, factor=factor, index=index)
    meta, overrides = s.metadata, dict(overrides or {})
    if meta.get("config") and not method:
        cfg = run_config(Config.from_dict(meta["config"]), overrides)
        iteration = cfg.iterations
    else:
        if not method:
            raise SetError(f"{path} has no run config in its metadata: give --method (whose evaluation protocol)")
        ipc = s.stored.shape[1] if s.stored is not None else s.per_class
        f = meta.get("factor", 1) if s.stored is not None else 1
        cfg = make_config(method, ipc, overrides.pop("preset", "paper"), meta.get("dataset") or dataset or "cifar10",
                          factor=f, **overrides)
        iteration = 0
    run = Run(cfg, progress=progress, log=log)
    if s.images.shape[0] != run.data.num_classes:
        raise SetError(f"{path} has {s.images.shape[0]} classes; {cfg.dataset} has {run.data.num_classes}")
    if tuple(s.images.shape[2:]) != tuple(run.data.spec.image_shape):
        raise SetError(f"{path}: images of {tuple(s.images.shape[2:])}, {cfg.dataset}'s are "
                       f"{tuple(run.data.spec.image_shape)}")
    images = jnp.asarray(s.images)
    if tuple(np.float32(s.mean)) != tuple(np.float32(run.data.mean)) or \
            tuple(np.float32(s.std)) != tuple(np.float32(run.data.std)):  # into the dataset's normalisation
        images = run.method.normalize(jnp.asarray(s.pixels()))
    with StopSignals() as stop:
        try:
            ev = run.evaluate_images(images, iteration, stop=stop, learned=s.learned, targets=s.soft_labels)
        except EvalStopped:
            raise Stopped(stop.signum, f"stopped by {stop.name} during the evaluation") from None
    where = Path(path) if Path(path).is_dir() else Path(path).parent
    target = Path(out) if out else where / "results.json"
    if not out and target.is_file() and "set" not in json.loads(target.read_text()):
        target = where / "set_results.json"  # never overwrite a run's own results.json
    res = {**ev, "set": str(path), "learned": s.learned, "method": cfg.method, "dataset": cfg.dataset,
           "images_per_class": s.per_class, "config": json.loads(cfg.to_json()), "results_file": str(target)}
    if run.writer:
        artifacts.write_json(target, res)
    return res

