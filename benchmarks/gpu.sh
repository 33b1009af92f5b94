#!/usr/bin/env bash
# The GPU check: run as is on a lent GPU machine, in one call of at most 9 minutes. Every result is written under
# $OUT as soon as it exists, so a timeout still returns what was done. Sections, in priority order:
#   1. environment (devices, versions) and correctness on the GPU: the equivalence tests (vmapped vs looped
#      matching, chunked vs joint gradients, every convolution form against XLA's, the fused RGB layer); then
#      sm_jax.aot's prediction of section 4's iterations, compiled for the h200 target without the device
#   2. step time, JAX against PyTorch on the same GPU: paper batches, all classes in one vmapped program,
#      DC ipc 10 K 1 / K 2, IDC ipc 10 K 2, IDC ipc 50 K 2, DM ipc 10 K 2 (compile time reported apart)
#   3. evaluation: 20 networks vmapped against one after another (model-epochs/s), DC ipc 1 and 10; then DC ipc 10
#      K 1 at tensorfloat32, the price of full float32
#   4. full paper budgets, as far as the time allows: DSA ipc 1 (K = 1; K = 2 cannot split 1 image per class),
#      then IDC ipc 1 K = 2; metrics.jsonl has the seconds of every iteration. A run cut by the time limit gets
#      SIGTERM, saves a checkpoint and exits 143 (its workdir comes back too).
#
#   bash benchmarks/gpu.sh            # on the GPU machine (OUT is set there; default benchmarks/results/gpu-local)
#   bash benchmarks/gpu.sh --smoke    # on CPU with tiny shapes in under 2 minutes (tests/test_gpu_script.py)
#
# Data for section 4: $SM_JAX_DATA, else data/cifar10-jpeg.tar.gz (git-ignored: copy ../shared/data/... there and
# name `data` in the device tool's carry), else ../shared/data/cifar10-jpeg.tar.gz. Budget: $GPU_SH_BUDGET seconds.
set -uo pipefail  # one failing section does not stop the others
cd "$(dirname "$0")/.."
py=${PYTHON:-python}  # the interpreter (default: `python` on PATH)
smoke=0
[ "${1:-}" = "--smoke" ] && smoke=1
out=${OUT:-benchmarks/results/gpu-local}
mkdir -p "$out"
t0=$(date +%s)
budget=${GPU_SH_BUDGET:-$([ $smoke = 1 ] && echo 115 || echo 530)}
log() { echo "[gpu.sh +$(( $(date +%s) - t0 ))s] $*" | tee -a "$out/log.txt" >&2; }
# within SECONDS CMD...: CMD with at most SECONDS (never past the budget); SIGTERM first, SIGKILL 10 s later
within() {
  local t=$1 left=$(( budget - ($(date +%s) - t0) ))
  shift
  [ "$t" -gt "$left" ] && t=$left
  if [ "$t" -lt 15 ]; then log "skipped, no time left: $*"; return 124; fi
  timeout -k 10 "$t" "$@"
  local rc=$?
  [ $rc -ne 0 ] && log "exit $rc: $*"
  return $rc
}
data=${SM_JAX_DATA:-}
for d in data/cifar10-jpeg.tar.gz ../shared/data/cifar10-jpeg.tar.gz; do
  [ -z "$data" ] && [ -e "$d" ] && data=$d
done

if [ $smoke = 1 ]; then
  export JAX_PLATFORMS=cpu
  tiny=(--classes 3 --per-class 20 --width 8 --depth 1 --batch-real 4 --repeats 1)
  torch_device=cpu
else
  export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda}
  export XLA_FLAGS=${XLA_FLAGS:-}       # tests/conftest.py's CPU flags are for the CPU suite only
  tiny=()
  torch_device=cuda
fi
export SM_JAX_CACHE=${SM_JAX_CACHE:-${TMPDIR:-/tmp}/sm_jax_gpu_cache}   # decoded data, compiled programs

# gpu.json (every figure so far) and report.md (tables, GPU-hour estimates), rewritten after each section
report() { "$py" -m benchmarks.gpu_report "$out" > /dev/null 2>> "$out/log.txt"; }

# --- 1. environment and correctness --------------------------------------------------------------------------------
log "1. environment"
"$py" - > "$out/env.json" <<'EOF'
import importlib.metadata as md, json, platform
import jax
info = {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind, "python": platform.python_version()}
for p in ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax", "orbax-checkpoint", "torch"):
    try:
        info[p] = md.version(p)
    except md.PackageNotFoundError:
        pass
try:
    stats = jax.devices()[0].memory_stats() or {}
    info["bytes_limit"] = stats.get("bytes_limit")
except Exception:
    pass
try:
    import torch
    info["torch_cuda"] = torch.cuda.is_available() and torch.cuda.get_device_name()
except Exception as e:
    info["torch_cuda"] = repr(e)
