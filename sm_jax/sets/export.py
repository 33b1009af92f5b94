"""Exporting a finished run's set (`export_run`): the run directory read back (its config, synthetic.npz, results
and, for runs saved before synthetic.npz held the exact images, its latest checkpoint), then written by a format of
FORMATS with metadata.json. Apart from formats.py because it reads runs: it sits above the run (sm_jax.experiment),
which itself writes its set with the formats' schema."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from sm_jax.checkpointing import Checkpointer
from sm_jax.config import Config
from sm_jax.experiment import Run
from sm_jax.sets.core import ImageSet, SetError, metadata_of, normalise
from sm_jax.sets.formats import FORMATS
from sm_jax.sets.readers import load_set


def export_run(workdir: str | Path, to: str | Path, fmt: str) -> list[Path]:
    """Writes the set of the finished run in `workdir` to directory `to` in format `fmt` (FORMATS), with
    metadata.json; a run of several experiments (`--experiments N`) writes each finished one's to `to/exp<i>/`.

    Returns:
      the paths written.
    Raises:
      SetError: for an unknown format, a run without a saved set, or a non-empty target.
    """
    if fmt not in FORMATS:
        raise SetError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    workdir, to = Path(workdir), Path(to)
    cfg_file = workdir / "config.json"
    if not cfg_file.is_file():
        raise SetError(f"{workdir} has no config.json: not a run directory")
    cfg = Config.from_dict(json.loads(cfg_file.read_text()))
    if cfg.experiments > 1 and not (workdir / "synthetic.npz").exists():  # --experiments N: a set per experiment
        done = [workdir / f"exp{i}" for i in range(cfg.experiments) if (workdir / f"exp{i}" / "synthetic.npz").exists()]
        if not done:
            raise SetError(f"{workdir}: none of its {cfg.experiments} experiments has saved a set yet")
        if to.exists() and any(to.iterdir()):
            raise SetError(f"{to} exists and is not empty; export into a new directory")
        return [p for exp in done for p in export_run(exp, to / exp.name, fmt)]
    s = load_set(workdir / "synthetic.npz")
    with np.load(workdir / "synthetic.npz") as z:
        exact = "train_normalized" in z.files
    if not exact:  # a run saved before synthetic.npz held the exact images: its [0, 1] pixels are clipped
        s = _from_checkpoint(workdir, cfg, s)
    results = json.loads((workdir / "results.json").read_text()) if (workdir / "results.json").is_file() else None
    if to.exists() and any(to.iterdir()):
        raise SetError(f"{to} exists and is not empty; export into a new directory")
    meta = metadata_of(cfg, results, s.class_names, s.per_class, s.mean, s.std, s.images.shape[2:], s.learned,
                       s.soft_labels is not None)
    meta["format"] = fmt
    zca = None
    if cfg.zca:  # the set lives in ZCA space: the whitening travels with it
        if fmt == "folder":
            raise SetError(f"{workdir} is a ZCA-space set: PNGs would lose the whitening; export --format npz or pt "
                           f"(the whitening goes beside it, in zca.npz)")
        from sm_jax.data import default_cache_dir, load_dataset
        from sm_jax.data.zca import EPS, cached_zca

        data = load_dataset(cfg.dataset, cfg.data_dir, res=cfg.res)
        zca = cached_zca(data.train_x, default_cache_dir(), f"{data.name} train split ({data.source})")
        meta["zca"] = {"file": "zca.npz", "eps": EPS, "fitted_on": zca.source,
                       "apply": "whitened = (pixels01.reshape(N, H*W*C) - zca_mean) @ zca_transform, images (N, H, W, "
                                "C) flattened in that order; zca_inverse maps back for viewing",
                       "note": "the images are in ZCA space: whiten the test split the same way before evaluating"}
    written = FORMATS[fmt](s, to, meta)
    if zca is not None:
        to.mkdir(parents=True, exist_ok=True)
        np.savez(to / "zca.npz", **zca.arrays())
        written.append(to / "zca.npz")
    to.mkdir(parents=True, exist_ok=True)
    (to / "metadata.json").write_text(json.dumps(meta, indent=2))
    return [*written, to / "metadata.json"]


def _from_checkpoint(workdir: Path, cfg, s: ImageSet) -> ImageSet:
    """`s` with the exact images of the run's latest checkpoint (what its evaluation trained on)."""
    run = Run(cfg, progress=False, log=lambda *a: None)
    ckpt = Checkpointer(workdir, create=False)
    try:
        state, _ = run.restore(ckpt, None, *run.fresh())
    finally:
        ckpt.close()
    images = np.asarray(run.method.decode(state.images), np.float32)
    stored = None if images.shape[1] == cfg.ipc else normalise(np.asarray(run.method.to_pixels(state.images)),
                                                                 s.mean, s.std)
    return dataclasses.replace(s, images=images, stored=stored, learned=run.method.learned(state))
