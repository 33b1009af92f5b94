"""python -m experiments.study --plan table --data-dir PATH: run, resume and report a study."""
from sm_jax.cli.study import study_main

if __name__ == "__main__":
    study_main()
