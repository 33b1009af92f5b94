"""Evaluate a checkpoint: python -m experiments.evaluate --workdir DIR [--step N] [--eval-models N]."""
from sm_jax.cli.sets import evaluate_main

if __name__ == "__main__":
    evaluate_main()
