"""Trajectory matching's seconds per iteration, sm_jax against the official distill.py, on this host, one after the
other from the same experts.

python -m benchmarks.mtt_speed --official CHECKOUT --buffers BUFFERS --experts EXPERTS --data-dir DATA \
    [--ipc 1] [--syn-steps 20] [--iterations 20] [--out benchmarks/results/mtt_speed_cpu.jsonl]

BUFFERS holds the official buffer.py's `CIFAR10/ConvNet/replay_buffer_0.pt`; EXPERTS the same experts imported into
sm_jax (`python -m experiments.experts --import-official BUFFERS/CIFAR10/ConvNet ...` with the settings below), so
both sides unroll students from identical trajectories. Settings as docs/results.md's fidelity budget: ZCA, 2 experts
x 10 epochs on 500 images per class, expert_epochs 2, max_start_epoch 5, lr_img 1000, lr_lr 1e-7, lr_teacher 0.01,
every synthetic image in every student step (batch_syn = all).

sm_jax runs twice, with the checkpointed scan (the default: each step's forward pass recomputed in the backward
one) and with the plain unroll (`remat=False`, the official code's memory). sm_jax's figure is the run's own
per-iteration wall time (metrics.jsonl: the step, the host sync and the host copy of the state that checkpoints
read), the official one the host clock between consecutive steps of its lr optimiser
(benchmarks.official_mtt --step-times), that is one whole iteration each. The official loop evaluates at iteration 0
(1 network x 1 epoch here, before the first step: not timed). The first `--skip` iterations (sm_jax's compile) are
left out of both medians. One JSON line per side and one with the ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.aot import emit

FIDELITY = dict(zca=True, expert_epochs=2, max_start_epoch=5, lr_img=1000.0, lr_lr=1e-7, lr_teacher=0.01,
                num_experts=2, expert_train_epochs=10, expert_per_class=500, subset_k=1)


def sm_jax_seconds(ipc: int, steps: int, iterations: int, experts: str, data_dir: str, seed: int,
                   remat: bool = True) -> list[float]:
    import sm_jax

    with tempfile.TemporaryDirectory() as tmp:
        sm_jax.condense("mtt", ipc, preset="cpu", progress=False, data_dir=data_dir, workdir=tmp, seed=seed,
                        remat=remat, syn_steps=steps, iterations=iterations, eval_models=0, experts_dir=experts,
                        **FIDELITY)
        lines = [json.loads(s) for s in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    return [r["seconds"] for r in lines if "iteration" in r and "seconds" in r]


def official_seconds(official: str, buffers: str, ipc: int, steps: int, iterations: int, data_dir: str,
                     seed: int) -> list[float]:
    f = FIDELITY
    with tempfile.TemporaryDirectory() as tmp:
        stamps = Path(tmp) / "stamps.json"
        flags = ["--zca", "--ipc", str(ipc), "--syn_steps", str(steps), "--expert_epochs", str(f["expert_epochs"]),
                 "--max_start_epoch", str(f["max_start_epoch"]), "--lr_img", str(f["lr_img"]), "--lr_lr",
                 str(f["lr_lr"]), "--lr_teacher", str(f["lr_teacher"]), "--Iteration", str(iterations - 1),
                 "--eval_it", str(10 * iterations), "--num_eval", "1", "--epoch_eval_train", "1",
                 "--buffer_path", str(Path(buffers).absolute())]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        subprocess.run([sys.executable, "-m", "benchmarks.official_mtt", "--official", official, "--data-dir",
                        data_dir, "--per-class", str(f["expert_per_class"]), "--seed", str(seed), "--step-times",
                        str(stamps), "--script", "distill", "--", *flags], cwd=tmp, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        t = json.loads(stamps.read_text())
    return [b - a for a, b in zip(t, t[1:])]  # the first iteration has no start stamp: iterations - 1 figures


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--official", required=True, help="a checkout of GeorgeCazenavette/mtt-distillation")
    p.add_argument("--buffers", required=True, help="the official buffer_path (holding CIFAR10/ConvNet/)")
    p.add_argument("--experts", required=True, help="the same experts in sm_jax's experts directory")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--ipc", type=int, default=1)
    p.add_argument("--syn-steps", type=int, default=20)
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--skip", type=int, default=2, help="first iterations left out of the medians")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    common = dict(ipc=args.ipc, syn_steps=args.syn_steps, batch_syn="all", iterations=args.iterations,
                  host=os.uname().nodename, cpus=os.cpu_count())
    sides = {remat: sm_jax_seconds(args.ipc, args.syn_steps, args.iterations, args.experts, args.data_dir,
                                   args.seed, remat) for remat in (True, False)}
    theirs = official_seconds(args.official, args.buffers, args.ipc, args.syn_steps, args.iterations,
                              args.data_dir, args.seed)
    med = {}
    for side, secs in (("sm_jax", sides[True]), ("sm_jax_plain", sides[False]), ("official", theirs)):
        kept = secs[max(args.skip - (side == "official"), 0):]  # the official list starts at iteration 2
        med[side] = statistics.median(kept)
        emit({**common, "side": side, "median_s": round(med[side], 4), "min_s": round(min(kept), 4),
              "max_s": round(max(kept), 4), "n": len(kept), "first_s": round(secs[0], 3)}, args.out)
    emit({**common, "side": "ratio", "official_over_sm_jax": round(med["official"] / med["sm_jax"], 2),
          "official_over_sm_jax_plain": round(med["official"] / med["sm_jax_plain"], 2)}, args.out)


if __name__ == "__main__":
    main()
