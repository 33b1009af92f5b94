"""Runs the official MTT code (`buffer.py` or `distill.py` of github GeorgeCazenavette/mtt-distillation, from a
checkout you give) on the data sm_jax reads, for the side-by-side fidelity comparison of docs/results.md.

Without changing a line of the official files, this wrapper:
  - replaces `utils.get_dataset` with CIFAR-10 read by `sm_jax.data.load_dataset`: [0, 1] NCHW float32 tensors;
    with `--zca`, kornia's `ZCAWhitening(eps=0.1, compute_inv=True)` fitted on the whole training split (as the
    official code fits it) and applied to the training images and the test split, else the official mean/std;
    `--per-class N` keeps the first N training images of each class as the training split (the experts' budget and
    distill.py's initial images; the ZCA is still fitted on the whole split, as sm_jax's `--expert-per-class` does);
  - gives `torchvision` a stand-in with the names the official files use (`datasets`/`transforms` only in the
    replaced `get_dataset`; `utils.make_grid` for its logged pictures), and `wandb` one that keeps the config and
    prints nothing (distill.py reads its arguments back from `wandb.config`);
  - on a host without CUDA, makes `Tensor.cuda()` the identity (distill.py moves the set to the GPU before saving
    it) and `Tensor.cpu()` of a CPU tensor a copy, as it is from a GPU: buffer.py keeps each epoch's parameters as
    `p.detach().cpu()`, which on a CPU-only host is the live parameter itself, so every snapshot of a trajectory
    would be the last epoch's (the buffers it wrote that way hold 11 identical snapshots per expert).
Everything else (the experts' training, the unrolled students, DSA, the evaluation) is the official code, as is.
`--log FILE` keeps the scalars the script sends to wandb (distill.py's learned lr, `Synthetic_LR`, and its
accuracies), one JSON line per call. `--step-times FILE` records, for benchmarks.mtt_speed, the host clock at
each step of distill.py's optimiser of the learned lr: the one optimiser whose parameter is a scalar, stepped
once at the end of every distillation iteration.

Usage (buffer.py writes BUFFERS/CIFAR10/ConvNet/replay_buffer_0.pt, which distill.py reads):
  python -m benchmarks.official_mtt --official /path/to/mtt-distillation --data-dir ../shared/data/cifar10-jpeg.tar.gz \
      --per-class 500 --script buffer -- --zca --num_experts 2 --train_epochs 10 --buffer_path BUFFERS
  python -m benchmarks.official_mtt --official ... --data-dir ... --per-class 500 --script distill -- --zca --ipc 1 \
      --syn_steps 20 --expert_epochs 2 --max_start_epoch 5 --lr_img 1000 --lr_lr 1e-07 --lr_teacher 0.01 \
      --Iteration 200 --eval_it 200 --num_eval 5 --epoch_eval_train 300 --buffer_path BUFFERS
"""
from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
import types
from pathlib import Path

import numpy as np


def _scalar(v) -> bool:
    return isinstance(v, (int, float, np.floating)) or (hasattr(v, "numel") and v.numel() == 1)


def _stand_ins(scalar_log: str = "") -> None:
    import torch

    tv = types.ModuleType("torchvision")
    tv.datasets, tv.transforms = types.ModuleType("torchvision.datasets"), types.ModuleType("torchvision.transforms")
    tv.utils = types.ModuleType("torchvision.utils")
    tv.utils.make_grid = lambda x, *a, **k: x  # only for pictures sent to wandb
    tv.utils.save_image = lambda *a, **k: None
    sys.modules.update({"torchvision": tv, "torchvision.datasets": tv.datasets,
                        "torchvision.transforms": tv.transforms, "torchvision.utils": tv.utils})

    class Config:
        def __init__(self, args):
            self._items = dict(vars(args))

    wb = types.ModuleType("wandb")
    wb.run = types.SimpleNamespace(name="sm_jax_wrapper")

    def init(config=None, **_):
        wb.config = Config(config)

    def log(values, step=None, **_):
        scalars = {k: float(v) for k, v in values.items() if _scalar(v)}
        if scalars and scalar_log:
            with open(scalar_log, "a") as f:
                f.write(json.dumps({"step": step, **scalars}) + "\n")
    wb.init, wb.log, wb.finish = init, log, (lambda *a, **k: None)
    wb.Histogram = wb.Image = lambda *a, **k: None
    sys.modules["wandb"] = wb
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *a, **k: self
        cpu = torch.Tensor.cpu
        torch.Tensor.cpu = lambda self, *a, **k: self.clone() if self.device.type == "cpu" else cpu(self, *a, **k)


