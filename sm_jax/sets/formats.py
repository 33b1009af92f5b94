"""Writing a run's set in the three export formats, and reading any set back (ours, or the official codes').

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
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sm_jax.sets.core import ImageSet, SetError, by_class, learned_of, metadata_of, normalise, npz_schema

PNG_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


# --- export ---------------------------------------------------------------------------------------------------------
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


def _torch(needed_by: str, other: str = ""):
    """torch, or the one-line SetError saying what needs it (and `other`: what does not)."""
    try:
        import torch
    except ImportError:
        raise SetError(f"{needed_by} needs PyTorch (pip install torch){other}") from None
    return torch


def _nchw(s: ImageSet) -> tuple[np.ndarray, np.ndarray]:
    """The trained-on images as (N, C, H, W) float32, class-major, and their labels (N,) int64."""
    c, n = s.images.shape[:2]
    x = np.ascontiguousarray(s.images.reshape(-1, *s.images.shape[2:]).transpose(0, 3, 1, 2), np.float32)
    return x, np.repeat(np.arange(c), n).astype(np.int64)


def write_pt(s: ImageSet, out: Path, meta: dict) -> list[Path]:
    torch = _torch("--format pt", "; folder and npz do not")
    out.mkdir(parents=True, exist_ok=True)
    x, y = _nchw(s)
    torch.save({"data": [[torch.from_numpy(x), torch.from_numpy(y)]]}, out / "set.pt")
    return [out / "set.pt"]


def write_ddranking(s: ImageSet, out: Path, meta: dict) -> list[Path]:
    torch = _torch("--format ddranking", "; folder and npz do not")
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


# --- load -----------------------------------------------------------------------------------------------------------
def _metadata_near(path: Path) -> dict:
    """metadata.json beside the set; in a run directory (no metadata.json), the run's config.json as its config."""
    where = path if path.is_dir() else path.parent
    for name in ("metadata.json", "config.json"):
        f = where / name
        if f.is_file():
            try:
                meta = json.loads(f.read_text())
            except ValueError as e:
                raise SetError(f"{f}: not JSON ({e})") from None
            return meta if name == "metadata.json" else {"config": meta, "dataset": meta.get("dataset")}
    return {}


def _stats(meta: dict, dataset: str | None, where: str) -> tuple[tuple, tuple, str]:
    """(mean, std, dataset name) from the set's metadata, else from `dataset`'s registry entry."""
    from sm_jax.data import dataset_info

    if meta.get("mean") and meta.get("std"):
        return tuple(meta["mean"]), tuple(meta["std"]), meta.get("dataset", dataset or "")
    dataset = dataset or meta.get("dataset")
    if not dataset:
        raise SetError(f"{where} has no metadata.json: give --dataset (its normalisation and test split)")
    try:
        info = dataset_info(dataset)
    except ValueError as e:
        raise SetError(str(e)) from None
    if info.mean is None:
        raise SetError(f"--dataset {info.name} has no fixed normalisation: the set needs its metadata.json")
    return info.mean, info.std, info.name


def _names(meta: dict, dataset: str | None, c: int) -> tuple[str, ...]:
    from sm_jax.data import dataset_info

    if meta.get("class_names"):
        return tuple(meta["class_names"])
    try:
        names = dataset_info(dataset).class_names if dataset else ()
    except ValueError:
        names = ()
    return tuple(names) if len(names) == c else tuple(str(i) for i in range(c))


def _read_npz(path: Path, dataset: str | None, factor: int | None) -> ImageSet:
    try:
        with np.load(path, allow_pickle=False) as f:
            z = dict(f)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise SetError(f"{path}: not a readable npz ({e})") from None
    meta = _metadata_near(path)
    if "mean" in z and "std" in z:
        meta = {**meta, "mean": z["mean"].tolist(), "std": z["std"].tolist()}
    mean, std, name = _stats(meta, dataset, str(path))
    if "train_normalized" in z:
        images = by_class(z["train_normalized"].astype(np.float32), z["train_labels"], str(path))
    elif "decoded_images" in z:
        images = by_class(normalise(z["decoded_images"], mean, std), z["decoded_labels"], str(path))
    elif "images" in z and "labels" in z:
        images = by_class(normalise(z["images"], mean, std), z["labels"], str(path))
    else:
        raise SetError(f"{path}: an npz set needs `images` and `labels` (or `train_normalized` / `train_labels`)")
    stored = None
    if "decoded_images" in z or "decoded_labels" in z:
        stored = by_class(normalise(z["images"], mean, std), z["labels"], str(path))
    names = tuple(str(n) for n in z["class_names"]) if "class_names" in z else _names(meta, name, images.shape[0])
    learned = {**meta.get("learned", {}), **learned_of(z)}
    soft = None
    if "soft_labels" in z:
        rows = z["train_labels"] if "train_labels" in z else z["labels"]
        soft = by_class(z["soft_labels"].astype(np.float32), rows, f"{path} soft_labels", images.shape[0])
    return ImageSet(images, names, mean, std, {**meta, "dataset": name}, stored, str(path), learned, soft)


