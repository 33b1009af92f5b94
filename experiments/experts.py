"""Train the experts of trajectory matching: python -m experiments.experts --ipc 1 [--preset cpu] [--experts-dir D]."""
from sm_jax.cli.condense import experts_main

if __name__ == "__main__":
    experts_main()
