#!/usr/bin/env bash
# One benchmark run through the upstream reference harness (run_local.sh), into a new
# folder under RESULTS_DIR that no other run shares:
#
#   run_eval.sh accuracy      LoadGen AccuracyOnly, then tools/accuracy-openimages.py: mAP
#   run_eval.sh performance   LoadGen PerformanceOnly: VALID/INVALID, samples/s or latency
#
# Settings come from the environment: every variable in retinanet/settings.py's table (make
# passes them all; `make help` lists them). The run itself is retinanet/run.py, in the
# environment's Python: this script finds that Python and becomes it.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-.venv/bin/python}
if ! PYTHON=$(command -v "$PYTHON"); then
  echo "run_eval: error: PYTHON=${PYTHON} not found: run 'make setup'" >&2
  exit 2
fi
# run_local.sh calls python3 from PATH: make it the environment's.
PATH=$(dirname "$PYTHON"):$PATH
# MODEL_FACTORY modules import from the project folder, as well as from PYTHONPATH.
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
exec "$PYTHON" -m retinanet.run "$@"
