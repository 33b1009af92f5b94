"""TinyImageNet and the ImageNet subsets, read as the official codes read them, one class at a time.

Sources (a folder, or the .zip / .tar users download):
- `tinyimagenet`: the `tiny-imagenet-200` layout: `wnids.txt`, `words.txt` (names), `train/<wnid>/images/*.JPEG`,
  `val/images/*.JPEG` labelled by `val/val_annotations.txt` (the split the official codes test on). Classes in sorted
  wnid order (torchvision's ImageFolder, which MTT reads it with).
- ImageNet subsets: an ILSVRC-2012 folder, `train/<wnid>/*.JPEG` and either `val/<wnid>/*.JPEG` or `val/*.JPEG` with
  Kaggle's `LOC_val_solution.csv` or the devkit's `ILSVRC2012_validation_ground_truth.txt` + `meta.mat`. Only the
  subset's classes are read, labelled in the official list's order; a folder holding just those classes (the
  ImageNette download's `train/` and `val/`) is read the same way.

Images are resized once, when the cache is built, as the dataset's official code does (`DatasetInfo.resize`).
"""
from __future__ import annotations

import csv
import io
import re
import tarfile
import zipfile
from pathlib import Path

import numpy as np

from sm_jax.data.readers import ARCHIVE_ERRORS, IMAGE_SUFFIXES, DataError
from sm_jax.data.registry import DatasetInfo

WNID = re.compile(r"n\d{8}$")
TINY_LAYOUT = "tiny-imagenet-200/{wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, val/val_annotations.txt}"
IMAGENET_LAYOUT = ("train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (or val/*.JPEG with LOC_val_solution.csv, or the "
                   "devkit's ILSVRC2012_validation_ground_truth.txt and meta.mat)")


class FileTree:
    """The files of a folder, a .zip or a .tar(.gz), by relative path under their common root."""

    def __init__(self, path: Path, marker: str):
        """`marker`: a file (by base name) whose folder is the tree's root (e.g. wnids.txt; 'train' for a folder)."""
        self.path = path
        self._zip = self._tar = None
        try:
            if path.is_dir():
                names = [p.relative_to(path).as_posix() for p in path.rglob("*") if not p.is_dir()]
            elif zipfile.is_zipfile(path):
                self._zip = zipfile.ZipFile(path)
                names = [n for n in self._zip.namelist() if not n.endswith("/")]
            else:
                self._tar = tarfile.open(path)
                names = [m.name for m in self._tar.getmembers() if m.isfile()]
        except (*ARCHIVE_ERRORS, zipfile.BadZipFile) as e:
            raise DataError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
        prefixes = ["/".join(parts[:parts.index(marker)]) for parts in (n.split("/") for n in names)
                    if marker in parts]
        prefix = min(prefixes, key=lambda p: (p.count("/"), len(p)), default="")
        prefix = prefix + "/" if prefix else ""
        self.root = prefix
        self.files = {n[len(prefix):]: n for n in names if n.startswith(prefix)}

    def has(self, rel: str) -> bool:
        return rel in self.files

    def read(self, rel: str) -> bytes:
        full = self.files[rel]
        try:
            if self._zip is not None:
                return self._zip.read(full)
            if self._tar is not None:
                return self._tar.extractfile(full).read()
            return (self.path / full).read_bytes()
        except (*ARCHIVE_ERRORS, zipfile.BadZipFile, KeyError) as e:
            raise DataError(f"{self.path}:{full}: cannot read ({type(e).__name__}: {e})") from None

    def where(self, rel: str) -> str:
        return f"{self.path}/{self.files.get(rel, rel)}" if self.path.is_dir() else f"{self.path}:{self.files[rel]}"


def decode(blob: bytes, where: str, size: tuple[int, int], resize: str) -> np.ndarray:
    """A JPEG/PNG -> uint8 (H, W, 3), resized as the dataset's official code does.

    Args:
      size: (H, W) of the dataset's images.
      resize: '' (the image must already have that size), 'squash' (bilinear to exactly (H, W), as MTT's
        `Resize(im_size)` with a tuple), 'crop' (the shorter side bilinearly to H, then the central H x W: IDC's
        `Resize(size)` + `CenterCrop(size)`).
    """
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(blob))
        img.load()
        img = img.convert("RGB")
    except Exception as e:  # PIL raises many types for broken files
        raise DataError(f"{where}: cannot decode image ({type(e).__name__}); the file is corrupt or not an "
                        "image") from None
    h, w = size
    if resize == "squash":
        img = img.resize((w, h), Image.BILINEAR)
    elif resize == "crop":
        short = h
        scale = short / min(img.size)
        img = img.resize((max(short, round(img.size[0] * scale)), max(short, round(img.size[1] * scale))),
                         Image.BILINEAR)
        left, top = (img.size[0] - w) // 2, (img.size[1] - h) // 2
        img = img.crop((left, top, left + w, top + h))
    elif img.size != (w, h):
        raise DataError(f"{where}: image is {img.size[0]}x{img.size[1]}, expected {w}x{h}")
    return np.asarray(img, np.uint8)


