"""Reading any condensed set back into an ImageSet: the export formats of sets.formats (their layouts are
described there), a run's synthetic.npz, the official DC/DSA/DM res_*.pt, IDC's data.pt, MTT's and DATM's
images_<tag>.pt / labels_<tag>.pt / lr_<tag>.pt, image folders. docs/sets.md gives each official layout's save and
load lines."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from sm_jax.sets.core import ImageSet, SetError, by_class, learned_of, normalise, require_torch

PNG_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


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
    torch = require_torch(f"{path}: reading .pt sets")
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
        pair, idc = obj, True
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
    if idc:  # [0, 1] pixels, stored: IDC's test.py decodes them (multi-formation, factor 2 unless told), then its
        # transform normalises each decoded image (transforms.Normalize with the dataset's mean and std)
        from sm_jax.methods import idc_decode

        f = factor or meta.get("idc_factor") or 2
        if images.shape[2] % f or images.shape[3] % f:
            raise SetError(f"{path}: --factor {f} does not divide the image size {images.shape[2]}x{images.shape[3]}")
        stored = normalise(images, mean, std)
        images = normalise(np.asarray(idc_decode(images, f)), mean, std)
        meta = {**meta, "factor": f}
    return ImageSet(images, _names(meta, name, images.shape[0]), mean, std, {**meta, "dataset": name}, stored,
                    str(path), meta.get("learned", {}))


def _read_ddranking(path: Path, dataset: str | None) -> ImageSet:
    """DD-Ranking's input layout (module docstring): DIR/images.pt, DIR/labels.pt, DIR/lr.pt (optional)."""
    torch = require_torch(f"{path}: reading DD-Ranking's .pt tensors")

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


def _read_trajectory_files(images: Path, dataset: str | None) -> ImageSet:
    """MTT's distill.py and DATM's DATM.py: images_<tag>.pt (N, C, H, W) float32 in the networks' input space (ZCA
    space with --zca, else normalised; unclamped), labels_<tag>.pt (N,) int64 (MTT) or (N, classes) logits (DATM's
    learned soft labels), lr_<tag>.pt a 0-d tensor (DATM's learned lr; MTT saves none). Class-major: image i is of
    class i // ipc. Their evaluations train on the tensors as they are (DSA aside)."""
    torch = require_torch(f"{images}: reading MTT / DATM tensors")
    tag = images.stem[len("images_"):]
    if tag.startswith("zca_"):
        raise SetError(f"{images}: MTT's images_zca_*.pt is the inverse-ZCA view for pictures, not what its networks "
                       f"train on: give images_{tag[4:]}.pt")

    def read(f: Path):
        try:
            return np.asarray(torch.load(f, map_location="cpu", weights_only=True).detach().numpy())
        except Exception as e:  # torch raises several types for a corrupt or unsafe file
            raise SetError(f"{f}: not a readable tensor ({type(e).__name__})") from None

    labels_file, lr_file = images.with_name(f"labels_{tag}.pt"), images.with_name(f"lr_{tag}.pt")
    if not labels_file.is_file():
        raise SetError(f"{images}: no labels_{tag}.pt beside it (MTT and DATM save the two together)")
    meta = _metadata_near(images)
    mean, std, name = _stats(meta, dataset, str(images))
    x, y = read(images), read(labels_file)
    if x.ndim != 4 or x.shape[1] != len(mean):
        raise SetError(f"{images}: images must be (N, {len(mean)}, H, W), got {tuple(x.shape)}")
    x = x.transpose(0, 2, 3, 1).astype(np.float32)
    soft = None
    if y.ndim == 2:  # DATM's soft labels: logits, one row per image, class-major
        c = y.shape[1]
        if len(y) != len(x) or len(x) % c:
            raise SetError(f"{labels_file}: soft labels of shape {tuple(y.shape)} for {len(x)} images: expected (N, C) "
                           "with N a multiple of C (class-major)")
        labels = np.repeat(np.arange(c), len(x) // c)
        soft = by_class(y.astype(np.float32), labels, str(labels_file), c)
    else:
        labels = y
    learned = dict(meta.get("learned", {}))
    if lr_file.is_file():
        learned["lr"] = float(read(lr_file))
    imgs = by_class(x, labels, str(images))
    return ImageSet(imgs, _names(meta, name, imgs.shape[0]), mean, std, {**meta, "dataset": name}, None,
                    str(images), learned, soft)


def load_set(path: str | Path, dataset: str | None = None, factor: int | None = None, index: int = 0) -> ImageSet:
    """Any condensed set: an exported folder / npz / pt / ddranking directory (or its file), a run's synthetic.npz or
    workdir, the official DC/DSA/DM `res_*.pt`, IDC's `data.pt`, MTT's and DATM's `images_<tag>.pt` (with its
    `labels_<tag>.pt` and `lr_<tag>.pt`; a directory holding `images_best.pt`).

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
    if p.is_dir() and (p / "images_best.pt").is_file():
        p = p / "images_best.pt"
    if p.is_file() and p.name.startswith("images_") and p.suffix == ".pt":
        return _read_trajectory_files(p, dataset)
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
