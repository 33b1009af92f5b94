"""Condense CIFAR-10: python -m experiments.cifar10 --method idc --ipc 10 [--preset cpu] [...].

The same as `python -m experiments.condense --dataset cifar10 ...`.
"""
from sm_jax.cli.condense import condense_main

if __name__ == "__main__":
    condense_main(dataset="cifar10")
