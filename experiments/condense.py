"""Condense a dataset: python -m experiments.condense --dataset mnist --method idc --ipc 10 [--preset cpu] [...]."""
from sm_jax.cli.condense import condense_main

if __name__ == "__main__":
    condense_main()
