#!/usr/bin/env bash
# The GPU tables in one command (~10 min), for the GPU machine: JAX + CUDA, torch/torchvision,
# no TensorFlow, no network. Prepare on a networked machine, from the project root:
#   ../shared/tools/device-wheels.sh && echo /.whl/ >> .git/info/exclude
# then run there with carry=[".whl"]:  bash bench/gpu_run.sh
# Tables and logs go to $OUT (or /tmp/gpu_out). Sections are ordered by importance and each
# has its own time limit, so a slow compile costs one table, not the rest.
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
fi
# mrcnn (JAX) and torchvision share the GPU in one process: JAX must not grab 75 % up front.
export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax NO_ALBUMENTATIONS_UPDATE=1 \
  XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import jax, torch, torchvision, keras; print(jax.devices(), torch.__version__, \
torchvision.__version__, keras.__version__)" | tee -a "$OUT/gpu.txt"

run() {  # run NAME SECONDS CMD...: log everything, print the tables
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*" | tee -a "$OUT/summary.md"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  grep -E '^(##|\||command:|keras )' "$OUT/$name.log" | tee -a "$OUT/summary.md"
  [ $rc -eq 0 ] || { echo "(exit $rc; tail of $OUT/$name.log:)"; tail -5 "$OUT/$name.log"; } \
    | tee -a "$OUT/summary.md"
}

T="python3 bench/train_step_speed.py --size 1024 --steps 5 --warmup 2 --torchvision"
run train_bf16 150 $T --batch 8 2 --precision mixed_bfloat16
run train_fp32 130 $T --batch 8 2
run detect 80 python3 bench/train_step_speed.py --size 1024 --detect 1 8 --steps 5 \
  --warmup 2 --torchvision
run nms 25 python3 bench/nms_speed.py --backend jax
# The GPU compiler's own FLOPs and memory analysis of the train step (beside the CPU one).
run compiled 150 python3 bench/compiled_cost.py --size 1024 --batch 2 --steps train \
  --precision float32 mixed_bfloat16
run memory 120 python3 bench/memory_knobs.py --size 512 --batch 2 --rois 512 --steps 3 \
  --warmup 1
