"""Runs DD-Ranking's own code (the `ddranking` package, 0.2.0) on an sm_jax set, for the side-by-side of
docs/sets.md: the package's LabelRobustScoreHard, LabelRobustScoreSoft and AugmentationRobustScore beside
`--metrics ddranking` on the same set, the same data, the same teacher, the same networks and epochs.

Three steps; `run` in the package's own interpreter (it needs a torchvision that imports, which the CPU torch
sm_jax pins has not: docs/sets.md says how to make its venv), the others in sm_jax's:

  python -m benchmarks.official_ddranking prepare --set DIR --data-dir D --work W [--preset cpu]
      sm_jax's interpreter. Writes W/set/ (the set in DD-Ranking's layout, `--format ddranking`), W/cifar10.npz
      (the uint8 images sm_jax decodes, so both sides see the same pixels), W/teacher.npz (the set's teacher, the
      first real-data reference network of evaluation.reference, in the package's ConvNet-3 parameter order) and
      W/prepared.json (the reference's test accuracy, the dataset's mean and std, the set's evaluation recipe).
  VENV/bin/python benchmarks/official_ddranking.py run --work W [--metrics hard,soft,ars]
      The package's interpreter; writes W/package.json: every cell's accuracy (each evaluation run; the lr its
      grid chose), the package's HLR, IOR, LRS and ARS, and the seconds each took; W/out/, its per-run scores.
  python -m benchmarks.official_ddranking compare --work W --results R
      The markdown side-by-side of W/package.json and R, sm_jax's results file of `--metrics ddranking`.

Without editing the package, this runner:
  - replaces its `get_dataset` (it would download CIFAR-10 through torchvision) by the arrays of W/cifar10.npz,
    normalised with the dataset's mean and std (the package's CIFAR-10 values), as its `ToTensor + Normalize` does;
  - sets its full-data accuracy (`REAL_DATA_ACC_CACHE['CIFAR10-ConvNet-3']`, which it has only for ImageNet and
    TinyImageNet and which a user cannot pass) to the reference's, so HLR has the same first term on both sides;
  - writes the teacher as `teachers/CIFAR10/ConvNet-3/ckpt_best.pt`, where the package loads teachers from, and
    checks it: the package's `validate` of the converted teacher must give the reference's test accuracy;
  - evaluates each training run once, after its last epoch (`test_interval` = epochs), as sm_jax does, instead
    of taking the best of a test every 10 or 20 epochs;
  - gives AugmentationRobustScore the step schedule's `step_size`, which its 0.2.0 code drops (so its default
    'step' schedule cannot run), and replaces `save_results` by a JSON dump, since LabelRobustScoreHard's list of
    LRS has every value twice and its CSV writer raises after the last run.
The recipe (SGD, momentum 0.9, weight decay 5e-4, batch 256, lr / 10 after half the epochs; DSA, one op per
batch; KL at temperature 1 without T^2) is the set's. Soft labels are the package's mode 'M' (the teacher on each
augmented batch, sm_jax's `teacher` protocol); its random subsets are 'image' folders (JPEG, as its code writes
them) in LRS-Soft and ARS, where 'tensor' does not run in 0.2.0, and tensors in LRS-Hard.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

DSA_PARAMS = {"flip": 0.5, "rotate": 15.0, "scale": 1.2, "crop": 0.125, "cutout": 0.5, "brightness": 1.0,
              "saturation": 2.0, "contrast": 0.5}  # DSA's ParamDiffAug, the keys the package's DSA reads


def prepare(set_dir: str, data_dir: str, work: str, preset: str | None) -> None:
    """sm_jax's side: the set, the data, the teacher and the recipe in W."""
    from sm_jax.config import Config
    from sm_jax.data import default_cache_dir
    from sm_jax.evaluation import reference
    from sm_jax.evaluation.protocols import train_protocol
    from sm_jax.experiment import Run
    from sm_jax.experts import params_to_official
    from sm_jax.sets.evaluate import run_config
    from sm_jax.sets.formats import write_ddranking
    from sm_jax.sets.readers import load_set

    w = Path(work)
    w.mkdir(parents=True, exist_ok=True)
    s = load_set(set_dir)
    cfg = run_config(Config.from_dict(s.metadata["config"]), {"data_dir": data_dir, "preset": preset})
    if cfg.dataset != "cifar10" or cfg.zca or cfg.model != "convnet":
        raise SystemExit("error: this runner compares CIFAR-10 sets of the default ConvNet without ZCA")
    run = Run(cfg, progress=False)
    write_ddranking(s, w / "set", s.metadata)
    d = run.data
    np.savez(w / "cifar10.npz", train_x=d.train_x, train_y=d.train_y, test_x=d.test_x, test_y=d.test_y)
    ref, net, train, _ = reference.of_method(run.method, d, cfg.preset, default_cache_dir())
    _, params, _ = ref.teacher(net, run.method.normalize, train, progress=False)
    np.savez(w / "teacher.npz", *params_to_official(params))
    accs = ref.accuracies()
    proto = train_protocol("hard", run.method)
    (w / "prepared.json").write_text(json.dumps({
        "set": str(Path(set_dir).resolve()), "method": cfg.method, "ipc": s.per_class, "models": cfg.eval_models,
        "epochs": proto.epochs, "batch": proto.batch, "momentum": proto.momentum,
        "weight_decay": proto.weight_decay, "temperature": cfg.eval_temperature,
        "reference_accuracy": 100 * float(np.mean(accs)), "reference_dir": str(ref.dir),
        "mean": list(d.mean), "std": list(d.std), "preset": cfg.preset}, indent=2))
    print(f"prepared {w}: {cfg.method} ipc {s.per_class}, {cfg.eval_models} x {proto.epochs} epochs, reference "
          f"{100 * np.mean(accs):.2f} %")


