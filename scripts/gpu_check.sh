#!/usr/bin/env bash
# The GPU check (issue 14; docs/cuda.md "On a lent GPU"): one command for a machine with an NVIDIA
# sm_90 GPU (H100/H200) and 16 cores, no network. Builds the CUDA tree, then runs
#   1. the op harness with CUDA (every op, forward and backward, f32/bf16/f16 vs the fp64 CPU),
#      and again with the generic attention kernels forced (a cross-check of the tensor-core ones)
#   2. the GPU tests (label gpu): whole fp32 training step GPU vs CPU (logits, every gradient,
#      10 losses), bf16/fp16 steps near fp32, CUDA graphs = eager, TF32, memory, NCCL on 1 rank
#   3. `dsv3 train --preset tiny` for 200 steps in fp32, bf16 and fp16 on the GPU: the 16-bit runs
#      must end within 2% of fp32 (mean loss of the last 20 steps)
#   4. checkpoints across devices: the GPU fp32 run resumed on the CPU; eval of it on both
#   5. the benchmark: tiny and small (T=2048) in bf16, with and without CUDA graphs
#   6. compute-sanitizer memcheck on the harness's CUDA cases (when the machine has it)
# and prints a short table last. Full logs go to the folder given as the argument.
#
# Usage: scripts/gpu_check.sh LOGDIR        (env: GPU_CHECK_BUDGET seconds, default 470)
# Needs only the tree, the CUDA toolkit (nvcc, cuBLASLt, NCCL) and the libraries dsv3 links. A
# library the machine lacks is taken from .gpu-deps/*.deb when that folder exists
# (scripts/gpu_deps.sh fills it on a machine with a package registry; carry it along).
set -uo pipefail
LOG=${1:?usage: scripts/gpu_check.sh LOGDIR}
mkdir -p "$LOG"
LOG=$(cd "$LOG" && pwd)
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUDGET=${GPU_CHECK_BUDGET:-470}
T0=$(date +%s)
ROWS=()
FAILED=0
row() { ROWS+=("$(printf '%-34s %-6s %s' "$1" "$2" "$3")"); [ "$2" = FAIL ] && FAILED=1; return 0; }
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
# run NAME CAP CMD...: logs to LOGDIR/NAME.log, time-limited by CAP and the budget left
run() {
  local name=$1 cap=$2; shift 2
  local t=$(left); [ "$t" -gt "$cap" ] && t=$cap
  if [ "$t" -lt 10 ]; then echo "(no time left for $name)" > "$LOG/$name.log"; return 124; fi
  echo "== $name (limit ${t}s): $*" | tee -a "$LOG/progress.log"
  timeout "$t" "$@" > "$LOG/$name.log" 2>&1
}
finish() {
  echo
  echo "== GPU check summary ($(( $(date +%s) - T0 )) s; logs in $LOG)"
  printf '%s\n' "${ROWS[@]}" | tee "$LOG/summary.txt"
  exit $FAILED
}

# ---- 0. the machine ---------------------------------------------------------------------------
export PATH="$PATH:/usr/local/cuda/bin"
{ nvidia-smi; nvidia-smi -L; nvcc --version; cmake --version; ninja --version; nproc; } > "$LOG/env.log" 2>&1
GPU=$(nvidia-smi -L 2>/dev/null | head -1)
if [ -z "$GPU" ]; then row "GPU" FAIL "nvidia-smi sees no GPU"; finish; fi
row "GPU" ok "$GPU"

