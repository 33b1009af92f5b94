#!/usr/bin/env bash
# The GPU check for a short-lived machine: one call of at most 9 minutes that returns a few files. Sections, in
# priority order, each cut to the time left ($GPU_SH_BUDGET seconds in all, default 530):
#   a. environment (devices, versions, nvidia-smi) and correctness on the GPU: the equivalence tests (vmapped vs
#      looped matching, chunked vs joint gradients, every convolution form against XLA's, the fused RGB layer),
#      given 200 s (12 tests did not fit 110 s on an H200)
#   b. the step forms against the PyTorch baseline on the same card (paper batches, float32 for both: DC ipc 10 K 1
#      with all classes in one program and one class per program, IDC ipc 10 K 2, DM ipc 10 K 2), then evaluation:
#      20 networks vmapped against one after another
#   c. the `full` study (Table 1 at the paper budget, 5 condensations per cell, cheapest cell first) advanced as far
#      as the time allows: `--unpack $GPU_SH_PACK` first when given (the previous machine's study.tar.gz), SIGTERM
#      40 s before the budget ends so every run saves its checkpoint, then `--pack` into OUT/study.tar.gz
#
#   bash benchmarks/gpu.sh            # on the GPU machine (OUT is set there; default benchmarks/results/gpu-local)
#   GPU_SH_SECTIONS=c GPU_SH_PACK=study.tar.gz bash benchmarks/gpu.sh   # a later machine: all its time to the study
#   bash benchmarks/gpu.sh --smoke    # on CPU, tiny shapes, the full plan at a tiny budget (tests/test_gpu_script.py)
#
# What comes back is at most 5 files, all directly under OUT: log.txt (every section's log and output joined),
# env.json, gpu.json (every figure: benchmarks.gpu_report), report.md (its tables, with the study's Table 1) and
# study.tar.gz (the study's runs, for the next machine). Scratch (raw JSON lines, run directories, caches) lives in
# $GPU_SH_WORK (default $TMPDIR/sm_jax_gpu), which nobody needs back. Without the CUDA plugin, without torch or
# without data, the section that needs it says so in one line and is skipped.
# Data for section c: $SM_JAX_DATA, else data/cifar10-jpeg.tar.gz (git-ignored: copy ../shared/data/... there and
# name `data` in the device tool's carry), else ../shared/data/cifar10-jpeg.tar.gz.
set -uo pipefail  # one failing section does not stop the others
cd "$(dirname "$0")/.."
py=${PYTHON:-python}  # the interpreter (default: `python` on PATH)
smoke=0
[ "${1:-}" = "--smoke" ] && smoke=1
out=${OUT:-benchmarks/results/gpu-local}
work=${GPU_SH_WORK:-${TMPDIR:-/tmp}/sm_jax_gpu}
mkdir -p "$out" "$work"
out=$(cd "$out" && pwd)
t0=$(date +%s)
budget=${GPU_SH_BUDGET:-$([ $smoke = 1 ] && echo 200 || echo 530)}
sections=${GPU_SH_SECTIONS:-abc}  # the sections to run (the environment is always recorded)
log() { echo "[gpu.sh +$(( $(date +%s) - t0 ))s] $*" | tee -a "$out/log.txt" >&2; }
left() { echo $(( budget - ($(date +%s) - t0) )); }
# within SECONDS CMD...: CMD with at most SECONDS (never past the budget); SIGTERM first, SIGKILL 10 s later
within() {
  local t=$1 l
  l=$(left)
  shift
  [ "$t" -gt "$l" ] && t=$l
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
export SM_JAX_CACHE=${SM_JAX_CACHE:-$work/cache}   # decoded data, compiled programs
export PYTHONUNBUFFERED=1
# gpu.json and report.md from the scratch files, rewritten after each section (a cut call still returns them)
collect() { "$py" -m benchmarks.gpu_report "$work" --out "$out" > /dev/null 2>> "$out/log.txt"; }

# --- a. environment and correctness ----------------------------------------------------------------------------------
log "a. environment ($([ $smoke = 1 ] && echo smoke, CPU || echo "$JAX_PLATFORMS"))"
"$py" - > "$out/env.json" 2>> "$out/log.txt" <<'EOF'
import importlib.metadata as md, json, platform, subprocess
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
try:
    info["nvidia_smi"] = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20).stdout
except Exception as e:
    info["nvidia_smi"] = repr(e)
print(json.dumps(info, indent=1))
EOF
device_ok=$?
if [ $device_ok -ne 0 ]; then
  log "no device for JAX_PLATFORMS=$JAX_PLATFORMS (the CUDA plugin is missing or sees no GPU): sections a-c skipped"
  echo '{}' > "$out/env.json"
fi
has_torch=0
"$py" -c "import torch" 2> /dev/null && has_torch=1
tests=(tests/test_matching.py::test_vmapped_matching_equals_python_loop
       tests/test_matching.py::test_loss_zero_for_identical_batches
       "tests/test_methods.py::test_chunked_per_class_gradients_equal_the_straightforward_joint_gradient"
       tests/test_training.py::test_fast_conv_net_equals_xla_conv_net_values_and_grads
       tests/test_models.py::test_fused_conv_instancenorm_agrees_with_conv_then_norm_to_second_order
       tests/test_models.py::test_convolutions_agree_with_xla_to_second_order)  # cheapest first