class _Arrays:
    """A torchvision-like dataset over normalised tensors (what the package's CIFAR10 + ToTensor + Normalize
    yields; sm_jax's CIFAR-10 statistics are the package's), with the `targets` its random-subset code reads."""

    def __init__(self, x, y, mean, std):
        import torch

        m, s = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
        self.x = (torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).float() / 255 - m) / s
        self.targets = [int(v) for v in y]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.x[i], self.targets[i]


def _patch(work: Path, prep: dict, calls: list) -> _Arrays:
    """Patches the package (module docstring) to read W's data, record its cells in `calls`; returns the test split."""
    import ddranking.metrics.aug_robust as ars
    import ddranking.metrics.hard_label as hard
    import ddranking.metrics.soft_label as soft
    import ddranking.utils.train_and_eval as te

    a, stats = np.load(work / "cifar10.npz"), (prep["mean"], prep["std"])
    train, test = _Arrays(a["train_x"], a["train_y"], *stats), _Arrays(a["test_x"], a["test_y"], *stats)
    ident = {c: c for c in range(10)}
    epochs = prep["epochs"]

    def get_dataset(dataset, data_path, im_size, use_zca, custom_val_trans, device):
        assert dataset == "CIFAR10" and not use_zca and custom_val_trans is None
        return 3, (32, 32), *stats, 10, train, test, test, ident, ident

    te.REAL_DATA_ACC_CACHE["CIFAR10-ConvNet-3"] = prep["reference_accuracy"]
    for mod in (hard, soft, ars):
        mod.get_dataset = get_dataset
        mod.save_results = lambda results, path: Path(path).write_text(json.dumps(results))
    sched = ars.get_lr_scheduler
    ars.get_lr_scheduler = lambda name, opt, n, step_size=None: sched(name, opt, n, step_size or epochs // 2)
    for cls in (hard.LabelRobustScoreHard, soft.LabelRobustScoreSoft, ars.AugmentationRobustScore):
        for name in [n for n in vars(cls) if n.endswith("_helper") and n.startswith("_compute")]:
            setattr(cls, name, _recorded(getattr(cls, name), name, calls))
    return test


def _recorded(helper, name: str, calls: list):
    def wrapped(self, *args, **kw):
        t = time.perf_counter()
        acc, lr = helper(self, *args, **kw)
        which = "random" if kw.get("image_tensor") is not getattr(self, "_sm_set", None) else "set"
        calls.append({"metric": type(self).__name__, "call": name.removeprefix("_compute_").removesuffix("_helper"),
                      "data": which, "accuracy": float(acc), "lr": lr, "grid": bool(kw.get("hyper_param_search")),
                      "seconds": time.perf_counter() - t})
        print(f"cell {calls[-1]}", flush=True)
        return acc, lr
    return wrapped


def _teacher(work: Path, test: _Arrays, device: str) -> float:
    """Writes the teacher where the package loads it from; returns its test accuracy by the package's validate."""
    import torch
    from ddranking.utils import build_model, validate

    model = build_model("ConvNet-3", num_classes=10, im_size=(32, 32), pretrained=False, device=device)
    arrays = np.load(work / "teacher.npz")
    tensors = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
    params = list(model.parameters())
    if len(params) != len(tensors) or any(tuple(p.shape) != t.shape for p, t in zip(params, tensors)):
        raise SystemExit("error: the teacher's tensors do not fit the package's ConvNet-3")
    with torch.no_grad():
        for p, t in zip(params, tensors):
            p.copy_(torch.from_numpy(t))
    d = work / "teachers" / "CIFAR10" / "ConvNet-3"
    d.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), d / "ckpt_best.pt")
    return float(validate(model, torch.utils.data.DataLoader(test, batch_size=256), device=device))


