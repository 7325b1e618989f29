#!/usr/bin/env bash
# One benchmark run through the upstream reference harness (run_local.sh), into a new
# folder under RESULTS_DIR that no other run shares.
#
#   run_eval.sh accuracy      LoadGen AccuracyOnly, then tools/accuracy-openimages.py: mAP
#   run_eval.sh performance   LoadGen PerformanceOnly: VALID/INVALID, samples/s or latency
#
# Settings come from the environment: every variable in retinanet/settings.py's table (make
# passes them all; `make help` lists them). retinanet/preflight.py validates and resolves them
# all before anything else happens, and prints them back as shell assignments.
# COMPLIANCE_TEST=TEST01 (set by `make compliance`) makes the performance run upstream's
# TEST01 audit: its audit.config, its own folder name.
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

PYTHON=${PYTHON:-.venv/bin/python}
PYTHON=$(command -v "$PYTHON") || die "PYTHON=$PYTHON not found: run 'make setup'"
[[ $PYTHON == /* ]] || PYTHON=$ROOT/$PYTHON
# run_local.sh calls python3 from PATH: make it the environment's.
PATH=$(dirname "$PYTHON"):$PATH
# MODEL_FACTORY modules import from the project folder, as well as from PYTHONPATH.
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

"$PYTHON" -m retinanet.patch_series verify >/dev/null || exit 2
# Settings, dataset, model and its output contract checked before any run folder or timed
# run; prints every setting resolved (NAME=value), the device's environment, IMAGES, CACHE,
# harness_args, guard_args and SETTINGS_JSON.
harness_args=() guard_args=()
checked=$("$PYTHON" -m retinanet.preflight "$mode") || exit 2
eval "$checked"
mkdir -p "$CACHE"

COMPLIANCE_TEST=${COMPLIANCE_TEST:-}
audit_args=()
if [ -n "$COMPLIANCE_TEST" ]; then
  # RetinaNet's only compliance test; LoadGen reads the audit settings from this file
  audit=$ROOT/vendor/inference/compliance/$COMPLIANCE_TEST/retinanet/audit.config
  [ "$COMPLIANCE_TEST" = TEST01 ] && [ "$mode" = performance ] ||
    die "COMPLIANCE_TEST=$COMPLIANCE_TEST: only TEST01, on a performance run, applies to RetinaNet"
  [ -f "$audit" ] || die "$audit not found: run './setup.sh upstream' (make setup)"
  audit_args=(--audit_conf "$audit")
fi

# A new folder per run: mkdir fails rather than reuse one another run made.
mkdir -p "$RESULTS_DIR"
base=$RESULTS_DIR/$(date -u +%Y%m%d-%H%M%S)-$mode${COMPLIANCE_TEST:+-$COMPLIANCE_TEST}-$SCENARIO-$DEVICE
run_dir=$base
for n in $(seq 2 100); do
  mkdir "$run_dir" 2>/dev/null && break
  run_dir=$base-$n
done
[ -d "$run_dir" ] || die "could not create a run folder under $RESULTS_DIR"
cp "$USER_CONF" "$run_dir/user.conf"
args=("${harness_args[@]}" --user_conf "$run_dir/user.conf" "${audit_args[@]}")
[ "$mode" = accuracy ] && args+=(--accuracy)

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
"$PYTHON" -m retinanet.run_record start "$run_dir" --pid $$ --settings "$SETTINGS_JSON" \
  ${COMPLIANCE_TEST:+--compliance "$COMPLIANCE_TEST"} \
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
  if [ ${#guard_args[@]} -gt 0 ]; then
    echo "run_eval: accuracy guard: the same model in fp32 on $((GUARD_IMAGES < IMAGES ? GUARD_IMAGES : IMAGES)) images"
    "$PYTHON" -m retinanet.accuracy_guard "${guard_args[@]}" --out "$run_dir/guard.json" 2>"$run_dir/guard.log" |
      tail -n 1 >>"$run_dir/result.txt" ||
      die "$(sed -n 's/^accuracy_guard\.py: error: /the accuracy guard failed: /p' "$run_dir/guard.log" | head -n 1)" \
        "the accuracy guard failed; see $run_dir/guard.log"
  fi
else
  grep -E "^(Scenario|Mode|Result is|Samples per second|Completed samples per second|Scheduled samples per second|[0-9.]+ percentile latency|Mean latency|  (Min duration|Min queries|Early stopping) satisfied|Early Stopping Result)" \
    "$run_dir/mlperf_log_summary.txt" >"$run_dir/result.txt" || die "no LoadGen summary in $run_dir"
fi
finished=yes
"$PYTHON" -m retinanet.run_record finish "$run_dir" --status completed
# the v5.1 run rules' verdict, which finish wrote into summary.json
"$PYTHON" -m retinanet.rules "$run_dir" >>"$run_dir/result.txt"
echo
cat "$run_dir/result.txt"
echo "run folder: $run_dir"
