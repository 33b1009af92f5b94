#!/usr/bin/env bash
# Step time and memory against the number of classes: DC ipc 10 (128 real images per class and step), K 1 and 2,
# random data, 10 / 20 / 50 / 100 classes, --class-chunk auto (1 class per program on CPU). The lines are in
# benchmarks/results/classes_cpu.jsonl; `python -m benchmarks.summarize` prints them. About 15 minutes on 2 cores.
set -uo pipefail
out=${1:-benchmarks/results/classes_cpu.jsonl}
mkdir -p "$(dirname "$out")"
for k in 1 2; do
  for c in 10 20 50 100; do
    python -m benchmarks.step --method dc --ipc 10 --batch-real 128 --subset-k "$k" --classes "$c" --per-class 500 \
      --class-chunk auto --repeats 1 | tee -a "$out"
  done
done