def run(work: str, metrics: list[str], runs: int | None = None, syn_lr: float | None = None,
        device: str = "cpu") -> None:
    """The package's side: its metric classes `metrics` (of hard, soft, ars) on W/set; W/package.json.

    Args:
      runs: the package's `num_eval` (default: the set's number of evaluation networks).
      syn_lr: the package's `syn_lr` (the lr of the set's cells but LRS-Soft's hard one); None: its lr grid.
    """
    import ddranking
    import torch
    from ddranking.metrics import AugmentationRobustScore, LabelRobustScoreHard, LabelRobustScoreSoft

    w = Path(work)
    prep = json.loads((w / "prepared.json").read_text())
    epochs, calls = prep["epochs"], []
    test = _patch(w, prep, calls)
    teacher_acc = _teacher(w, test, device)
    print(f"teacher: package validate {teacher_acc:.2f} %, sm_jax reference {prep['reference_accuracy']:.2f} %")
    from torchvision import transforms

    images = torch.load(w / "set" / "images.pt")
    # the random subsets' JPEG folders, read as the package's own CIFAR-10 (it requires a transform ending in tensors)
    folder = transforms.Compose([transforms.ToTensor(), transforms.Normalize(prep["mean"], prep["std"])])
    common = dict(dataset="CIFAR10", real_data_path=str(w), ipc=prep["ipc"], model_name="ConvNet-3",
                  optimizer="sgd", lr_scheduler="step", step_size=epochs // 2, weight_decay=prep["weight_decay"],
                  momentum=prep["momentum"], num_eval=runs or prep["models"], im_size=(32, 32), num_epochs=epochs,
                  num_workers=0, device=device, dist=False, data_aug_func="dsa", custom_train_trans=folder)
    soft_kw = dict(soft_label_criterion="kl", soft_label_mode="M", teacher_dir=str(w / "teachers"),
                   teacher_model_names=["ConvNet-3"],
                   loss_fn_kwargs={"temperature": prep["temperature"], "scale_loss": False})
    batch = prep["batch"]
    builders = {
        "hard": lambda: LabelRobustScoreHard(**common, aug_params=dict(DSA_PARAMS), real_batch_size=batch,
                                             syn_batch_size=batch, random_data_format="tensor",
                                             random_data_path=str(w / "random" / "hard"),
                                             save_path=str(w / "out" / "hard.json")),
        "soft": lambda: LabelRobustScoreSoft(**common, **soft_kw, aug_params=dict(DSA_PARAMS), use_aug_for_hard=True,
                                             real_batch_size=batch, syn_batch_size=batch,
                                             random_data_format="image", random_data_path=str(w / "random" / "soft"),
                                             save_path=str(w / "out" / "soft.json")),
        "ars": lambda: AugmentationRobustScore(**common, **soft_kw, aug_params=dict(DSA_PARAMS), label_type="soft",
                                               batch_size=batch, random_data_format="image",
                                               random_data_path=str(w / "random" / "ars"),
                                               save_path=str(w / "out" / "ars.json")),
    }
    out = {"ddranking_version": getattr(ddranking, "__version__", "0.2.0"), "torch": torch.__version__,
           "prepared": prep, "runs": runs or prep["models"], "syn_lr": syn_lr,
           "teacher_accuracy_package": teacher_acc, "metrics": {}, "cells": calls}
    for name in metrics:
        t = time.perf_counter()
        m = builders[name]()
        m.test_interval = epochs  # the last epoch's accuracy, as sm_jax reports
        m._sm_set = images
        res = m.compute_metrics(image_tensor=images, syn_lr=syn_lr)
        out["metrics"][name] = {k: float(v) for k, v in (res or {}).items()}
        out["metrics"][name]["seconds"] = time.perf_counter() - t
        (w / "package.json").write_text(json.dumps(out, indent=2))
        print(f"{name}: {out['metrics'][name]}", flush=True)


