"""CIFAR-10 as uint8 arrays: TFDS by default; offline from an image folder / .tar.gz or the official archives.

Decoding happens once; the arrays are cached as .npy files so later loads take well under a second.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import socket
import tarfile
import zlib
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class DataError(Exception):
    """A data source that is missing, unreadable or laid out wrongly (the message says what to do)."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train and test splits as uint8 (N, 32, 32, 3) images with int32 labels."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: tuple[str, ...]
    source: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def holdout(self, per_class: int, seed: int = 0) -> Dataset:
        """Holds `per_class` training images of each class out as the test split (for choosing hyper-parameters
        without touching the test set). The split depends only on (per_class, seed), not on the run seed.

        Raises:
          DataError: if a class has too few images to hold out `per_class` and keep one.
        """
        rng = np.random.default_rng([seed, 0x401D])
        held = []
        for c in range(self.num_classes):
            members = np.flatnonzero(self.train_y == c)
            if len(members) <= per_class:
                raise DataError(f"--holdout {per_class} leaves no training images of class {self.class_names[c]!r}"
                                f" ({len(members)} in all)")
            held.append(np.sort(rng.permutation(members)[:per_class]))
        held = np.concatenate(held)
        keep = np.ones(len(self.train_y), bool)
        keep[held] = False
        return dataclasses.replace(self, train_x=self.train_x[keep], train_y=self.train_y[keep],
                                   test_x=self.train_x[held], test_y=self.train_y[held],
                                   source=f"{self.source} (train minus {per_class}/class held out as test)")

    def class_indices(self) -> np.ndarray:
        """(classes, max per class) int32 indices into train_x per class, in order, padded with -1."""
        members = [np.flatnonzero(self.train_y == c) for c in range(self.num_classes)]
        out = np.full((self.num_classes, max(len(m) for m in members)), -1, np.int32)
        for c, m in enumerate(members):
            out[c, :len(m)] = m
        return out


def default_cache_dir() -> Path:
    return Path(os.environ.get("SM_JAX_CACHE", Path.home() / ".cache" / "sm_jax"))


def load_cifar10(data_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None) -> Dataset:
    """Loads CIFAR-10.

    Args:
      data_dir: None for TFDS's default location; a TFDS data dir; an image-folder directory or archive
        ({train,test}/{class}/*.jpg, e.g. cifar10-jpeg.tar.gz); or the official cifar-10-python /
        cifar-10-binary archive (or its extracted folder).
      cache_dir: where decoded arrays are cached (default $SM_JAX_CACHE or ~/.cache/sm_jax).
    Returns:
      A Dataset.
    Raises:
      DataError: with a one-line explanation for a missing, corrupt or unrecognised source, or no network.
    """
    if data_dir is None:
        return _load_tfds(None)
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    kind = _detect(path)
    if kind == "tfds":
        return _load_tfds(path)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    st = path.stat()
    tag = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{kind}".encode()).hexdigest()[:16]
    cached = cache / f"cifar10-{tag}"
    if (cached / "done").exists():
        arrays = {n: np.load(cached / f"{n}.npy") for n in ("train_x", "train_y", "test_x", "test_y")}
        names = tuple((cached / "classes.txt").read_text().split())
    else:
        arrays, names = _READERS[kind](path)
        _write_cache(cached, arrays, names)
    return Dataset(**arrays, class_names=names, source=f"{kind}:{path}")


def _write_cache(cached: Path, arrays: dict, names) -> None:
    try:
        cached.mkdir(parents=True, exist_ok=True)
        for n, a in arrays.items():
            tmp = cached / f"{n}.tmp.npy"
            np.save(tmp, a)
            os.replace(tmp, cached / f"{n}.npy")
        (cached / "classes.txt").write_text("\n".join(names))
        (cached / "done").touch()  # written last: a half-written cache is never read
    except OSError:
        pass  # an unwritable cache only costs decoding time


# --- source detection --------------------------------------------------------------------------------

def _detect(path: Path) -> str:
    if path.is_dir():
        if (path / "cifar10").is_dir():
            return "tfds"
        if _find_split_root(path) is not None:
            return "folder"
        if any(path.rglob("data_batch_1.bin")):
            return "binary"
        if any(path.rglob("data_batch_1")):
            return "python"
        raise DataError(f"{path}: not a TFDS data dir, an image folder ({{train,test}}/<class>/*.jpg) "
                        "or an extracted CIFAR-10 archive")
    try:
        with tarfile.open(path) as tf:
            names = tf.getnames()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path}: cannot read the archive ({type(e).__name__}: {e})") from None
    base = {n.rsplit("/", 1)[-1] for n in names}
    if "data_batch_1.bin" in base:
        return "binary"
    if "data_batch_1" in base:
        return "python"
    if any("/train/" in f"/{n}" for n in names) and any("/test/" in f"/{n}" for n in names):
        return "folder"
    raise DataError(f"{path}: archive holds neither {{train,test}}/<class>/ images nor the official CIFAR-10 batches")


def _find_split_root(path: Path) -> Path | None:
    for cand in [path, *sorted(p for p in path.iterdir() if p.is_dir())]:
        if (cand / "train").is_dir() and (cand / "test").is_dir():
            return cand
    return None


# --- readers: each returns ({train_x, train_y, test_x, test_y}, class_names) ---------------------------

def _decode(blob: bytes, where: str) -> np.ndarray:
    from PIL import Image

    try:
        img = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
    except Exception as e:  # PIL raises many types for broken files
        raise DataError(f"{where}: cannot decode image ({type(e).__name__})") from None
    if img.shape != (32, 32, 3):
        raise DataError(f"{where}: image is {img.shape[1]}x{img.shape[0]}, expected 32x32")
    return img


