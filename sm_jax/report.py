"""Tables from the results.json files of finished runs."""
from __future__ import annotations

import json
from pathlib import Path

from sm_jax.artifacts import read_metrics


def collect(root: str | Path) -> list[dict]:
    """Every results.json under `root`, with its workdir name."""
    out = []
    for path in sorted(Path(root).rglob("results.json")):
        r = json.loads(path.read_text())
        r["name"], r["path"] = path.parent.name, path.parent
        out.append(r)
    return out


def _wall(path: Path) -> float | None:
    lines = read_metrics(path / "metrics.jsonl")
    cond = sum(r.get("seconds", 0.0) for r in lines if "loss_all" in r)
    ev = sum(r["eval"].get("eval_seconds", 0.0) for r in lines if "eval" in r)
    return cond + ev if lines else None


def markdown_table(root: str | Path) -> str:
    """One row per run: method, ipc, K, lambda_0, iterations, accuracy mean +- std (%), per-model accuracies."""
    rows = ["| run | method | ipc | K | lambda_0 | iterations | eval epochs x nets | accuracy (%) | per net (%) | "
            "wall (s) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in collect(root):
        c = r["config"]
        if r.get("accuracy_mean") is None:
            continue
        accs = ", ".join(f"{100 * a:.2f}" for a in r["accuracies"])
        wall = _wall(r["path"])
        rows.append(f"| {r['name']} | {c['method']} | {c['ipc']} | {c['subset_k']} | {c['subset_lambda']} | "
                    f"{r['iterations']} | {c['eval_epochs']} x {c['eval_models']} | "
                    f"{100 * r['accuracy_mean']:.2f} +- {100 * r['accuracy_std']:.2f} | {accs} | "
                    f"{'-' if wall is None else f'{wall:.0f}'} |")
    return "\n".join(rows)


if __name__ == "__main__":
    import sys

    print(markdown_table(sys.argv[1] if len(sys.argv) > 1 else "runs"))
