"""Runs the official DM code (`main_DM.py` of github VICO-UoE/DatasetCondensation, from a checkout you give) on
the data sm_jax reads, for the side-by-side fidelity comparison of docs/results.md.

The official code reads CIFAR-10 through torchvision's downloader, which has no network here, and torchvision's
wheel does not import beside the CPU torch this project pins. So this wrapper, without changing a line of the
official files:
  - replaces `get_dataset` with the same splits read by `sm_jax.data.load_dataset` (uint8 -> [0, 1] -> normalised
    with the official mean/std, NCHW float32 tensors, the test loader at batch 256 as the official one);
  - gives `torchvision` a stand-in with the two names the official files import (`datasets`/`transforms` are only
    used by the replaced `get_dataset`; `save_image` writes the visualisation PNG with PIL).
Everything else (the DM loop, the networks, DSA, the evaluation) is the official code, run as is.

Usage (`--record FILE` also appends the accuracies, as one JSON line, to FILE):
  python -m benchmarks.official_dm --official /path/to/DatasetCondensation \
      --data-dir ../shared/data/cifar10-jpeg.tar.gz \
      -- --ipc 10 --Iteration 200 --num_exp 2 --num_eval 5 --epoch_eval_train 300 --eval_mode F
(`--eval_mode F`: evaluate only at the last iteration, on the training architecture; `SS` evaluates every 2,000.)
"""
from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import numpy as np


def _torchvision_stand_in() -> None:
    from PIL import Image

    def save_image(x, path, nrow=8, **_):  # x: (N, C, H, W) in [0, 1]
        a = (x.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)
        n, h, w, c = a.shape
        rows = -(-n // nrow)
        grid = np.zeros((rows * h, nrow * w, c), np.uint8)
        for i, im in enumerate(a):
            grid[i // nrow * h:(i // nrow + 1) * h, i % nrow * w:(i % nrow + 1) * w] = im
        Image.fromarray(grid.squeeze(-1) if c == 1 else grid).save(path)

    tv = types.ModuleType("torchvision")
    tv.datasets, tv.transforms = types.ModuleType("torchvision.datasets"), types.ModuleType("torchvision.transforms")
    tv.utils = types.ModuleType("torchvision.utils")
    tv.utils.save_image = save_image
    sys.modules.update({"torchvision": tv, "torchvision.datasets": tv.datasets,
                        "torchvision.transforms": tv.transforms, "torchvision.utils": tv.utils})


def _get_dataset(data_dir: str):
    import torch

    from sm_jax.data import load_dataset

    ds = load_dataset("cifar10", data_dir)
    mean, std = list(ds.mean), list(ds.std)

    def tensors(x, y):  # uint8 (N, H, W, C) -> normalised (N, C, H, W)
        x = (x.astype(np.float32) / 255 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.from_numpy(y.astype(np.int64))

    def get_dataset(dataset, data_path):
        import utils  # the official module, importable once its folder is on sys.path

        if dataset != "CIFAR10":
            raise SystemExit(f"error: this wrapper reads CIFAR10 only, not {dataset}")
        dst_train = utils.TensorDataset(*tensors(ds.train_x, ds.train_y))
        dst_test = utils.TensorDataset(*tensors(ds.test_x, ds.test_y))
        testloader = torch.utils.data.DataLoader(dst_test, batch_size=256, shuffle=False, num_workers=0)
        h, w, c = ds.train_x.shape[1:]
        return c, (h, w), ds.num_classes, list(ds.class_names), mean, std, dst_train, dst_test, testloader

    return get_dataset


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--official", required=True, help="a checkout of VICO-UoE/DatasetCondensation")
    p.add_argument("--data-dir", required=True, help="CIFAR-10 in a form sm_jax reads")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--record", help="append one JSON line (the official accuracies, this command, the official "
                   "commit) to this file: a committed result file of the run")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="-- then main_DM.py's own flags")
    args = p.parse_args(argv)
    official = Path(args.official).resolve()
    if not (official / "main_DM.py").is_file():
        raise SystemExit(f"error: {official} has no main_DM.py")
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    _torchvision_stand_in()
    sys.path.insert(0, str(official))
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import main_DM

    main_DM.get_dataset = _get_dataset(args.data_dir)
    sys.argv = [str(official / "main_DM.py"), *rest]
    main_DM.main()
    if args.record:
        _record(args.record, official, rest, argv if argv is not None else sys.argv[1:])


def _record(path: str, official: Path, rest: list[str], command: list[str]) -> None:
    """The newest res_*.pt of the run's --save_path as one JSON line: its accs_all_exps (per architecture, every
    network of every experiment), the command and the official checkout's commit."""
    import json
    import subprocess

    import torch

    save = Path(rest[rest.index("--save_path") + 1]) if "--save_path" in rest else Path("result")
    res = max(save.glob("res_*.pt"), key=lambda f: f.stat().st_mtime)
    accs = torch.load(res, map_location="cpu", weights_only=False)["accs_all_exps"]
    commit = subprocess.run(["git", "-C", str(official), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    line = {"code": "official main_DM.py", "official_commit": commit, "command": ["benchmarks.official_dm", *command],
            "set": str(res), "accuracies": {k: [float(a) for a in v] for k, v in accs.items()}}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