def _assemble(items: dict[str, dict[str, list[tuple[str, bytes]]]], where: str):
    """items[split][class] = [(name, bytes)] -> arrays; classes sorted, files sorted by name."""
    if set(items) != {"train", "test"}:
        raise DataError(f"{where}: expected train/ and test/ splits, found {sorted(items) or 'none'}")
    names = tuple(sorted(items["train"]))
    if not names or tuple(sorted(items["test"])) != names:
        raise DataError(f"{where}: train/ and test/ must hold the same class folders")
    out = {}
    for split in ("train", "test"):
        xs, ys = [], []
        for c, name in enumerate(names):
            for fname, blob in sorted(items[split][name]):
                xs.append(_decode(blob, f"{where}:{fname}"))
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


def _read_folder(path: Path):
    items: dict = {}
    if path.is_dir():
        root = _find_split_root(path)
        for f in root.rglob("*"):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                sc = _split_class(f.relative_to(root).as_posix())
                if sc:
                    items.setdefault(sc[0], {}).setdefault(sc[1], []).append((f.name, f.read_bytes()))
        return _assemble(items, str(path))
    try:
        with tarfile.open(path) as tf:
            for m in tf:
                if m.isfile() and Path(m.name).suffix.lower() in IMAGE_SUFFIXES:
                    sc = _split_class(m.name)
                    if sc:
                        items.setdefault(sc[0], {}).setdefault(sc[1], []).append(
                            (m.name.rsplit("/", 1)[-1], tf.extractfile(m).read()))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path}: corrupt archive ({type(e).__name__}: {e})") from None
    return _assemble(items, str(path))


def _official_members(path: Path, names: list[str]) -> dict[str, bytes]:
    """Reads the named batch files from an official archive or its extracted folder."""
    found: dict[str, bytes] = {}
    try:
        if path.is_dir():
            for f in path.rglob("*"):
                if f.name in names:
                    found[f.name] = f.read_bytes()
        else:
            with tarfile.open(path) as tf:
                for m in tf:
                    base = m.name.rsplit("/", 1)[-1]
                    if m.isfile() and base in names:
                        found[base] = tf.extractfile(m).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path}: corrupt archive ({type(e).__name__}: {e})") from None
    missing = [n for n in names if n not in found]
    if missing:
        raise DataError(f"{path}: missing CIFAR-10 batch files {', '.join(missing)}")
    return found


def _read_python(path: Path):
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    blobs = _official_members(path, files)
    parts = {}
    for f in files:
        try:
            d = pickle.loads(blobs[f], encoding="bytes")
            x = np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            y = np.asarray(d[b"labels"], np.int32)
        except Exception as e:
            raise DataError(f"{path}:{f}: not a CIFAR-10 python batch ({type(e).__name__})") from None
        parts[f] = (x, y)
    train = [parts[f] for f in files[:5]]
    arrays = {"train_x": np.concatenate([p[0] for p in train]), "train_y": np.concatenate([p[1] for p in train]),
              "test_x": parts["test_batch"][0], "test_y": parts["test_batch"][1]}
    return arrays, CIFAR10_CLASSES


def _read_binary(path: Path):
    files = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    blobs = _official_members(path, files)
    parts = {}
    for f in files:
        raw = np.frombuffer(blobs[f], np.uint8)
        if raw.size % 3073:
            raise DataError(f"{path}:{f}: size {raw.size} is not a multiple of 3073 bytes (label + 32x32x3)")
        raw = raw.reshape(-1, 3073)
        parts[f] = (raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), raw[:, 0].astype(np.int32))
    train = [parts[f] for f in files[:5]]
    arrays = {"train_x": np.ascontiguousarray(np.concatenate([p[0] for p in train])),
              "train_y": np.concatenate([p[1] for p in train]),
              "test_x": np.ascontiguousarray(parts["test_batch.bin"][0]), "test_y": parts["test_batch.bin"][1]}
    return arrays, CIFAR10_CLASSES


_READERS = {"folder": _read_folder, "python": _read_python, "binary": _read_binary}


def _online(host: str = "storage.googleapis.com", timeout: float = 3.0) -> bool:
    if os.environ.get("SM_JAX_OFFLINE"):  # force the offline path (tests, air-gapped hosts)
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_tfds(data_dir: Path | None) -> Dataset:
    prepared = data_dir is not None and any((data_dir / "cifar10").glob("*/dataset_info.json"))
    if not prepared and not _online():
        raise DataError("no network to download CIFAR-10 through TFDS: pass --data-dir with a local copy "
                        "(e.g. ../shared/data/cifar10-jpeg.tar.gz, or the official cifar-10-python.tar.gz)")
    try:
        import tensorflow_datasets as tfds

        splits = tfds.as_numpy(tfds.load("cifar10", split=["train", "test"], batch_size=-1, as_supervised=True,
                                          data_dir=None if data_dir is None else str(data_dir)))
    except ImportError:
        raise DataError("tensorflow-datasets is not installed: pip install -r requirements.txt, "
                        "or pass --data-dir with a local copy") from None
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"TFDS could not load cifar10 ({first}); pass --data-dir with a local copy") from None
    (trx, try_), (tex, tey) = splits
    return Dataset(np.asarray(trx, np.uint8), np.asarray(try_, np.int32), np.asarray(tex, np.uint8),
                   np.asarray(tey, np.int32), CIFAR10_CLASSES, f"tfds:{data_dir or 'default'}")