def _read_folder(path: Path, dataset: str | None, factor: int | None) -> ImageSet:
    from PIL import Image

    meta = _metadata_near(path)
    mean, std, name = _stats(meta, dataset, str(path))
    dirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    xs, ys = [], []
    for label, d in enumerate(dirs):
        for f in sorted(f for f in d.iterdir() if f.suffix.lower() in PNG_SUFFIXES):
            try:
                a = np.asarray(Image.open(f), np.float32) / 255.0
            except OSError as e:
                raise SetError(f"{f}: not an image ({e})") from None
            xs.append(a[..., None] if a.ndim == 2 else a)
            ys.append(label)
    if not xs:
        raise SetError(f"{path}: no class folders with images (expected {path}/<class>/<index>.png)")
    if len({x.shape for x in xs}) > 1:
        raise SetError(f"{path}: the images differ in size ({sorted({x.shape for x in xs})[:2]})")
    if len(xs[0].shape) == 3 and len(mean) != xs[0].shape[-1]:
        raise SetError(f"{path}: {xs[0].shape[-1]}-channel images, but the normalisation has {len(mean)} channels")
    images = by_class(normalise(np.stack(xs), mean, std), np.asarray(ys), str(path), num_classes=len(dirs))
    names = tuple(meta["class_names"]) if len(meta.get("class_names", ())) == len(dirs) else \
        tuple(d.name for d in dirs)
    return ImageSet(images, names, mean, std, {**meta, "dataset": name}, None, str(path), meta.get("learned", {}))


def _read_pt(path: Path, dataset: str | None, factor: int | None, index: int = 0) -> ImageSet:
    torch = _torch(f"{path}: reading .pt sets")
    # tensors, containers and numpy scalars (the official results hold their accuracies as numpy floats): nothing
    # that runs code while unpickling
    numpy_data = [np.dtype, np.core.multiarray.scalar if not hasattr(np, "_core") else np._core.multiarray.scalar,
                  *{type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_)}]
    try:
        with torch.serialization.safe_globals(numpy_data):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a corrupt or unsafe file
        raise SetError(f"{path}: not a readable PyTorch set ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
                       ) from None
    meta = _metadata_near(path)
    mean, std, name = _stats(meta, dataset, str(path))
    idc = False
    if isinstance(obj, dict) and "data" in obj:  # DC/DSA/DM's res_*.pt (one [images, labels] per experiment), ours
        runs = obj["data"]
        if not isinstance(runs, (list, tuple)) or not runs:
            raise SetError(f"{path}: its 'data' holds no [images, labels] pair")
        if not 0 <= index < len(runs):
            raise SetError(f"{path} holds {len(runs)} sets (experiments); --set-index {index} is out of range")
        pair = runs[index]
    elif isinstance(obj, (list, tuple)) and len(obj) == 2:  # IDC's data.pt: [stored images, targets]
        pair, idc = obj, not meta
    else:
        raise SetError(f"{path}: neither the official results layout {{'data': [[images, labels]]}} nor IDC's "
                       f"[images, targets]")
    try:
        x, y = (np.asarray(t.detach().cpu().numpy()) for t in pair)
    except (AttributeError, TypeError, ValueError):
        raise SetError(f"{path}: expected [images, labels] tensors") from None
    if x.ndim != 4 or x.shape[1] != len(mean):
        raise SetError(f"{path}: images must be (N, {len(mean)}, H, W), got {tuple(x.shape)}")
    images = by_class(x.transpose(0, 2, 3, 1).astype(np.float32), y, str(path))
    stored = None
    if idc:  # stored images: decode them as IDC's test code does (multi-formation, factor 2 unless told)
        from sm_jax.methods import idc_decode

        f = factor or 2
        if images.shape[2] % f or images.shape[3] % f:
            raise SetError(f"{path}: --factor {f} does not divide the image size {images.shape[2]}x{images.shape[3]}")
        stored, images = images, np.asarray(idc_decode(images, f))
        meta = {**meta, "factor": f}
    return ImageSet(images, _names(meta, name, images.shape[0]), mean, std, {**meta, "dataset": name}, stored,
                    str(path), meta.get("learned", {}))


