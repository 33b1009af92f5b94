"""The process and the device: fp32 matmul precision, the persistent compilation cache, predicted device memory, the
class chunk and the synthetic side's chunk.

Precision. On an NVIDIA GPU from Ampere on, XLA's default precision for float32 matmuls and convolutions is
TF32 (10-bit mantissa); PyTorch's default is TF32 for convolutions (`torch.backends.cudnn.allow_tf32 = True`) and
full fp32 for matmuls. sm_jax defaults to full float32 for both (`--precision float32`): gradient matching compares
per-layer gradients (cosine or squared error) and differentiates through them, so TF32's ~1e-3 relative error
enters the loss at first order, and a run's result then does not depend on the GPU generation.
`--precision tensorfloat32` trades that for speed (benchmarks/gpu.sh measures both). On CPU the choice changes
nothing (XLA:CPU computes float32 dots in float32).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

import jax

PRECISIONS = ("float32", "tensorfloat32", "bfloat16")  # names of jax_default_matmul_precision
AUTO_CHUNK = -1  # Config.class_chunk 'auto': resolve_class_chunk decides per device
AUTO_PARALLEL = 0  # Config.eval_parallel 'auto': resolve_eval_parallel
CPU_CLASS_CHUNK = 1  # on 2 CPU cores the fastest and smallest form measured (benchmarks/README.md)
FUSED = -2  # Config.syn_chunk 'fused': each class chunk's program matches both sides (resolve_syn_chunk)
MEMORY_HEADROOM = 0.85  # share of the device's memory a program may be predicted to use
MEMORY_MARGIN = 0.10  # `auto` syn chunk: the split form may need this much more memory than the fused one
TIME_MARGIN = 0.10  # `auto` chunk and width: a larger program must be estimated this much faster to be preferred
WIDE_PARALLEL = 20  # the vmapped width `--eval-parallel auto` weighs against one network per device (the papers' 20)
PEAK_BOUND = 1.3  # a run's peak against its largest program's predicted bytes (docs/gpu.md, "Memory as predicted")


def precision(name: str) -> contextlib.AbstractContextManager:
    """A context in which the programs traced use `name` (PRECISIONS) for float32 matmuls and convolutions."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
    return jax.default_matmul_precision(name)


def enable_compilation_cache(cache_dir: os.PathLike | str) -> None:
    """Persists compiled XLA programs under `cache_dir` (a rerun, a resume or the next run of a study with the same
    shapes skips compilation); SM_JAX_COMPILE_CACHE=0 turns it off, and JAX's own JAX_COMPILATION_CACHE_DIR (and
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS) take precedence. For a process's entry point."""
    if os.environ.get("SM_JAX_COMPILE_CACHE", "1") == "0":
        return
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        jax.config.update("jax_compilation_cache_dir", str(cache_dir))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def program_bytes(compiled: Any) -> int | None:
    """Device bytes a compiled program needs at its peak, from XLA's memory analysis: arguments + outputs +
    temporaries - donated (aliased) buffers. None where the backend gives no analysis."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)


def _memory_stat(key: str, device=None) -> int | None:
    """The device's (default: the first) memory statistic `key`, or None where the backend gives none (CPU)."""
    device = device or jax.devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001
        return None
    return int(stats[key]) if stats and key in stats else None


def device_memory_bytes(device=None) -> int | None:
    """The memory XLA may allocate on `device` (default: the first), or None where unknown (CPU)."""
    return _memory_stat("bytes_limit", device)


def device_peak_bytes(device=None) -> int | None:
    """The most memory XLA has held on `device` (default: the first) since the process started; None where
    unknown (CPU)."""
    return _memory_stat("peak_bytes_in_use", device)


