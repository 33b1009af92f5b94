"""PyTorch baseline: one outer condensation step written the way the official DC/DSA/IDC/DM code does it.

python -m benchmarks.torch_step --method dc --ipc 10 [--batch-real 128] [--subset-k 1] [--repeats 5]

A Python loop over classes (and subsets); per term, `torch.autograd.grad` of the real loss (detached) and of the
synthetic loss with `create_graph=True`; the layer-wise distance (DC/DSA: 1 - cos per output row, IDC: squared
error over conv kernels); SGD(momentum 0.5) on the synthetic pixels. DC/DSA sum the loss over classes and step
once, IDC steps once per class, as their official code does. DSA/IDC/DM apply one siamese augmentation draw per term.
DM (main_DM.py): a new network per step, its parameters frozen; per term the squared distance between the mean
embeddings of the real batch (detached) and the synthetic images; SGD(momentum 0.5) once over all classes. The
images' lr is the method's (its paper preset, `--lr-img`). tests/test_reference.py checks that this step computes
sm_jax's (same loss, same updated images). Needs `pip install -e ".[torch]"`. Prints one JSON line (the same keys
as benchmarks.step).
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sm_jax.config import make_config

MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.2023, 0.1994, 0.2010]).view(1, 3, 1, 1)


class ConvNet(nn.Module):
    """ConvNet-3 as in the official code: conv3x3 -> GroupNorm(C, C) (instance norm) -> ReLU -> AvgPool2, x3."""

    def __init__(self, classes=10, width=128, depth=3):
        super().__init__()
        layers, c = [], 3
        for _ in range(depth):
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.GroupNorm(width, width, affine=True), nn.ReLU(),
                       nn.AvgPool2d(2, 2)]
            c = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * (32 // 2 ** depth) ** 2, classes)

    def embed(self, x):
        return self.features(x).flatten(1)

    def forward(self, x):
        return self.classifier(self.embed(x))


# --- siamese differentiable augmentation (one draw, applied to both batches) -----------------------------------
def _affine(x, theta):
    grid = F.affine_grid(theta.to(x.device).expand(x.shape[0], 2, 3), list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def _color(x, g):
    # parameters drawn on the host (a CPU generator, as the official code's), applied as Python scalars
    x = x + (float(torch.rand(1, generator=g)) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (float(torch.rand(1, generator=g)) * 2.0) + mean
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (float(torch.rand(1, generator=g)) + 0.5) + mean


def _crop(x, g):
    sx, sy = (int(v) for v in torch.randint(-4, 5, (2,), generator=g))
    x = F.pad(x, (4, 4, 4, 4))
    return x[:, :, 4 + sy:36 + sy, 4 + sx:36 + sx]


def _cutout(x, g):
    cy, cx = (int(v) for v in torch.randint(0, 32, (2,), generator=g))
    yy, xx = torch.meshgrid(torch.arange(32, device=x.device), torch.arange(32, device=x.device), indexing="ij")
    mask = ((yy - cy).abs() >= 8) | ((xx - cx).abs() >= 8)
    return x * mask.to(x.dtype)


def _flip(x, g):
    return torch.flip(x, dims=[3]) if torch.rand(1, generator=g) < 0.5 else x


def _scale(x, g):
    sx, sy = (torch.rand(2, generator=g) * 0.4 + 0.8).tolist()
    return _affine(x, torch.tensor([[[sx, 0.0, 0.0], [0.0, sy, 0.0]]]))


def _rotate(x, g):
    t = float((torch.rand(1, generator=g) - 0.5) * 2 * 15 / 180 * math.pi)
    return _affine(x, torch.tensor([[[math.cos(t), math.sin(-t), 0.0], [math.sin(t), math.cos(t), 0.0]]]))


OPS = {"color": _color, "crop": _crop, "cutout": _cutout, "flip": _flip, "scale": _scale, "rotate": _rotate}
POLICIES = {"dc": [], "dsa": [("color", "crop", "cutout", "flip", "scale", "rotate")],
            "idc": [("color",), ("crop",), ("cutout",)]}
POLICIES["dm"] = POLICIES["dsa"]


def siamese(policy, seed, *batches):
    """The same sampled parameters for every batch (a generator re-seeded per batch)."""
    out = []
    for x in batches:
        g = torch.Generator().manual_seed(seed)
        for stage in policy:
            op = stage[int(torch.randint(len(stage), (1,), generator=g))]
            x = OPS[op](x, g)
        out.append(x)
    return out


# --- distances ----------------------------------------------------------------------------------------------------
def cosine_distance(gw_syn, gw_real):
    dis = 0.0
    for gs, gr in zip(gw_syn, gw_real):
        if gs.dim() <= 1:  # biases and norm parameters are ignored, as in the official code
            continue
        gs, gr = gs.reshape(gs.shape[0], -1), gr.reshape(gr.shape[0], -1)
        dis = dis + torch.sum(1 - torch.sum(gr * gs, -1) / (gr.norm(dim=-1) * gs.norm(dim=-1) + 1e-6))
    return dis


def mse_distance(gw_syn, gw_real):
    return sum(((gs - gr) ** 2).sum() for gs, gr in zip(gw_syn, gw_real) if gs.dim() == 4)


def decode(images, factor=2):
    """IDC multi-formation: each stored image holds factor^2 downsampled images, upsampled bilinearly."""
    if factor == 1:
        return images
    n, c, h, w = images.shape
    s = h // factor
    blocks = images.reshape(n, c, factor, s, factor, s).permute(2, 4, 0, 1, 3, 5).reshape(-1, c, s, s)
    return F.interpolate(blocks, size=(h, w), mode="bilinear", align_corners=False)


class Step:
    """The state of a benchmark: data, network, synthetic set, optimiser and the fixed subsets."""

    def __init__(self, method, ipc, batch_real, lr_img, subset_k=1, subset_batch_real=0, classes=10,
                 per_class=5000, seed=0, width=128, depth=3, device="cpu"):
        torch.manual_seed(seed)
        self.device = torch.device(device)
        self.method, self.ipc, self.k, self.classes = method, ipc, subset_k, classes
        self.batch_real, self.sub_real = batch_real, subset_batch_real or batch_real
        self.factor = 2 if method == "idc" else 1
        self.cap = 128 if method == "idc" else 0
        g = torch.Generator().manual_seed(seed)
        self.real = ((torch.randint(0, 256, (classes, per_class, 3, 32, 32), generator=g, dtype=torch.uint8)
                      .float() / 255 - MEAN) / STD).to(self.device)
        self.width, self.depth = width, depth
        self.new_net()
        self.images = torch.randn(classes * ipc, 3, 32, 32, device=self.device, requires_grad=True)
        self.opt = torch.optim.SGD([self.images], lr=lr_img, momentum=0.5)
        self.dist = mse_distance if method == "idc" else cosine_distance
        self.policy = POLICIES[method]
        n_syn = ipc * self.factor ** 2
        self.real_part = [torch.randperm(per_class).chunk(subset_k) for _ in range(classes)]
        self.syn_part = [torch.randperm(n_syn).chunk(subset_k) for _ in range(classes)]
        self.seed = seed

    def new_net(self):
        self.net = ConvNet(self.classes, self.width, self.depth).to(self.device)
        self.params = list(self.net.parameters())
        if self.method == "dm":  # never trained
            for p in self.params:
                p.requires_grad_(False)

    def term(self, real, syn, label):
        self.seed += 1
        if self.policy:
            real, syn = siamese(self.policy, self.seed, real, syn)
        if self.method == "dm":
            return torch.sum((self.net.embed(real).detach().mean(0) - self.net.embed(syn).mean(0)) ** 2)
        lab_r = torch.full((real.shape[0],), label, dtype=torch.long, device=self.device)
        lab_s = torch.full((syn.shape[0],), label, dtype=torch.long, device=self.device)
        gw_real = [g.detach() for g in torch.autograd.grad(F.cross_entropy(self.net(real), lab_r), self.params)]
        gw_syn = torch.autograd.grad(F.cross_entropy(self.net(syn), lab_s), self.params, create_graph=True)
        return self.dist(gw_syn, gw_real)

    def class_loss(self, c, lam):
        syn = self.images[c * self.ipc:(c + 1) * self.ipc]
        if self.method == "idc":
            syn = (decode(syn.clamp(0, 1), self.factor) - MEAN.to(self.device)) / STD.to(self.device)
        sel = syn[torch.randperm(syn.shape[0])[:self.cap]] if self.cap and syn.shape[0] > self.cap else syn
        real = self.real[c, torch.randperm(self.real.shape[1])[:self.batch_real]]
        loss = self.term(real, sel, c)
        if self.k > 1:
            for rk, sk in zip(self.real_part[c], self.syn_part[c]):
                real_k = self.real[c, rk[torch.randperm(len(rk))[:self.sub_real]]]
                loss = loss + lam * self.term(real_k, syn[sk], c)
        return loss

    def __call__(self, lam=0.5) -> float:
        """One step; returns its matching loss summed over classes (whole-class terms + lam * subset terms)."""
        total = 0.0
        if self.method == "idc":  # one optimiser step per class
            for c in range(self.classes):
                loss = self.class_loss(c, lam)
                self.opt.zero_grad()
                loss.backward()
                self.opt.step()
                total += loss.detach()
        else:
            if self.method == "dm":  # a fresh network every iteration
                self.new_net()
            loss = sum(self.class_loss(c, lam) for c in range(self.classes))
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            total = loss.detach()
        return float(total)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="dc", choices=sorted(POLICIES))
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--batch-real", type=int)
    p.add_argument("--subset-k", type=int, default=1)
    p.add_argument("--subset-batch-real", type=int, default=0)
    p.add_argument("--lr-img", type=float, help="the images' lr (default: the method's paper preset, sm_jax's)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--precision", default="float32", choices=("float32", "tensorfloat32"),
                   help="CUDA: float32 turns TF32 off for matmuls and cuDNN convolutions, tensorfloat32 on")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--per-class", type=int, default=5000, help="random real images per class")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=3)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tf32 = args.precision == "tensorfloat32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.backends.cudnn.benchmark = True  # cuDNN picks its fastest algorithm per shape: the fair speed setting
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    batch_real = args.batch_real or (64 if args.method == "idc" else 256)
    lr_img = args.lr_img or make_config(args.method, args.ipc, "paper").lr_img
    step = Step(args.method, args.ipc, batch_real, lr_img, args.subset_k, args.subset_batch_real, args.classes,
                args.per_class, width=args.width, depth=args.depth, device=args.device)
    step()  # warm-up
    sync()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    out = {"step_seconds_median": med, "step_seconds_min": float(min(times)),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "device": torch.cuda.get_device_name() if cuda else "cpu",
           "backend": f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
           "precision": args.precision if cuda else "float32",
           "config": {"method": args.method, "ipc": args.ipc, "batch_real": batch_real, "subset_k": args.subset_k,
                      "subset_batch_real": args.subset_batch_real or batch_real, "classes": step.classes,
                      "width": args.width, "depth": args.depth}}
    if cuda:
        out["peak_device_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
