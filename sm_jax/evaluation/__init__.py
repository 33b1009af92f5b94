"""Scoring a set: fresh networks trained on it under an evaluation protocol (protocols: hard labels, a teacher's
soft labels, what the set learned), their accuracy on the test split (core), the real-data reference and teacher
networks (reference), and DD-Ranking's scores (ddranking)."""
from sm_jax.evaluation.core import (
    ARCH_RESULT,
    BASELINES,
    evaluate_archs,
    evaluate_set,
    evaluation_program,
    make_evaluator,
    per_arch,
    random_subset,
    set_targets,
    train_network,
)
from sm_jax.evaluation.protocols import PROTOCOLS

__all__ = ["ARCH_RESULT", "BASELINES", "PROTOCOLS", "evaluate_archs", "evaluate_set", "evaluation_program",
           "make_evaluator", "per_arch", "random_subset", "set_targets", "train_network"]
