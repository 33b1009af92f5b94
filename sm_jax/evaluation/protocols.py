"""Evaluation protocols by name (`--eval-protocol`): what the networks that score a set learn from.

Every protocol trains fresh networks with the method's recipe (`Method.eval_protocol`: optimiser, epochs, lr steps,
augmentation) and reports their test accuracy after the last epoch; they differ in the targets and the lr:

  hard     cross-entropy on the set's class labels, at the configured lr (`--eval-lr`);
  teacher  KL divergence to a teacher's outputs softened at `--eval-temperature`, computed on the very augmented
           batch the student sees (SRe2L, RDED and DD-Ranking's soft-label mode `M`); the teacher is a network of
           the same architecture trained on the real training split (evaluation.reference); the configured lr;
  learned  what the set carries: its soft labels (logits, softened at `--eval-temperature`) where it has them, else
           its class labels; its learned lr (MTT's) where it has one, else the configured lr.

A method's own protocol (the default, '') is `hard`, except MTT's (`learned`: it evaluates at the lr it learned).
"""
from __future__ import annotations

import dataclasses

from sm_jax.training import TrainProtocol


@dataclasses.dataclass(frozen=True)
class Protocol:
    """targets: 'labels', 'teacher' or 'set' (the set's soft labels where it carries them); learned_lr: whether a
    learned lr the set carries replaces the configured one."""

    targets: str
    learned_lr: bool
    summary: str


PROTOCOLS: dict[str, Protocol] = {
    "hard": Protocol("labels", False, "cross-entropy on the class labels, the configured lr"),
    "teacher": Protocol("teacher", False, "KL to a teacher's softened outputs on each augmented batch"),
    "learned": Protocol("set", True, "the set's soft labels and learned lr where it carries them"),
}


def resolve(name: str, method) -> str:
    """The protocol's name: `name`, or the method's own for ''."""
    return name or method.own_protocol


def train_protocol(name: str, method, epochs: int | None = None, arch: str | None = None,
                   learned: dict | None = None) -> TrainProtocol:
    """The TrainProtocol of protocol `name` ('' = the method's own) for `method` on `arch`.

    Args:
      learned: what the set carries beside its images (Method.learned / ImageSet.learned: {'lr': ...}).
    """
    p = PROTOCOLS[resolve(name, method)]
    proto = method.eval_protocol(epochs, arch, learned if p.learned_lr else None)
    if p.targets == "labels":
        return proto
    return dataclasses.replace(proto, temperature=method.cfg.eval_temperature)


def uses_teacher(name: str, method) -> bool:
    return PROTOCOLS[resolve(name, method)].targets == "teacher"


def uses_set_targets(name: str, method) -> bool:
    return PROTOCOLS[resolve(name, method)].targets == "set"