def memory_bound(peak: int | None, iteration: int | None, evaluation: int | None, data: int = 0) -> dict | None:
    """A run's device peak against what its programs were predicted to need: the iteration program (its arguments
    hold the real data where it is on the device) or the evaluation program plus the real data, which stays on the
    device beside it, whichever is larger. None where the peak or both programs are unknown (CPU; chunks and widths
    given rather than weighed).

    Returns:
      {peak_bytes, predicted_bytes, ratio, bound: PEAK_BOUND, within: ratio <= bound, iteration_bytes,
       evaluation_bytes, data_bytes}.
    """
    known = [b for b in (iteration, None if evaluation is None else evaluation + data) if b is not None]
    if peak is None or not known:
        return None
    predicted = max(known)
    return {"peak_bytes": peak, "predicted_bytes": predicted, "ratio": peak / predicted, "bound": PEAK_BOUND,
            "within": peak <= PEAK_BOUND * predicted, "iteration_bytes": iteration, "evaluation_bytes": evaluation,
            "data_bytes": data}


def resolve_eval_parallel(requested: int, mesh=None, models: int = WIDE_PARALLEL,
                          cost_of: Callable[[int], tuple[int | None, float | None]] | None = None,
                          limit: int | None = None, log: Callable[[str], None] = print) -> int:
    """The evaluation networks trained together per call for `--eval-parallel requested`.

    A number is kept. `auto` (AUTO_PARALLEL) is one network per device of the mesh (one without a mesh), the form
    the H200 measured fastest (ConvNet-3, 20 networks: 586 model-epochs/s alone, 510 vmapped) and the one the CPU
    figures use; on an accelerator, given `cost_of`, it is weighed against WIDE_PARALLEL networks per call (at most
    `models`; networks trained together run on per-tap gemms, without grouped convolutions): the wider is taken where
    it fits MEMORY_HEADROOM of the device and is estimated (sm_jax.aot's calibrated estimate) more than TIME_MARGIN
    faster per network. Both candidates are logged.

    Args:
      requested: Config.eval_parallel.
      mesh: the run's device mesh (None: one device).
      models: the networks to train (the wider candidate is at most this many).
      cost_of: width -> (device bytes, estimated seconds) of the evaluation program training that many networks per
        call, each None where unknown.
      limit: device bytes (default: the device's own limit; given, the choice runs on CPU too).
    Returns:
      networks per call (>= 1).
    """
    if requested != AUTO_PARALLEL:
        return requested
    base = mesh.size if mesh is not None else 1
    wide = min(WIDE_PARALLEL, models) // base * base
    if cost_of is None or wide <= base or (jax.default_backend() == "cpu" and limit is None):
        return base
    limit = limit if limit is not None else device_memory_bytes()
    costs = {}
    for width in (base, wide):
        need, secs = costs[width] = cost_of(width)
        mem = ("refused by the compiler" if need == float("inf") else
               f"{need / 2**30:.2f} GiB" if need is not None else "memory unknown")
        per = f"{secs / width:.3g} s per network estimated" if secs is not None else "time unknown"
        log(f"  evaluation, {width} network{'s' * (width > 1)} per call: {mem}, {per}")
    (_, t_base), (need, t_wide) = costs[base], costs[wide]
    fits = need is None or limit is None or need <= MEMORY_HEADROOM * limit
    faster = t_base is not None and t_wide is not None and t_base / base > (1 + TIME_MARGIN) * t_wide / wide
    width = wide if fits and faster else base
    why = ("estimated faster per network by more than the margin" if width == wide else
           "the wider does not fit" if not fits else
           f"the wider is not estimated more than {TIME_MARGIN:.0%} faster per network" if t_wide is not None
           else "the wider's time is unknown")
    log(f"evaluation: {width} network{'s' * (width > 1)} per call ({why})")
    return width


def chunk_candidates(classes: int) -> list[int]:
    """Class chunks to try, largest first: all classes, then halving down to 1."""
    out, c = [], classes
    while c > 1:
        out.append(c)
        c = (c + 1) // 2
    return out + [1]