# Libraries from carried .debs, unpacked into a private prefix (never into /).
if ls .gpu-deps/*.deb >/dev/null 2>&1; then
  DEPS=/tmp/dsv3-gpu-deps
  mkdir -p $DEPS
  for f in .gpu-deps/*.deb; do dpkg -x "$f" $DEPS; done
  export CMAKE_PREFIX_PATH="$DEPS/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  export PKG_CONFIG_PATH="$(find $DEPS -type d -name pkgconfig | tr '\n' ':')${PKG_CONFIG_PATH:-}"
  export LD_LIBRARY_PATH="$(find $DEPS -name '*.so*' -printf '%h\n' | sort -u | tr '\n' ':')${LD_LIBRARY_PATH:-}"
  export CPATH="$DEPS/usr/include:$(find $DEPS/usr/include -maxdepth 2 -type d -name 'openblas*' | tr '\n' ':')${CPATH:-}"
  export PATH="$DEPS/usr/bin:$PATH"
  echo "using carried libraries in $DEPS" >> "$LOG/env.log"
fi

# ---- 1. build ----------------------------------------------------------------------------------
BUILD=${GPU_CHECK_BUILD_DIR:-build-gpu}  # an existing CUDA tree is reused (configure skipped)
if [ ! -f "$BUILD/build.ninja" ]; then
  run configure 120 cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSV3_CUDA=ON \
    -DDSV3_MPI=AUTO -DDSV3_TESTS=ON
  if [ $? -ne 0 ]; then
    row "configure" FAIL "see configure.log (a missing library? scripts/gpu_deps.sh + carry .gpu-deps)"
    finish
  fi
fi
run build 330 ninja -C "$BUILD" -j"$(nproc)" dsv3 test_op_harness test_cuda_gpu
rc=$?
if [ $rc -ne 0 ]; then row "build (CUDA, sm_90)" FAIL "rc $rc, see build.log"; finish; fi
row "build (CUDA, sm_90)" ok "$(grep -c 'Building' "$LOG/build.log") compiles, $(( $(date +%s) - T0 )) s in"
BIN=$ROOT/$BUILD

# ---- 2. op harness on CUDA --------------------------------------------------------------------
DSV3_HARNESS_VERBOSE=1 run harness 120 "$BIN/tests/test_op_harness"
rc=$?
worst=$(grep -E '^  cuda' "$LOG/harness.log" | awk '{print $(NF-2)}' | sort -g | tail -1)
ncuda=$(grep -cE '^  cuda' "$LOG/harness.log")
if [ $rc -eq 0 ] && [ "$ncuda" -gt 0 ]; then row "op harness, CUDA" ok "$ncuda outputs within tolerance (largest error $worst)"
else row "op harness, CUDA" FAIL "rc $rc, $ncuda CUDA outputs compared; see harness.log"; fi
DSV3_CUDA_ATTENTION=generic DSV3_HARNESS_VERBOSE=1 run harness_generic_attention 90 \
  "$BIN/tests/test_op_harness" --gtest_filter='*EveryOp*'
rc=$?
ncuda=$(grep -cE '^  cuda' "$LOG/harness_generic_attention.log")
[ $rc -eq 0 ] && [ "$ncuda" -gt 0 ] && row "op harness, generic attention" ok "$ncuda CUDA outputs within tolerance" \
  || row "op harness, generic attention" FAIL "rc $rc, $ncuda CUDA outputs; see harness_generic_attention.log"

# ---- 3. GPU tests: whole step vs CPU, mixed precision, graphs, TF32, memory, NCCL ---------------
run gpu_tests 150 "$BIN/tests/test_cuda_gpu"
rc=$?
pass=$(grep -c '^\[       OK \]' "$LOG/gpu_tests.log"); failn=$(grep -c '^\[  FAILED  \].*ms)' "$LOG/gpu_tests.log")
step=$(grep -m1 'GPU vs CPU fp32 step' "$LOG/gpu_tests.log" | sed 's/GPU vs CPU fp32 step: //')
[ $rc -eq 0 ] && row "GPU tests (step vs CPU, ...)" ok "$pass passed; $step" \
              || row "GPU tests (step vs CPU, ...)" FAIL "$pass passed, $failn failed; see gpu_tests.log"

# ---- 4. 200 steps in each precision -----------------------------------------------------------
declare -A LOSS
for p in fp32 bf16 fp16; do
  run "train_$p" 100 "$BIN/dsv3" train --preset tiny --device cuda --precision $p --steps 200 \
    --sample_tokens 0 --out "$LOG/run_$p"
  LOSS[$p]=$(python3 - "$LOG/run_$p/metrics.jsonl" <<'EOF' 2>/dev/null
import json, sys
L = [json.loads(l) for l in open(sys.argv[1])]
t = [r["loss"] for r in L if r.get("kind") == "train"]
print(f"{sum(t[-20:]) / len(t[-20:]):.5f}" if len(t) >= 200 else "")
EOF
)
done
if [ -n "${LOSS[fp32]}" ]; then
  for p in bf16 fp16; do
    if [ -z "${LOSS[$p]}" ]; then row "200 steps $p vs fp32" FAIL "the $p run did not finish (train_$p.log)"; continue; fi
    rel=$(python3 -c "a,b=${LOSS[$p]},${LOSS[fp32]}; print(f'{abs(a-b)/b*100:.2f}')")
    ok=$(python3 -c "print('ok' if $rel <= 2.0 else 'FAIL')")
    row "200 steps $p vs fp32" "$ok" "last-20 mean loss ${LOSS[$p]} vs ${LOSS[fp32]} ($rel%, limit 2%)"
  done
else
  row "200 steps fp32" FAIL "the fp32 run did not finish (train_fp32.log)"
fi

# ---- 5. checkpoints move between devices ----------------------------------------------------------
if [ -n "${LOSS[fp32]}" ]; then
  run resume_on_cpu 60 "$BIN/dsv3" train --resume "$LOG/run_fp32" --steps 201 --device cpu --sample_tokens 0
  rc1=$?
  run eval_cuda 30 "$BIN/dsv3" eval --model "$LOG/run_fp32" --device cuda --text README.md --seq_len 128 --batch 4 --max_batches 4 --json
  run eval_cpu 60 "$BIN/dsv3" eval --model "$LOG/run_fp32" --device cpu --text README.md --seq_len 128 --batch 4 --max_batches 4 --json
  cmp=$(python3 - "$LOG/eval_cuda.log" "$LOG/eval_cpu.log" <<'EOF' 2>/dev/null
import json, sys
def loss(p):
    for l in open(p):
        if l.startswith("{"): return json.loads(l)["loss"]
a, b = loss(sys.argv[1]), loss(sys.argv[2])
print(f"{a:.6f} {b:.6f} {'ok' if abs(a - b) <= 1e-4 * abs(b) else 'FAIL'}")
EOF
)
  if [ $rc1 -eq 0 ] && [ "${cmp##* }" = ok ]; then row "checkpoint GPU -> CPU" ok "resumed on the CPU; eval loss cuda/cpu ${cmp% *}"
  else row "checkpoint GPU -> CPU" FAIL "resume rc $rc1, eval cuda/cpu: ${cmp:-none} (resume_on_cpu.log, eval_*.log)"; fi
fi

# ---- 6. benchmark ---------------------------------------------------------------------------------
bench() {  # name, flags...
  local name=$1; shift
  run "bench_$name" 75 "$BIN/dsv3" bench --device cuda --json "$@"
  local line=$(grep '^{' "$LOG/bench_$name.log" | tail -1)
  if [ -z "$line" ]; then row "bench $name" FAIL "no result (bench_$name.log)"; return; fi
  row "bench $name" ok "$(python3 -c "import json,sys; j=json.loads(sys.argv[1]); print(f\"{j['tokens_per_s']:.0f} tok/s, MFU {100*j['mfu']:.1f}% of {j['peak_gflops']/1e3:.0f} TFLOP/s, {j['peak_device_bytes']/2**30:.2f} GiB, {1e3*j['step_s']:.1f} ms/step\")" "$line")"
}
bench tiny_bf16 --preset tiny --precision bf16
bench tiny_bf16_graphs --preset tiny --precision bf16 --cuda_graphs true
bench small_bf16_T2048 --preset small --precision bf16 --seq_len 2048 --batch 4 --warmup_steps 2 --timed_steps 5
# the peer on the same GPU: PyTorch (the machine's python3) on the HF-style model, bf16 autocast
peer() {  # name, flags...
  local name=$1; shift
  run "peer_$name" 120 python3 bench/peer_deepseek.py --device cuda --dsv3 "$BIN/dsv3" --amp bf16 \
    --warmup 3 --steps 5 "$@"
  local line=$(grep '^{' "$LOG/peer_$name.log" | tail -1)
  if [ -z "$line" ]; then row "peer $name" FAIL "no result (peer_$name.log)"; return; fi
  row "peer $name" ok "$(python3 -c "import json,sys; j=json.loads(sys.argv[1]); print(f\"{j['tokens_per_s']:.0f} tok/s, {j['peak_device_bytes']/2**30:.2f} GiB, {1e3*j['step_s']:.1f} ms/step, torch {j['torch']}\")" "$line")"
}
peer tiny_eager_bf16 --preset tiny
peer tiny_compile_bf16 --preset tiny --compile --capture-dynamic

# ---- 7. memcheck (last: the slowest) ------------------------------------------------------------
if command -v compute-sanitizer >/dev/null 2>&1; then
  run memcheck 120 compute-sanitizer --tool memcheck --error-exitcode 3 "$BIN/tests/test_op_harness" \
    --gtest_filter='*EveryOp*/bf16'
  rc=$?
  if [ $rc -eq 0 ]; then row "compute-sanitizer memcheck" ok "op harness (bf16 cases) clean"
  elif [ $rc -eq 124 ]; then row "compute-sanitizer memcheck" "-" "out of time (memcheck.log)"
  else row "compute-sanitizer memcheck" FAIL "rc $rc (memcheck.log)"; fi
else
  row "compute-sanitizer memcheck" "-" "not on this machine"
fi
finish
