"""Studies: named lists of runs executed through the normal CLI code path, resumable, aggregated into tables/figures.

A plan is a list of `RunSpec`s. Each run lives in `<root>/<plan>/<id>` and checkpoints like any other run, so
rerunning a study skips finished runs and resumes unfinished ones. A flag value `select:<group>` is resolved when
the run starts: the value of that flag in the group's runs with the best mean accuracy (used to pick lambda_0 on a
held-out split of the training set). Finished runs' `results.json`, `metrics.jsonl` and `config.json` are copied to
`<export>/<plan>/<id>/`, from which `report` regenerates every table and figure.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sm_jax import artifacts
from sm_jax.config import ConfigError, make_config

SELECT = "select:"
ROOT = "runs/study"  # run directories: ROOT/PLAN/RUN
EXPORT = "docs/study/runs"  # committed copies of finished runs' small files: EXPORT/PLAN/RUN
OUT = "docs/study"  # generated tables and figures


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of a study.

    Attributes:
      id: directory name of the run inside the plan's directory.
      group: runs that differ only by seed share a group (a table cell / a point of a figure).
      flags: `python -m experiments.cifar10` flags without the leading dashes, e.g. {"method": "dc", "ipc": 10};
        a value "select:<group>" takes that flag's value from the best run group whose name starts with <group>.
    """

    id: str
    group: str
    flags: dict[str, Any]

    def argv(self, workdir: Path, data_dir: str | None, resolved: dict[str, Any]) -> list[str]:
        out = []
        for k, v in {**self.flags, **resolved}.items():
            if v is True:
                out.append(f"--{k.replace('_', '-')}")
            elif v is not False and v is not None:
                out += [f"--{k.replace('_', '-')}", str(v)]
        out += ["--workdir", str(workdir), "--no-progress"]
        if data_dir is not None:
            out += ["--data-dir", data_dir]
        return out


# --- the plans --------------------------------------------------------------------------------------------------
# Reduced budgets for 2 CPU cores: the `cpu` preset (same algorithms and hyper-parameters; 32 real images per class
# per matching step; DC/DSA 3 matching steps and 5 network epochs per iteration, IDC 6 (ipc 10) or 8 (ipc 1)
# matching steps and 3 network steps) with fewer iterations and shortened evaluation protocols, as below.
SETTINGS = {  # name: (method, ipc, flags)
    "dc10": ("dc", 10, {"iterations": 4, "eval_epochs": 30}),
    "dsa10": ("dsa", 10, {"iterations": 4, "eval_epochs": 30}),
    "idc1": ("idc", 1, {"iterations": 2, "eval_epochs": 40}),
    "idc10": ("idc", 10, {"iterations": 2, "eval_epochs": 10}),
}
SEEDS = (0, 1, 2)
EVAL_MODELS = 5
LAMBDA_GRID = (0.3, 1.0, 3.0)
HOLDOUT = 500  # training images per class held out to choose lambda_0 (never the test set)
# The compute control: K = 2 draws 3 real batches per class per step (the whole class and 2 subsets), so the base
# method with a 3x real batch sees as many real images per step; run where it is cheapest.
CONTROL_SETTINGS = ("dc10",)
# IDC ipc 10 reuses IDC ipc 1's lambda_0 (a validation grid at ipc 10 would cost as much as its whole table row)
LAMBDA_FROM = {"dc10": "dc10", "dsa10": "dsa10", "idc1": "idc1", "idc10": "idc1"}


def _base(setting: str, **flags) -> dict[str, Any]:
    method, ipc, extra = SETTINGS[setting]
    return {"method": method, "ipc": ipc, "preset": "cpu", "eval_models": EVAL_MODELS, **extra, **flags}


def _preset_batch_real(setting: str) -> int:
    method, ipc, _ = SETTINGS[setting]
    return make_config(method, ipc, "cpu").batch_real