def resolve_class_chunk(requested: int, classes: int, mesh=None,
                        cost_of: Callable[[int], tuple[int | None, float | None]] | None = None,
                        limit: int | None = None, log: Callable[[str], None] = print) -> int:
    """The classes per vmapped program (0 = all at once) for `--class-chunk requested`.

    All classes when sharded over a mesh; else a number is kept, and `auto` (AUTO_CHUNK) is: on CPU the fastest
    measured form (one class per program); on an accelerator, given `cost_of`, the chunk with the least memory among
    those whose estimated time (sm_jax.aot's calibrated estimate of the compiled program) is within TIME_MARGIN of
    the lowest, of those predicted (XLA's memory analysis) to fit MEMORY_HEADROOM of the device's memory; the
    largest that fits where no time is known; all classes without `cost_of`. Each candidate costs a compilation, so
    not all are costed: the largest that fits and one class per program first; only where one class per program is
    not within the margin, the chunks between, largest first, until one falls outside it (time grows as the chunk
    shrinks: more programs, more launches). The compiled programs land in the persistent compilation cache, so the
    run's own jit of the chosen chunk does not compile again. Every candidate's memory and time is logged.

    Args:
      requested: Config.class_chunk.
      classes: the number of classes.
      mesh: the run's device mesh (None: one device).
      cost_of: chunk -> (device bytes, estimated seconds) of the iteration program with that chunk, each None
        where unknown.
      limit: device bytes (default: the device's own limit; given, the fit runs on CPU too).
    Returns:
      the chunk (0 <= chunk <= classes; 0 = all).
    """
    if mesh is not None:  # the mesh splits the class axis over its devices: one program for all classes
        return 0
    if requested != AUTO_CHUNK:
        return requested
    if jax.default_backend() == "cpu" and limit is None:
        return CPU_CLASS_CHUNK
    if cost_of is None:
        return 0
    limit = limit if limit is not None else device_memory_bytes()
    if limit is None:
        return 0
    fits = []

    def cost(chunk: int) -> None:
        need, secs = cost_of(chunk)
        ok = need is None or need <= MEMORY_HEADROOM * limit
        mem = f"{need / 2**30:.2f} GiB" if need is not None else "memory unknown"
        log(f"  class chunk {chunk}: {mem}, " + (f"{secs:.3g} s estimated" if secs is not None else
                                                   "time unknown") + ("" if ok else " (does not fit)"))
        if ok:
            fits.append((chunk, need, secs))

    candidates, between = chunk_candidates(classes), []
    for i, chunk in enumerate(candidates[:-1]):  # the largest that fits
        cost(chunk)
        if fits:
            between = candidates[i + 1:-1]
            break
    cost(1)
    known = [f[2] for f in fits if f[2] is not None]
    if len(known) == 2 and known[1] > (1 + TIME_MARGIN) * known[0]:
        for chunk in between:  # one class per program is clearly slower: the chunks between, while within the margin
            cost(chunk)
            secs = fits[-1][2] if fits and fits[-1][0] == chunk else None
            if secs is None or secs > (1 + TIME_MARGIN) * min(f[2] for f in fits if f[2] is not None):
                break
    if not fits:
        log(f"class chunk: 1 (even one class per program is predicted to exceed {limit / 2**30:.1f} GiB)")
        return 1
    timed = [f for f in fits if f[2] is not None]
    if timed:  # the least memory unless a larger program is estimated clearly faster (the estimate's error is larger)
        best = min(f[2] for f in timed)
        near = [f for f in timed if f[2] <= (1 + TIME_MARGIN) * best]
        chunk, need, secs = min(near, key=lambda f: (f[1] if f[1] is not None else float("inf"), f[2]))
        why = ("the lowest estimated time" if secs == best else
               f"the least memory within {TIME_MARGIN:.0%} of the lowest estimated time")
    else:
        chunk, need, secs = fits[0]
        why = "the largest"
    log(f"class chunk: {chunk} of {classes} classes per program ({why} of those that fit "
        f"{MEMORY_HEADROOM:.0%} of {limit / 2**30:.1f} GiB)")
    return chunk


