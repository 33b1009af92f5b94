"""Planning a run for a target the user names, without the target: its programs compiled for it, their memory, the
class chunk `--class-chunk auto` would pick there, and the time of an iteration and of the whole run.
`python -m experiments.cifar10 --method idc --ipc 50 --plan-for h100`.
"""
from __future__ import annotations

import math
from typing import Any

from sm_jax import backend
from sm_jax.aot.compile import Compiler, PlanError, Program, shape_dataset
from sm_jax.aot.targets import GIB, target
from sm_jax.config import Config, fit_batches


def evaluations(cfg: Config) -> int:
    """Evaluations of a whole run: every eval_every iterations before the end, and the final one."""
    periodic = (cfg.iterations - 1) // cfg.eval_every if cfg.eval_every and cfg.iterations else 0
    return periodic + (1 if cfg.eval_models else 0)


def run_seconds(cfg: Config, iteration: float, evaluation: float | None, parallel: int) -> dict[str, float]:
    """The estimate of a whole run from the estimated seconds of one iteration and of one evaluation call:
    iterations x the iteration, and every evaluation's networks in calls of `parallel` (None: not estimated)."""
    condense = cfg.iterations * iteration
    calls = math.ceil(cfg.eval_models / parallel) if cfg.eval_models else 0
    evaluate = evaluations(cfg) * calls * evaluation if evaluation is not None else 0.0
    return {"condense": condense, "evaluate": evaluate, "total": condense + evaluate}


def plan(cfg: Config, target_name: str, data_dir: str | None = None, evaluate: bool = True,
         log=print) -> dict[str, Any]:
    """Compiles `cfg`'s programs for the target and says what they need there.

    Returns:
      {target, class_chunk, syn_chunk, iteration: Program.record(), evaluation: ...,
       run_seconds: {condense, evaluate, total}}.
    Raises:
      PlanError: when even one class per program exceeds the target's memory.
      TargetError: for an unknown target or a compiler that is not installed.
    """
    tgt = target(target_name)
    log(f"plan for {tgt.name} ({tgt.description}, {tgt.chips} chip{'s' * (tgt.chips > 1)}, "
        f"{tgt.bytes_limit / GIB:.1f} GiB usable per chip): {cfg.method} ipc {cfg.ipc} K {cfg.subset_k}, "
        f"{cfg.preset} preset, {cfg.dataset}")
    data = shape_dataset(cfg.dataset, data_dir, cfg.res)
    cfg = fit_batches(cfg, data, log)
    comp = Compiler(cfg, tgt, data)
    chunk = comp.class_chunk(log)
    it = comp.iteration(chunk)
    if it.bytes is not None and it.bytes > backend.MEMORY_HEADROOM * tgt.bytes_limit:
        what = "even one class per program" if chunk == 1 or comp.mesh is None else "all classes over its chips"
        raise PlanError(f"{cfg.method} ipc {cfg.ipc} K {cfg.subset_k} does not fit {tgt.name}: {what} needs "
                        f"{it.bytes / GIB:.1f} GiB of the {tgt.bytes_limit / GIB:.1f} GiB per chip (a larger "
                        f"target, more chips, or a smaller --batch-real)")
    log(_line("iteration", it))
    ev, alternative, programs = None, None, {}

    def cost_of(width: int) -> tuple[float | None, float | None]:
        try:
            programs[width] = comp.evaluation(width)
        except PlanError:  # the TPU compiler refused it: larger than the chip
            return math.inf, None
        return programs[width].bytes, programs[width].seconds()["estimate"]

    parallel = backend.resolve_eval_parallel(cfg.eval_parallel, comp.mesh, max(cfg.eval_models, 1),
                                             cost_of if evaluate and cfg.eval_models else None, tgt.bytes_limit, log)
    parallel = max(1, min(parallel, max(cfg.eval_models, 1)))
    if evaluate and cfg.eval_models:
        ev = programs[parallel] if parallel in programs else comp.evaluation(parallel)
        log(_line(f"evaluation ({parallel} network{'s' * (parallel > 1)} per call)", ev))
        for width, other in programs.items():  # what auto weighed
            if width != parallel:
                alternative = {"eval_parallel": width, "seconds_per_network": other.seconds()["estimate"] / width,
                               "bytes": other.bytes}
    secs = run_seconds(cfg, it.seconds()["estimate"], ev.seconds()["estimate"] if ev is not None else None,
                       parallel)
    log(f"run: {cfg.iterations} iterations {_duration(secs['condense'])} + {evaluations(cfg)} evaluation(s) of "
        f"{cfg.eval_models} networks {_duration(secs['evaluate'])} = {secs['total'] / 3600:.2f} device-hours "
        f"({tgt.chips} chip{'s' * (tgt.chips > 1)})")
    return {"target": tgt.name, "chips": tgt.chips, "classes": comp.data.num_classes, "class_chunk": chunk,
            "syn_chunk": comp.syn_chunk, "iteration": it.record(),
            "evaluation": ev.record() if ev is not None else None, "eval_parallel": parallel,
            "eval_parallel_alternative": alternative, "run_seconds": secs}


def _line(what: str, p: Program) -> str:
    m, s = p.memory, p.seconds()
    mem = (f"{m['total'] / GIB:.2f} GiB per chip (arguments {m['argument'] / GIB:.2f}, temporaries "
           f"{m['temp'] / GIB:.2f}, outputs {m['output'] / GIB:.2f}, donated {m['alias'] / GIB:.2f})"
           if m else "no memory analysis")
    tpu = f"; the TPU compiler's own estimate {s['tpu_compiler']:.3g} s" if s["tpu_compiler"] else ""
    grouped = f", grouped convolutions {s['grouped']:.3g} s" if s["grouped"] else ""
    return (f"{what}: compiled in {p.compile_seconds:.0f} s; {mem}; estimated {s['estimate']:.3g} s each (kernels "
            f"{s['kernels']:.3g} s, the roofline {s['roofline']:.3g} s over {p.hlo_cost.flops / 1e12:.3g} TFLOP and "
            f"{p.hlo_cost.bytes / 1e9:.3g} GB at the calibrated rate; launches {s['launch']:.3g} s, loop trips "
            f"{s['loops']:.3g} s{grouped}, collectives {s['collectives']:.3g} s){tpu}")


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds:.0f} s"
