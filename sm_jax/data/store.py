"""The decoded dataset on disk: built once per source, class by class, resumable; read back memory-mapped (the training
images: only the rows a run uses are read).

A cache directory holds `train_x.npy`, `train_y.npy`, `test_x.npy`, `test_y.npy` (uint8 images, int32 labels),
`meta.json` and, written last, `done`. A streamed build (sources too large to decode in memory: TinyImageNet,
ImageNet folders) first writes each class's images to `parts/<split>-<class>.npy` (each atomically), so a build
killed part-way resumes at the first class it had not finished; the parts are then joined into the split files.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable

import numpy as np

ARRAYS = ("train_x", "train_y", "test_x", "test_y")


def write_atomic(path: Path, array: np.ndarray) -> None:
    """`np.save` through a temporary file renamed into place: a reader never sees a half-written file."""
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def _npy_layout(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of an .npy file, read from its header; ValueError if it is not one."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        if fortran:
            raise ValueError("Fortran-ordered")
        return shape, dtype, f.tell()


def check_cache(cached: Path) -> str:
    """'' if the cache directory is complete and whole, else why not (a truncated or foreign file, a missing one)."""
    if not (cached / "done").exists():
        return "incomplete"
    try:
        meta = json.loads((cached / "meta.json").read_text())
        shapes = {}
        for n in ARRAYS:
            shape, dtype, offset = _npy_layout(cached / f"{n}.npy")
            size = (cached / f"{n}.npy").stat().st_size
            if size != offset + int(np.prod(shape)) * dtype.itemsize:
                return f"{n}.npy holds {size} bytes, its header says {offset + int(np.prod(shape)) * dtype.itemsize}"
            shapes[n] = shape
        for split in ("train", "test"):
            if shapes[f"{split}_x"][:1] != shapes[f"{split}_y"]:
                return f"{split} images {shapes[f'{split}_x']} and labels {shapes[f'{split}_y']} differ in number"
        if not isinstance(meta.get("class_names"), list):
            return "meta.json has no class names"
    except (OSError, ValueError, json.JSONDecodeError) as e:
        return f"{type(e).__name__}: {e}"
    return ""


def read_cache(cached: Path) -> tuple[dict, dict]:
    """The arrays of a checked cache (the training images memory-mapped: pages are read as rows are used) and its
    metadata."""
    arrays = {n: np.load(cached / f"{n}.npy", mmap_mode="r" if n == "train_x" else None) for n in ARRAYS}
    return arrays, json.loads((cached / "meta.json").read_text())


def write_cache(cached: Path, arrays: dict, meta: dict) -> None:
    """Writes decoded arrays as a cache directory (`done` last); an unwritable cache only costs decoding again."""
    try:
        cached.mkdir(parents=True, exist_ok=True)
        for n, a in arrays.items():
            write_atomic(cached / f"{n}.npy", a)
        (cached / "meta.json").write_text(json.dumps(meta))
        (cached / "done").touch()
    except OSError:
        pass


def build_streamed(cached: Path, num_classes: int, read_class: Callable[[int], tuple[np.ndarray, np.ndarray]],
                   meta: dict, progress: bool = True, desc: str = "decoding") -> None:
    """Builds a cache directory class by class, resuming after an interruption.

    Args:
      cached: the cache directory.
      num_classes: classes to read.
      read_class: c -> (train images, test images) of class c, uint8 (n, H, W, C) each; raises DataError for bad
        input (nothing of that class is written).
      meta: the cache's metadata (class names, statistics).
      progress: show a progress bar / lines.
    """
    from sm_jax.progress import Progress

    parts = cached / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    done = [c for c in range(num_classes) if (parts / f"test-{c:05d}.npy").exists()]
    bar = Progress(num_classes, len(done), desc, unit="class", enabled=progress, every=10.0, stream=sys.stderr)
    for c in range(num_classes):
        if (parts / f"test-{c:05d}.npy").exists():  # test is written second: the class is complete
            continue
        train, test = read_class(c)
        write_atomic(parts / f"train-{c:05d}.npy", train)
        write_atomic(parts / f"test-{c:05d}.npy", test)
        bar.update(c + 1)
    bar.close()
    for split in ("train", "test"):
        files = [parts / f"{split}-{c:05d}.npy" for c in range(num_classes)]
        layouts = [_npy_layout(f) for f in files]
        shape = layouts[0][0][1:]
        counts = [lay[0][0] for lay in layouts]
        tmp = cached / f"{split}_x.{os.getpid()}.tmp.npy"
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(sum(counts), *shape))
        start = 0
        for f, n in zip(files, counts):
            out[start:start + n] = np.load(f, mmap_mode="r")
            start += n
        out.flush()
        del out
        os.replace(tmp, cached / f"{split}_x.npy")
        write_atomic(cached / f"{split}_y.npy", np.repeat(np.arange(num_classes, dtype=np.int32), counts))
    (cached / "meta.json").write_text(json.dumps(meta))
    (cached / "done").touch()
    shutil.rmtree(parts, ignore_errors=True)
