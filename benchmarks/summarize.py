"""Markdown tables from benchmark JSON lines: python -m benchmarks.summarize benchmarks/results/cpu.jsonl"""
from __future__ import annotations

import json
import sys


def _conv(config: dict) -> str:
    return config.get("conv_impl", "patches")  # lines written before the field existed ran im2col


def main(path: str) -> str:
    rows = [json.loads(line) for line in open(path) if line.strip()]
    steps = [r for r in rows if "step_seconds_median" in r]
    evals = [r for r in rows if "vmapped_over_sequential" in r]
    out = ["| method | ipc | real/class | K | conv | JAX s/step | PyTorch s/step | PyTorch / JAX | JAX GFLOP/step |"
           " JAX GFLOP/s | JAX peak RSS (GB) | PyTorch peak RSS (GB) |", "|---" * 12 + "|"]
    for r in steps:
        c, t = r["config"], r.get("torch", {})
        out.append(f"| {c['method']} | {c['ipc']} | {c['batch_real']} | {c['subset_k']} | {_conv(c)} | "
                   f"{r['step_seconds_median']:.2f} | {t.get('step_seconds_median', float('nan')):.2f} | "
                   f"**{r.get('torch_seconds_over_jax_seconds', float('nan')):.2f}** | "
                   f"{r['flops_per_step'] / 1e9:.0f} | "
                   f"{r['gflops_per_second']:.0f} | {r['peak_rss_mb'] / 1024:.1f} | "
                   f"{t.get('peak_rss_mb', float('nan')) / 1024:.1f} |")
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
    return "\n".join(out)


if __name__ == "__main__":
    print(main(sys.argv[1]))
