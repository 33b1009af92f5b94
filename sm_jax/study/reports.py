"""Reports of a plan: tables (markdown) and figures from the exported runs."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sm_jax import artifacts
from sm_jax.study.plans import (ARCH_EVAL, ARCH_SETTINGS, K_VALUES, LAMBDA_FROM, SETTINGS, RunSpec, load_plan,
                                plan_name)
from sm_jax.study.runner import EXPORT, group_runs, read_run

OUT = "docs/study"  # generated tables and figures


def load_exported(export: str | Path, name: str) -> tuple[list[RunSpec], dict[str, dict], dict[str, list[dict]]]:
    """(specs, {id: results}, {id: metrics rows}) of a plan from its exported run files."""
    specs = load_plan(name)
    base = Path(export) / plan_name(name)
    results, metrics = {}, {}
    for s in specs:
        r = read_run(base / s.id)
        if r is not None:
            results[s.id] = r
            metrics[s.id] = artifacts.read_metrics(base / s.id / "metrics.jsonl")
    return specs, results, metrics


def seed_means(runs: list[dict]) -> np.ndarray:
    """Per-run (= per condensation seed) mean accuracy over its evaluation networks, in %."""
    return 100 * np.asarray([r["accuracy_mean"] for r in runs])


def real_per_step(cfg: dict) -> int:
    """Real images drawn per class per matching step: the whole-class batch plus, for K > 1, one per subset."""
    k = cfg.get("subset_k", 1)
    sub = (cfg.get("subset_batch_real") or cfg["batch_real"]) * k if k > 1 else 0
    return (0 if cfg.get("subset_only") else cfg["batch_real"]) + sub


def net_std(runs: list[dict]) -> float:
    """Mean over runs of the std (ddof 1, in points) of each run's evaluation-network accuracies."""
    return float(np.mean([100 * np.std(r["accuracies"], ddof=1) for r in runs]))


def spread_label(one_seed: bool) -> str:
    """What a figure's error bars show: with one seed, the only spread is its evaluation networks'."""
    return "bars: eval-net std (1 seed)" if one_seed else "mean ± std over seeds"


def fmt(v: np.ndarray) -> str:
    """mean ± std (ddof 1) over seeds; a single seed has no spread to show."""
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v.mean():.2f} (1 seed)"


def verdict(diff: np.ndarray) -> str:
    """'helped' / 'hurt' when the paired seed differences' mean is beyond 2 standard errors of 0, else 'noise'."""
    if len(diff) < 2:
        return "n/a (1 seed)"
    se = diff.std(ddof=1) / np.sqrt(len(diff))
    if diff.mean() > 2 * se:
        return "helped"
    if diff.mean() < -2 * se:
        return "hurt"
    return "within noise"


def _figure(figsize: tuple[float, float]):
    """(fig, ax) on the file-only Agg backend (reports run on headless hosts); `_finish` saves and closes it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)


def _finish(fig, ax, title: str, path: Path, legend: bool = False, ylabel: str = "test accuracy (%)") -> None:
    """The figures' shared ending: axis label, title, optional legend, saved and closed."""
    import matplotlib.pyplot as plt

    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if legend:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report_table(specs, results, metrics, out: Path) -> str:
    groups = group_runs(results, specs)
    lines = ["| setting | base (%) | + subset matching (%) | paired Δ (points) | verdict | λ0 (held-out acc. %) |"
             " base per seed | + SM per seed |", "|---|---|---|---|---|---|---|---|"]
    controls = ["| setting | base, 3x real batch (%) | + subset matching (%) | paired Δ (points) | verdict |"
                " base 3x per seed |", "|---|---|---|---|---|---|"]
    by_seed = lambda rs: {r["config"]["seed"]: 100 * r["accuracy_mean"] for r in rs}  # noqa: E731

    def paired(a: dict, b: dict) -> np.ndarray:
        return np.asarray([b[k] - a[k] for k in sorted(set(a) & set(b))])

    names, bars = [], []
    for s in SETTINGS:
        base, sm = groups.get(f"{s}/base", []), groups.get(f"{s}/sm", [])
        if not base or not sm:
            continue
        b, m = by_seed(base), by_seed(sm)
        diff = paired(b, m)
        val = "; ".join(f"{g.rsplit('lambda', 1)[1]}: {seed_means(rs).mean():.2f}"
                        for g, rs in groups.items() if g.startswith(f"{LAMBDA_FROM[s]}/val/"))
        lam = sm[0]["config"]["subset_lambda"]
        lines.append(f"| {s} | {fmt(seed_means(base))} | {fmt(seed_means(sm))} | {fmt(diff)} | {verdict(diff)} | "
                     f"**{lam:g}** ({val}) | {', '.join(f'{b[k]:.2f}' for k in sorted(b))} | "
                     f"{', '.join(f'{m[k]:.2f}' for k in sorted(m))} |")
        names.append(s)
        bars.append((seed_means(base), seed_means(sm)))
        ctrl = groups.get(f"{s}/base_real3x", [])
        if ctrl:
            c = by_seed(ctrl)
            d = paired(c, m)
            controls.append(f"| {s} | {fmt(seed_means(ctrl))} | {fmt(seed_means(sm))} | {fmt(d)} | {verdict(d)} | "
                            f"{', '.join(f'{c[k]:.2f}' for k in sorted(c))} |")
    if names:
        fig, ax = _figure(figsize=(1.6 * len(names) + 2, 3.4))
        x = np.arange(len(names))
        for j, (label, off) in enumerate((("base", -0.18), ("+ subset matching (K=2)", 0.18))):
            vals = [b[j] for b in bars]
            ax.bar(x + off, [v.mean() for v in vals], 0.34, yerr=[v.std(ddof=1) if len(v) > 1 else 0 for v in vals],
                   capsize=3, label=label, alpha=0.8)
            for xi, v in zip(x, vals):
                ax.plot(np.full(len(v), xi + off), v, "k.", ms=4)
        lo = min(v.min() for b in bars for v in b)
        ax.set_ylim(max(0, lo - 5), None)
        ax.set_xticks(x, names)
        _finish(fig, ax, "CIFAR-10, reduced budget; mean ± std over seeds (dots)", out / "table.png", legend=True)
    if len(controls) > 2:
        lines += ["", "Compute control: the base method drawing 3x the real images per class per step (as many as "
                  "K = 2's three real batches), against the same subset-matching runs.", "", *controls]
    return "\n".join(lines)


