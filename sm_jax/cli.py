"""Command-line front ends (experiments/*.py are thin wrappers around these)."""
from __future__ import annotations

import argparse
import json
import signal
import sys

from sm_jax.config import AUTO_CHUNK, METHODS, PRESETS, make_config


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2, like the other user errors
        self.exit(2, f"error: {message}\n")


def class_chunk(text: str) -> int:
    """argparse type of --class-chunk: 'auto' or an integer."""
    if text == "auto":
        return AUTO_CHUNK
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or an integer, got {text!r}") from None


def condense_parser(dataset: str | None = None) -> argparse.ArgumentParser:
    """The flags of `experiments.condense`; with `dataset` given (experiments.cifar10), no --dataset flag."""
    from sm_jax.data import DATASETS

    if dataset is None:
        p = _Parser(prog="python -m experiments.condense",
                    description="Condense a dataset with DC, DSA or IDC (+ subset matching), then evaluate.")
        p.add_argument("--dataset", required=True, help=f"one of {', '.join(DATASETS)} (folder: any "
                       "{train,test}/<class>/ image folder or .tar.gz given by --data-dir)")
    else:
        p = _Parser(prog=f"python -m experiments.{dataset}",
                    description=f"Condense {dataset} with DC, DSA or IDC (+ subset matching), then evaluate "
                    f"(= python -m experiments.condense --dataset {dataset}).")
        p.set_defaults(dataset=dataset)
    p.add_argument("--method", required=True, help=f"one of {', '.join(METHODS)}")
    p.add_argument("--ipc", type=int, required=True, help="stored images per class")
    p.add_argument("--preset", default="paper", help=f"budget preset: {', '.join(PRESETS)} (default paper)")
    p.add_argument("--subset-k", type=int, help="subsets per class K (1 = the base method; default 2 where 2 divides "
                   "the per-class synthetic count, else 1)")
    p.add_argument("--subset-lambda", type=float, help="lambda_0 of the subset term (default 1.0)")
    p.add_argument("--subset-only", action="store_true", help="optimise the subset term alone")
    p.add_argument("--subset-batch-real", type=int, help="real images per subset term (default: --batch-real)")
    p.add_argument("--iterations", type=int, help="condensation iterations (0 = evaluate the initial set)")
    p.add_argument("--outer-loop", type=int, help="matching steps per iteration")
    p.add_argument("--inner-loop", type=int, help="network training per matching step (epochs DC/DSA, steps IDC)")
    p.add_argument("--batch-real", type=int, help="real images per class per matching step")
    p.add_argument("--lr-img", type=float, help="synthetic-image learning rate")
    p.add_argument("--eval-epochs", type=int)
    p.add_argument("--eval-models", type=int)
    p.add_argument("--eval-every", type=int, help="evaluate every N iterations (0 = only at the end)")
    p.add_argument("--eval-parallel", type=int, help="evaluation networks trained together (vmapped)")
    p.add_argument("--checkpoint-every", type=int, help="checkpoint every N iterations")
    p.add_argument("--checkpoint-minutes", type=float, help="also checkpoint when N minutes passed since the last "
                   "save (default 5; 0 = off)")
    p.add_argument("--stop-grace", type=float, help="on SIGTERM / Ctrl-C, seconds to wait for the iteration in flight "
                   "before saving the last finished one (default 20; SLURM's default grace is 30)")
    p.add_argument("--log-every", type=float, help="seconds between progress lines when the output is not a "
                   "terminal (default 30)")
    p.add_argument("--class-chunk", type=class_chunk, help="classes matched per vmapped program; lower = less "
                   "memory (0 = all classes at once; default auto: 1 on CPU, the fastest there, and on GPU/TPU the "
                   "largest chunk predicted to fit the device's memory)")
    p.add_argument("--precision", help="float32 matmul/convolution precision on GPU/TPU: float32 (default: "
                   "faithful, see README), tensorfloat32 or bfloat16 (faster); no effect on CPU")
    p.add_argument("--devices", type=int, help="shard the class axis and the evaluation networks over N devices "
                   "(0 = all; default 1)")
    p.add_argument("--holdout", type=int, help="hold N training images per class out and evaluate on them "
                   "instead of the test set (for choosing hyper-parameters)")
    p.add_argument("--eval-test-per-class", type=int, help="evaluate on the first N test images of each class "
                   "only (a cheaper, fixed test subset for studies; default: the whole test set)")
    p.add_argument("--data-dir", help="TFDS data dir, image-folder archive/directory, or the dataset's official "
                   "archive (or its extracted folder); default: TFDS download")
    p.add_argument("--workdir", help="run directory (default runs/<method>_ipc<N>_k<K>_s<seed>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", help="matching network: a name of the model zoo, official spelling accepted "
                   "(ConvNet, ConvNetBN, ResNet18BN_AP, ...; default convnet)")
    p.add_argument("--eval-arch", help="evaluate on these architectures: comma-separated names and/or official "
                   "pools M (MLP, ConvNet, LeNet, AlexNet, VGG11, ResNet18), B (the batch-norm ones), W, D, A, P, N "
                   "(default: the matching network)")
    p.add_argument("--width", type=int)
    p.add_argument("--depth", type=int)
    p.add_argument("--norm")
    p.add_argument("--distance", help="matching distance: cosine, mse or l1 (default: the method's, or the dataset's "
                   "preset)")
    p.add_argument("--aug-drop", help="comma-separated augmentation ops removed from the method's policies")
    p.add_argument("--eval-aug", help="evaluation augmentation: none, dc_crop_scale_rotate, dc_crop_noise or one "
                   "DSA op (default: the method's own, or the dataset's preset)")
    p.add_argument("--conv-impl", help="ConvNet convolution: auto (default: fast on CPU, xla on GPU/TPU), fast, "
                   "patches, winograd or xla; all give the same network up to float rounding")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    return p


