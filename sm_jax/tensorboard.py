"""TensorBoard event files of a run, in `<workdir>/tensorboard/`: every scalar of metrics.jsonl (the matching losses,
lambda, gradient norm, seconds; each evaluation's accuracies, per architecture, with the baseline where there is one)
and the synthetic grid at each evaluation. Written with tensorboardX's SummaryWriter (no TensorFlow in the run's
process); `tensorboard --logdir runs/` shows every run."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np


class TensorBoard:
    """A metrics.jsonl sink (`artifacts.MetricsLog(sink=...)`) and image writer."""

    def __init__(self, logdir: str | Path):
        # tensorboardX imports PyTorch where it is installed, only to accept torch tensors: 1.5 s and ~300 MB in every
        # run process, which writes numpy. Its import of torch is optional (try/except ImportError).
        hidden = "torch" not in sys.modules
        if hidden:
            sys.modules["torch"] = None  # an ImportError for this import only
        try:
            from tensorboardX import SummaryWriter
        finally:
            if hidden:
                del sys.modules["torch"]

        # opened (and its module imported) here, before the run's loop: never between two iterations, where a
        # stop must find the next iteration already in flight
        self.logdir = Path(logdir)
        self.writer = SummaryWriter(str(self.logdir), flush_secs=20)

    def __call__(self, record: dict[str, Any]) -> None:
        """Writes one metrics.jsonl record: a step's scalars under condense/, an evaluation's under eval/."""
        it = int(record["iteration"])
        if "eval" in record:
            for tag, v in eval_scalars(record["eval"]).items():
                self.writer.add_scalar(f"eval/{tag}", v, it)
            self.writer.flush()
            return
        for k, v in record.items():
            if k != "iteration" and isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(f"condense/{k}", v, it)

    def image(self, tag: str, image: np.ndarray, iteration: int) -> None:
        """An (H, W, 3) uint8 image at `iteration`."""
        self.writer.add_image(tag, image, iteration, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def eval_scalars(ev: dict[str, Any]) -> dict[str, float]:
    """The scalars of an evaluation result (evaluation.evaluate_archs's): accuracy mean/std (and the baseline's and the
    difference), per architecture when there are several."""
    per = ev.get("archs") or {"": ev}
    out = {}
    for arch, r in per.items():
        pre = f"{arch}/" if arch else ""
        if r.get("accuracy_mean") is None:
            continue
        out[f"{pre}accuracy_mean"] = float(r["accuracy_mean"])
        out[f"{pre}accuracy_std"] = float(r["accuracy_std"])
        if "baseline" in r:
            out[f"{pre}baseline_accuracy_mean"] = float(r["baseline"]["accuracy_mean"])
            out[f"{pre}difference"] = float(r["difference"])
    return out