def _stack(images: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    return np.stack(images) if images else np.zeros((0, *size, 3), np.uint8)


def _names(tree: FileTree, wnids, *files: str) -> tuple[str, ...]:
    """Readable class names from words.txt / LOC_synset_mapping.txt where present, else the wnids."""
    for f in files:
        if tree.has(f):
            words = {}
            for line in tree.read(f).decode(errors="replace").splitlines():
                parts = re.split(r"[\t ]", line.strip(), maxsplit=1)
                if len(parts) == 2:
                    words[parts[0]] = parts[1].split(",")[0].strip()
            return tuple(words.get(w, w) for w in wnids)
    return tuple(wnids)


class ClassSource:
    """A source read one class at a time: `wnids`, `names`, and per wnid the relative paths of its `train` and
    `test` images in `tree`, decoded to `size` as `resize` says."""

    tree: FileTree
    wnids: tuple[str, ...]
    train: dict[str, list[str]]
    test: dict[str, list[str]]
    size: tuple[int, int]
    resize: str

    def read(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        w = self.wnids[c]
        return tuple(_stack([decode(self.tree.read(r), self.tree.where(r), self.size, self.resize)
                             for r in sorted(split[w])], self.size) for split in (self.train, self.test))


class TinyImageNet(ClassSource):
    """The `tiny-imagenet-200` download as a per-class source (`read(c)` -> (train, test) images of class c)."""

    def __init__(self, path: Path, info: DatasetInfo, size: tuple[int, int], resize: str):
        self.tree, self.size, self.resize = FileTree(path, "wnids.txt"), size, resize
        tree = self.tree
        if not tree.has("wnids.txt") or not tree.has("val/val_annotations.txt"):
            raise DataError(f"{path}: not the TinyImageNet layout (no wnids.txt or val/val_annotations.txt); "
                            f"expected {TINY_LAYOUT}")
        self.wnids = tuple(sorted(w.strip() for w in tree.read("wnids.txt").decode().split() if w.strip()))
        if info.num_classes and len(self.wnids) != info.num_classes:
            raise DataError(f"{tree.where('wnids.txt')}: {len(self.wnids)} classes, {info.name} has "
                            f"{info.num_classes}")
        self.names = _names(tree, self.wnids, "words.txt")
        self.train: dict[str, list[str]] = {w: [] for w in self.wnids}
        for rel in tree.files:
            parts = rel.split("/")
            if len(parts) == 4 and parts[0] == "train" and parts[2] == "images" and _image(rel):
                if parts[1] not in self.train:
                    raise DataError(f"{tree.where(rel)}: class folder {parts[1]} is not in wnids.txt")
                self.train[parts[1]].append(rel)
        self.test: dict[str, list[str]] = {w: [] for w in self.wnids}
        for line in tree.read("val/val_annotations.txt").decode().splitlines():
            fields = line.split("\t")
            if len(fields) < 2:
                continue
            if fields[1] not in self.test:
                raise DataError(f"{tree.where('val/val_annotations.txt')}: class {fields[1]} of {fields[0]} is not "
                                "in wnids.txt")
            if not tree.has(f"val/images/{fields[0]}"):
                raise DataError(f"{path}: val/images/{fields[0]} (in val_annotations.txt) is missing; expected "
                                f"{TINY_LAYOUT}")
            self.test[fields[1]].append(f"val/images/{fields[0]}")
        empty = [w for w in self.wnids if not self.train[w]]
        if empty:
            raise DataError(f"{path}: no training images of class {empty[0]} (train/{empty[0]}/images/*.JPEG); "
                            f"expected {TINY_LAYOUT}")


class ImageNetFolder(ClassSource):
    """An ILSVRC-2012 folder (or an ImageNette-like one) as a per-class source of the subset's classes."""

    def __init__(self, path: Path, info: DatasetInfo, size: tuple[int, int], resize: str):
        self.tree, self.size, self.resize = FileTree(path, "train"), size, resize
        tree = self.tree
        self.wnids = info.classes
        self.train: dict[str, list[str]] = {w: [] for w in self.wnids}
        self.test: dict[str, list[str]] = {w: [] for w in self.wnids}
        flat_val = []
        for rel in tree.files:
            if not _image(rel):
                continue
            parts = rel.split("/")
            if parts[0] == "train" and len(parts) >= 3 and parts[1] in self.train:
                self.train[parts[1]].append(rel)
            elif parts[0] == "val" and len(parts) == 3 and parts[1] in self.test:
                self.test[parts[1]].append(rel)
            elif parts[0] == "val" and len(parts) == 2:
                flat_val.append(rel)
        if not any(self.train.values()) and not any(WNID.match(r.split("/")[1]) for r in tree.files
                                                    if r.startswith("train/") and r.count("/") >= 2):
            raise DataError(f"{path}: not an ImageNet folder (no train/<wnid>/ class folders); expected "
                            f"{IMAGENET_LAYOUT}")
        missing = [w for w in self.wnids if not self.train[w]]
        if missing:
            raise DataError(f"{path}: {info.name}'s class {missing[0]} has no images (train/{missing[0]}/*.JPEG); "
                            f"{len(missing)} of its {len(self.wnids)} classes are missing")
        if flat_val and not any(self.test.values()):
            labels = self._val_labels(path)
            for rel in flat_val:
                w = labels.get(rel.rsplit("/", 1)[-1].rsplit(".", 1)[0])
                if w in self.test:
                    self.test[w].append(rel)
        if not any(self.test.values()):
            raise DataError(f"{path}: no validation images of {info.name}'s classes; expected {IMAGENET_LAYOUT}")
        self.names = _names(tree, self.wnids, "LOC_synset_mapping.txt", "words.txt")

    def _val_labels(self, path: Path) -> dict[str, str]:
        """Image id (file stem) -> wnid of the flat val folder, from Kaggle's csv or the devkit."""
        tree = self.tree
        if tree.has("LOC_val_solution.csv"):
            rows = csv.reader(io.StringIO(tree.read("LOC_val_solution.csv").decode()))
            return {r[0]: r[1].split()[0] for r in rows if len(r) >= 2 and r[1] and r[0] != "ImageId"}
        truth = [r for r in tree.files if r.endswith("ILSVRC2012_validation_ground_truth.txt")]
        meta = [r for r in tree.files if r.endswith("meta.mat")]
        if truth and meta:
            import scipy.io

            try:
                synsets = scipy.io.loadmat(io.BytesIO(tree.read(meta[0])), squeeze_me=True)["synsets"]
                by_id = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets}
            except Exception as e:  # scipy raises several types for damaged files
                raise DataError(f"{tree.where(meta[0])}: not the devkit's meta.mat ({type(e).__name__})") from None
            ids = [int(t) for t in tree.read(truth[0]).decode().split()]
            return {f"ILSVRC2012_val_{i + 1:08d}": by_id.get(t, "") for i, t in enumerate(ids)}
        raise DataError(f"{path}: val/ holds images but no labels for them; expected {IMAGENET_LAYOUT}")


def _image(rel: str) -> bool:
    return Path(rel).suffix.lower() in IMAGE_SUFFIXES


SOURCES = {"tinyimagenet": TinyImageNet, "imagenet-folder": ImageNetFolder}


def detect_streamed(path: Path) -> str | None:
    """'tinyimagenet' / 'imagenet-folder' when `path` is laid out so (cheaply: no walk of a large folder)."""
    if path.is_dir():
        for root in (path, path / "tiny-imagenet-200"):
            if (root / "wnids.txt").is_file():
                return "tinyimagenet"
        train = path / "train"
        if train.is_dir() and any(WNID.match(p.name) for p in train.iterdir() if p.is_dir()):
            return "imagenet-folder"
        return None
    if zipfile.is_zipfile(path):
        try:
            names = zipfile.ZipFile(path).namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise DataError(f"{path}: corrupt zip ({type(e).__name__}: {e})") from None
        if any(n.rsplit("/", 1)[-1] == "wnids.txt" for n in names):
            return "tinyimagenet"
        if any(re.search(r"(^|/)train/n\d{8}/", n) for n in names):
            return "imagenet-folder"
    return None  # another zip (a torch file is one) or archive: the other readers decide
