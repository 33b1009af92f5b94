"""Behaviour unchanged, proven: a fixed set of small runs whose synthetic sets and accuracies are recorded once and
compared bit for bit after a change that must not alter them (a restructure, a dependency bump on the same platform).

    python -m benchmarks.behaviour record --out /tmp/before    # writes /tmp/before/record.json (+ the runs)
    python -m benchmarks.behaviour compare --out /tmp/after --against /tmp/before

The runs go through the command line (the interface a restructure keeps): DC, DSA and IDC at ipc 2, K 2, `--preset
cpu --iterations 2`; a batch-norm `--model`; a generated grey 28x28 MNIST archive; `experiments.evaluate --eval-arch
M` on the DC run; and a resume: `record` keeps the DSA run's iteration-1 checkpoint, `compare` resumes a copy of it
with the current code and must reach the same set as the uninterrupted run. Hashes are of the float arrays' bytes,
so they hold on one platform and library versions (benchmarks/results/behaviour_cpu.json was recorded on 2 CPU
cores).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
SMALL = ["--preset", "cpu", "--ipc", "2", "--subset-k", "2", "--iterations", "2", "--eval-models", "2",
         "--eval-epochs", "5", "--eval-test-per-class", "50", "--no-progress"]
RUNS = {  # name: condense flags
    "dc": ["--dataset", "cifar10", "--method", "dc", *SMALL],
    "dsa": ["--dataset", "cifar10", "--method", "dsa", "--checkpoint-every", "1", *SMALL],
    "idc": ["--dataset", "cifar10", "--method", "idc", *SMALL],
    "dc_bn": ["--dataset", "cifar10", "--method", "dc", "--model", "ConvNetBN", *SMALL],
    "grey": ["--dataset", "mnist", "--method", "dsa", *SMALL],
}


def _idx(a: np.ndarray) -> bytes:
    return bytes([0, 0, 8, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape) + a.tobytes()


def write_grey(path: Path) -> Path:
    """A generated MNIST-form archive: 10 classes x 80 train / 10 test grey 28x28 images (seeded)."""
    rng = np.random.default_rng(20)
    parts = {}
    for split, n in (("train", 80), ("t10k", 10)):
        y = np.repeat(np.arange(10), n).astype(np.uint8)
        x = np.clip(rng.normal(40 + 20 * y[:, None, None], 60, (len(y), 28, 28)), 0, 255).astype(np.uint8)
        parts[f"{split}-images-idx3-ubyte.gz"], parts[f"{split}-labels-idx1-ubyte.gz"] = x, y
    with tarfile.open(path, "w:gz") as tf:
        for name, a in parts.items():
            blob = gzip.compress(_idx(a), mtime=0)
            info = tarfile.TarInfo(f"raw/{name}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return path


def _run(module: str, argv: list[str], env_dir: Path) -> dict:
    import os

    env = dict(os.environ, SM_JAX_CACHE=str(env_dir / "cache"), SM_JAX_OFFLINE="1", PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-m", module, *map(str, argv)], cwd=ROOT, env=env, capture_output=True,
                         text=True)
    if res.returncode:
        sys.exit(f"error: {module} {' '.join(map(str, argv))} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _fingerprint(workdir: Path, out: dict) -> dict:
    syn = np.load(workdir / "synthetic.npz")
    arrays = {k: hashlib.sha256(np.ascontiguousarray(syn[k]).tobytes()).hexdigest()[:16] for k in sorted(syn.files)}
    keep = {k: out.get(k) for k in ("accuracies", "accuracy_mean", "iterations")}
    return {"arrays": arrays, **keep}


def run_all(out: Path, resume_from: Path | None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    grey = write_grey(out / "mnist.tar.gz")
    record = {}
    for name, flags in RUNS.items():
        data = grey if name == "grey" else CIFAR
        wd = out / name
        shutil.rmtree(wd, ignore_errors=True)
        res = _run("experiments.condense", [*flags, "--data-dir", data, "--workdir", wd], out)
        record[name] = _fingerprint(wd, res)
        print(f"{name}: {record[name]}", flush=True)
    ev = _run("experiments.evaluate", ["--workdir", out / "dc", "--eval-arch", "M", "--eval-models", "1",
                                       "--eval-epochs", "2", "--no-progress"], out)
    record["evaluate_M"] = {a: v["accuracies"] for a, v in ev["archs"].items()}
    print(f"evaluate_M: {record['evaluate_M']}", flush=True)
    if resume_from is None:  # keep the DSA run's iteration-1 checkpoint for the resume check
        keep = out / "resume"
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(out / "dsa", keep)
        for p in keep.iterdir():
            if p.name not in ("checkpoints",):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        shutil.rmtree(keep / "checkpoints" / "2")
    else:
        wd = out / "resumed"
        shutil.rmtree(wd, ignore_errors=True)
        shutil.copytree(resume_from / "resume", wd)
        res = _run("experiments.condense", [*RUNS["dsa"], "--data-dir", CIFAR, "--workdir", wd], out)
        record["dsa_resumed"] = _fingerprint(wd, res)
        print(f"dsa_resumed: {record['dsa_resumed']}", flush=True)
    return record


def same(before: dict, now: dict | None) -> bool:
    """Whether a run's record equals the recorded one; arrays that synthetic.npz gained since (new keys) are not a
    change of behaviour, so only the recorded arrays are compared."""
    if now is None:
        return False
    if "arrays" in before and "arrays" in now:
        now = {**now, "arrays": {k: v for k, v in now["arrays"].items() if k in before["arrays"]}}
    return before == now


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.behaviour", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=("record", "compare"))
    p.add_argument("--out", required=True, type=Path, help="directory for the runs and record.json")
    p.add_argument("--against", type=Path, help="compare: the directory `record` wrote")
    args = p.parse_args(argv)
    if args.action == "record":
        rec = run_all(args.out, None)
        (args.out / "record.json").write_text(json.dumps(rec, indent=1, sort_keys=True))
        print(f"recorded {len(rec)} entries in {args.out / 'record.json'}")
        return
    if args.against is None:
        sys.exit("error: compare needs --against DIR (the directory of a `record`)")
    before = json.loads((args.against / "record.json").read_text())
    now = run_all(args.out, args.against)
    now_plain = {k: v for k, v in now.items() if k != "dsa_resumed"}
    (args.out / "record.json").write_text(json.dumps(now, indent=1, sort_keys=True))
    diffs = [k for k in before if not same(before[k], now_plain.get(k))]
    resumed_same = same(before["dsa"], now["dsa_resumed"])
    for k in diffs:
        print(f"DIFFERENT {k}: before {before[k]} now {now_plain.get(k)}")
    print(f"resume of the recorded iteration-1 checkpoint: {'same set' if resumed_same else 'DIFFERENT set'}")
    if diffs or not resumed_same:
        sys.exit(1)
    print(f"bit-identical: {', '.join(before)} and the resumed run")


if __name__ == "__main__":
    main()
