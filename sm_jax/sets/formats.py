"""Writing a run's set in the export formats (`FORMATS`); sets.readers reads them, and others, back.

Layouts (each export directory also holds `metadata.json`, see core.metadata_of):
  folder: DIR/<class>/<index>.png, 8-bit pixels, readable by torchvision's ImageFolder and Keras'
          image_dataset_from_directory (class folders sort in label order; where the names do not, they are
          prefixed with the zero-padded label). IDC: the decoded images (what networks train on); the stored ones
          in DIR_stored/<class>/.
  npz:    DIR/set.npz, the schema of a run's synthetic.npz: `images` (N, H, W, C) float32 in [0, 1] (stored), `labels`,
          `class_names`, `train_normalized` (M, H, W, C) float32 exactly what networks train on (normalised),
          `train_labels`, `mean`, `std`; IDC also `decoded_images` / `decoded_labels` in [0, 1].
  pt:     DIR/set.pt, the official DC/DSA/DM results layout {"data": [[images (N, C, H, W) normalised, labels]]}.
  ddranking: DD-Ranking's inputs (ddranking 0.2.0's `compute_metrics(image_tensor, soft_labels, syn_lr)`):
          DIR/images.pt (N, C, H, W) float32 in the networks' input space, class-major (image i of class i // ipc);
          DIR/labels.pt, the soft labels (N, C) logits where the set has them, else the labels (N,) int64;
          DIR/lr.pt, a 0-d tensor, where the set carries a learned lr.
A set with soft labels keeps them in `npz` (`soft_labels`, rows of `train_normalized`) and `ddranking`.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sm_jax.sets.core import ImageSet, SetError, metadata_of, normalise, npz_schema, require_torch
from sm_jax.sets.readers import load_set


def _class_dirs(names) -> list[str]:
    """Folder names that sort in label order (ImageFolder labels the sorted folders 0..C-1)."""
    safe = [str(n).replace("/", "_").replace("\\", "_") or f"class{i}" for i, n in enumerate(names)]
    if safe == sorted(safe) and len(set(safe)) == len(safe):
        return safe
    width = len(str(len(names) - 1))
    return [f"{i:0{width}d}_{n}" for i, n in enumerate(safe)]


def _write_pngs(root: Path, pixels: np.ndarray, names) -> list[str]:
    from PIL import Image

    dirs = _class_dirs(names)
    for c, d in enumerate(dirs):
        (root / d).mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(pixels[c]):
            a = np.round(im * 255).astype(np.uint8)
            Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a).save(root / d / f"{i:04d}.png")
    return dirs


def write_folder(s: ImageSet, out: Path, meta: dict) -> list[Path]:
    dirs = _write_pngs(out, s.pixels(), s.class_names)
    meta["class_folders"] = dirs
    written = [out]
    if s.stored is not None:
        stored = out.parent / f"{out.name}_stored"
        _write_pngs(stored, s.pixels(s.stored), s.class_names)
        meta["stored_folder"] = stored.name
        written.append(stored)
    return written


def npz_arrays(s: ImageSet) -> dict[str, np.ndarray]:
    """The npz schema (module docstring) of a set."""
    stored = s.stored if s.stored is not None else s.images
    return npz_schema(s.pixels(stored), s.images, s.class_names, s.mean, s.std,
                      s.pixels() if s.stored is not None else None, s.learned, s.soft_labels)


def write_npz(s: ImageSet, out: Path, meta: dict) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "set.npz", **npz_arrays(s))
    return [out / "set.npz"]


def _nchw(s: ImageSet) -> tuple[np.ndarray, np.ndarray]:
    """The trained-on images as (N, C, H, W) float32, class-major, and their labels (N,) int64."""
    c, n = s.images.shape[:2]
    x = np.ascontiguousarray(s.images.reshape(-1, *s.images.shape[2:]).transpose(0, 3, 1, 2), np.float32)
    return x, np.repeat(np.arange(c), n).astype(np.int64)


def write_pt(s: ImageSet, out: Path, meta: dict) -> list[Path]:
    torch = require_torch("--format pt", "; folder and npz do not")
    out.mkdir(parents=True, exist_ok=True)
    x, y = _nchw(s)
    torch.save({"data": [[torch.from_numpy(x), torch.from_numpy(y)]]}, out / "set.pt")
    return [out / "set.pt"]


def write_ddranking(s: ImageSet, out: Path, meta: dict) -> list[Path]:
    torch = require_torch("--format ddranking", "; folder and npz do not")
    out.mkdir(parents=True, exist_ok=True)
    x, y = _nchw(s)
    torch.save(torch.from_numpy(x), out / "images.pt")
    if s.soft_labels is not None:
        y = np.asarray(s.soft_labels, np.float32).reshape(len(x), -1)
    torch.save(torch.from_numpy(y), out / "labels.pt")
    written = [out / "images.pt", out / "labels.pt"]
    if "lr" in s.learned:
        torch.save(torch.tensor(float(s.learned["lr"])), out / "lr.pt")
        written.append(out / "lr.pt")
    return written


FORMATS: dict[str, Callable[[ImageSet, Path, dict], list[Path]]] = {"folder": write_folder, "npz": write_npz,
                                                                     "pt": write_pt, "ddranking": write_ddranking}


def export_run(workdir: str | Path, to: str | Path, fmt: str) -> list[Path]:
    """Writes the set of the finished run in `workdir` to directory `to` in format `fmt` (FORMATS), with
    metadata.json.

    Returns:
      the paths written.
    Raises:
      SetError: for an unknown format, a run without a saved set, or a non-empty target.
    """
    from sm_jax.config import Config

    if fmt not in FORMATS:
        raise SetError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    workdir, to = Path(workdir), Path(to)
    cfg_file = workdir / "config.json"
    if not cfg_file.is_file():
        raise SetError(f"{workdir} has no config.json: not a run directory")
    cfg = Config.from_dict(json.loads(cfg_file.read_text()))
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

        data = load_dataset(cfg.dataset, cfg.data_dir)
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
    import dataclasses

    from sm_jax.checkpointing import Checkpointer
    from sm_jax.experiment import Run

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
