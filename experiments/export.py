"""python -m experiments.export --workdir RUN --to DIR --format {folder,npz,pt}"""
from sm_jax.cli.sets import export_main

if __name__ == "__main__":
    export_main()
