"""Offline readers: image folders / archives and the official archive formats of each dataset.

Each reader returns ({train_x, train_y, test_x, test_y}, class_names): uint8 (N, H, W, C) images and int32 labels.
Pickled archives (the CIFAR `-python` forms) are read with an unpickler that builds only dicts, lists, strings and
numpy arrays, so a crafted file cannot run code; the binary forms need no unpickling at all.
"""
from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from sm_jax.data.registry import CIFAR10_CLASSES, DatasetInfo
from sm_jax.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
ARCHIVE_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)

# file names that identify each official form (any one of them, in a folder or an archive)
_IDX = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
        "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
_MARKERS = {
    "cifar10-binary": ("data_batch_1.bin",),
    "cifar10-python": ("data_batch_1",),
    "cifar100-binary": ("train.bin", "fine_label_names.txt"),
    "cifar100-python": ("meta", "train"),
    "idx": (_IDX["train_x"], _IDX["train_x"] + ".gz"),
    "svhn-mat": ("train_32x32.mat",),
    "tinyimagenet-pt": ("tinyimagenet.pt",),
}


class DataError(UserError):
    """A data source that is missing, unreadable or laid out wrongly (the message says what to do)."""


# --- source detection ----------------------------------------------------------------------------------

def detect(path: Path, tfds_name: str | None = None) -> str:
    """The form of a --data-dir: 'tfds', 'folder' or a key of READERS (one-line DataError if none)."""
    if path.is_dir():
        if tfds_name and (path / tfds_name).is_dir():
            return "tfds"
        if _find_split_root(path) is not None:
            return "folder"
        names = {f.name for f in path.rglob("*") if f.is_file()}
    elif path.name == "tinyimagenet.pt":  # a bare file, not an archive
        return "tinyimagenet-pt"
    else:
        names, splits = set(), set()
        try:
            with tarfile.open(path) as tf:
                for m in tf:  # an image folder is known at its second split: no need to read the rest
                    names.add(m.name.rsplit("/", 1)[-1])
                    splits.update(s for s in ("train", "test") if f"/{s}/" in f"/{m.name}")
                    if len(splits) == 2:
                        return "folder"
        except ARCHIVE_ERRORS as e:
            raise DataError(f"{path}: cannot read the archive ({type(e).__name__}: {e})") from None
    if "fine_label_names.txt" in names and "train.bin" in names:
        return "cifar100-binary"
    for kind in ("cifar10-binary", "cifar10-python", "idx", "svhn-mat", "tinyimagenet-pt"):
        if any(m in names for m in _MARKERS[kind]):
            return kind
    if {"meta", "train", "test"} <= names:
        return "cifar100-python"
    what = "directory" if path.is_dir() else "archive"
    raise DataError(f"{path}: this {what} holds no {{train,test}}/<class>/ images and no official archive files "
                    "(CIFAR batches, MNIST idx, SVHN .mat, tinyimagenet.pt)")


def _find_split_root(path: Path) -> Path | None:
    for cand in [path, *sorted(p for p in path.iterdir() if p.is_dir())]:
        if (cand / "train").is_dir() and (cand / "test").is_dir():
            return cand
    return None


def members(path: Path, names: list[str], what: str) -> dict[str, bytes]:
    """The named files (by base name) from an archive or a folder; DataError naming the missing ones."""
    found: dict[str, bytes] = {}
    try:
        if path.is_file() and path.name in names and not tarfile.is_tarfile(path):  # the one file itself
            found[path.name] = path.read_bytes()
        elif path.is_dir():
            for f in path.rglob("*"):
                if f.name in names and f.is_file():
                    found[f.name] = f.read_bytes()
        else:
            with tarfile.open(path) as tf:
                for m in tf:
                    base = m.name.rsplit("/", 1)[-1]
                    if m.isfile() and base in names:
                        found[base] = tf.extractfile(m).read()
    except ARCHIVE_ERRORS as e:
        raise DataError(f"{path}: corrupt archive ({type(e).__name__}: {e})") from None
    missing = [n for n in names if n not in found]
    if missing:
        raise DataError(f"{path}: missing {what} files {', '.join(missing)}")
    return found


