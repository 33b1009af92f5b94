"""DC (Zhao, Mopuri & Bilen, ICLR 2021): noise init, the layer-wise cosine distance, no augmentation in matching or
network training; 300 evaluation epochs without augmentation (a batch-norm ConvNet and MNIST excepted)."""
from __future__ import annotations

import dataclasses
from typing import Any

from sm_jax.augmentation import Policy
from sm_jax.methods.gradient import GradientMatching
from sm_jax.training import TrainProtocol

# (outer_loop, inner_loop) by ipc, from the official DC/DSA code (main.py); other ipc take ipc 10's
LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


def loop_budget(ipc: int) -> dict[str, Any]:
    """The budget DC and DSA share (their code is one repository): 1000 iterations of the loops of LOOPS."""
    outer, inner = LOOPS.get(ipc, (10, 50))
    return dict(iterations=1000, outer_loop=outer, inner_loop=inner, batch_real=256, batch_train=256, factor=1,
                lr_img=0.1, momentum_img=0.5, lr_net=0.01, momentum_net=0.0, weight_decay_net=0.0,
                max_syn_per_class=0, eval_models=20, eval_batch=256, checkpoint_every=50)


def loop_note(ipc: int) -> str:
    """loop_budget's fallback, said: the official code stops at an ipc without loops of its own."""
    if ipc in LOOPS:
        return ""
    return (f"the official DC/DSA code defines no loops for ipc {ipc} (it stops there): ipc 10's taken, "
            f"outer_loop 10 x inner_loop 50")


def loop_cpu_budget(paper: dict[str, Any]) -> dict[str, Any]:
    """DC's and DSA's CPU budget from their paper preset: 6 iterations of at most 3 x 5 loops, 32 real images."""
    return {**paper, "iterations": 6, "outer_loop": min(paper["outer_loop"], 3),
            "inner_loop": min(paper["inner_loop"], 5), "batch_real": 32, "eval_epochs": 40, "eval_models": 3,
            "checkpoint_every": 2}


class DC(GradientMatching):
    name = "dc"
    distance = "cosine"
    bn_eval_policy: Policy = (("dc_crop_noise",),)  # DC's evaluation of ConvNetBN (utils.get_daparam)

    @classmethod
    def paper_preset(cls, ipc: int, dataset: str) -> dict[str, Any]:
        mnist = dataset == "mnist"  # utils.get_daparam: augmented evaluation, 1000 epochs
        return {**loop_budget(ipc), "init": "noise", "eval_epochs": 1000 if mnist else 300,
                "eval_aug": "dc_crop_scale_rotate" if mnist else ""}

    @classmethod
    def cpu_preset(cls, ipc: int, dataset: str) -> dict[str, Any]:
        return loop_cpu_budget(cls.paper_preset(ipc, dataset))

    @classmethod
    def preset_note(cls, ipc: int, dataset: str) -> str:
        return loop_note(ipc)

    def eval_protocol(self, epochs=None, arch=None, learned=None) -> TrainProtocol:
        """The standard protocol, except for a batch-norm ConvNet: DC evaluates it with its crop / noise augmentation
        and, as augmented training "needs more epochs" in the official code (1000 instead of 300), 10/3 times the
        configured epochs unless `epochs` is given."""
        proto = super().eval_protocol(epochs, arch, learned)
        if arch != "convnetbn" or self.cfg.eval_aug:
            return proto
        e = proto.epochs * 10 // 3 if epochs is None else proto.epochs
        return dataclasses.replace(proto, epochs=e, policy=self.bn_eval_policy, milestones=((e // 2 + 1, 0.1),))