def plan_table() -> list[RunSpec]:
    """Base vs + subset matching (K=2, lambda_0 chosen on a held-out split) for DC/DSA ipc 10, IDC ipc 1/10."""
    runs = []
    for s in SETTINGS:
        if LAMBDA_FROM[s] == s:
            for lam in LAMBDA_GRID:
                runs.append(RunSpec(f"{s}_val_lambda{lam:g}", f"{s}/val/lambda{lam:g}",
                                    _base(s, subset_k=2, subset_lambda=lam, holdout=HOLDOUT, seed=0, eval_models=2)))
        for seed in SEEDS:
            runs.append(RunSpec(f"{s}_base_s{seed}", f"{s}/base", _base(s, subset_k=1, seed=seed)))
            runs.append(RunSpec(f"{s}_sm_s{seed}", f"{s}/sm",
                                _base(s, subset_k=2, subset_lambda=f"{SELECT}{LAMBDA_FROM[s]}/val/", seed=seed)))
    for s in CONTROL_SETTINGS:  # last: the table's main cells do not wait for the control
        for seed in SEEDS:
            runs.append(RunSpec(f"{s}_base_real3x_s{seed}", f"{s}/base_real3x",
                                _base(s, subset_k=1, seed=seed, batch_real=3 * _preset_batch_real(s))))
    return runs


K_VALUES = (1, 2, 4, 8)
K_SEEDS = (0,)


def plan_k() -> list[RunSpec]:
    """IDC ipc 10 with K in {1, 2, 4, 8} (lambda_0 = 1), like the paper's Figure 1."""
    return [RunSpec(f"idc10_k{k}_s{seed}", f"idc10/k{k}",
                    _base("idc10", subset_k=k, subset_lambda=1.0, seed=seed, eval_models=3))
            for k in K_VALUES for seed in K_SEEDS]


LOSS_ITERATIONS = 6
LOSS_SEEDS = (0,)


def plan_loss() -> list[RunSpec]:
    """DC ipc 10: base loss only vs subset loss only vs both, evaluated every 2 iterations (like Figure 2)."""
    variants = {"base": {"subset_k": 1}, "subset_only": {"subset_k": 2, "subset_only": True},
                "both": {"subset_k": 2, "subset_lambda": 1.0}}
    return [RunSpec(f"dc10_{v}_s{seed}", f"dc10/{v}",
                    _base("dc10", iterations=LOSS_ITERATIONS, eval_every=2, eval_models=3, seed=seed, **f))
            for v, f in variants.items() for seed in LOSS_SEEDS]


PLANS: dict[str, Callable[[], list[RunSpec]]] = {"table": plan_table, "k": plan_k, "loss": plan_loss}


def load_plan(name: str) -> list[RunSpec]:
    """A built-in plan by name, or a JSON file: [{"id": .., "group": .., "flags": {..}}, ...].

    Raises:
      ConfigError: for an unknown plan, an unreadable file or duplicate run ids.
    """
    if name in PLANS:
        runs = PLANS[name]()
    else:
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"unknown plan {name!r}; choose one of {', '.join(PLANS)} or give a JSON file")
        try:
            runs = [RunSpec(r["id"], r.get("group", r["id"]), dict(r["flags"])) for r in json.loads(path.read_text())]
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{path}: not a plan (a JSON list of {{id, group, flags}}): {e}") from None
    ids = [r.id for r in runs]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"plan {name!r} has duplicate run ids")
    return runs


def plan_name(name: str) -> str:
    return name if name in PLANS else Path(name).stem


# --- running ----------------------------------------------------------------------------------------------------
def read_run(run_dir: Path) -> dict | None:
    """results.json of a finished run (None if absent)."""
    f = run_dir / "results.json"
    return json.loads(f.read_text()) if f.exists() else None


