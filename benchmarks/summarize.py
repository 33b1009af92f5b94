"""Markdown tables from benchmark JSON lines: python -m benchmarks.summarize benchmarks/results/cpu.jsonl"""
from __future__ import annotations

import json
import sys


def _conv(config: dict) -> str:
    return config.get("conv_impl", "patches")  # lines written before the field existed ran im2col


def _gb(mb) -> str:
    return "-" if mb is None else f"{mb / 1024:.1f}"


def main(path: str) -> str:
    rows = [json.loads(line) for line in open(path) if line.strip()]
    steps = [r for r in rows if "step_seconds_median" in r]
    evals = [r for r in rows if "vmapped_over_sequential" in r]
    device = any(r.get("backend") not in (None, "cpu") for r in steps)  # GPU/TPU lines: device memory columns
    many = any(r["config"].get("classes", 10) != 10 for r in steps)  # a class-scaling grid: its columns
    head = ("| classes " if many else "") + (
        "| method | ipc | real/class | K | conv | JAX s/step | PyTorch s/step | PyTorch / JAX | JAX GFLOP/step |"
        " JAX GFLOP/s | JAX peak RSS (GB) | PyTorch peak RSS (GB) |")
    if device or many:
        head += " JAX compile s | JAX predicted device GB |"
    if device:
        head += " precision | JAX peak device GB | PyTorch peak device GB |"
    out = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in steps:
        c, t = r["config"], r.get("torch", {})
        row = (f"| {c.get('classes', 10)} " if many else "") + (
            f"| {c['method']} | {c['ipc']} | {c['batch_real']} | {c['subset_k']} | {_conv(c)} | "
            f"{r['step_seconds_median']:.2f} | {t.get('step_seconds_median', float('nan')):.2f} | "
            f"**{r.get('torch_seconds_over_jax_seconds', float('nan')):.2f}** | {r['flops_per_step'] / 1e9:.0f} | "
            f"{r['gflops_per_second']:.0f} | {r['peak_rss_mb'] / 1024:.1f} | "
            f"{t.get('peak_rss_mb', float('nan')) / 1024:.1f} |")
        if device or many:
            row += f" {r['compile_seconds']:.0f} | {_gb(r.get('predicted_device_mb'))} |"
        if device:
            row += (f" {r.get('precision', 'float32')} | {_gb(r.get('peak_device_mb'))} | "
                    f"{_gb(t.get('peak_device_mb'))} |")
        out.append(row)
    if evals:
        out += ["", "| method | ipc | images | conv | networks x epochs | sequential model-epochs/s |"
                " vmapped model-epochs/s | vmapped / sequential | GFLOP/model-epoch | sequential GFLOP/s |"
                " vmapped GFLOP/s |", "|---" * 11 + "|"]
        for r in evals:
            c = r["config"]
            flops = (f"{r['flops_per_model_epoch'] / 1e9:.2f} | {r['sequential_gflops_per_second']:.0f} | "
                     f"{r['vmapped_gflops_per_second']:.0f}" if "flops_per_model_epoch" in r else "- | - | -")
            out.append(f"| {c['method']} | {c['ipc']} | {c['images']} | {_conv(c)} | "
                       f"{c['models']} x {c['epochs']} | "
                       f"{r['sequential_model_epochs_per_second']:.2f} | {r['vmapped_model_epochs_per_second']:.2f} | "
                       f"**{r['vmapped_over_sequential']:.2f}** | {flops} |")
    mem = [r for r in rows if "predicted_bytes" in r]
    if not steps:
        out = out[2:] if not evals else out[3:]  # no step lines: no empty step table
    if mem:
        out += ["", memory_table(mem)] if out else [memory_table(mem)]
    return "\n".join(out)


CARDS_GB = (16, 40, 80)
JAX_MEM_FRACTION = 0.75  # JAX preallocates this share of a GPU (XLA_PYTHON_CLIENT_MEM_FRACTION): its bytes_limit


def memory_table(rows: list[dict]) -> str:
    """Predicted GiB per paper config, all classes in one program and one class per program, and whether
    `--class-chunk auto` fits it on cards of CARDS_GB: 'all' (one program), 'chunked' (smaller programs), 'no'."""
    from sm_jax.backend import MEMORY_HEADROOM

    by = {}
    for r in rows:
        by.setdefault((r["method"], r["ipc"], r["subset_k"]), {})[r["class_chunk"]] = r["predicted_bytes"]
    head = "| method | ipc | K | GiB, all classes | GiB, one class |" + "".join(f" {g} GB card |" for g in CARDS_GB)
    out = [head, "|---" * (5 + len(CARDS_GB)) + "|"]
    for (method, ipc, k), b in by.items():
        cells = []
        for g in CARDS_GB:
            usable = MEMORY_HEADROOM * JAX_MEM_FRACTION * g * 1e9
            cells.append("all" if b.get(0, 1e99) <= usable else "chunked" if b.get(1, 1e99) <= usable else "no")
        out.append(f"| {method} | {ipc} | {k} | {_gb(b.get(0, 0) / 2**20)} | {_gb(b.get(1, 0) / 2**20)} |"
                   + "".join(f" {c} |" for c in cells))
    return "\n".join(out)


if __name__ == "__main__":
    print(main(sys.argv[1]))
