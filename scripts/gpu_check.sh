#!/usr/bin/env bash
# One time-boxed check of a GPU machine (no package registry needed), printing as it goes:
#   1. environment: nvidia-smi, Python and package versions, JAX devices
#   2. the paper-preset JAX train and eval steps in bfloat16 (bert-base, ResNet-152,
#      batch 32 in the config's 8 accumulation groups, length 96), with MFU
#   2b. many runs in one program: the paper model (bf16) alone and 4 runs together
#      on the one GPU (python -m tools.benchmark_population), examples/s and memory
#   3. the PyTorch eager twin of the same step (same spec, bf16 autocast)
#   4. float32 rows with TF32 set explicitly on both sides (JAX, then PyTorch)
#   5. a short real text-only training run at bert-base shape (random init,
#      configs/text_real.py:twitter2015, one epoch, evaluations on dev and test);
#      needs $JML_DATA_ROOT/twitter2015/{train,dev,test}.json, skipped with a
#      message otherwise
#   6. torch.compile of the PyTorch twin, with whatever time is left
# Every part runs under `timeout` and the whole stays under 7 minutes.
#
#   scripts/gpu_check.sh [--cpu-smoke] [OUTDIR]
#
# --cpu-smoke (or JML_GPU_CHECK_CPU_SMOKE=1): every part at tiny shapes on the
# CPU, to check the script itself anywhere. Output: OUTDIR (default
# gpu_check/<UTC timestamp>/) holds check.log (everything printed), one log per
# part and the benchmarks' JSON files. Exit status: the number of failed or
# timed-out parts (skipped parts do not count).
set -u
cd "$(dirname "$0")/.."

SMOKE=${JML_GPU_CHECK_CPU_SMOKE:-0}
OUTDIR=""
for arg in "$@"; do
  case "$arg" in
    --cpu-smoke) SMOKE=1 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) OUTDIR=$arg ;;
  esac
done
OUTDIR=${OUTDIR:-gpu_check/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUTDIR"
exec > >(tee -a "$OUTDIR/check.log") 2>&1

PY=${PYTHON:-python}
TOTAL_S=${JML_GPU_CHECK_TOTAL_S:-400}   # the whole script's budget, under 7 minutes
START=$(date +%s)
FAILED=0

if [ "$SMOKE" = 1 ]; then
  export JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES=""
  TOTAL_S=${JML_GPU_CHECK_TOTAL_S:-1800}   # a loaded CPU is slow; the parts stay time-boxed
  SIZES=(--bert tiny --resnet-depth 50 --resnet-blocks 1,1,1,1 --resnet-width 8 --batch 8
         --grad-accum 2 --length 16 --steps 1 --warmup 0)
  F32_SIZES=("${SIZES[@]}")
  TRAIN_OVERRIDES=(--config.model.bert=tiny --config.model.bert_vocab_size=30522
                   --config.data.max_seq_length=32 --config.batch_size=8 --config.eval_batch_size=32)
  LIMITS=(env=60 jax_bf16=400 torch_bf16=200 f32=500 train=500 population=500 compile=400)
  POPULATION=(--config configs/demo.py:text_only --runs 2 --steps 1 --warmup 1)
else
  SIZES=(--preset paper --steps 10 --warmup 2)
  F32_SIZES=(--preset paper --steps 5 --warmup 1)
  TRAIN_OVERRIDES=(--config.model.bert=bert-base)
  LIMITS=(env=30 jax_bf16=110 torch_bf16=60 f32=100 train=100 population=150 compile=120)
  POPULATION=(--config configs/twitter2015.py:bf16 --runs 4 --steps 5 --warmup 2)
fi
limit_of() { local kv; for kv in "${LIMITS[@]}"; do [ "${kv%%=*}" = "$1" ] && echo "${kv#*=}"; done; }
left() { echo $(( TOTAL_S - ($(date +%s) - START) )); }

# part NAME CMD...: runs CMD under timeout (the part's limit, cut to the time
# left), prints its output as it comes and keeps it in OUTDIR/NAME.log.
part() {
  local name=$1; shift
  local limit; limit=$(limit_of "$name")
  local remaining; remaining=$(left)
  if [ "$remaining" -lt "$limit" ]; then limit=$remaining; fi
  echo
  echo "=== [$name] $(date -u +%H:%M:%S) limit ${limit}s, ${remaining}s of ${TOTAL_S}s left ==="
  if [ "$limit" -lt 20 ]; then
    echo "--- [$name] SKIPPED: not enough time left"; return 0
  fi
  local t0; t0=$(date +%s)
  local cmd=("$@")
  if declare -F "$1" >/dev/null; then  # a function of this script: `timeout` runs it in a fresh bash
    cmd=(bash -c "$(declare -p PY SMOKE OUTDIR TRAIN_OVERRIDES); $(declare -f "$1"); $1")
  fi
  timeout -k 10 "$limit" "${cmd[@]}" 2>&1 | grep -v -e 'TPU_' -e 'libtpu' -e 'InitGoogle' -e 'Source Location Trace' \
    | tee "$OUTDIR/$name.log"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    echo "--- [$name] TIMED OUT after ${limit}s"; FAILED=$((FAILED + 1))
  elif [ "$rc" != 0 ]; then
    echo "--- [$name] FAILED (exit $rc) after $(( $(date +%s) - t0 ))s"; FAILED=$((FAILED + 1))
  else
    echo "--- [$name] ok in $(( $(date +%s) - t0 ))s"
  fi
}

environment() {
  date -u
  hostname
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv
  else
    echo "nvidia-smi: not found"
  fi
  "$PY" - <<'PYEOF'
import importlib, importlib.util, platform, sys
print("python", platform.python_version(), sys.executable)
for m in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "torch", "transformers", "numpy",
          "ml_collections", "tensorboardX", "tensorflow", "tensorflow_datasets"):
    try:
        spec = importlib.util.find_spec(m)
    except ModuleNotFoundError:
        spec = None
    if spec is None:
        print(f"  {m:<20} absent")
        continue
    if m.startswith("tensorflow"):  # only whether it is there: importing it takes seconds
        print(f"  {m:<20} present")
        continue
    mod = importlib.import_module(m)
    print(f"  {m:<20} {getattr(mod, '__version__', '?')}")
import jax
print("jax devices:", jax.devices())
try:
    import torch
    print("torch cuda:", torch.cuda.is_available(), torch.version.cuda,
          torch.cuda.get_device_name() if torch.cuda.is_available() else "")
except ImportError:
    pass
PYEOF
}