def _record_steps(path: str) -> None:
    import atexit
    import json
    import time

    import torch

    stamps, step = [], torch.optim.SGD.step

    def timed(self, *a, **k):
        out = step(self, *a, **k)
        if self.param_groups[0]["params"][0].ndim == 0:  # distill.py's optimizer_lr: one per iteration
            stamps.append(time.perf_counter())
        return out
    torch.optim.SGD.step = timed
    atexit.register(lambda: Path(path).write_text(json.dumps(stamps)))


def _get_dataset(data_dir: str, per_class: int):
    import torch

    from sm_jax.data import first_per_class, load_dataset

    ds = load_dataset("cifar10", data_dir)
    mean, std = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]  # the official utils' CIFAR-10 statistics

    def nchw(x):  # uint8 (N, H, W, C) -> [0, 1] (N, C, H, W)
        return torch.from_numpy(np.ascontiguousarray(x.astype(np.float32).transpose(0, 3, 1, 2) / 255))

    def get_dataset(dataset, data_path, batch_size=1, subset="", args=None):
        import kornia as K
        import utils  # the official module, importable once its folder is on sys.path

        if dataset != "CIFAR10":
            raise SystemExit(f"error: this wrapper reads CIFAR10 only, not {dataset}")
        keep = np.arange(len(ds.train_y))
        if per_class:
            keep = first_per_class(ds.train_y, 10, per_class)
        train, test = nchw(ds.train_x), nchw(ds.test_x)
        if args.zca:
            zca = K.enhance.ZCAWhitening(eps=0.1, compute_inv=True)
            zca.fit(train)
            train, test = zca(train[keep]), zca(test)
            args.zca_trans = zca
        else:
            m, s = torch.tensor(mean)[None, :, None, None], torch.tensor(std)[None, :, None, None]
            train, test = (train[keep] - m) / s, (test - m) / s
        label = lambda y: torch.from_numpy(y.astype(np.int64))  # noqa: E731
        dst_train = utils.TensorDataset(train.detach(), label(ds.train_y[keep]))
        dst_test = utils.TensorDataset(test.detach(), label(ds.test_y))
        testloader = torch.utils.data.DataLoader(dst_test, batch_size=128, shuffle=False, num_workers=0)
        ident = {c: c for c in range(10)}
        return 3, (32, 32), 10, list(ds.class_names), mean, std, dst_train, dst_test, testloader, None, ident, ident

    return get_dataset


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--official", required=True, help="a checkout of GeorgeCazenavette/mtt-distillation")
    p.add_argument("--data-dir", required=True, help="CIFAR-10 in a form sm_jax reads")
    p.add_argument("--script", required=True, choices=("buffer", "distill"))
    p.add_argument("--per-class", type=int, default=0, help="training images per class (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="torch, numpy and random seeds")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--log", default="", help="append the scalars the script logs to wandb (its Synthetic_LR, "
                   "accuracies) to this file, one JSON line per call")
    p.add_argument("--step-times", default="", help="write the host clock at each distillation iteration's end")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="-- then the script's own flags")
    args = p.parse_args(argv)
    import random

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    official = str(Path(args.official).absolute())
    sys.path.insert(0, official)
    _stand_ins(args.log)
    if args.step_times:
        _record_steps(args.step_times)
    import utils

    get_dataset = _get_dataset(args.data_dir, args.per_class)
    utils.get_dataset = get_dataset
    rest = [a for a in args.rest if a != "--"]
    sys.argv = [f"{args.script}.py", *rest]
    # the scripts import get_dataset by name from utils: the replaced one is what they find
    runpy.run_path(os.path.join(official, f"{args.script}.py"), run_name="__main__")


if __name__ == "__main__":
    main()
