"""Datasets as uint8 arrays: TFDS by default; offline from an image folder / .tar.gz or the official archives.

`DATASETS` (registry.py) names each dataset with its shape, classes and normalisation statistics; `load_dataset`
reads one. Decoding happens once: the arrays are cached as .npy files, so later loads take well under a second.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import sys
from pathlib import Path

import numpy as np

from sm_jax.data.imagenet import IMAGENET_LAYOUT, SOURCES, TINY_LAYOUT, detect_streamed
from sm_jax.data.readers import READERS, DataError, check_labels, detect
from sm_jax.data.registry import CIFAR10_CLASSES, CIFAR_MEAN, CIFAR_STD, DATASETS, DatasetInfo, dataset_info
from sm_jax.data.store import build_streamed, check_cache, read_cache, write_cache

__all__ = ["CIFAR10_CLASSES", "DATASETS", "DataError", "DataSpec", "Dataset", "DatasetInfo", "dataset_info",
           "default_cache_dir", "first_per_class", "load_dataset"]


def first_per_class(labels: np.ndarray, num_classes: int, per_class: int) -> np.ndarray:
    """Sorted indices of the first `per_class` rows of each class in `labels` (all of a smaller class)."""
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(num_classes)]))


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What the models and methods need of a dataset: classes, image shape and normalisation statistics."""

    num_classes: int = 10
    image_shape: tuple[int, int, int] = (32, 32, 3)  # (H, W, C)
    mean: tuple[float, ...] = CIFAR_MEAN
    std: tuple[float, ...] = CIFAR_STD


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train and test splits as uint8 (N, H, W, C) images with int32 labels, and how to normalise them."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: tuple[str, ...]
    source: str
    mean: tuple[float, ...] = CIFAR_MEAN  # per-channel statistics of [0, 1] pixels
    std: tuple[float, ...] = CIFAR_STD
    name: str = "cifar10"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def spec(self) -> DataSpec:
        return DataSpec(self.num_classes, tuple(int(d) for d in self.train_x.shape[1:]), tuple(self.mean),
                        tuple(self.std))

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

    def test_subset(self, per_class: int) -> Dataset:
        """The first `per_class` test images of every class (all of a smaller class): a cheaper, fixed evaluation."""
        keep = first_per_class(self.test_y, self.num_classes, per_class)
        return dataclasses.replace(self, test_x=self.test_x[keep], test_y=self.test_y[keep],
                                   source=f"{self.source} (first {per_class} test images per class)")

    def class_indices(self) -> np.ndarray:
        """(classes, max per class) int32 indices into train_x per class, in order, padded with -1."""
        members = [np.flatnonzero(self.train_y == c) for c in range(self.num_classes)]
        out = np.full((self.num_classes, max(len(m) for m in members)), -1, np.int32)
        for c, m in enumerate(members):
            out[c, :len(m)] = m
        return out


def default_cache_dir() -> Path:
    return Path(os.environ.get("SM_JAX_CACHE", Path.home() / ".cache" / "sm_jax"))


def load_dataset(name: str, data_dir: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None, res: int = 0, progress: bool = True,
                 log=None) -> Dataset:
    """Loads dataset `name` of DATASETS.

    Args:
      name: a DATASETS name (`folder`: any image folder, given by data_dir).
      data_dir: None for TFDS's default location; a TFDS data dir; an image-folder directory or archive
        ({train,test}/{class}/*.png|jpg); or one of the dataset's official forms (or its extracted folder).
      cache_dir: where decoded arrays are cached (default $SM_JAX_CACHE or ~/.cache/sm_jax).
      res: the image side to resize to when the cache is built (0: the dataset's own); only datasets read from
        ImageNet-sized images (DatasetInfo.resize) take another.
      progress: show the progress of a long decoding (TinyImageNet, ImageNet folders).
      log: where the one line about a damaged cache goes (default stderr).
    Returns:
      A Dataset whose images have the registry's shape and whose statistics are the registry's (for `folder`:
      computed from the training split). A cached training split is memory-mapped.
    Raises:
      DataError: with a one-line explanation for an unknown name, a missing, corrupt, mislabelled or
        unrecognised source, or no network.
    """
    try:
        info = dataset_info(name)
    except ValueError as e:
        raise DataError(str(e)) from None
    if res:
        if not info.resize:
            raise DataError(f"--res {res}: {info.name}'s images keep their size "
                            f"({info.shape[1]}x{info.shape[0]}); only ImageNet subsets are resized")
        info = dataclasses.replace(info, shape=(res, res, info.shape[2]))
    if data_dir is None:
        if info.tfds_name is None:
            raise DataError(f"--dataset {info.name} needs --data-dir (its layout: {_forms(info)}; get it from "
                            f"{info.download or 'your own images'})")
        return _load_tfds(info, None)
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    kind = detect_streamed(path)
    if kind is None:
        try:
            kind = detect(path, info.tfds_name)
        except DataError:
            if set(info.archives) & set(SOURCES):  # name the layout this dataset expects
                raise DataError(f"{path}: not laid out as {info.name}'s source; expected {_forms(info)}") from None
            raise
    if kind == "tfds":
        return _load_tfds(info, path)
    if kind not in info.archives and (kind != "folder" or set(info.archives) & set(SOURCES)):
        raise DataError(f"{path} is a {kind} source, not one of {info.name}'s forms ({_forms(info)})")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    st = path.stat()
    tag = hashlib.sha1(f"v2|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{kind}|{res}".encode()).hexdigest()[:16]
    cached = cache / f"{info.name}-{tag}"
    damage = check_cache(cached)
    if damage and damage != "incomplete":
        print(f"the cache {cached} is damaged ({damage}): decoding {path} again", file=log or sys.stderr)
        for f in cached.glob("*"):
            if f.is_file():
                f.unlink()
        damage = "incomplete"
    if damage:
        if kind in SOURCES:
            source = SOURCES[kind](path, info, info.shape[:2], info.resize)
            meta = {"class_names": list(source.names), "mean": list(info.mean), "std": list(info.std)}
            build_streamed(cached, len(source.wnids), source.read, meta, progress, f"{info.name}: decoding")
        else:
            arrays, names = READERS[kind](path, info)
            meta = _check(arrays, names, info, f"{path}", folder=kind == "folder")
            write_cache(cached, arrays, meta)
            if check_cache(cached):  # an unwritable cache: use what was decoded
                return Dataset(**arrays, class_names=tuple(meta["class_names"]), source=f"{kind}:{path}",
                               mean=tuple(meta["mean"]), std=tuple(meta["std"]), name=info.name)
    arrays, meta = read_cache(cached)
    return Dataset(**arrays, class_names=tuple(meta["class_names"]), source=f"{kind}:{path}",
                   mean=tuple(meta["mean"]), std=tuple(meta["std"]), name=info.name)


