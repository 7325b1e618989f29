#!/usr/bin/env bash
# One benchmark run through the upstream reference harness (run_local.sh), into a new
# folder under RESULTS_DIR that no other run shares.
#
#   run_eval.sh accuracy      LoadGen AccuracyOnly, then tools/accuracy-openimages.py: mAP
#   run_eval.sh performance   LoadGen PerformanceOnly: VALID/INVALID, samples/s or latency
#
# Settings come from the environment; the Makefile passes its variables (make help):
#   DATA_DIR MODEL_DIR MODEL DEVICE SCENARIO COUNT BATCH_SIZE THREADS QPS TIME
#   PRECISION CHANNELS_LAST FREEZE INTRA_THREADS IMAGE_CACHE GUARD_IMAGES
#   USER_CONF HARNESS_ARGS RESULTS_DIR CACHE_DIR PYTHON PROGRESS WARMUP
#   BACKEND MODEL_FACTORY TRUST_MODEL CHECK_IMAGES STALL_TIMEOUT
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
HARNESS=$ROOT/vendor/inference/vision/classification_and_detection

fail_reason=
recording= # once set, on_exit records the failure and prints it
# die REASON [FALLBACK]: FALLBACK when REASON is empty
die() {
  fail_reason=${1:-${2:-}}
  [ -n "$recording" ] || echo "run_eval: error: $fail_reason" >&2
  exit 2
}

mode=${1:-}
case $mode in
  accuracy | performance) ;;
  *) die "usage: run_eval.sh accuracy|performance" ;;
esac
SCENARIO=${SCENARIO:-Offline}
case $SCENARIO in
  Offline | Server | SingleStream | MultiStream) ;;
  *) die "SCENARIO=$SCENARIO is not one of: Offline, Server, SingleStream, MultiStream" ;;
esac
for name in COUNT BATCH_SIZE THREADS QPS TIME INTRA_THREADS STALL_TIMEOUT; do
  value=${!name:-}
  [[ -z $value || $value == auto || $value =~ ^[1-9][0-9]*$ ]] || die "$name=$value is not a positive whole number"
done
GUARD_IMAGES=${GUARD_IMAGES:-8}
[[ $GUARD_IMAGES =~ ^[0-9]+$ ]] || die "GUARD_IMAGES=$GUARD_IMAGES is not a whole number"
BACKEND=${BACKEND:-pytorch}
case $BACKEND in
  pytorch | onnxruntime) ;;
  *) die "BACKEND=$BACKEND is not one of: pytorch, onnxruntime" ;;
esac
TRUST_MODEL=${TRUST_MODEL:-0}
[[ $TRUST_MODEL == [01] ]] || die "TRUST_MODEL=$TRUST_MODEL is not 0 or 1"
CHECK_IMAGES=${CHECK_IMAGES:-1}
[[ $CHECK_IMAGES =~ ^[0-9]+$ ]] || die "CHECK_IMAGES=$CHECK_IMAGES is not a whole number"
PROGRESS=${PROGRESS:-30}
[[ $PROGRESS =~ ^[0-9]+$ ]] || die "PROGRESS=$PROGRESS is not a whole number of seconds (0: no progress lines)"
WARMUP=${WARMUP:-5}
[[ $WARMUP =~ ^[0-9]+$ ]] || die "WARMUP=$WARMUP is not a whole number of inferences (0: no warm-up)"
[ -n "${DATA_DIR:-}" ] || die "DATA_DIR is not set: point it at the folder 'make dataset DIR=...' wrote"
MODEL=${MODEL:-${MODEL_DIR:+$MODEL_DIR/resnext50_32x4d_fpn.pth}}
[ -n "$MODEL" ] || die "set MODEL_DIR to the folder holding resnext50_32x4d_fpn.pth, or MODEL to the file"
USER_CONF=${USER_CONF:-$HARNESS/user.conf}