def _read_ddranking(path: Path, dataset: str | None) -> ImageSet:
    """DD-Ranking's input layout (module docstring): DIR/images.pt, DIR/labels.pt, DIR/lr.pt (optional)."""
    torch = _torch(f"{path}: reading DD-Ranking's .pt tensors")

    def read(name):
        try:
            t = torch.load(path / name, map_location="cpu", weights_only=True)
            return np.asarray(t.detach().numpy())
        except Exception as e:  # torch raises several types for a corrupt or unsafe file
            raise SetError(f"{path / name}: not a readable tensor ({type(e).__name__})") from None

    meta = _metadata_near(path / "images.pt")
    mean, std, name = _stats(meta, dataset, str(path))
    x = read("images.pt")
    if x.ndim != 4 or x.shape[1] != len(mean):
        raise SetError(f"{path}/images.pt: images must be (N, {len(mean)}, H, W), got {tuple(x.shape)}")
    x = x.transpose(0, 2, 3, 1).astype(np.float32)
    y = read("labels.pt") if (path / "labels.pt").is_file() else None
    soft = None
    if y is not None and y.ndim == 2:  # soft labels: class-major, image i of class i // ipc
        c = y.shape[1]
        if len(y) != len(x) or len(x) % c:
            raise SetError(f"{path}: {len(x)} images and soft labels of shape {tuple(y.shape)}: expected (N, C) with "
                           "N a multiple of C (class-major)")
        labels = np.repeat(np.arange(c), len(x) // c)
        soft = by_class(y.astype(np.float32), labels, f"{path}/labels.pt", c)
    elif y is not None:
        labels = y
    else:
        from sm_jax.data import dataset_info

        c = len(meta.get("class_names", ())) or (len(dataset_info(name).class_names) if name else 0)
        if not c or len(x) % c:
            raise SetError(f"{path}: no labels.pt, and the number of classes is unknown (give --dataset)")
        labels = np.repeat(np.arange(c), len(x) // c)
    images = by_class(x, labels, str(path))
    learned = dict(meta.get("learned", {}))
    if (path / "lr.pt").is_file():
        learned["lr"] = float(read("lr.pt"))
    return ImageSet(images, _names(meta, name, images.shape[0]), mean, std, {**meta, "dataset": name}, None,
                    str(path), learned, soft)


def load_set(path: str | Path, dataset: str | None = None, factor: int | None = None, index: int = 0) -> ImageSet:
    """Any condensed set: an exported folder / npz / pt / ddranking directory (or its file), a run's synthetic.npz or
    workdir, the official DC/DSA/DM `res_*.pt`, IDC's `data.pt`.

    Args:
      path: the set's file or directory.
      dataset: the dataset whose normalisation (and class names) a set without metadata.json uses.
      factor: IDC's multi-formation factor for a bare `data.pt` of stored images (default 2, IDC's).
      index: which experiment's set of an official results file holding several.
    Returns:
      the ImageSet.
    Raises:
      SetError: for a missing, corrupt or mislabelled set (one line).
    """
    p = Path(path)
    if not p.exists():
        raise SetError(f"{p} does not exist")
    if p.is_dir() and (p / "images.pt").is_file():
        return _read_ddranking(p, dataset)
    if p.is_dir():
        for name in ("set.npz", "set.pt", "synthetic.npz"):
            if (p / name).is_file():
                p = p / name
                break
    if p.is_dir():
        return _read_folder(p, dataset, factor)
    if p.suffix == ".npz":
        return _read_npz(p, dataset, factor)
    if p.suffix in (".pt", ".pth"):
        return _read_pt(p, dataset, factor, index)
    raise SetError(f"{p}: not a set (a folder of class folders, .npz or .pt)")
