"""DSA (Zhao & Bilen, ICML 2021): DC with real init and differentiable siamese augmentation (one draw per class
applied to the real and the synthetic batch) in matching, augmentation in network training and evaluation (1000
epochs)."""
from __future__ import annotations

from typing import Any

from sm_jax.augmentation import DSA_POLICY
from sm_jax.methods.dc import loop_budget, loop_cpu_budget, loop_note
from sm_jax.methods.gradient import GradientMatching


class DSA(GradientMatching):
    name = "dsa"
    distance = "cosine"
    match_policy = DSA_POLICY
    net_policy = DSA_POLICY
    eval_policy = DSA_POLICY  # every evaluation network, batch-norm ones included

    @classmethod
    def paper_preset(cls, ipc: int, dataset: str) -> dict[str, Any]:
        return {**loop_budget(ipc), "init": "real", "eval_epochs": 1000, "eval_aug": ""}

    @classmethod
    def cpu_preset(cls, ipc: int, dataset: str) -> dict[str, Any]:
        return loop_cpu_budget(cls.paper_preset(ipc, dataset))

    @classmethod
    def preset_note(cls, ipc: int, dataset: str) -> str:
        return loop_note(ipc)