def group_runs(results: dict[str, dict], specs: Sequence[RunSpec]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for s in specs:
        if s.id in results:
            out.setdefault(s.group, []).append(results[s.id])
    return out


def resolve(spec: RunSpec, specs: Sequence[RunSpec], results: dict[str, dict]) -> dict[str, Any]:
    """Values of the spec's `select:` flags: the flag's value in the best (mean accuracy) matching group."""
    out = {}
    for flag, v in spec.flags.items():
        if not (isinstance(v, str) and v.startswith(SELECT)):
            continue
        prefix = v[len(SELECT):]
        cands = [s for s in specs if s.group.startswith(prefix)]
        missing = [s.id for s in cands if s.id not in results]
        if not cands or missing:
            raise ConfigError(f"run {spec.id}: {flag} selects from group {prefix!r}, whose runs "
                              f"{'do not exist' if not cands else 'are unfinished: ' + ', '.join(missing)}")
        groups = group_runs(results, cands)
        best = max(groups, key=lambda g: (np.mean([r["accuracy_mean"] for r in groups[g]]), g))
        out[flag] = groups[best][0]["config"][flag]
    return out


def run_plan(name: str, root: str | Path = ROOT, export: str | Path = EXPORT,
             data_dir: str | None = None, log: Callable[[str], None] = print,
             execute: Callable[[list[str], Any], dict] | None = None) -> dict[str, dict]:
    """Runs (or resumes) every run of a plan in order, skipping finished ones; returns {id: results}.

    Args:
      name: built-in plan name or JSON plan path.
      root: where run directories live (`<root>/<plan>/<id>`).
      export: where finished runs' small files are copied for reporting (None: no copy).
      data_dir: passed to every run as --data-dir.
      execute: fn(argv, data) -> results; default: the CLI code path with a dataset loaded once.
    """
    from sm_jax.cli import condense_parser, config_from_args
    from sm_jax.data import load_dataset
    from sm_jax.experiment import Run

    specs = load_plan(name)
    pname = plan_name(name)
    cache: dict[str, Any] = {}

    def default_execute(argv, _):
        cfg = config_from_args(condense_parser("cifar10").parse_args(argv))
        if (cfg.dataset, cfg.data_dir) not in cache:
            cache[cfg.dataset, cfg.data_dir] = load_dataset(cfg.dataset, cfg.data_dir)
        return Run(cfg, data=cache[cfg.dataset, cfg.data_dir], progress=False, log=log).execute()

    execute = execute or default_execute
    results: dict[str, dict] = {}
    for i, spec in enumerate(specs):
        run_dir = Path(root) / pname / spec.id
        resolved = resolve(spec, specs, results)
        argv = spec.argv(run_dir, data_dir, resolved)
        done = read_run(run_dir)
        if done is not None and _matches(done, argv):
            results[spec.id] = done
            log(f"[{i + 1}/{len(specs)}] {spec.id}: done ({100 * done['accuracy_mean']:.2f}%)")
        else:
            t0 = time.time()
            log(f"[{i + 1}/{len(specs)}] {spec.id}: running {' '.join(argv)}")
            results[spec.id] = execute(argv, None)
            log(f"[{i + 1}/{len(specs)}] {spec.id}: {100 * results[spec.id]['accuracy_mean']:.2f}% "
                f"in {time.time() - t0:.0f} s")
        if export is not None:
            dst = Path(export) / pname / spec.id
            dst.mkdir(parents=True, exist_ok=True)
            for f in ("results.json", "metrics.jsonl", "config.json"):
                if (run_dir / f).exists():
                    shutil.copyfile(run_dir / f, dst / f)
    return results


def _matches(done: dict, argv: list[str]) -> bool:
    """Whether a finished run's results come from the config these flags build (else the run resumes/extends)."""
    from sm_jax.cli import condense_parser, config_from_args

    cfg = config_from_args(condense_parser("cifar10").parse_args(argv))
    # fields added to Config after a run finished hold their defaults there, which the run used
    have = type(cfg).from_dict(done.get("config", {}))
    same = lambda c: {**c.identity(), "eval_epochs": c.eval_epochs, "eval_models": c.eval_models,  # noqa: E731
                      "eval_every": c.eval_every}
    return json.loads(json.dumps(same(have))) == json.loads(json.dumps(same(cfg))) and \
        done.get("iterations") == cfg.iterations


# --- reporting --------------------------------------------------------------------------------------------------
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


def _finish(fig, ax, title: str, path: Path, legend: bool = False) -> None:
    """The figures' shared ending: accuracy axis label, title, optional legend, saved and closed."""
    import matplotlib.pyplot as plt

    ax.set_ylabel("test accuracy (%)")
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


REPORTS = {"table": report_table, "k": report_k, "loss": report_loss}


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
