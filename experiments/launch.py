"""python -m experiments.launch --processes N --devices-per-process D -- <experiments.condense flags>"""
from sm_jax.cli.launch import launch_main

if __name__ == "__main__":
    launch_main()
