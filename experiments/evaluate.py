"""Evaluate a checkpoint: python -m experiments.evaluate --workdir DIR [--step N] [--eval-models N]."""
from sm_jax.cli import evaluate_main

if __name__ == "__main__":
    evaluate_main()
