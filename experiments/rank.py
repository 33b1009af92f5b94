"""Rank condensed sets by DD-Ranking's scores: python -m experiments.rank --set A --set B --out DIR [--preset cpu]."""
from sm_jax.cli.sets import rank_main

if __name__ == "__main__":
    rank_main()