def check_labels(arrays: dict, num_classes: int, where: str) -> None:
    """One-line DataError for labels outside 0..num_classes-1 or image/label counts that differ."""
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if len(x) != len(y):
            raise DataError(f"{where}: {split} split has {len(x)} images but {len(y)} labels")
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise DataError(f"{where}: {split} label {int(y.max() if y.max() >= num_classes else y.min())} is "
                            f"outside 0..{num_classes - 1}; the archive is mislabelled or of another dataset")


# --- image folders -------------------------------------------------------------------------------------

def _decode(blob: bytes, where: str, channels: int | None):
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(blob))
        img.load()
    except Exception as e:  # PIL raises many types for broken files
        raise DataError(f"{where}: cannot decode image ({type(e).__name__})") from None
    return img if channels is None else np.asarray(img.convert("L" if channels == 1 else "RGB"))


def _assemble(items: dict, where: str, info: DatasetInfo):
    """items[split][class] = [(name, bytes)] -> arrays; classes sorted, files sorted by name."""
    if set(items) != {"train", "test"}:
        raise DataError(f"{where}: expected train/ and test/ splits, found {sorted(items) or 'none'}")
    names = tuple(sorted(items["train"]))
    if not names or tuple(sorted(items["test"])) != names:
        raise DataError(f"{where}: train/ and test/ must hold the same class folders")
    channels = info.shape[2] if info.shape else None
    if channels is None:  # grey only when every training image is: one colour image makes the set RGB
        modes = {_decode(blob, f"{where}:{f}", None).mode for c in names for f, blob in items["train"][c]}
        channels = 1 if modes <= {"L", "1", "I;16", "I"} else 3
    out, size = {}, info.shape[:2] if info.shape else None
    for split in ("train", "test"):
        xs, ys = [], []
        for c, name in enumerate(names):
            for fname, blob in sorted(items[split][name]):
                img = _decode(blob, f"{where}:{fname}", channels)
                size = size or img.shape[:2]
                if img.shape[:2] != tuple(size):
                    raise DataError(f"{where}:{fname}: image is {img.shape[1]}x{img.shape[0]}, expected "
                                    f"{size[1]}x{size[0]} like the others")
                xs.append(img.reshape(*img.shape[:2], channels))
                ys.append(c)
        out[f"{split}_x"] = np.stack(xs).astype(np.uint8)
        out[f"{split}_y"] = np.asarray(ys, np.int32)
    return out, names


def _split_class(rel: str):
    parts = rel.split("/")
    for i, p in enumerate(parts[:-2]):
        if p in ("train", "test") and len(parts) - i == 3:
            return p, parts[i + 1]
    return None


def read_folder(path: Path, info: DatasetInfo):
    items: dict = {}
    if path.is_dir():
        root = _find_split_root(path)
        if root is None:
            raise DataError(f"{path}: no train/ and test/ folders")
        for f in root.rglob("*"):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                sc = _split_class(f.relative_to(root).as_posix())
                if sc:
                    items.setdefault(sc[0], {}).setdefault(sc[1], []).append((f.name, f.read_bytes()))
        return _assemble(items, str(path), info)
    try:
        with tarfile.open(path) as tf:
            for m in tf:
                if m.isfile() and Path(m.name).suffix.lower() in IMAGE_SUFFIXES:
                    sc = _split_class(m.name)
                    if sc:
                        items.setdefault(sc[0], {}).setdefault(sc[1], []).append(
                            (m.name.rsplit("/", 1)[-1], tf.extractfile(m).read()))
    except ARCHIVE_ERRORS as e:
        raise DataError(f"{path}: corrupt archive ({type(e).__name__}: {e})") from None
    return _assemble(items, str(path), info)


# --- CIFAR-10 / CIFAR-100 --------------------------------------------------------------------------------