training() {
  if [ "$SMOKE" = 1 ] && [ -z "${JML_DATA_ROOT:-}" ]; then  # the bundled sample stands in for Twitter-2015
    mkdir -p "$OUTDIR/sample_root" && ln -sfn "$PWD/data/sample" "$OUTDIR/sample_root/twitter2015"
    export JML_DATA_ROOT="$PWD/$OUTDIR/sample_root"
    echo "cpu-smoke: JML_DATA_ROOT unset, using the bundled sample as twitter2015"
  fi
  if [ -z "${JML_DATA_ROOT:-}" ] || [ ! -f "$JML_DATA_ROOT/twitter2015/train.json" ]; then
    echo "SKIPPED: set JML_DATA_ROOT to a folder with twitter2015/{train,dev,test}.json to run the text-only training"
    return 0
  fi
  "$PY" -m launch.train --config=configs/text_real.py:twitter2015,epochs=1 \
    --config.model.bert_init= "${TRAIN_OVERRIDES[@]}" --workdir="$OUTDIR/train_workdir"
}

echo "gpu_check: mode $([ "$SMOKE" = 1 ] && echo 'cpu-smoke' || echo gpu), output in $OUTDIR"
part env environment
part jax_bf16 "$PY" -m launch.benchmark model "${SIZES[@]}" --dtype bfloat16 --skip-torch \
  --json "$OUTDIR/jax_bf16.json"
# Second: the population row is what no accelerator has measured yet.
part population "$PY" -m tools.benchmark_population "${POPULATION[@]}" --json "$OUTDIR/population.json"
if [ -f "$OUTDIR/jax_bf16.json" ]; then
  part torch_bf16 "$PY" -m launch.benchmark model "${SIZES[@]}" --dtype bfloat16 \
    --jax-result "$OUTDIR/jax_bf16.json" --json "$OUTDIR/torch_bf16.json"
else
  part torch_bf16 "$PY" -m launch.benchmark model "${SIZES[@]}" --dtype bfloat16 --json "$OUTDIR/torch_bf16.json"
fi
part f32 "$PY" -m launch.benchmark model "${F32_SIZES[@]}" --dtype float32 --matmul-precision tf32 \
  --json "$OUTDIR/f32_tf32.json"
part train training
if [ -f "$OUTDIR/jax_bf16.json" ]; then
  part compile "$PY" -m launch.benchmark model "${SIZES[@]}" --dtype bfloat16 --torch-compile \
    --jax-result "$OUTDIR/jax_bf16.json" --json "$OUTDIR/torch_compile_bf16.json"
else
  part compile "$PY" -m launch.benchmark model "${SIZES[@]}" --dtype bfloat16 --torch-compile \
    --json "$OUTDIR/torch_compile_bf16.json"
fi
echo
echo "=== gpu_check done in $(( $(date +%s) - START ))s: $FAILED part(s) failed or timed out; output in $OUTDIR"
exit "$FAILED"