def config_from_args(args: argparse.Namespace):
    """The run's Config; the default workdir is runs/<method>_ipc<N>_k<K>_s<seed> with K as resolved."""
    cfg = make_config(args.method, args.ipc, args.preset, args.dataset, subset_k=args.subset_k,
                      subset_lambda=args.subset_lambda, distance=args.distance, aug_drop=args.aug_drop,
                      eval_aug=args.eval_aug, model=args.model, eval_arch=args.eval_arch,
                      eval_test_per_class=args.eval_test_per_class,
                      subset_only=args.subset_only or None, subset_batch_real=args.subset_batch_real,
                      iterations=args.iterations, outer_loop=args.outer_loop, inner_loop=args.inner_loop,
                      batch_real=args.batch_real, lr_img=args.lr_img, eval_epochs=args.eval_epochs,
                      eval_models=args.eval_models, eval_every=args.eval_every, eval_parallel=args.eval_parallel,
                      checkpoint_every=args.checkpoint_every, holdout=args.holdout, devices=args.devices,
                      class_chunk=args.class_chunk, conv_impl=args.conv_impl, data_dir=args.data_dir,
                      precision=args.precision, checkpoint_minutes=args.checkpoint_minutes, stop_grace=args.stop_grace,
                      log_every=args.log_every, seed=args.seed, width=args.width, depth=args.depth, norm=args.norm)
    prefix = "" if cfg.dataset == "cifar10" else f"{cfg.dataset}_"
    return cfg.replace(workdir=args.workdir or f"runs/{prefix}{cfg.method}_ipc{cfg.ipc}_k{cfg.subset_k}_s{cfg.seed}")