class _SafeUnpickler(pickle.Unpickler):
    """Builds plain containers and numpy arrays only: any other global in the stream is refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def safe_unpickle(blob: bytes, where: str) -> dict:
    try:
        return _SafeUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as e:
        raise DataError(f"{where}: not a CIFAR python batch ({type(e).__name__}: {e})") from None


def _chw(rows: np.ndarray, where: str, width: int) -> np.ndarray:
    if rows.ndim != 2 or rows.shape[1] != width:
        raise DataError(f"{where}: rows of {rows.shape[-1]} bytes, expected {width} (32x32x3)")
    return np.ascontiguousarray(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def read_cifar10_python(path: Path, info: DatasetInfo):
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    blobs = members(path, files, "CIFAR-10 batch")
    parts = {}
    for f in files:
        d = safe_unpickle(blobs[f], f"{path}:{f}")
        try:
            parts[f] = (_chw(np.asarray(d[b"data"], np.uint8), f"{path}:{f}", 3072), np.asarray(d[b"labels"], np.int32))
        except (KeyError, TypeError) as e:
            raise DataError(f"{path}:{f}: not a CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    return _train_test(parts, files), CIFAR10_CLASSES


def read_cifar10_binary(path: Path, info: DatasetInfo):
    files = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    blobs = members(path, files, "CIFAR-10 batch")
    parts = {}
    for f in files:
        raw = np.frombuffer(blobs[f], np.uint8)
        if raw.size % 3073:
            raise DataError(f"{path}:{f}: size {raw.size} is not a multiple of 3073 bytes (label + 32x32x3)")
        raw = raw.reshape(-1, 3073)
        parts[f] = (_chw(raw[:, 1:], f"{path}:{f}", 3072), raw[:, 0].astype(np.int32))
    return _train_test(parts, files), CIFAR10_CLASSES


def _train_test(parts: dict, files: list[str]) -> dict:
    train = [parts[f] for f in files[:-1]]
    return {"train_x": np.concatenate([p[0] for p in train]), "train_y": np.concatenate([p[1] for p in train]),
            "test_x": parts[files[-1]][0], "test_y": parts[files[-1]][1]}


def read_cifar100_binary(path: Path, info: DatasetInfo):
    """cifar-100-binary: rows of (coarse label, fine label, 3072 pixels); the fine labels are the classes."""
    blobs = members(path, ["train.bin", "test.bin", "fine_label_names.txt"], "CIFAR-100 binary")
    arrays = {}
    for split in ("train", "test"):
        raw = np.frombuffer(blobs[f"{split}.bin"], np.uint8)
        if raw.size % 3074:
            raise DataError(f"{path}:{split}.bin: size {raw.size} is not a multiple of 3074 bytes "
                            "(coarse + fine label + 32x32x3)")
        raw = raw.reshape(-1, 3074)
        arrays[f"{split}_x"] = _chw(raw[:, 2:], f"{path}:{split}.bin", 3072)
        arrays[f"{split}_y"] = raw[:, 1].astype(np.int32)
    names = tuple(n.strip() for n in blobs["fine_label_names.txt"].decode().splitlines() if n.strip())
    return arrays, names


def read_cifar100_python(path: Path, info: DatasetInfo):
    blobs = members(path, ["train", "test", "meta"], "CIFAR-100 python")
    arrays = {}
    for split in ("train", "test"):
        d = safe_unpickle(blobs[split], f"{path}:{split}")
        try:
            arrays[f"{split}_x"] = _chw(np.asarray(d[b"data"], np.uint8), f"{path}:{split}", 3072)
            arrays[f"{split}_y"] = np.asarray(d[b"fine_labels"], np.int32)
        except (KeyError, TypeError) as e:
            raise DataError(f"{path}:{split}: not a CIFAR-100 python file ({type(e).__name__}: {e})") from None
    meta = safe_unpickle(blobs["meta"], f"{path}:meta")
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(b"fine_label_names", ()))
    return arrays, names


# --- MNIST / Fashion-MNIST (idx) -------------------------------------------------------------------------

def _parse_idx(blob: bytes, where: str, ndim: int) -> np.ndarray:
    if blob[:2] == b"\x1f\x8b":
        try:
            blob = gzip.decompress(blob)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{where}: corrupt gzip ({type(e).__name__}: {e})") from None
    if len(blob) < 4 + 4 * ndim or blob[:3] != b"\x00\x00\x08" or blob[3] != ndim:
        raise DataError(f"{where}: not an idx file of unsigned bytes with {ndim} dimension(s)")
    dims = tuple(int.from_bytes(blob[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(blob, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{where}: {body.size} data bytes, the header says {dims} ({int(np.prod(dims))})")
    return body.reshape(dims)


def read_idx(path: Path, info: DatasetInfo):
    """The four idx files (gzipped as distributed, or not), from a folder or an archive."""
    try:
        names = {key: base + ".gz" for key, base in _IDX.items()}
        blobs = members(path, list(names.values()), "idx")
    except DataError:  # the files uncompressed
        names = dict(_IDX)
        blobs = members(path, list(names.values()), "idx")
    arrays = {}
    for key, fname in names.items():
        a = _parse_idx(blobs[fname], f"{path}:{fname}", 3 if key.endswith("_x") else 1)
        arrays[key] = a[..., None] if key.endswith("_x") else a.astype(np.int32)
    return arrays, info.class_names


# --- SVHN (.mat) ---------------------------------------------------------------------------------------

def read_svhn_mat(path: Path, info: DatasetInfo):
    """train_32x32.mat / test_32x32.mat: X (32, 32, 3, N), y (N, 1) with digit 0 stored as 10."""
    import scipy.io

    blobs = members(path, ["train_32x32.mat", "test_32x32.mat"], "SVHN")
    arrays = {}
    for split in ("train", "test"):
        where = f"{path}:{split}_32x32.mat"
        try:
            m = scipy.io.loadmat(io.BytesIO(blobs[f"{split}_32x32.mat"]))
            x, y = np.asarray(m["X"]), np.asarray(m["y"]).reshape(-1).astype(np.int64)
        except Exception as e:  # scipy raises several types for damaged files
            raise DataError(f"{where}: not an SVHN .mat file ({type(e).__name__}: {e})") from None
        if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
            raise DataError(f"{where}: X has shape {x.shape}, expected (32, 32, 3, N)")
        arrays[f"{split}_x"] = np.ascontiguousarray(x.transpose(3, 0, 1, 2)).astype(np.uint8)
        arrays[f"{split}_y"] = np.where(y == 10, 0, y).astype(np.int32)
    return arrays, info.class_names


# --- TinyImageNet as DC's code reads it (tinyimagenet.pt) -----------------------------------------------------

def read_tinyimagenet_pt(path: Path, info: DatasetInfo):
    """DC's preprocessed `tinyimagenet.pt`: a torch file of {classes, images_train (N, 3, 64, 64) uint8,
    labels_train, images_val, labels_val}, read with `torch.load(weights_only=True)` (tensors and strings only)."""
    try:
        import torch
    except ImportError:
        raise DataError(f"{path}: reading tinyimagenet.pt needs torch (pip install -e '.[torch]'), or pass the "
                        "tiny-imagenet-200 folder or .zip") from None
    blob = members(path, ["tinyimagenet.pt"], "TinyImageNet")["tinyimagenet.pt"]
    try:
        d = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        arrays = {}
        for split, key in (("train", "train"), ("test", "val")):
            x = d[f"images_{key}"].numpy()
            if x.dtype != np.uint8:  # a float copy in [0, 1] (the tensors DC's loader makes)
                x = np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)
            if x.ndim != 4 or x.shape[1:] != (3, 64, 64):
                raise DataError(f"{path}: images_{key} has shape {tuple(x.shape)}, expected (N, 3, 64, 64)")
            arrays[f"{split}_x"] = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
            arrays[f"{split}_y"] = d[f"labels_{key}"].numpy().astype(np.int32)
        names = tuple(str(n) for n in d.get("classes", ()))
    except DataError:
        raise
    except Exception as e:  # torch raises many types for foreign or damaged files
        raise DataError(f"{path}: not DC's tinyimagenet.pt ({type(e).__name__}: {e})") from None
    return arrays, names


READERS = {"folder": read_folder, "cifar10-python": read_cifar10_python, "cifar10-binary": read_cifar10_binary,
           "cifar100-binary": read_cifar100_binary, "cifar100-python": read_cifar100_python, "idx": read_idx,
           "svhn-mat": read_svhn_mat, "tinyimagenet-pt": read_tinyimagenet_pt}
