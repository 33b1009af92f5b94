"""A leaderboard of condensed sets: DD-Ranking's scores of each set (evaluate_set_path with metrics='ddranking'),
as a markdown table, a CSV and a bar chart, ordered by LRS as DD-Ranking's leaderboard is.

Each set's results are written to OUT/<n>_<name>.json as soon as it is scored, with the request that produced them:
a rerun of the same command reads them instead of scoring the set again (nothing is lost on interruption).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from sm_jax import artifacts
from sm_jax.sets.evaluate import evaluate_set_path

SCORES = ("hlr", "ior", "lrs", "ars")
COLUMNS = ("rank", "set", "method", "ipc", "accuracy", *SCORES, "lrs_std", "ars_std")


def _name(path: str) -> str:
    p = Path(path)
    return (p.parent.name if p.name in ("synthetic.npz", "set.npz", "set.pt") else p.stem).replace(" ", "_")


def rank_sets(paths: list[str], overrides: dict, out: str | Path, dataset: str | None = None,
              method: str | None = None, progress: bool = True, log=print) -> list[dict]:
    """Scores every set of `paths` and writes OUT/ranking.md, ranking.csv and ranking.png.

    Args:
      overrides: Config fields for every evaluation (preset, eval_models, data_dir, ...); `metrics` is ddranking.
      dataset, method: for sets without a run config (as experiments.evaluate's).
    Returns:
      the table's rows (COLUMNS), best LRS first.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, path in enumerate(paths):
        target = out / f"{i:02d}_{_name(path)}.json"
        request = {"set": str(Path(path).resolve()), "overrides": overrides, "dataset": dataset, "method": method}
        res = json.loads(target.read_text()) if target.is_file() else None
        if res is None or res.get("rank_request") != request:
            log(f"rank: scoring {path} ({i + 1}/{len(paths)})")
            res = evaluate_set_path(path, {**overrides, "metrics": "ddranking"}, dataset=dataset, method=method,
                                    out=target, progress=progress, log=log)
            artifacts.write_json(target, {**res, "rank_request": request})
        else:
            log(f"rank: {path} already scored ({target})")
        d = res["ddranking"]
        rows.append({"set": str(path), "method": res["method"], "ipc": res["images_per_class"],
                     "accuracy": 100 * res["accuracy_mean"], **{k: d[k] for k in SCORES},
                     "lrs_std": d["lrs_std"], "ars_std": d["ars_std"]})
    rows.sort(key=lambda r: -r["lrs"])
    for r, row in enumerate(rows, 1):
        row["rank"] = r
    _write_tables(rows, out, overrides)
    _plot(rows, out / "ranking.png")
    return rows


def _write_tables(rows: list[dict], out: Path, overrides: dict) -> None:
    with open(out / "ranking.csv", "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows(rows)
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(c.upper() if c in SCORES else c for c in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in COLUMNS) + " |" for r in rows]
    budget = ", ".join(f"{k} {v}" for k, v in sorted(overrides.items()) if k != "data_dir") or "each set's own"
    note = ("\nAccuracy: the set's own protocol, test split, last epoch (%). HLR, IOR: points; LRS, ARS: percent "
            f"(sm_jax.evaluation.ddranking's definitions). Evaluation: {budget}.\n")
    (out / "ranking.md").write_text("\n".join(lines) + "\n" + note)


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(rows), 3.5))
    width = 0.8 / len(SCORES)
    xs = np.arange(len(rows))
    for j, s in enumerate(SCORES):
        ax.bar(xs + (j - 1.5) * width, [r[s] for r in rows], width, label=s.upper())
    ax.set_xticks(xs, [f"{r['rank']}. {_name(r['set'])}" for r in rows], rotation=15, ha="right")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set(ylabel="score", title="DD-Ranking scores (LRS order)")
    ax.legend(ncols=4, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