PYTHON=${PYTHON:-.venv/bin/python}
PYTHON=$(command -v "$PYTHON") || die "PYTHON=$PYTHON not found: run 'make setup'"
[[ $PYTHON == /* ]] || PYTHON=$ROOT/$PYTHON
# run_local.sh calls python3 from PATH: make it the environment's.
PATH=$(dirname "$PYTHON"):$PATH
# MODEL_FACTORY modules import from the project folder, as well as from PYTHONPATH.
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

"$PYTHON" -m retinanet.patch_series verify >/dev/null || exit 2
[ -f "$USER_CONF" ] || die "USER_CONF=$USER_CONF not found"
checked=$("$PYTHON" -m retinanet.preflight --data-dir "$DATA_DIR" --model "$MODEL" \
  --device "${DEVICE:-auto}" --count "${COUNT:-0}" --backend "$BACKEND" \
  --setting "PRECISION=${PRECISION:-}" --setting "CHANNELS_LAST=${CHANNELS_LAST:-}" \
  --setting "FREEZE=${FREEZE:-}" --setting "BATCH_SIZE=${BATCH_SIZE:-}" \
  --setting "THREADS=${THREADS:-}" --setting "IMAGE_CACHE=${IMAGE_CACHE:-none}") || exit 2
eval "$checked" # DEVICE, the settings above resolved for it, IMAGES, CACHE_KEY
# USE_GPU: the onnxruntime backend (patch 0014 makes a gpu run fail rather than use the CPU)
if [ "$DEVICE" = cpu ]; then export CUDA_VISIBLE_DEVICES= USE_GPU=no; else export USE_GPU=yes; fi
# Safe to load, and the output contract kept, before any run folder or timed run.
# STALL_TIMEOUT: seconds without a completed inference; 0 lets each step derive it (failfast.py)
STALL_TIMEOUT=${STALL_TIMEOUT:-auto}
stall=0
[ "$STALL_TIMEOUT" = auto ] || stall=$STALL_TIMEOUT
check=(--model "$MODEL" --data-dir "$DATA_DIR" --backend "$BACKEND" --factory "${MODEL_FACTORY:-}"
  --images "$((CHECK_IMAGES < IMAGES ? CHECK_IMAGES : IMAGES))" --stall-timeout "$stall")
[ "$TRUST_MODEL" = 1 ] && check+=(--trusted)
"$PYTHON" -m retinanet.model_check "${check[@]}" || exit 2
DATA_DIR=$(cd "$DATA_DIR" && pwd)
MODEL=$(cd "$(dirname "$MODEL")" && pwd)/$(basename "$MODEL")
CACHE_DIR=${CACHE_DIR:-cache}
mkdir -p "$CACHE_DIR/$CACHE_KEY"
CACHE_DIR=$(cd "$CACHE_DIR" && pwd)

# A new folder per run: mkdir fails rather than reuse one another run made.
RESULTS_DIR=${RESULTS_DIR:-results}
mkdir -p "$RESULTS_DIR"
base=$RESULTS_DIR/$(date -u +%Y%m%d-%H%M%S)-$mode-$SCENARIO-$DEVICE
run_dir=$base
for n in $(seq 2 100); do
  mkdir "$run_dir" 2>/dev/null && break
  run_dir=$base-$n
done
[ -d "$run_dir" ] || die "could not create a run folder under $RESULTS_DIR"
run_dir=$(cd "$run_dir" && pwd)
cp "$USER_CONF" "$run_dir/user.conf"

args=(--scenario "$SCENARIO" --model "$MODEL" --user_conf "$run_dir/user.conf"
  --cache_dir "$CACHE_DIR/$CACHE_KEY" --image-cache "$IMAGE_CACHE" --precision "$PRECISION"
  --progress "$PROGRESS" --warmup "$WARMUP" --stall-timeout "$stall")
[ "$mode" = accuracy ] && args+=(--accuracy)
[ -n "${MODEL_FACTORY:-}" ] && args+=(--model-factory "$MODEL_FACTORY")
[ "$TRUST_MODEL" = 1 ] && args+=(--trust-pickle)
[ "$CHANNELS_LAST" = 1 ] && args+=(--channels-last)
[ "$FREEZE" = 1 ] && args+=(--freeze)
[ -n "${INTRA_THREADS:-}" ] && args+=(--intra-op-threads "$INTRA_THREADS")
[ -n "${COUNT:-}" ] && args+=(--count "$COUNT")
[ -n "${BATCH_SIZE:-}" ] && args+=(--max-batchsize "$BATCH_SIZE")
[ -n "${THREADS:-}" ] && args+=(--threads "$THREADS")
[ -n "${QPS:-}" ] && args+=(--qps "$QPS")
[ -n "${TIME:-}" ] && args+=(--time "$TIME")
read -r -a extra <<<"${HARNESS_ARGS:-}"
args+=(${extra[@]+"${extra[@]}"})

finished=
harness=
stop_tree() { # TERM a process and every process under it, by pid, children first
  local child
  for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do stop_tree "$child"; done
  kill -TERM "$1" 2>/dev/null || true
}
recorder=
on_exit() {
  local status=$?
  [ -z "$recorder" ] || wait "$recorder" || true # finish reads what start wrote
  if [ -z "$finished" ]; then
    local reason=${fail_reason:-"exited with status $status"}
    [ "$status" -ge 128 ] && reason="interrupted by signal $((status - 128))"
    "$PYTHON" -m retinanet.run_record finish "$run_dir" --status failed --reason "$reason" || true
    echo "run_eval: run failed ($reason); its folder is $run_dir" >&2
  fi
}
trap on_exit EXIT
recording=yes
trap '[ -z "$harness" ] || stop_tree "$harness"; exit 130' INT
trap '[ -z "$harness" ] || stop_tree "$harness"; exit 143' TERM

# run.json is written while the harness starts (both take seconds, each on one core)
"$PYTHON" -m retinanet.run_record start "$run_dir" --pid $$ \
  --setting "mode=$mode" --setting "scenario=$SCENARIO" --setting "device=$DEVICE" \
  --setting "count=${COUNT:-}" --setting "batch_size=${BATCH_SIZE:-}" --setting "threads=${THREADS:-}" \
  --setting "qps=${QPS:-}" --setting "time=${TIME:-}" --setting "user_conf=$USER_CONF" \
  --setting "precision=$PRECISION" --setting "channels_last=$CHANNELS_LAST" --setting "freeze=$FREEZE" \
  --setting "intra_threads=${INTRA_THREADS:-}" --setting "image_cache=$IMAGE_CACHE" \
  --setting "model=$MODEL" --setting "data_dir=$DATA_DIR" --setting "images=$IMAGES" \
  --setting "cache_dir=$CACHE_DIR/$CACHE_KEY" --setting "harness_args=${HARNESS_ARGS:-}" \
  --setting "backend=$BACKEND" --setting "model_factory=${MODEL_FACTORY:-}" --setting "trust_model=$TRUST_MODEL" \
  --setting "warmup=$WARMUP" --setting "stall_timeout=$STALL_TIMEOUT" \
  -- ./run_local.sh "$BACKEND" retinanet "$DEVICE" "${args[@]}" &
recorder=$!

echo "run_eval: $mode run, $BACKEND, $SCENARIO, $DEVICE, $PRECISION, batch $BATCH_SIZE, $IMAGES images -> $run_dir"
run_harness() {
  (cd "$HARNESS" && OUTPUT_DIR=$run_dir DATA_DIR=$DATA_DIR MODEL_DIR=$(dirname "$MODEL") \
    ./run_local.sh "$BACKEND" retinanet "$DEVICE" "${args[@]}") 2>&1 | tee "$run_dir/harness.log"
}
# In the background and waited for, so that Ctrl-C or TERM stops it at once: in the
# foreground, bash would run the trap only when the harness ends, and the harness's
# Python sees SIGINT only once LoadGen returns, hours later in a long run.
run_harness &
harness=$!
status=0
wait "$harness" || status=$?
harness=
wait "$recorder" || die "run_record.py could not write $run_dir/run.json"
recorder=
if [ "$status" -ne 0 ]; then
  # the harness ends at its first failure with one line that says why (failfast.py)
  reason=$(sed -n 's/^main\.py: error: //p' "$run_dir/harness.log" | head -n 1)
  die "${reason//--stall-timeout/STALL_TIMEOUT}" "the harness exited with status $status; see $run_dir/harness.log"
fi

if [ "$mode" = accuracy ]; then
  "$PYTHON" "$HARNESS/tools/accuracy-openimages.py" \
    --mlperf-accuracy-file "$run_dir/mlperf_log_accuracy.json" --openimages-dir "$DATA_DIR" \
    --output-file "$run_dir/openimages-results.json" 2>&1 | tee "$run_dir/accuracy.txt"
  map=$(sed -n 's/^mAP=\([0-9.]*\)%$/\1/p' "$run_dir/accuracy.txt" | tail -n 1)
  [ -n "$map" ] || die "tools/accuracy-openimages.py printed no mAP; see $run_dir/accuracy.txt"
  # one home for the target: run_summary.py, which judges summary.json with it
  read -r target reference < <("$PYTHON" -c 'from retinanet.run_summary import MAP_TARGET, REFERENCE_MAP
print(MAP_TARGET, REFERENCE_MAP)')
  verdict=$(awk -v m="$map" -v t="$target" 'BEGIN { print (m >= t) ? "meets" : "is below" }')
  echo "mAP $map% on $IMAGES images: $verdict the MLPerf target $target% (99% of $reference%)" >"$run_dir/result.txt"
  if [ "$PRECISION" != fp32 ] && [ "$GUARD_IMAGES" -gt 0 ]; then
    guard=(--precision "$PRECISION" --stall-timeout "$stall")
    [ "$CHANNELS_LAST" = 1 ] && guard+=(--channels-last)
    [ "$FREEZE" = 1 ] && guard+=(--freeze)
    [ -n "${MODEL_FACTORY:-}" ] && guard+=(--model-factory "$MODEL_FACTORY")
    [ "$TRUST_MODEL" = 1 ] && guard+=(--trust-pickle)
    echo "run_eval: accuracy guard: the same model in fp32 on $((GUARD_IMAGES < IMAGES ? GUARD_IMAGES : IMAGES)) images"
    "$PYTHON" -m retinanet.accuracy_guard --model "$MODEL" --data-dir "$DATA_DIR" --images "$GUARD_IMAGES" \
      "${guard[@]}" --out "$run_dir/guard.json" 2>"$run_dir/guard.log" | tail -n 1 >>"$run_dir/result.txt" ||
      die "$(sed -n 's/^accuracy_guard\.py: error: /the accuracy guard failed: /p' "$run_dir/guard.log" | head -n 1)" \
        "the accuracy guard failed; see $run_dir/guard.log"
  fi
else
  grep -E "^(Scenario|Mode|Result is|Samples per second|Completed samples per second|Scheduled samples per second|[0-9.]+ percentile latency|Mean latency|  (Min duration|Min queries|Early stopping) satisfied|Early Stopping Result)" \
    "$run_dir/mlperf_log_summary.txt" >"$run_dir/result.txt" || die "no LoadGen summary in $run_dir"
fi
finished=yes
"$PYTHON" -m retinanet.run_record finish "$run_dir" --status completed
echo
cat "$run_dir/result.txt"
echo "run folder: $run_dir"