def report_k(specs, results, metrics, out: Path) -> str:
    groups = group_runs(results, specs)
    ks = [k for k in K_VALUES if f"idc10/k{k}" in groups]
    lines = ["| K | accuracy (%) | per seed | std over a seed's eval networks | real images / class / step |",
             "|---|---|---|---|---|"]
    for k in ks:
        rs = groups[f"idc10/k{k}"]
        lines.append(f"| {k} | {fmt(seed_means(rs))} | {', '.join(f'{v:.2f}' for v in seed_means(rs))} | "
                     f"{net_std(rs):.2f} | {real_per_step(rs[0]['config'])} |")
    if ks:
        fig, ax = _figure(figsize=(4.5, 3.2))
        means = [seed_means(groups[f"idc10/k{k}"]) for k in ks]
        one_seed = all(len(m) == 1 for m in means)
        # with one seed the only spread to show is the evaluation networks'
        err = [net_std(groups[f"idc10/k{k}"]) if one_seed else m.std(ddof=1) for k, m in zip(ks, means)]
        ax.errorbar(ks, [m.mean() for m in means], err, marker="o", capsize=3)
        for k, m in zip(ks, means):
            ax.plot(np.full(len(m), k), m, "k.", ms=4)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("subsets per class K (K=1: base IDC)")
        _finish(fig, ax, f"IDC ipc 10, reduced budget; {spread_label(one_seed)}", out / "k_ablation.png")
    return "\n".join(lines)