print(json.dumps(info, indent=1))
EOF
cat "$out/env.json"
(nvidia-smi || true) > "$out/nvidia-smi.txt" 2>&1
tests=(tests/test_matching.py::test_vmapped_matching_equals_python_loop
       tests/test_matching.py::test_loss_zero_for_identical_batches
       "tests/test_methods.py::test_chunked_per_class_gradients_equal_the_straightforward_joint_gradient"
       tests/test_models.py::test_convolutions_agree_with_xla_to_second_order
       tests/test_models.py::test_fused_conv_instancenorm_agrees_with_conv_then_norm_to_second_order
       tests/test_training.py::test_fast_conv_net_equals_xla_conv_net_values_and_grads)
log "1. correctness tests on $JAX_PLATFORMS"
if [ $smoke = 1 ]; then  # the names still exist (the GPU run executes them)
  within 60 "$py" -m pytest -q -p no:cacheprovider --collect-only "${tests[@]}" > "$out/tests.txt" 2>&1
else
  within 150 "$py" -m pytest -q -p no:cacheprovider -p no:xdist "${tests[@]}" > "$out/tests.txt" 2>&1
fi
tail -3 "$out/tests.txt"
report

# --- 1b. the prediction made without the device ------------------------------------------------------------------------
# sm_jax.aot compiles the section-4 runs' iterations for the h200 target (the card's facts, no device): report.md puts
# its memory and time beside the device's own analysis and the measured seconds per iteration
log "1b. sm_jax.aot's predictions (compiled for a target, not on the device)"
if [ $smoke = 1 ]; then
  within 40 "$py" -m benchmarks.aot --target h100 --methods dc --ipcs 1 --ks 1 --no-eval --preset cpu \
    --out "$out/aot.jsonl" > /dev/null 2>> "$out/aot.err"
else
  within 200 "$py" -m benchmarks.aot --target h200 --methods dsa,idc --ipcs 1 --ks 1,2 --no-eval \
    --out "$out/aot.jsonl" > /dev/null 2>> "$out/aot.err"
fi
report

# --- 2. step time, JAX vs PyTorch ------------------------------------------------------------------------------------
step() {
  within "$1" "$py" -m benchmarks.step --compare --torch-device "$torch_device" --class-chunk 0 "${@:2}" "${tiny[@]}" \
    >> "$out/step.jsonl" 2>> "$out/step.err"
}
log "2. step time"
if [ $smoke = 1 ]; then
  step 45 --method idc --ipc 1 --subset-k 2   # IDC: decoding, per-class image steps, subsets
else
  step 70 --method dc --ipc 10 --subset-k 1 --repeats 3
  step 70 --method dc --ipc 10 --subset-k 2 --repeats 3
  step 70 --method idc --ipc 10 --subset-k 2 --repeats 3
  step 90 --method idc --ipc 50 --subset-k 2 --repeats 2
  step 60 --method dm --ipc 10 --subset-k 2 --repeats 3
fi
report

# --- 3. evaluation, vmapped vs sequential -----------------------------------------------------------------------------
log "3. evaluation"
if [ $smoke = 1 ]; then
  within 30 "$py" -m benchmarks.evaluate --method dc --ipc 1 --models 2 --epochs 1 --width 8 --depth 1 >> "$out/evaluate.jsonl"
else
  within 60 "$py" -m benchmarks.evaluate --method dc --ipc 1 --models 20 --epochs 50 >> "$out/evaluate.jsonl"
  within 60 "$py" -m benchmarks.evaluate --method dc --ipc 10 --models 20 --epochs 20 >> "$out/evaluate.jsonl"
  log "3b. the price of float32: DC ipc 10 K 1 at TF32"
  step 60 --method dc --ipc 10 --subset-k 1 --repeats 3 --precision tensorfloat32
fi
report

# --- 4. full paper budgets ---------------------------------------------------------------------------------------------
log "4. full-budget runs on ${data:-(no data)}"
run() {  # run NAME SECONDS FLAGS...
  local name=$1 t=$2
  shift 2
  within "$t" "$py" -m experiments.cifar10 --data-dir "$data" --workdir "$out/runs/$name" --log-every 15 \
    --stop-grace 3 --checkpoint-minutes 1 "$@" > "$out/runs/$name.log" 2>&1
  tail -2 "$out/runs/$name.log"
  report
}
if [ -z "$data" ]; then
  log "no CIFAR-10 archive: section 4 skipped"
else
  mkdir -p "$out/runs"
  if [ $smoke = 1 ]; then
    run dsa_ipc1_k1 45 --method dsa --ipc 1 --subset-k 1 --preset cpu --width 8 --depth 1 --batch-real 4 --iterations 2 \
      --eval-models 2 --eval-epochs 1 --eval-parallel 2
  else
    run dsa_ipc1_k1 200 --method dsa --ipc 1 --subset-k 1 --eval-parallel 20
    run idc_ipc1_k2 600 --method idc --ipc 1 --subset-k 2 --eval-parallel 20
  fi
fi
report
cat "$out/report.md"
log "done"
