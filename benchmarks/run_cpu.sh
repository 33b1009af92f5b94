#!/usr/bin/env bash
# The benchmark grid behind benchmarks/README.md: every line of benchmarks/results/cpu.jsonl comes from here.
# Needs the PyTorch baseline: pip install -e ".[torch]". Takes ~20 minutes on 2 cores.
set -uo pipefail  # a failing configuration (e.g. out of memory) does not stop the others
out=${1:-benchmarks/results/cpu.jsonl}
mkdir -p "$(dirname "$out")"
chunk=${CLASS_CHUNK:-1}   # classes per vmapped program (0 = all at once: benchmarks/results/cpu_all_classes.jsonl)
step() { python -m benchmarks.step --compare --class-chunk "$chunk" "$@" | tee -a "$out"; }
step --method dc  --ipc 10 --batch-real 128 --subset-k 1 --repeats 2
step --method dc  --ipc 10 --batch-real 128 --subset-k 2 --repeats 1
step --method dsa --ipc 10 --batch-real 128 --subset-k 1 --repeats 2
step --method dsa --ipc 10 --batch-real 128 --subset-k 2 --repeats 1
step --method idc --ipc 10 --subset-k 1 --repeats 2
step --method idc --ipc 10 --subset-k 2 --repeats 1
step --method dc  --ipc 50 --batch-real 128 --subset-k 1 --repeats 1
step --method idc --ipc 50 --subset-k 2 --repeats 1
python -m benchmarks.evaluate --method dc --ipc 1 --models 10 --epochs 20 | tee -a "$out"
python -m benchmarks.evaluate --method dc --ipc 10 --models 10 --epochs 10 | tee -a "$out"