def resolve_syn_chunk(requested: int, chunk: int, classes: int, can_split: bool,
                      cost_of: Callable[[int], tuple[int | None, float | None]] | None = None,
                      limit: int | None = None, log: Callable[[str], None] = print) -> int:
    """The classes per program of the matching's synthetic side for `--syn-chunk requested`, given the class chunk.

    FUSED: each class chunk's program takes both sides of its matching (the real images' gradients and the synthetic
    images' loss, differentiated). A number (0 = all classes) splits them: the real images' gradients (first order,
    no image to differentiate: most of the work) are taken first, `chunk` classes per program, and the synthetic
    side after, that many classes per program; its images are few per class (ipc), so with one class per program its
    many small kernels would launch once per class. `auto` (AUTO_CHUNK) is FUSED on CPU (the measured form, without
    compiling), where one program already takes all classes, where the method cannot split (`can_split`: a gradient
    distance, no batch norm), or without `cost_of`; on an accelerator it weighs the fused iteration against split
    ones, the synthetic side's chunk from all classes down (halving, above `chunk`), and takes the largest
    predicted to need at most MEMORY_MARGIN more memory than the fused one (and to fit MEMORY_HEADROOM of `limit`),
    where it is also estimated faster: a gain that costs no memory. Every candidate is logged.

    Args:
      requested: Config.syn_chunk.
      chunk: the resolved class chunk (0 = all).
      classes: the number of classes.
      can_split: whether the method has the split form.
      cost_of: syn chunk (FUSED or a number) -> (device bytes, estimated seconds) of the iteration program, each
        None where unknown.
      limit: device bytes (given, the choice runs on CPU too).
    Returns:
      FUSED or the synthetic side's chunk (0 <= s <= classes; 0 = all).
    """
    if requested != AUTO_CHUNK:
        return requested
    if (not can_split or chunk <= 0 or chunk >= classes or cost_of is None
            or (jax.default_backend() == "cpu" and limit is None)):
        return FUSED

    def cost(syn: int) -> tuple[int | None, float | None]:
        need, secs = cost_of(syn)
        mem = f"{need / 2**30:.2f} GiB" if need is not None else "memory unknown"
        log(f"  {'fused' if syn == FUSED else f'split, synthetic side {syn} classes per program'}: {mem}, "
            + (f"{secs:.3g} s estimated" if secs is not None else "time unknown"))
        return need, secs

    m_f, t_f = cost(FUSED)
    for syn in (s for s in chunk_candidates(classes) if s > chunk):
        m_s, t_s = cost(syn)
        if (m_f is not None and m_s is not None and m_s <= (1 + MEMORY_MARGIN) * m_f
                and (limit is None or m_s <= MEMORY_HEADROOM * limit)):
            break
    else:
        log(f"synthetic side: fused (no split form within {MEMORY_MARGIN:.0%} of the fused form's memory)")
        return FUSED
    if t_f is None or t_s is None or t_s >= t_f:
        log(f"synthetic side: fused (the split form, {syn} classes per program, is not estimated faster)")
        return FUSED
    log(f"synthetic side: {syn} classes per program after the real side (estimated faster, within "
        f"{MEMORY_MARGIN:.0%} of the fused form's memory)")
    return syn


def resolve_chunks(class_chunk: int, syn_chunk: int, classes: int, can_split: bool, mesh=None,
                   cost_of: Callable[..., tuple[int | None, float | None]] | None = None,
                   limit: int | None = None, log: Callable[[str], None] = print) -> tuple[int, int]:
    """The class chunk (`resolve_class_chunk`), then the synthetic side's chunk for it (`resolve_syn_chunk`).

    Args:
      class_chunk, syn_chunk: Config's.
      cost_of: (chunk, syn chunk or None for the config's) -> (device bytes, estimated seconds) of the iteration.
      the rest: as resolve_syn_chunk's.
    Returns:
      (class chunk, synthetic side's chunk).
    """
    chunk = resolve_class_chunk(class_chunk, classes, mesh, cost_of, limit, log)
    syn = resolve_syn_chunk(syn_chunk, chunk, classes, can_split,
                            None if cost_of is None else lambda s: cost_of(chunk, s), limit, log)
    return chunk, syn
