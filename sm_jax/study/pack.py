"""Carrying a study from one machine to the next, for machines that start bare and keep nothing (preemptible, rented
by the quarter hour): `pack` writes what each run of the plans needs to be continued or reported (its results,
config, metrics, synthetic set and latest checkpoint; no caches, no compiled programs, no TensorBoard files) into one
.tar.gz, and `unpack` restores them under another root, where the same study command continues."""
from __future__ import annotations

import os
import tarfile
from collections.abc import Sequence
from pathlib import Path

from sm_jax.errors import UserError
from sm_jax.study.plans import load_plan, plan_name

# a run's files that travel (beside its latest checkpoint); eval_step<N>.json too (experiments.evaluate's)
RUN_FILES = ("results.json", "config.json", "metrics.jsonl", "synthetic.npz", "synthetic.png", "progress.png")


class PackError(UserError):
    """A pack that cannot be written or read, or one that would overwrite runs."""


def _runs_under(run_dir: Path) -> list[Path]:
    """The run directories of a study's run: itself, or its experiments (exp<i>/) where it has several."""
    return sorted({p.parent for name in ("config.json", "checkpoints") for p in run_dir.rglob(name)})


def _members(run: Path) -> list[Path]:
    out = [run / f for f in RUN_FILES if (run / f).is_file()] + sorted(run.glob("eval_step*.json"))
    ck = run / "checkpoints"
    if ck.is_dir():
        steps = [p for p in ck.iterdir() if p.is_dir() and p.name.isdigit()]
        if steps:  # the latest only: a resumed run needs no other
            out.append(max(steps, key=lambda p: int(p.name)))
        out += [p for p in ck.iterdir() if p.is_file()]  # the manager's own metadata, if any
    return out


def pack(root: str | Path, plans: Sequence[str], out: str | Path) -> dict:
    """Writes every run of `plans` found under `root` (<root>/<plan>/<id>) into the .tar.gz `out`, atomically.

    Returns:
      {"runs": run directories packed, "bytes": the archive's size, "path": out}.
    """
    root, out = Path(root), Path(out)
    runs = [r for name in plans for s in load_plan(name)
            for r in _runs_under(root / plan_name(name) / s.id)]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tf:
        for run in runs:
            for m in _members(run):
                tf.add(m, arcname=str(m.relative_to(root)))
    os.replace(tmp, out)
    return {"runs": len(runs), "bytes": out.stat().st_size, "path": str(out)}


def unpack(archive: str | Path, root: str | Path) -> int:
    """Restores a pack under `root`; returns the number of run directories restored.

    Raises:
      PackError: for a missing or corrupt archive, a member outside the root, or a run already under `root` (a pack
        restores onto a bare machine: it never overwrites a run that may be further along).
    """
    archive, root = Path(archive), Path(root)
    if not archive.is_file():
        raise PackError(f"{archive}: no such pack")
    try:
        with tarfile.open(archive, "r:gz") as tf:
            members = tf.getmembers()
            for m in members:
                parts = Path(m.name).parts
                if m.name.startswith("/") or ".." in parts or not (m.isfile() or m.isdir()):
                    raise PackError(f"{archive}: member {m.name!r} is not a run's file")
            runs = {Path(m.name).parent for m in members if Path(m.name).name == "config.json"}
            existing = sorted(str(root / r) for r in runs if (root / r / "config.json").exists())
            if existing:
                raise PackError(f"{existing[0]} exists: unpack into a root without these runs")
            tf.extractall(root, filter="data")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise PackError(f"{archive}: not a readable pack ({type(e).__name__}: {e})") from None
    return len(runs)
