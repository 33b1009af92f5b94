"""Train the DC papers' ConvNet-3 in PyTorch on a set exported by `python -m experiments.export --format folder`,
with DC's evaluation protocol, and test it: the set needs nothing of sm_jax but its folder and metadata.json.

  python examples/train_torch.py --set exported/ --test ../shared/data/cifar10-jpeg.tar.gz [--models 5 --epochs 300]

--test: the test split as an image folder (test/<class>/*) or a .tar.gz of one. The protocol: SGD (momentum 0.9,
weight decay 5e-4), lr 0.01 divided by 10 after half the epochs, batch 256, no augmentation, cross-entropy; the
accuracy after the last epoch. The network: 3 x [conv 3x3 (128) -> instance norm (GroupNorm(128, 128)) -> ReLU ->
avg-pool 2], then a linear classifier.
"""
import argparse
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn


def convnet(channels: int, classes: int, size: int, width: int = 128, depth: int = 3) -> nn.Module:
    layers, c = [], channels
    for _ in range(depth):
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.GroupNorm(width, width, affine=True), nn.ReLU(),
                   nn.AvgPool2d(2)]
        c, size = width, size // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * size * size, classes))


def read_folder(root: Path, class_dirs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W, C) uint8 and labels of root/<class dir>/* in the given class order."""
    xs, ys = [], []
    for label, d in enumerate(class_dirs):
        for f in sorted((root / d).iterdir()):
            xs.append(np.asarray(Image.open(f).convert("RGB")))
            ys.append(label)
    return np.stack(xs), np.asarray(ys)


def read_test(path: Path, class_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The test split of an image folder or its .tar.gz: */test/<class name>/*."""
    if path.is_dir():
        root = next(p for p in [path / "test", *path.glob("*/test")] if p.is_dir())
        return read_folder(root, class_names)
    xs, ys = [], []
    with tarfile.open(path) as tar:
        for m in tar:
            parts = m.name.split("/")
            if m.isfile() and len(parts) >= 3 and parts[-3] == "test" and parts[-2] in class_names:
                xs.append(np.asarray(Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")))
                ys.append(class_names.index(parts[-2]))
    return np.stack(xs), np.asarray(ys)


def tensors(x: np.ndarray, mean, std) -> torch.Tensor:
    x = (x.astype(np.float32) / 255 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def train_and_test(x, y, tx, ty, classes: int, epochs: int, seed: int) -> float:
    torch.manual_seed(seed)
    net = convnet(x.shape[1], classes, x.shape[2])
    loss_fn = nn.CrossEntropyLoss()
    lr = 0.01
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    for epoch in range(epochs):
        if epoch == epochs // 2 + 1:  # a fresh optimiser at the lower rate, as the official code
            opt = torch.optim.SGD(net.parameters(), lr=lr * 0.1, momentum=0.9, weight_decay=5e-4)
        for idx in torch.randperm(len(x)).split(256):
            opt.zero_grad()
            loss_fn(net(x[idx]), y[idx]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        correct = sum((net(tx[i:i + 1000]).argmax(1) == ty[i:i + 1000]).sum().item() for i in range(0, len(tx), 1000))
    return correct / len(tx)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--set", required=True, type=Path, help="an exported folder (with metadata.json)")
    p.add_argument("--test", required=True, type=Path, help="test images: a folder or .tar.gz with test/<class>/")
    p.add_argument("--models", type=int, default=5)
    p.add_argument("--epochs", type=int, default=300)
    args = p.parse_args()
    meta = json.loads((args.set / "metadata.json").read_text())
    names = meta["class_names"]
    x, y = read_folder(args.set, meta.get("class_folders", names))
    tx, ty = read_test(args.test, names)
    x, tx = tensors(x, meta["mean"], meta["std"]), tensors(tx, meta["mean"], meta["std"])
    y, ty = torch.from_numpy(y), torch.from_numpy(ty)
    accs = [train_and_test(x, y, tx, ty, len(names), args.epochs, seed) for seed in range(args.models)]
    print(json.dumps({"accuracies": accs, "accuracy_mean": float(np.mean(accs)), "accuracy_std": float(np.std(accs)),
                      "train_images": len(x), "test_images": len(tx), "epochs": args.epochs}))


if __name__ == "__main__":
    main()