def eval_curve(rows: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(iterations, accuracy %, std % over the eval networks) from a run's metrics rows' eval entries (the last
    entry per iteration wins)."""
    pts = {r["iteration"]: 100 * np.asarray(r["eval"]["accuracies"]) for r in rows if "eval" in r}
    its = np.asarray(sorted(pts))
    return (its, np.asarray([pts[i].mean() for i in its]),
            np.asarray([pts[i].std(ddof=1) if len(pts[i]) > 1 else 0.0 for i in its]))


def report_loss(specs, results, metrics, out: Path) -> str:
    by_group: dict[str, list[str]] = {}
    for s in specs:
        if s.id in results:
            by_group.setdefault(s.group, []).append(s.id)
    lines = ["| loss | final accuracy (%) | per seed | accuracy at each evaluated iteration (mean over seeds) |",
             "|---|---|---|---|"]
    fig, ax = _figure(figsize=(5, 3.4))
    seeds = 0
    for g, ids in by_group.items():
        curves = [eval_curve(metrics[i]) for i in ids]
        its = curves[0][0]
        if any(len(c[0]) != len(its) or (c[0] != its).any() for c in curves):
            continue
        acc = np.stack([c[1] for c in curves])
        final = acc[:, -1]
        # one seed: the spread shown is its evaluation networks'
        err = acc.std(0, ddof=1) if len(acc) > 1 else curves[0][2]
        lines.append(f"| {g.split('/')[-1]} | {fmt(final)} | {', '.join(f'{v:.2f}' for v in final)} | "
                     f"{', '.join(f'{i}: {a:.2f}' for i, a in zip(its, acc.mean(0)))} |")
        ax.errorbar(its, acc.mean(0), err, marker="o", capsize=3, label=g.split("/")[-1].replace("_", " "))
        seeds = len(acc)
    ax.set_xlabel("condensation iteration")
    _finish(fig, ax, f"DC ipc 10: which loss; {spread_label(seeds == 1)}", out / "loss_ablation.png", legend=True)
    return "\n".join(lines)


def report_runs(specs, results, metrics, out: Path) -> str:
    rows = ["| run | group | accuracy (%) |", "|---|---|---|"]
    rows += [f"| {s.id} | {s.group} | {100 * results[s.id]['accuracy_mean']:.2f} |" for s in specs if s.id in results]
    return "\n".join(rows)


def arch_accuracy(run: dict, arch: str) -> float | None:
    """A run's mean accuracy (%) on architecture `arch` (its `archs` entry), or None."""
    r = run.get("archs", {}).get(arch)
    return None if r is None else 100 * r["accuracy_mean"]


def report_arch(specs, results, metrics, out: Path) -> str:
    """Per setting and architecture: base vs + subset matching over the seeds, paired, with a verdict."""
    groups = group_runs(results, specs)
    archs = ARCH_EVAL.split(",")
    lines = ["| setting | architecture | base (%) | + subset matching (%) | paired Δ (points) | verdict | seeds |",
             "|---|---|---|---|---|---|---|"]
    deltas: dict[str, dict[str, np.ndarray]] = {}
    pooled: dict[str, list] = {a: [[], []] for a in archs}  # arch -> [base, sm] over every (setting, seed) pair
    for s in ARCH_SETTINGS:
        base = {r["config"]["seed"]: r for r in groups.get(f"{s}/base", [])}
        sm = {r["config"]["seed"]: r for r in groups.get(f"{s}/sm", [])}
        seeds = sorted(set(base) & set(sm))
        if not seeds:
            continue
        for arch in archs:
            b = np.asarray([arch_accuracy(base[k], arch) for k in seeds], float)
            m = np.asarray([arch_accuracy(sm[k], arch) for k in seeds], float)
            d = m - b
            deltas.setdefault(s, {})[arch] = d
            pooled[arch][0].extend(b)
            pooled[arch][1].extend(m)
            lines.append(f"| {s} | {arch} | {fmt(b)} | {fmt(m)} | {fmt(d)} | {verdict(d)} | "
                         f"{', '.join(map(str, seeds))} |")
    if len(deltas) > 1:  # every setting's pairs together: the answer per architecture
        for arch in archs:
            b, m = (np.asarray(v, float) for v in pooled[arch])
            lines.append(f"| all (pooled) | {arch} | {fmt(b)} | {fmt(m)} | {fmt(m - b)} | {verdict(m - b)} | "
                         f"{len(b)} pairs |")
    if deltas:
        fig, ax = _figure(figsize=(1.3 * len(archs) + 2.5, 3.4))
        x = np.arange(len(archs))
        width = 0.8 / len(deltas)
        for j, (s, by_arch) in enumerate(deltas.items()):
            off = (j - (len(deltas) - 1) / 2) * width
            vals = [by_arch[a] for a in archs]
            ax.bar(x + off, [v.mean() for v in vals], width, label=s, alpha=0.8,
                   yerr=[v.std(ddof=1) if len(v) > 1 else 0 for v in vals], capsize=3)
            for xi, v in zip(x, vals):
                ax.plot(np.full(len(v), xi + off), v, "k.", ms=4)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(x, archs)
        _finish(fig, ax, "gain of subset matching by evaluation architecture (paired per seed)",
                out / "arch.png", legend=True, ylabel="subset matching − base (points)")
    return "\n".join(lines)


REPORTS = {"table": report_table, "k": report_k, "loss": report_loss, "arch": report_arch}


def report(name: str, export: str | Path = EXPORT, out: str | Path = OUT) -> str:
    """Writes `<out>/<plan>.md` (and its PNG figure) from the exported runs; returns the markdown."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    specs, results, metrics = load_exported(export, name)
    pname = plan_name(name)
    body = REPORTS.get(pname, report_runs)(specs, results, metrics, out)
    done = f"{len(results)} of {len(specs)} runs finished"
    text = f"<!-- generated by python -m experiments.study --plan {name} --report-only -->\n{done}\n\n{body}\n"
    (out / f"{pname}.md").write_text(text)
    return text