# the package's (metric class, helper, data) -> sm_jax's cell (evaluation.ddranking.CELLS)
CELL_OF = {("LabelRobustScoreHard", "hard_label_metrics", "set"): "syn_hard",
           ("LabelRobustScoreHard", "hard_label_metrics", "random"): "rdm_hard",
           ("LabelRobustScoreSoft", "hard_label_metrics", "set"): "syn_hard",
           ("LabelRobustScoreSoft", "soft_label_metrics", "set"): "syn_soft",
           ("LabelRobustScoreSoft", "soft_label_metrics", "random"): "rdm_soft",
           ("AugmentationRobustScore", "with_aug_metrics", "set"): "syn_soft",
           ("AugmentationRobustScore", "with_aug_metrics", "random"): "rdm_soft",
           ("AugmentationRobustScore", "without_aug_metrics", "set"): "syn_soft_noaug",
           ("AugmentationRobustScore", "without_aug_metrics", "random"): "rdm_soft_noaug"}
CLASSES = {"hard": "LabelRobustScoreHard", "soft": "LabelRobustScoreSoft", "ars": "AugmentationRobustScore"}
SHORT = {"LabelRobustScoreHard": "LRS-Hard", "LabelRobustScoreSoft": "LRS-Soft", "AugmentationRobustScore": "ARS"}