if [ $device_ok -eq 0 ] && [[ $sections == *a* ]]; then
  log "a. correctness tests on $JAX_PLATFORMS"
  if [ $smoke = 1 ]; then  # the names still exist (the GPU run executes them)
    within 60 "$py" -m pytest -q -p no:cacheprovider --collect-only "${tests[@]}" > "$work/tests.txt" 2>&1
  else
    within 200 "$py" -m pytest -q -p no:cacheprovider -p no:xdist --durations=0 "${tests[@]}" > "$work/tests.txt" 2>&1
  fi
  cat "$work/tests.txt" >> "$out/log.txt"
  log "a. tests: $(tail -1 "$work/tests.txt")"
fi
collect

# --- b. step and evaluation forms against PyTorch ------------------------------------------------------------------
compare=(--compare --torch-device "$torch_device")
if [ $device_ok -eq 0 ] && [ $has_torch = 0 ]; then
  log "b. no torch: the steps are timed without the PyTorch baseline"
  compare=()
fi
step() {
  within "$1" "$py" -m benchmarks.step "${compare[@]}" "${@:2}" "${tiny[@]}" >> "$work/step.jsonl" 2>> "$out/log.txt"
}
if [ $device_ok -eq 0 ] && [[ $sections == *b* ]]; then
  log "b. step time"
  if [ $smoke = 1 ]; then
    step 45 --method idc --ipc 1 --subset-k 2 --class-chunk 0  # IDC: decoding, per-class image steps, subsets
  else
    # the defaults (the class chunk and synthetic side `auto` picks by the calibrated estimate, compiling its
    # candidates as a run does), then the best form before them (XLA's convolution, one class per program, fused)
    # for the ratio; each line carries its estimate beside its time
    step 100 --method dc --ipc 10 --subset-k 1 --class-chunk auto --repeats 3
    step 50 --method dc --ipc 10 --subset-k 1 --class-chunk 1 --syn-chunk fused --conv-impl xla --repeats 3
    step 100 --method idc --ipc 10 --subset-k 2 --class-chunk auto --repeats 3
    step 80 --method dm --ipc 10 --subset-k 2 --class-chunk auto --repeats 3
  fi
  collect
  log "b. evaluation"
  if [ $smoke = 1 ]; then
    within 30 "$py" -m benchmarks.evaluate --method dc --ipc 1 --models 2 --epochs 1 --width 8 --depth 1 \
      >> "$work/evaluate.jsonl" 2>> "$out/log.txt"
  else
    within 60 "$py" -m benchmarks.evaluate --method dc --ipc 10 --models 20 --epochs 20 \
      >> "$work/evaluate.jsonl" 2>> "$out/log.txt"
  fi
  collect
fi

# --- c. the full study -------------------------------------------------------------------------------------------------
study=("$py" -m experiments.study --plan full --root "$work/study")
if [ $smoke = 1 ]; then  # the full plan's code path at a tiny budget: every run saves, the pack carries them
  study+=(--set preset=cpu --set width=8 --set depth=1 --set batch_real=4 --set subset_batch_real=2
          --set outer_loop=1 --set inner_loop=1 --set iterations=2 --set eval_epochs=1 --set eval_models=2
          --set eval_parallel=2 --set experiments=2 --set checkpoint_every=1)
fi
if [ $device_ok -ne 0 ] || [[ $sections != *c* ]]; then
  :
elif [ -z "$data" ]; then
  log "c. no CIFAR-10 archive (SM_JAX_DATA, data/ or ../shared/data/): the study is skipped"
else
  if [ -n "${GPU_SH_PACK:-}" ]; then
    log "c. restoring $GPU_SH_PACK"
    "${study[@]}" --unpack "$GPU_SH_PACK" --list >> "$out/log.txt" 2>&1 || log "c. could not restore $GPU_SH_PACK"
  fi
  t=$(( $(left) - 40 ))  # the time to save, pack and report
  if [ $smoke = 1 ] && [ $t -gt 35 ]; then t=35; fi  # time for the first runs (the test reads the first)
  if [ $t -lt 30 ]; then
    log "c. skipped, no time left for the study"
  else
    log "c. the full study for ${t} s on $data"
    # SIGTERM at the limit: the run in flight saves its checkpoint and the study exits 143; SIGKILL 25 s later
    timeout -k 25 "$t" "${study[@]}" --data-dir "$data" --export "$work/export" --out "$work/tables" \
      >> "$out/log.txt" 2>&1
    rc=$?
    case $rc in
      0) log "c. the study finished" ;;
      124|143) log "c. the study stopped at the time limit (every run saved)" ;;
      *) log "c. the study exited $rc" ;;
    esac
  fi
  "${study[@]}" --report-only --export "$work/study" --out "$work/tables" >> "$out/log.txt" 2>&1
  "${study[@]}" --pack "$out/study.tar.gz" >> "$out/log.txt" 2>&1 && log "c. $(tail -1 "$out/log.txt")"
fi
collect
cat "$out/report.md"
log "done"
