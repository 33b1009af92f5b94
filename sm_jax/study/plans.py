"""Study plans: named lists of runs (RunSpec), each a set of `python -m experiments.cifar10` flags."""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sm_jax.config import ConfigError, make_config

SELECT = "select:"  # a flag value `select:<group>`: the value of the best group's runs (within the plan)
SELECT_FROM = "select-from:"  # `select-from:<plan>:<group>`: the same, among another plan's exported runs


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


# Cross-architecture: the table plan's DC / DSA / IDC ipc-10 sets (same flags and seeds: the same sets, recreated),
# each evaluated on the architectures below. One network per (set, architecture), on the first 200 test images of
# each class (a fifth of the test set's cost): about 2 CPU-hours for the 18 sets.
ARCH_SETTINGS = ("dc10", "dsa10", "idc10")
ARCH_EVAL = "convnet,alexnet,vgg11,resnet18bn,mlp"
ARCH_MODELS = 1
ARCH_TEST_PER_CLASS = 200


def plan_arch() -> list[RunSpec]:
    """Base vs + subset matching sets of DC/DSA/IDC ipc 10, evaluated on ConvNet-3, AlexNet, VGG-11, ResNet-18 (BN)
    and MLP. Seed-major, so that a partial study already pairs every setting."""
    extra = {"eval_arch": ARCH_EVAL, "eval_models": ARCH_MODELS, "eval_test_per_class": ARCH_TEST_PER_CLASS}
    runs = []
    for seed in SEEDS:
        for s in ARCH_SETTINGS:
            runs.append(RunSpec(f"{s}_base_s{seed}", f"{s}/base", _base(s, subset_k=1, seed=seed, **extra)))
            lam = f"{SELECT_FROM}table:{LAMBDA_FROM[s]}/val/"  # the lambda_0 the table plan chose on held-out data
            runs.append(RunSpec(f"{s}_sm_s{seed}", f"{s}/sm", _base(s, subset_k=2, subset_lambda=lam, seed=seed,
                                                                    **extra)))
    return runs


PLANS: dict[str, Callable[[], list[RunSpec]]] = {"table": plan_table, "k": plan_k, "loss": plan_loss,
                                                 "arch": plan_arch}


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

