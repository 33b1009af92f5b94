"""A run's programs compiled for a target that is not here: the condensation iteration and the evaluation, built by
the code a run uses (`make_method`, `sharding.state_split`, the class chunk of `backend.resolve_class_chunk`) from
shapes alone, with what the target's compiler says of them (device bytes, its cost analysis) and what their HLO
costs (`aot.hlo`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import SingleDeviceSharding

from sm_jax import backend, sharding
from sm_jax.aot import hlo
from sm_jax.aot.targets import Target, for_device
from sm_jax.config import Config
from sm_jax.data import DataError, Dataset, dataset_info, load_dataset
from sm_jax.errors import UserError
from sm_jax.evaluation import evaluation_program
from sm_jax.methods import METHODS, make_method
from sm_jax.models import resolve_conv
from sm_jax.models.conv_ops import compiling_for

COLLECTIVE_LATENCY = 10e-6  # seconds per collective on the mesh, beside its bytes over the interconnect


@dataclasses.dataclass(frozen=True)
class Calibration:
    """What a roofline cannot see, per platform: fitted to the programs measured on a card
    (`python -m benchmarks.calibrate`, docs/gpu.md), so that the estimate has met one.

    Attributes:
      roofline_factor: the roofline's time is multiplied by it (kernels run below the peaks: fp32 convolutions
        and gemms at these shapes reach a fraction of the card's FP32 rate).
      launch: seconds per kernel (a launch and the small kernel's own latency, which the roofline puts at ~0).
      loop_trip: seconds per while-loop iteration (XLA:GPU reads the loop's condition back to the host each time).
      grouped_rate: FLOP/s of a grouped convolution (cuDNN's grouped kernels at these shapes); None: the roofline.
      source: the measurements it was fitted to.
    """

    launch: float
    roofline_factor: float = 1.0
    loop_trip: float = 0.0
    grouped_rate: float | None = None
    source: str = "not fitted"


# CUDA: `python -m benchmarks.calibrate` (benchmarks/results/calibration-h200.json): the six programs measured on
# an H200 (../shared/docs/gpu-h200.md, jax 0.11.2) compiled here for the h200 target, 4 us per kernel (a prior),
# the rest fitted: the kernels at 1/1.93 of the roofline's rates, 0.39 ms per while-loop iteration, grouped
# convolutions over image-sized windows at 5.8 TFLOP/s. Its error per program is in docs/gpu.md (0.40x-1.42x).
# Other CUDA cards share it, unmeasured. A TPU program is one launch; nothing there was measured.
CALIBRATION = {"cuda": Calibration(launch=4e-6, roofline_factor=1.93, loop_trip=3.9e-4, grouped_rate=5.8e12,
                                   source="H200, 2026-12-04"),
               "tpu": Calibration(launch=0.0)}


def shape_dataset(name: str, data_dir: str | None = None, res: int = 0) -> Dataset:
    """A dataset of the registry's sizes whose images take no memory (zeros broadcast over the split): what a
    program's shapes need. A dataset whose sizes the data decides (`folder`) is read from `data_dir`; `res`: an
    ImageNet subset's side (0: its own).

    Raises:
      DataError: for `folder` without a --data-dir.
    """
    info = dataset_info(name)
    if not info.train_counts:
        if data_dir is None:
            raise DataError(f"--dataset {info.name}: its sizes come from the data; pass --data-dir")
        return load_dataset(name, data_dir, res=res)
    y = np.repeat(np.arange(len(info.train_counts)), info.train_counts).astype(np.int32)
    ty = np.arange(info.test_size, dtype=np.int32) % info.num_classes
    shape = (res, res, info.shape[2]) if res else info.shape
    zeros = np.zeros((1, *shape), np.uint8)
    return Dataset(np.broadcast_to(zeros, (len(y), *shape)), y, np.broadcast_to(zeros, (len(ty), *shape)),
                   ty, info.class_names or tuple(str(c) for c in range(info.num_classes)), f"shapes:{info.name}",
                   info.mean, info.std, info.name)


@dataclasses.dataclass
class Program:
    """One compiled program and what it costs per execution on its target (per device on a mesh)."""

    name: str
    compile_seconds: float
    memory: dict[str, int] | None  # argument, temp, output, alias (donated) and total (= backend.program_bytes)
    hlo_cost: hlo.Cost
    compiler_cost: dict[str, float]  # the target compiler's cost analysis (TPU: flops, bytes accessed, seconds)
    target: Target
    text: str = dataclasses.field(repr=False, default="")
    compiler_options: dict = dataclasses.field(default_factory=dict)  # beyond the defaults (NO_TRITON_GEMM)

    @property
    def bytes(self) -> int | None:
        return self.memory and self.memory["total"]

    def seconds(self, calibration: Calibration | None = None) -> dict[str, float | None]:
        """The time estimate per execution: `roofline` (aot.hlo's), `kernels` (the roofline x the calibrated
        factor), `launch` (kernels x the calibrated time per kernel), `loops` (while-loop iterations x their host
        round trip), `grouped` (grouped convolutions over image-sized windows at their calibrated rate, beyond their
        roofline share), `collectives` (bytes over the interconnect + a latency each), `estimate` (kernels, launch,
        loops, grouped and collectives) and, on a TPU, the compiler's own `tpu_compiler` (None where it gives none,
        or a negative one).

        Args:
          calibration: default the platform's `CALIBRATION`.
        """
        c, t = self.hlo_cost, self.target
        cal = calibration or CALIBRATION[t.platform]
        coll = sum(b for _, b in c.collectives.values()) / t.interconnect if c.collectives else 0.0
        coll += COLLECTIVE_LATENCY * sum(n for n, _ in c.collectives.values())
        launch = c.kernels * cal.launch
        loops = c.loop_trips * cal.loop_trip
        grouped = c.grouped_flops / cal.grouped_rate if cal.grouped_rate else 0.0
        own = self.compiler_cost.get("optimal_seconds")
        return {"roofline": c.seconds, "kernels": c.seconds * cal.roofline_factor, "launch": launch, "loops": loops,
                "grouped": grouped, "collectives": coll,
                "estimate": c.seconds * cal.roofline_factor + launch + loops + grouped + coll,
                "tpu_compiler": own if own is not None and own > 0 else None}

    def record(self) -> dict[str, Any]:
        c = self.hlo_cost
        return {"compile_seconds": round(self.compile_seconds, 2), "memory": self.memory,
                "flops": c.flops, "bytes": c.bytes, "kernels": c.kernels, "loop_trips": c.loop_trips,
                "grouped_flops": c.grouped_flops, "census": hlo.census(self.text),
                "compiler_options": self.compiler_options,
                "collectives": {k: {"count": n, "bytes": b} for k, (n, b) in c.collectives.items()},
                "compiler_cost": {k: v for k, v in self.compiler_cost.items()
                                  if k in ("flops", "bytes accessed", "optimal_seconds", "transcendentals")},
                "seconds": self.seconds()}


def _memory(compiled) -> dict[str, int] | None:
    m = compiled.memory_analysis()
    if m is None:
        return None
    return {"argument": int(m.argument_size_in_bytes), "temp": int(m.temp_size_in_bytes),
            "output": int(m.output_size_in_bytes), "alias": int(m.alias_size_in_bytes),
            "total": backend.program_bytes(compiled)}


def _compiler_cost(compiled) -> dict[str, float]:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return {}
    cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
    return {k: float(v) for k, v in (cost or {}).items() if isinstance(v, (int, float))}


def estimate_seconds(compiled, device=None) -> float | None:
    """The calibrated time estimate of a program compiled for a live device (default the first), from its optimised
    HLO and the device's target facts: None on CPU or on a device no target describes."""
    device = device or jax.devices()[0]
    tgt = for_device(device.device_kind) if device.platform != "cpu" else None
    if tgt is None:
        return None
    cost = hlo.Module(compiled.as_text(), tgt.fp32_flops, tgt.bandwidth).cost()
    return Program("live", 0.0, None, cost, {}, tgt).seconds()["estimate"]


# XLA:GPU, compiling without the card (no autotuning), can fail to tile a Triton gemm for some targets (seen for the
# L4's sm_89: "Couldn't find output tile sizes"); such a program is compiled again with its gemms on cuBLAS, which
# the card's autotuner may also choose. The program's `compiler_options` record it.
TRITON_TILING_FAILURE = "Couldn't find output tile sizes"
NO_TRITON_GEMM = {"xla_gpu_enable_triton_gemm": False}


class PlanError(UserError):
    """A run that cannot fit the target (one line, user-facing)."""


# Programs compiled in this process, by (name, target, lowered program): a study's forecast plans many runs of the
# same shapes (seeds, repeated cells), and compiling for a GPU target takes 10-100 s a program; lowering is cheap.
_COMPILED: dict[tuple[str, Target, str], Program] = {}


def compile_program(name: str, fn, args, target: Target, precision: str, **jit) -> Program:
    """Lowers and compiles `fn` for `target` on abstract `args` (jax.ShapeDtypeStruct with the target's
    shardings) under the run's matmul precision; a program lowered to the same text for the same target before, in
    this process, is not compiled again (its Program, compile_seconds included, is returned)."""
    t0 = time.perf_counter()
    options: dict = {}
    with backend.precision(precision):
        lowered = jax.jit(fn, **jit).lower(*args)
        key = (name, target, hashlib.sha256(lowered.as_text().encode()).hexdigest())
        if key in _COMPILED:
            return _COMPILED[key]
        try:
            compiled = lowered.compile()
        except Exception as e:  # noqa: BLE001 - XLA's runtime error type is not part of jax's public API
            if "RESOURCE_EXHAUSTED" in str(e):  # the TPU compiler refuses a program larger than the chip
                raise PlanError(f"{name} does not fit {target.name}: {str(e).strip().splitlines()[0]}") from None
            if target.platform != "cuda" or TRITON_TILING_FAILURE not in str(e):
                raise
            options = NO_TRITON_GEMM
            compiled = lowered.compile(compiler_options=options)
    seconds = time.perf_counter() - t0
    text = compiled.as_text()
    cost = hlo.Module(text, target.fp32_flops, target.bandwidth).cost()
    _COMPILED[key] = Program(name, seconds, _memory(compiled), cost, _compiler_cost(compiled), target, text, options)
    return _COMPILED[key]


class Compiler:
    """The programs of one run config (`cfg`, on dataset shapes `data`) compiled for `target`, the class axis
    sharded over the target's chips when it has several, as a multi-device run shards it."""

    def __init__(self, cfg: Config, target: Target, data: Dataset):
        self.target, self.data = target, data
        self.requested = cfg  # `auto` forms resolve per network role, for the target (conv_ops.compiling_for)
        self.cfg = cfg.replace(conv_impl=resolve_conv(cfg.conv_impl, target.platform))  # the matching's form
        self.devices = target.devices()
        self.mesh = sharding.mesh_of(self.devices) if len(self.devices) > 1 else None
        self._iterations: dict[tuple[int, int], Program] = {}
        self.syn_chunk = cfg.syn_chunk  # `class_chunk` resolves 'auto' for the target with the chunk

    def abstract(self, tree, split=False):
        """jax.ShapeDtypeStruct of every leaf of `tree` (arrays or their shapes) with the target's sharding:
        `split` (a bool, or a tree of bools like `tree`) splits axis 0 over the mesh."""
        splits = split if not isinstance(split, bool) else jax.tree.map(lambda _: split, tree)

        def one(a, s):
            where = (SingleDeviceSharding(self.devices[0]) if self.mesh is None
                     else sharding.sharding_of(a, self.mesh, s))
            return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=where)

        return jax.tree.map(one, tree, splits)

    def method(self, chunk: int, syn: int | None = None):
        """The method with `chunk` classes per vmapped program and the synthetic side's chunk `syn` (default: the
        one `class_chunk` resolved, else the config's)."""
        with compiling_for(self.target.platform):
            return make_method(self.requested.replace(class_chunk=chunk,
                                                      syn_chunk=self.syn_chunk if syn is None else syn),
                               self.data.spec, self.mesh)

    def _shapes(self, m):
        """The shapes a method's programs take: (condensation state, context, key), from shapes alone."""
        # every method stores (classes, ipc, H, W, C) images: their shape, not an init that reads the data
        images = jax.ShapeDtypeStruct((self.data.num_classes, self.cfg.ipc, *self.data.train_x.shape[1:]),
                                      jnp.float32)
        return jax.eval_shape(m.init_state, images), m.context_shapes(self.data), jax.eval_shape(
            lambda: jax.random.key(0))

    def iteration(self, chunk: int, syn: int | None = None) -> Program:
        """The condensation iteration with `chunk` classes per vmapped program (0 = all) and the synthetic side's
        chunk `syn` (as `method`), compiled once."""
        m = self.method(chunk, syn)
        if (chunk, m.syn_chunk) not in self._iterations:
            state, ctx, key = self._shapes(m)
            split = sharding.state_split(state, self.mesh, m.class_axis(state)) if self.mesh is not None else False
            args = (self.abstract(state, split), self.abstract(ctx), self.abstract(key))
            self._iterations[chunk, m.syn_chunk] = compile_program("iteration", m.iteration, args, self.target,
                                                                   self.cfg.precision, donate_argnums=0)
        return self._iterations[chunk, m.syn_chunk]

    def step(self, chunk: int, syn: int | None = None) -> Program:
        """One outer matching step (every class's and subset's matching and the image update, as
        `benchmarks.step` times it) with `chunk` classes per vmapped program (0 = all), for a gradient-matching
        method, with the synthetic side's chunk `syn` (as `method`)."""
        m = self.method(chunk, syn)
        state, ctx, key = self._shapes(m)
        params = jax.eval_shape(lambda: m.net.init(jax.random.key(0))[0])
        args = (*self.abstract((state.images, state.opt_state, params)), self.abstract(ctx), self.abstract(key))
        fn = lambda im, os_, p_, c, k: m.matching_step(im, os_, p_, c, k, 0.5)  # noqa: E731
        return compile_program("step", fn, args, self.target, self.cfg.precision, donate_argnums=(0, 1))

    def class_chunk(self, log=print) -> int:
        """What `--class-chunk` (auto: as backend.resolve_class_chunk weighs the candidates' compiled programs)
        resolves to on the target (0 for a method whose iteration has no class chunk); then `--syn-chunk` for that
        chunk (backend.resolve_chunks), kept as `self.syn_chunk` for the programs compiled after."""
        if not METHODS[self.cfg.method].class_chunked:
            return 0
        def cost_of(chunk: int, syn: int | None = None) -> tuple[int | float | None, float | None]:
            try:
                it = self.iteration(chunk, syn)
            except PlanError as e:  # the TPU compiler refuses a program larger than the chip: another chunk may fit
                size = re.search(r"temporaries \(([\d.]+)G\)", str(e))
                return (float(size.group(1)) * 2**30 if size else math.inf), None
            return it.bytes, it.seconds()["estimate"]

        chunk, self.syn_chunk = backend.resolve_chunks(self.cfg.class_chunk, self.cfg.syn_chunk,
                                                       self.data.num_classes, self.method(0).can_split, self.mesh,
                                                       cost_of, self.target.bytes_limit, log)
        return chunk

    def evaluation(self, parallel: int | None = None, arch: str | None = None) -> Program:
        """The evaluation program: `parallel` networks (default the config's eval_parallel) trained together on the
        set's (classes x syn_per_class) images and tested on the test split, split over the mesh where they
        divide, as `evaluation.evaluate_set` runs them."""
        cfg, data = self.cfg, self.data
        parallel = parallel or backend.resolve_eval_parallel(cfg.eval_parallel, self.mesh)
        parallel = max(1, min(parallel, max(cfg.eval_models, 1)))
        m = self.method(0)
        n = data.num_classes * cfg.syn_per_class
        shape = data.train_x.shape[1:]
        x = jax.ShapeDtypeStruct((n, *shape), jnp.float32)
        y = jax.ShapeDtypeStruct((n,), jnp.int32)
        tx = jax.ShapeDtypeStruct((len(data.test_y), *shape), jnp.float32)
        ty = jax.ShapeDtypeStruct((len(data.test_y),), jnp.int32)
        keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), parallel))
        split_keys = self.mesh is not None and parallel % self.mesh.size == 0
        args = (*self.abstract((x, y)), self.abstract(keys, split_keys), *self.abstract((tx, ty)))
        with compiling_for(self.target.platform):
            fn = evaluation_program(m.eval_net(arch, parallel), m.eval_protocol(None, arch))
        return compile_program("evaluation", fn, args, self.target, cfg.precision)
