"""The full plan: Table 1 of the paper at the papers' budget (the `paper` preset), as the papers measure a cell: 5
condensations (`experiments`, seeds 0-4) x 20 networks each. DC and DSA at ipc 1, 10 and 50 and IDC at ipc 1, 10 and
50; the base method (K = 1) and + subset matching (K = 2, lambda_0 = 1.0: the paper's grid is not published) where
K = 2 divides the per-class synthetic count (not DC / DSA ipc 1, where the paper too has no entry). Ordered by cost,
cheapest first, so a study advanced by short-lived machines fills the table's cheap cells first."""
from __future__ import annotations

from pathlib import Path

from sm_jax.study.common import group_runs
from sm_jax.study.spec import RunSpec

BUDGET = "paper"  # hours of accelerator time: `--plan all` (the reduced-budget plans) leaves it out
EXPERIMENTS = 5
SM_LAMBDA = 1.0
# cheapest first: DC < DSA (its augmentation) at the same ipc, IDC's 4x decoded images and many more steps after
CELLS = (("dc", 1), ("dsa", 1), ("dc", 10), ("dsa", 10), ("idc", 1), ("idc", 10), ("dc", 50), ("dsa", 50),
         ("idc", 50))
# ../shared/docs/METHOD.md §6, the paper's CIFAR-10 ConvNet-3 table (mean, std %); None: no entry
PAPER = {("dc", 1): (None, None), ("dsa", 1): (None, None),
         ("dc", 10): ((44.3, 0.5), (44.6, 0.6)), ("dc", 50): ((54.7, 0.5), (55.1, 0.5)),
         ("dsa", 10): ((52.3, 0.3), (52.2, 0.4)), ("dsa", 50): ((60.6, 0.5), (61.1, 0.4)),
         ("idc", 1): ((44.2, 0.3), (44.8, 0.3)), ("idc", 10): ((63.5, 0.4), (66.8, 0.4)),
         ("idc", 50): ((73.2, 0.4), (75.4, 0.26))}
# the base methods' own papers at ipc 1 (METHOD.md §6), for the cells the subset-matching paper leaves empty
OWN_PAPER = {("dc", 1): (28.3, None), ("dsa", 1): (28.8, None)}


def _decoded(method: str, ipc: int) -> int:
    return ipc * (4 if method == "idc" else 1)  # IDC matches its factor-2 decoded images


def runs() -> list[RunSpec]:
    out = []
    for method, ipc in CELLS:
        flags = {"method": method, "ipc": ipc, "preset": "paper", "experiments": EXPERIMENTS}
        out.append(RunSpec(f"{method}{ipc}_base", f"{method}{ipc}/base", {**flags, "subset_k": 1}))
        if _decoded(method, ipc) % 2 == 0:
            out.append(RunSpec(f"{method}{ipc}_sm", f"{method}{ipc}/sm",
                               {**flags, "subset_k": 2, "subset_lambda": SM_LAMBDA}))
    return out


def _cell(r: dict | None) -> str:
    if r is None:
        return "not run"
    mean, std = r.get("accuracy_mean"), r.get("accuracy_std")
    done, planned = r.get("done", 1), r.get("planned", 1)
    n = len(r.get("accuracies") or [])
    if mean is None:
        return f"{done}/{planned} experiments, not evaluated"
    mark = "" if done == planned else f" (**{done}/{planned} experiments so far**)"
    return f"{100 * mean:.2f} ± {100 * std:.2f} ({n} nets){mark}"


def _paper(p) -> str:
    return "-" if p is None or p[0] is None else (f"{p[0]} ± {p[1]}" if p[1] is not None else f"{p[0]}")


def _seconds(r: dict | None) -> str:
    s = (r or {}).get("device_seconds")
    return "-" if s is None else (f"{s / 3600:.2f} h" if s >= 3600 else f"{s:.0f} s")


def report(specs, results, metrics, out: Path) -> str:
    """Table 1's layout: method x ipc, base and + subset matching, mean ± std over all experiments x networks, the
    paper's number beside each, and the device time the cell's experiments took (`device_seconds`: iterations and
    evaluations, every sitting); cells whose experiments are not all done are marked."""
    groups = group_runs(results, specs)
    lines = ["Table 1 at the papers' budget (CIFAR-10, ConvNet-3): mean ± std over every network of every "
             f"condensation ({EXPERIMENTS} x 20 when done), the paper's figure beside it, and the device time of the "
             "experiments done (iterations and evaluations; start-up and data loading left out).", "",
             "| method | ipc | base (%) | paper | + subset matching (%) | paper | device time (base; + SM) |",
             "|---|---|---|---|---|---|---|"]
    for method, ipc in CELLS:
        base = groups.get(f"{method}{ipc}/base", [None])[0]
        sm = groups.get(f"{method}{ipc}/sm", [None])[0]
        pb, ps = PAPER[method, ipc]
        pb = pb or OWN_PAPER.get((method, ipc))
        sm_cell = _cell(sm) if _decoded(method, ipc) % 2 == 0 else "K = 2 does not divide ipc 1"
        lines.append(f"| {method.upper()} | {ipc} | {_cell(base)} | {_paper(pb)} | {sm_cell} | {_paper(ps)} | "
                     f"{_seconds(base)}; {_seconds(sm)} |")
    return "\n".join(lines)
