"""Fitting the programs to the device: fp32 matmul precision, predicted device memory, the automatic class chunk.

Precision. On an NVIDIA GPU from Ampere on, XLA's default precision for float32 matmuls and convolutions is
TF32 (10-bit mantissa); PyTorch's default is TF32 for convolutions (`torch.backends.cudnn.allow_tf32 = True`) and
full fp32 for matmuls. sm_jax defaults to full float32 for both (`--precision float32`): gradient matching compares
per-layer gradients (cosine or squared error) and differentiates through them, so TF32's ~1e-3 relative error
enters the loss at first order, and a run's result then does not depend on the GPU generation.
`--precision tensorfloat32` trades that for speed (benchmarks/gpu.sh measures both). On CPU the choice changes
nothing (XLA:CPU computes float32 dots in float32).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from sm_jax.config import PRECISIONS

CPU_CLASS_CHUNK = 1  # on 2 CPU cores the fastest and smallest form measured (benchmarks/README.md)
MEMORY_HEADROOM = 0.85  # share of the device's memory a program may be predicted to use


def apply_precision(precision: str) -> None:
    """Sets JAX's default precision of float32 matmuls and convolutions for the programs traced afterwards."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    jax.config.update("jax_default_matmul_precision", precision)


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


def device_memory_bytes(device=None) -> int | None:
    """The memory XLA may allocate on `device` (default: the first), or None where unknown (CPU)."""
    device = device or jax.devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001
        return None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def chunk_candidates(classes: int) -> list[int]:
    """Class chunks to try, largest first: all classes, then halving down to 1."""
    out, c = [], classes
    while c > 1:
        out.append(c)
        c = (c + 1) // 2
    return out + [1]


def auto_class_chunk(classes: int, compile_with: Callable[[int], Any], limit: int | None = None,
                     log: Callable[[str], None] = print) -> int:
    """The class chunk for `--class-chunk auto`.

    On CPU the fastest measured form (one class per program). On an accelerator the largest chunk whose program is
    predicted (XLA's memory analysis) to fit MEMORY_HEADROOM of the device's memory: the fewest sequential
    programs. The compiled programs land in the persistent compilation cache, so the run's own jit of the chosen
    chunk does not compile again.

    Args:
      classes: the number of classes.
      compile_with: chunk -> the compiled iteration program with that chunk.
      limit: device bytes (default: the device's own limit).
    Returns:
      the chunk (0 < chunk <= classes).
    """
    if jax.default_backend() == "cpu" and limit is None:
        return CPU_CLASS_CHUNK
    limit = limit if limit is not None else device_memory_bytes()
    if limit is None:
        return classes
    for chunk in chunk_candidates(classes):
        need = program_bytes(compile_with(chunk))
        if need is None or need <= MEMORY_HEADROOM * limit:
            log(f"class chunk: {chunk} of {classes} classes per program"
                + (f" (predicted {need / 2**30:.1f} GiB of {limit / 2**30:.1f} GiB)" if need is not None else ""))
            return chunk
    log(f"class chunk: 1 (even one class per program is predicted to exceed {limit / 2**30:.1f} GiB)")
    return 1
