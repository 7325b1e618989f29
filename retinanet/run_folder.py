"""One run's folder: the name of every file a run leaves in it, a reader for each, the
folder's own name, and the `run folder: PATH` line that ends a run's output.

LoadGen's logs (mlperf_log_detail.txt, mlperf_log_summary.txt) are read by this module's
part for them, loadgen_log.py; run.json is written by run_record.py and summary.json by
run_summary.py. Nothing else names these files or parses their text.
"""

import datetime
import json
import re
from pathlib import Path

# What the project writes
RECORD = "run.json"  # how the run was made and how it ended (run_record.py)
SUMMARY = "summary.json"  # what it measured (run_summary.py)
RESULT = "result.txt"  # the lines the run printed at its end
USER_CONF = "user.conf"  # the LoadGen settings it ran with, copied
HARNESS_LOG = "harness.log"  # everything run_local.sh and main.py printed
ACCURACY_TXT = "accuracy.txt"  # what tools/accuracy-openimages.py printed
ACCURACY_JSON = "openimages-results.json"  # the accuracy tool's --output-file
GUARD_JSON = "guard.json"  # the accuracy guard's report (accuracy_guard.py)
GUARD_LOG = "guard.log"  # what the guard printed besides its one line
# What the harness and LoadGen write
WORKERS = "workers.json"  # the Ray workers of a WORKERS or RAY_ADDRESS run (ray_sut.py)
HARNESS_RESULTS = "results.json"  # main.py's own figures, its mAP among them
LOADGEN_DETAIL = "mlperf_log_detail.txt"
LOADGEN_SUMMARY = "mlperf_log_summary.txt"
LOADGEN_ACCURACY = "mlperf_log_accuracy.json"

LINE = "run folder: "  # a run's last line of output names its folder
# the one line that says why main.py ended the run (failfast.py, patch 0023)
HARNESS_ERROR = "main.py: error: "
GUARD_ERROR = "accuracy_guard.py: error: "
PRINTED_MAP = re.compile(r"^mAP=([0-9.]+)%$", re.M)  # the accuracy tool's result line


class LogError(Exception):
    """A file of the run folder is missing, cut short or not what it should be: the message
    names the file and what is wrong."""


def line(run_dir):
    return f"{LINE}{run_dir}"


def from_output(text):
    """The folder of the last run whose output is text, or None when no run got that far."""
    found = all_from_output(text)
    return found[-1] if found else None


def all_from_output(text):
    """The folders of every run in text, in order (make demo runs two)."""
    return [Path(match) for match in re.findall(rf"^{LINE}(.+)$", text, re.M)]


def create(results_dir, mode, scenario, device, compliance=None):
    """A new folder under results_dir, named for when and what, that no other run shares:
    mkdir fails rather than reuse one another run made at the same second."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = "-".join([stamp, mode] + [compliance] * bool(compliance) + [scenario, device])
    for number in range(1, 101):
        folder = results_dir / (base if number == 1 else f"{base}-{number}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"100 run folders named {base} already exist")


def read_json(run_dir, name):
    """A JSON file of the folder; None when it is not there."""
    path = Path(run_dir) / name
    return json.loads(path.read_text()) if path.is_file() else None


def printed_map(text):
    """The mAP (percent) tools/accuracy-openimages.py printed last in text, or None."""
    found = PRINTED_MAP.findall(text)
    return float(found[-1]) if found else None


def accuracy_map(run_dir):
    """The mAP the accuracy tool printed into accuracy.txt; raises LogError."""
    path = Path(run_dir) / ACCURACY_TXT
    if not path.is_file():
        raise LogError(f"{path} not found: the accuracy tool did not run")
    found = printed_map(path.read_text(errors="replace"))
    if found is None:
        raise LogError(f"{path} has no 'mAP=...%' line: the accuracy tool did not finish")
    return found


def harness_map(run_dir):
    """The harness's own full-precision mAP (results.json), a cross-check; None without it."""
    try:
        found = json.loads((Path(run_dir) / HARNESS_RESULTS).read_text())
        scenarios = [v for k, v in found.items() if k.startswith("TestScenario.")]
        return scenarios[0]["mAP"]
    except (OSError, ValueError, IndexError, KeyError):
        return None


def error_line(run_dir, log, prefix):
    """The text after prefix on the first line of log that starts with it, or None."""
    path = Path(run_dir) / log
    text = path.read_text(errors="replace") if path.is_file() else ""
    found = [row[len(prefix) :] for row in text.splitlines() if row.startswith(prefix)]
    return found[0] if found else None


def harness_error(run_dir):
    """Why main.py ended the run, in its own one line (harness.log), or None."""
    return error_line(run_dir, HARNESS_LOG, HARNESS_ERROR)


def guard_error(run_dir):
    """Why the accuracy guard failed, in its own one line (guard.log), or None."""
    return error_line(run_dir, GUARD_LOG, GUARD_ERROR)


def workers(run_dir):
    """workers.json of a WORKERS or RAY_ADDRESS run as ray_sut.py wrote it; None for a run
    in one process."""
    return read_json(run_dir, WORKERS)
