"""Compiling for accelerators that are not here: `TARGETS` (GPUs and TPUs by name), `Compiler` (a run's programs for
a target, from shapes alone), `hlo` (what a compiled program costs), `plan` (`--plan-for`: memory, class chunk and
time of a run on a named target). Needs the targets' compilers: `pip install -e ".[aot]"`."""
from sm_jax.aot.compile import Compiler, Program, shape_dataset
from sm_jax.aot.plan import PlanError, plan
from sm_jax.aot.targets import TARGETS, Target, TargetError, compiler_installed, target

__all__ = ["TARGETS", "Compiler", "PlanError", "Program", "Target", "TargetError", "compiler_installed", "plan",
           "shape_dataset", "target"]