def _guard(fn):
    """Runs fn() with the exit codes of `sm_jax.lifecycle`: user errors and divergence become one `error:` line
    (2, 3); a stop on SIGINT / SIGTERM exits 130 / 143 after the run saved its checkpoint."""
    import os

    from sm_jax import lifecycle
    from sm_jax.experiment import USER_ERRORS, RunError, enable_compilation_cache

    # a batch job's log is a file: print each line when it is written, not when a buffer fills
    sys.stdout.reconfigure(line_buffering=True)
    enable_compilation_cache()
    try:
        return fn()
    except (*USER_ERRORS, RunError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(lifecycle.EXIT_USER_ERROR)
    except lifecycle.Diverged as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(lifecycle.EXIT_DIVERGED)
    except lifecycle.Stopped as e:
        print(e, flush=True)
        if e.abandoned:  # an iteration still runs on the device: end now, the checkpoint is written and closed
            sys.stderr.flush()
            os._exit(e.code)
        sys.exit(e.code)
    except KeyboardInterrupt:  # a second Ctrl-C: abort now, not after the device finishes its iteration
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(lifecycle.exit_code(signal.SIGINT))


def condense_main(argv=None, dataset: str | None = None) -> None:
    """`python -m experiments.condense`; with `dataset`, the per-dataset alias (experiments.cifar10)."""
    args = condense_parser(dataset).parse_args(argv)

    def go():
        from sm_jax.experiment import Run

        cfg = config_from_args(args)
        if args.subset_k is None and cfg.subset_k == 1:
            print(f"note: --subset-k defaults to 1 (the base method) here: K = 2 does not divide the "
                  f"{cfg.syn_per_class} synthetic images per class", file=sys.stderr)
        results = Run(cfg, progress=not args.no_progress).execute()
        summary = {k: results.get(k) for k in ("accuracy_mean", "accuracy_std", "accuracies", "iterations")}
        print(json.dumps({"workdir": cfg.workdir, **summary}))

    _guard(go)


def evaluate_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m experiments.evaluate",
                description="Evaluate the synthetic set of a checkpoint with its method's protocol.")
    p.add_argument("--workdir", required=True)
    p.add_argument("--step", type=int, help="checkpoint iteration (default: latest)")
    p.add_argument("--eval-models", type=int)
    p.add_argument("--eval-epochs", type=int)
    p.add_argument("--data-dir", help="override the data source recorded in the checkpoint")
    p.add_argument("--eval-arch", help="architectures to evaluate on (names and/or pools M, B, W, D, A, P, N; "
                   "default: the run's)")
    p.add_argument("--log-every", type=float, default=30.0,
                   help="seconds between progress lines when the output is not a terminal (default 30)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    return p


def evaluate_main(argv=None) -> None:
    args = evaluate_parser().parse_args(argv)
    for name in ("eval_models", "eval_epochs"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            print(f"error: --{name.replace('_', '-')} must be >= 0", file=sys.stderr)
            sys.exit(2)

    def go():
        from sm_jax.experiment import evaluate_checkpoint

        out = evaluate_checkpoint(args.workdir, args.step, args.eval_models, args.eval_epochs, args.data_dir,
                                  progress=not args.no_progress, log_every=args.log_every, eval_arch=args.eval_arch)
        print(json.dumps(out))

    _guard(go)


def study_parser() -> argparse.ArgumentParser:
    from sm_jax import study

    p = _Parser(prog="python -m experiments.study",
                description="Run (or resume) a study's runs, then regenerate its tables and figures.")
    p.add_argument("--plan", action="append", required=True,
                   help="built-in plan (table, k, loss; 'all' = all three) or a JSON plan file; repeatable")
    p.add_argument("--data-dir", help="passed to every run (see python -m experiments.cifar10 --help)")
    p.add_argument("--root", default=study.ROOT, help=f"run directories: ROOT/PLAN/RUN (default {study.ROOT})")
    p.add_argument("--export", default=study.EXPORT,
                   help=f"finished runs' results/metrics/config are copied to EXPORT/PLAN/RUN (default {study.EXPORT})")
    p.add_argument("--out", default=study.OUT, help=f"tables (PLAN.md) and figures (default {study.OUT})")
    p.add_argument("--report-only", action="store_true", help="only regenerate tables and figures from EXPORT")
    p.add_argument("--list", action="store_true", help="list the plan's runs and whether each has finished")
    return p


def study_main(argv=None) -> None:
    args = study_parser().parse_args(argv)

    def go():
        from pathlib import Path

        from sm_jax import study

        plans = [n for p in args.plan for n in (study.PLANS if p == "all" else [p])]
        for name in plans:
            specs = study.load_plan(name)
            if args.list:
                for s in specs:
                    done = study.read_run(Path(args.root) / study.plan_name(name) / s.id)
                    state = f"{100 * done['accuracy_mean']:.2f}%" if done else "-"
                    print(f"{study.plan_name(name)}/{s.id}\t{s.group}\t{state}")
                continue
            if not args.report_only:
                study.run_plan(name, args.root, args.export, args.data_dir)
            print(study.report(name, args.export, args.out))

    _guard(go)