def compare(work: str, results: str) -> str:
    """The markdown side-by-side of W/package.json and an sm_jax results file of `--metrics ddranking` on the same
    set: each cell's accuracy (mean +- std over networks / the package's runs, and the lrs chosen), then the scores:
    the package's own, and its per-run HLR / IOR through sm_jax's map (fractions)."""
    from sm_jax.evaluation.ddranking import normalised_exp

    map01 = lambda v: 100 * normalised_exp(v)  # noqa: E731  (sm_jax's LRS and ARS, in percent)
    w = Path(work)
    pkg = json.loads((w / "package.json").read_text())
    ours = json.loads(Path(results).read_text())["ddranking"]
    ms = lambda a: f"{np.mean(a):.2f} +- {np.std(a):.2f}"  # noqa: E731  (population std, as both report)
    lines = ["| cell | sm_jax: accuracy (%), lr | package: metric, accuracy (%), lrs |", "|---|---|---|"]
    for cell in ("syn_hard", "rdm_hard", "syn_soft", "rdm_soft", "syn_soft_noaug", "rdm_soft_noaug"):
        c = ours["cells"][cell]
        mine = f"{ms(100 * np.asarray(c['accuracies']))}, {c['lr']:g}"
        for metric in ("LabelRobustScoreHard", "LabelRobustScoreSoft", "AugmentationRobustScore"):
            got = [x for x in pkg["cells"]
                   if x["metric"] == metric and CELL_OF.get((metric, x["call"], x["data"])) == cell]
            if got:
                lrs = ", ".join(f"{x['lr']:g}" for x in got)
                lines.append(f"| {cell} | {mine} | {SHORT[metric]}: {ms([x['accuracy'] for x in got])}; {lrs} |")
                mine = '"'
    lines += ["", "| score | sm_jax | package (its code) | package's runs, sm_jax's map |", "|---|---|---|---|"]
    runs = {n: json.loads((w / "out" / f"{n}.json").read_text()) for n in ("hard", "soft", "ars")
            if (w / "out" / f"{n}.json").is_file()}
    m = pkg["metrics"]
    row = lambda name, mine, theirs, mapped="": lines.append(f"| {name} | {mine} | {theirs} | {mapped} |")  # noqa: E731
    pm = lambda d, k: f"{d[k + '_mean']:.2f} +- {d[k + '_std']:.2f}"  # noqa: E731
    for name, form in (("soft", ""), ("hard", "_hard")):
        if name in runs:
            hlr, ior = (np.asarray(runs[name][k]) for k in ("hard_label_recovery", "improvement_over_random"))
            label = " (hard labels)" if form else ""
            row(f"HLR ({SHORT[CLASSES[name]]})", f"{ours['hlr']:.2f} +- {ours['hlr_std']:.2f}",
                pm(m[name], "hard_label_recovery"))
            row(f"IOR{label}", f"{ours['ior' + form]:.2f} +- {ours['ior' + form + '_std']:.2f}",
                pm(m[name], "improvement_over_random"))
            row(f"LRS{label}", f"{ours['lrs' + form]:.2f} +- {ours['lrs' + form + '_std']:.2f}",
                pm(m[name], "label_robust_score"), ms(map01(0.5 * ior / 100 - 0.5 * hlr / 100)))
    if "ars" in runs:
        r = runs["ars"]
        a = 0.5 * np.asarray(r["with_aug_scores"]) / 100 + 0.5 * np.asarray(r["without_aug_scores"]) / 100
        row("ARS", f"{ours['ars']:.2f} +- {ours['ars_std']:.2f}", pm(m["ars"], "augmentation_robust_score"),
            ms(map01(a)))
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare", help="sm_jax's side (its interpreter)")
    a.add_argument("--set", required=True)
    a.add_argument("--data-dir", required=True)
    a.add_argument("--work", required=True)
    a.add_argument("--preset", default=None)
    b = sub.add_parser("run", help="the package's side (an interpreter with ddranking)")
    b.add_argument("--work", required=True)
    b.add_argument("--metrics", default="hard,soft,ars", help="of hard (LabelRobustScoreHard), soft "
                   "(LabelRobustScoreSoft), ars (AugmentationRobustScore)")
    b.add_argument("--runs", type=int, help="the package's num_eval (default: the set's evaluation networks)")
    b.add_argument("--syn-lr", type=float, help="the package's syn_lr (default: its lr grid)")
    c = sub.add_parser("compare", help="the markdown side-by-side (sm_jax's interpreter)")
    c.add_argument("--work", required=True)
    c.add_argument("--results", required=True, help="sm_jax's results file of --metrics ddranking on the same set")
    args = p.parse_args(argv)
    if args.cmd == "compare":
        print(compare(args.work, args.results))
    elif args.cmd == "prepare":
        prepare(args.set, args.data_dir, args.work, args.preset)
    else:
        run(args.work, [m for m in args.metrics.split(",") if m], args.runs, args.syn_lr)


if __name__ == "__main__":
    sys.exit(main())