def _forms(info: DatasetInfo) -> str:
    """The forms a --data-dir of `info` may take (a streamed dataset's layout is its only one)."""
    layouts = {"tinyimagenet": TINY_LAYOUT, "imagenet-folder": IMAGENET_LAYOUT,
               "tinyimagenet-pt": "DC's tinyimagenet.pt"}
    folder = () if set(info.archives) & set(SOURCES) else ("image folder",)
    return ", ".join((*folder, *(layouts.get(a, a) for a in info.archives)))


def _check(arrays: dict, names, info: DatasetInfo, where: str, folder: bool = False) -> dict:
    """Validates shapes and labels against the registry entry; returns the cached metadata (names, statistics).

    An image folder's classes are its class folders (a subset of the dataset's classes is a valid dataset).
    """
    shape = tuple(arrays["train_x"].shape[1:])
    if info.shape is not None and shape != info.shape:
        raise DataError(f"{where}: images are {shape[1]}x{shape[0]}x{shape[2]}, {info.name}'s are "
                        f"{info.shape[1]}x{info.shape[0]}x{info.shape[2]}")
    if arrays["test_x"].shape[1:] != arrays["train_x"].shape[1:]:
        raise DataError(f"{where}: test images are {arrays['test_x'].shape[1:]}, train images {shape}")
    num_classes = len(names) if folder or not info.num_classes else info.num_classes
    names = tuple(names) or tuple(str(c) for c in range(num_classes))
    if len(names) != num_classes:
        raise DataError(f"{where}: {len(names)} class names for {num_classes} classes")
    check_labels(arrays, num_classes, where)
    missing = sorted(set(range(num_classes)) - set(np.unique(arrays["train_y"]).tolist()))
    if missing:
        raise DataError(f"{where}: no training images of class {missing[0]} ({names[missing[0]]}); "
                        "the archive is incomplete or mislabelled")
    if info.mean is not None:
        mean, std = info.mean, info.std
    else:  # `folder`: the training split's own statistics, over all pixels, per channel
        x = arrays["train_x"].reshape(-1, shape[-1]).astype(np.float64) / 255.0
        mean, std = x.mean(0).round(4).tolist(), np.maximum(x.std(0), 1e-3).round(4).tolist()
    return {"class_names": list(names), "mean": list(mean), "std": list(std)}


def _online(host: str = "storage.googleapis.com", timeout: float = 3.0) -> bool:
    if os.environ.get("SM_JAX_OFFLINE"):  # force the offline path (tests, air-gapped hosts)
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_tfds(info: DatasetInfo, data_dir: Path | None) -> Dataset:
    prepared = data_dir is not None and any((data_dir / info.tfds_name).glob("*/dataset_info.json"))
    if not prepared and not _online():
        raise DataError(f"no network to download {info.name} through TFDS: pass --data-dir with a local copy "
                        f"(an image folder or .tar.gz, or the official archive: {info.download})")
    try:
        import tensorflow_datasets as tfds

        splits, tinfo = tfds.load(info.tfds_name, split=["train", "test"], as_supervised=True, with_info=True,
                                  data_dir=None if data_dir is None else str(data_dir))
        # in large batches rather than batch_size=-1, which TF cannot size for generated (mock) data
        splits = [[np.concatenate(a) for a in zip(*tfds.as_numpy(ds.batch(10_000)))] for ds in splits]
        names = tuple(tinfo.features["label"].names)
    except ImportError:
        raise DataError("tensorflow-datasets is not installed: pip install -r requirements.txt, "
                        "or pass --data-dir with a local copy") from None
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"TFDS could not load {info.tfds_name} ({first}); pass --data-dir with a local copy") from None
    (trx, try_), (tex, tey) = splits
    arrays = {"train_x": np.asarray(trx, np.uint8), "train_y": np.asarray(try_, np.int32),
              "test_x": np.asarray(tex, np.uint8), "test_y": np.asarray(tey, np.int32)}
    if info.name == "cifar10":
        names = CIFAR10_CLASSES
    meta = _check(arrays, names, info, f"tfds:{info.tfds_name}")
    return Dataset(**arrays, class_names=tuple(meta["class_names"]), source=f"tfds:{data_dir or 'default'}",
                   mean=tuple(meta["mean"]), std=tuple(meta["std"]), name=info.name)
