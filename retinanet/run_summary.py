"""Write summary.json in a run folder: what the run measured.

LoadGen's result (loadgen_log.py: scenario, mode, VALID/INVALID and every reason, samples/s,
latency percentiles, early stopping, warnings and errors), for an accuracy run the mAP
against the MLPerf target, and for a completed run the verdict of the v5.1 run rules
(rules.py). run_record.py finish calls write(); the command line re-reads
a run folder and prints the summary without writing anything.

    python -m retinanet.run_summary RUN_DIR
"""

import json
import sys
from pathlib import Path

from retinanet import rules, run_folder
from retinanet.files import write_json
from retinanet.loadgen_log import LogError, parse

REFERENCE_MAP = 37.55  # PyTorch reference mAP of the official model
MAP_TARGET = 37.1745  # MLPerf target: 99% of the reference


def against_target(map_percent):
    """An mAP beside the MLPerf target."""
    return {
        "map": map_percent,
        "reference": REFERENCE_MAP,
        "target": MAP_TARGET,
        "meets_target": map_percent >= MAP_TARGET,
    }


def accuracy(run_dir):
    """mAP as tools/accuracy-openimages.py printed it, and the harness's full-precision one."""
    result = against_target(run_folder.accuracy_map(run_dir))
    harness_map = run_folder.harness_map(run_dir)
    if harness_map is not None:  # a cross-check, not the result
        result["harness_map"] = harness_map
    return result


def summarize(run_dir, status="completed", reason=None, judge=False):
    """The summary of a run folder. For a completed run, a log that cannot be read raises
    LogError; for a failed one, what could be read is kept and the error noted. judge: add
    the v5.1 verdict (it reads upstream's checker)."""
    run_dir = Path(run_dir)
    record = run_folder.read_json(run_dir, run_folder.RECORD) or {}
    mode = record.get("settings", {}).get("mode")
    summary = {"run": run_dir.name, "status": status}
    if reason:
        summary["reason"] = reason
    found = run_folder.workers(run_dir)
    if found:  # a WORKERS or RAY_ADDRESS run: what each worker answered
        summary["workers"] = [
            {k: w.get(k) for k in ("worker", "node", "answered", "lost")} for w in found["workers"]
        ]
        summary["workers_lost"] = found.get("lost", [])
    parts = [parse] + ([accuracy] if mode == "accuracy" else [])
    for part in parts:
        try:
            found = part(run_dir)
        except LogError as error:
            if status == "completed":
                raise
            summary.setdefault("unreadable", []).append(str(error))
            continue
        if part is accuracy:
            summary["accuracy"] = found
        else:
            summary.update(found)
    if judge and status == "completed":
        # would MLPerf accept it: the v5.1 run rules (rules.py)
        summary["rules"] = rules.verdict(run_dir, record, summary.get("accuracy"))
    return summary


def write(run_dir, status="completed", reason=None):
    summary = summarize(run_dir, status, reason, judge=True)
    write_json(Path(run_dir) / run_folder.SUMMARY, summary)
    return summary


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: python -m retinanet.run_summary RUN_DIR")
    try:
        print(json.dumps(summarize(sys.argv[1]), indent=2))
    except LogError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
