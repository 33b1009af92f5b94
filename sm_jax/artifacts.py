"""Files a run leaves in its workdir: metrics.jsonl, synthetic.npz/png, results.json, progress.png."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from sm_jax.sets.core import npz_schema


def write_json(path: Path, obj) -> None:
    """Atomic JSON write (a reader never sees a half-written file)."""
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


class MetricsLog:
    """Append-only JSON lines; on resume, drops the lines of iterations after the checkpoint being resumed."""

    def __init__(self, path: Path, keep_up_to: int, sink=None, enabled: bool = True):
        """`sink`: also called with every record written (e.g. a tensorboard.TensorBoard); `enabled` False: writes
        nothing (a process other than the run's writer)."""
        self.path = Path(path)
        self.sink = sink
        self.enabled = enabled
        if enabled and self.path.exists():
            kept = [ln for ln in self.path.read_text().splitlines() if ln.strip() and _iteration(ln) <= keep_up_to]
            tmp = Path(str(self.path) + ".tmp")
            tmp.write_text("".join(ln + "\n" for ln in kept))
            os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        if self.sink is not None:
            self.sink(record)


def _iteration(line: str) -> int:
    try:
        return int(json.loads(line).get("iteration", 0))
    except (ValueError, AttributeError):
        return 1 << 62  # a torn last line from a killed process is dropped


def read_metrics(path: Path) -> list[dict]:
    out = []
    if Path(path).exists():
        for ln in Path(path).read_text().splitlines():
            try:
                out.append(json.loads(ln))
            except ValueError:
                pass
    return out


def device_seconds(path: Path) -> float:
    """Seconds a run spent in its iterations and evaluations, over every sitting, from its metrics.jsonl (what a cell
    costs on the machine; start-up, data loading and iterations redone after a resume are not counted)."""
    recs = read_metrics(path)
    return float(sum(r.get("seconds", 0.0) for r in recs if "eval" not in r)
                 + sum((r["eval"] or {}).get("eval_seconds") or 0.0 for r in recs if "eval" in r))


def save_synthetic(workdir: Path, method, images, class_names, learned: dict | None = None) -> None:
    """synthetic.npz (sets.core.npz_schema: the stored pixels in [0, 1], labels, class names, exactly what networks
    train on, normalised, and the normalisation; IDC also its decoded set in [0, 1]; what the method learned beside
    the images, `learned`) and a grid PNG."""
    pixels = np.asarray(method.to_pixels(images), np.float32)  # (classes, ipc, H, W, C)
    decoded = np.asarray(method.decode(images), np.float32)  # (classes, n, H, W, C) normalised
    dec = None
    if decoded.shape[1] != pixels.shape[1]:
        dec = np.clip(np.asarray(method.denormalize(decoded)), 0, 1).astype(np.float32)
    arrays = npz_schema(pixels, decoded, class_names, method.spec.mean, method.spec.std, dec, learned)
    tmp = Path(workdir) / "synthetic.tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, Path(workdir) / "synthetic.npz")
    save_grid(Path(workdir) / "synthetic.png", pixels, class_names)


def save_grid(path: Path, pixels: np.ndarray, class_names, max_cols: int = 10, scale: int = 2) -> None:
    """A grid PNG: one row per class (at most `max_cols` images), class names on the left."""
    grid(pixels, class_names, max_cols, scale).save(path)


def grid(pixels: np.ndarray, class_names, max_cols: int = 10, scale: int = 2):
    """The grid of `save_grid` as a PIL image; pixels: (classes, n, H, W, C) in [0, 1]."""
    from PIL import Image, ImageDraw

    c, n = pixels.shape[:2]
    cols = min(n, max_cols)
    h, w = pixels.shape[2] * scale, pixels.shape[3] * scale
    label_w, pad = 80, 2
    canvas = Image.new("RGB", (label_w + cols * (w + pad), c * (h + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for ci in range(c):
        draw.text((4, ci * (h + pad) + h // 2 - 6), str(class_names[ci])[:12], fill="black")
        for j in range(cols):
            tile = Image.fromarray((pixels[ci, j] * 255).round().astype(np.uint8).squeeze(-1) if pixels.shape[-1] == 1
                                   else (pixels[ci, j] * 255).round().astype(np.uint8)).resize((w, h), Image.NEAREST)
            canvas.paste(tile, (label_w + j * (w + pad), ci * (h + pad)))
    return canvas


def plot_progress(workdir: Path) -> None:
    """progress.png: matching loss per iteration and evaluation accuracy against iterations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(Path(workdir) / "metrics.jsonl")
    steps = [r for r in records if "loss_all" in r]
    evals = [r for r in records if "eval" in r and r["eval"].get("accuracy_mean") is not None]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    if steps:
        its = [r["iteration"] for r in steps]
        ax1.plot(its, [r["loss_all"] for r in steps], label="whole-class term")
        if any(r["loss_subset"] for r in steps):
            ax1.plot(its, [r["loss_subset"] for r in steps], label="subset term")
        ax1.legend()
    ax1.set(xlabel="iteration", ylabel="matching loss", title="condensation")
    if evals:
        ax2.errorbar([r["iteration"] for r in evals], [100 * r["eval"]["accuracy_mean"] for r in evals],
                     yerr=[100 * r["eval"]["accuracy_std"] for r in evals], marker="o", capsize=3)
    ax2.set(xlabel="iteration", ylabel="test accuracy (%)", title="evaluation")
    fig.tight_layout()
    fig.savefig(Path(workdir) / "progress.png", dpi=100)
    plt.close(fig)
