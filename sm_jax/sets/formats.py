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
  idc:    DIR/data.pt, IDC's layout [images (N, C, H, W) float32 [0, 1] pixels, targets (N,) int64], class-major: the
          stored images of an IDC set (IDC's test.py decodes them with --factor, metadata's `idc_factor`, then
          normalises), the trained-on images of any other set (factor 1).
  ddranking: DD-Ranking's inputs (ddranking 0.2.0's `compute_metrics(image_tensor, soft_labels, syn_lr)`):
          DIR/images.pt (N, C, H, W) float32 in the networks' input space, class-major (image i of class i // ipc);
          DIR/labels.pt, the soft labels (N, C) logits where the set has them, else the labels (N,) int64;
          DIR/lr.pt, a 0-d tensor, where the set carries a learned lr.
A set with soft labels keeps them in `npz` (`soft_labels`, rows of `train_normalized`) and `ddranking`.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from sm_jax.sets.core import ImageSet, npz_schema, require_torch


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


def write_idc(s: ImageSet, out: Path, meta: dict) -> list[Path]:
    torch = require_torch("--format idc", "; folder and npz do not")
    out.mkdir(parents=True, exist_ok=True)
    stored = s.stored if s.stored is not None else s.images
    factor = int(round((s.images.shape[1] / stored.shape[1]) ** 0.5))
    c, n = stored.shape[:2]
    x = np.ascontiguousarray(s.pixels(stored).reshape(-1, *stored.shape[2:]).transpose(0, 3, 1, 2), np.float32)
    y = np.repeat(np.arange(c), n).astype(np.int64)
    torch.save([torch.from_numpy(x), torch.from_numpy(y)], out / "data.pt")
    meta["idc_factor"] = factor
    return [out / "data.pt"]


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
                                                                     "pt": write_pt, "idc": write_idc,
                                                                     "ddranking": write_ddranking}
