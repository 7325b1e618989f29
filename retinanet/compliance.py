"""TEST01, RetinaNet's one compliance test, for a performance run: the same run again with
upstream's audit.config (LoadGen then logs the detections of a sample of the queries), then
upstream's run_verification.py: those detections must equal the accuracy run's, and the
throughput must be within 10% of the performance run's.

Where the detections differ (a nondeterministic model: GPU kernels, bf16), upstream's
documented fallback runs: create_accuracy_baseline.sh takes the accuracy run's detections of
the same samples, and the accuracy tool scores both; their mAPs must be within 1%.

The TEST01 run gets a folder of its own (…-performance-TEST01-<scenario>-…); upstream's
output (TEST01/, as a submission holds it) goes into that folder, the outcome into its
run.json, summary.json and result.txt.

    python -m retinanet.compliance --results RESULTS_DIR RUN [--accuracy ACCURACY_RUN]
"""

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from retinanet import HARNESS, PROJECT_ROOT, UPSTREAM, rules, run_folder
from retinanet.files import write_json
from retinanet.runs import RunError, find, resolve
from retinanet.settings_outputs import rerun_words

TEST = "TEST01"
TEST_DIR = UPSTREAM / "compliance" / TEST


class ComplianceError(Exception):
    pass


def accuracy_run_for(perf, results_dir, name=None):
    """The accuracy run whose detections TEST01 compares with: the one named, or the newest
    completed accuracy run of the same model file, dataset and backend."""
    if name:
        run = resolve(results_dir, name)
        if not run.accuracy:
            raise ComplianceError(f"{run.path} is not a completed accuracy run")
        return run

    def key(run):
        return (
            (run.record.get("model") or {}).get("md5"),
            (run.record.get("dataset") or {}).get("annotations_md5"),
            run.settings.get("backend"),
        )

    candidates = [run for run in find(results_dir) if run.accuracy and key(run) == key(perf)]
    if not candidates:
        raise ComplianceError(
            f"no completed accuracy run of the same model, dataset and backend in {results_dir}: "
            "run 'make eval' with the performance run's settings first, or name one with "
            "ACCURACY_RUN=..."
        )
    return candidates[-1]


def run_test(perf):
    """The performance run again, as its rerun says, with TEST01's audit.config: its folder."""
    words = shlex.split(perf.record["rerun"])
    if words[:2] != ["make", "perf"]:
        raise ComplianceError(f"{perf.path}: its rerun is not a 'make perf' command: {words[:2]}")
    env = dict(os.environ, COMPLIANCE_TEST=TEST)
    command = ["make", "-C", str(PROJECT_ROOT), "perf", f"PYTHON={sys.executable}"]
    command += rerun_words(perf.record)
    print(f"compliance: {TEST} run: {shlex.join(command[4:])}", flush=True)
    folder = None
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        for line in process.stdout:
            print(line, end="", flush=True)
            folder = run_folder.from_output(line) or folder
    if process.returncode != 0 or folder is None:
        raise ComplianceError(f"the {TEST} run failed (make perf exited {process.returncode})")
    return folder


def checks(text):
    """run_verification.py's two verdicts."""
    found = {}
    for name in ("Accuracy", "Performance"):
        match = re.search(rf"^{name} check pass: (True|False)$", text, re.M)
        found[name.lower()] = match.group(1) == "True" if match else False
    return found


def accuracy_tool(log, data_dir, out):
    """tools/accuracy-openimages.py on an accuracy log, its output kept in out: the mAP."""
    with tempfile.TemporaryDirectory() as scratch:
        proc = subprocess.run(
            [
                sys.executable,
                str(HARNESS / "tools" / "accuracy-openimages.py"),
                "--mlperf-accuracy-file",
                str(log),
                "--openimages-dir",
                str(data_dir),
                "--output-file",
                str(Path(scratch) / "openimages-results.json"),
            ],
            capture_output=True,
            text=True,
        )
    Path(out).write_text(proc.stdout + proc.stderr)
    return run_folder.printed_map(proc.stdout)


def fallback(accuracy_log, test_log, data_dir, out_dir):
    """Upstream's Part III: the accuracy run's detections of the TEST01 samples, scored beside
    the TEST01 run's own; writes baseline_accuracy.txt and compliance_accuracy.txt."""
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run(
            [
                "bash",
                str(TEST_DIR / "create_accuracy_baseline.sh"),
                str(accuracy_log),
                str(test_log),
            ],
            cwd=scratch,
            check=True,
            capture_output=True,
        )
        baseline_log = Path(scratch) / (Path(accuracy_log).stem + "_baseline.json")
        baseline = accuracy_tool(baseline_log, data_dir, out_dir / "baseline_accuracy.txt")
    compliance = accuracy_tool(test_log, data_dir, out_dir / "compliance_accuracy.txt")
    limit = rules.values()["accuracy_delta_percent"]
    result = {"baseline_map": baseline, "compliance_map": compliance, "max_delta_percent": limit}
    if baseline and compliance:
        result["delta_percent"] = round(abs(1 - baseline / compliance) * 100, 4)
        result["passed"] = result["delta_percent"] <= limit
    else:
        result["passed"] = False
    return result


def verify(test_dir, perf, accuracy):
    """run_verification.py over the three runs; upstream's TEST01/ goes into test_dir."""
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        # the layout run_verification.py reads: RESULTS/accuracy, RESULTS/performance/run_1
        (scratch / "results" / "performance").mkdir(parents=True)
        (scratch / "results" / "accuracy").symlink_to(accuracy.path.resolve())
        (scratch / "results" / "performance" / "run_1").symlink_to(perf.path.resolve())
        proc = subprocess.run(
            [
                sys.executable,
                str(TEST_DIR / "run_verification.py"),
                "--results_dir",
                str(scratch / "results"),
                "--compliance_dir",
                str(test_dir.resolve()),
                "--output_dir",
                str(test_dir.resolve()),
                "--dtype",
                "float32",  # the harness logs detections as float32
            ],
            cwd=scratch,  # it writes its verify_*.txt here, then copies them
            capture_output=True,
            text=True,
        )
    (test_dir / "verification.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or "TEST01 verification complete" not in proc.stdout:
        raise ComplianceError(
            f"run_verification.py failed ({proc.returncode}); see {test_dir / 'verification.log'}"
        )
    outcome = {"test": TEST, "of": perf.name, "accuracy_run": accuracy.name, **checks(proc.stdout)}
    if not outcome["accuracy"]:
        outcome["fallback"] = fallback(
            accuracy.path / run_folder.LOADGEN_ACCURACY,
            test_dir / run_folder.LOADGEN_ACCURACY,
            perf.settings["data_dir"],
            test_dir / TEST / "accuracy",
        )
    outcome["passed"] = outcome["performance"] and (
        outcome["accuracy"] or outcome["fallback"]["passed"]
    )
    return outcome


def lines(outcome):
    verdict = "PASSED" if outcome["passed"] else "FAILED"
    text = [
        f"{outcome['test']} {verdict} (upstream run_verification.py, of {outcome['of']}, "
        f"accuracy run {outcome['accuracy_run']})",
        f"  accuracy check (same detections as the accuracy run): {outcome['accuracy']}",
        f"  performance check (within 10% of the performance run): {outcome['performance']}",
    ]
    if "fallback" in outcome:
        f = outcome["fallback"]
        text.append(
            f"  fallback, baseline vs compliance mAP: {f['baseline_map']} vs "
            f"{f['compliance_map']}, "
            f"delta {f.get('delta_percent')}% (needs <= {f['max_delta_percent']}%): "
            f"{'passed' if f['passed'] else 'failed'}"
        )
    return text


def record(test_dir, outcome):
    """The outcome into the TEST01 run's run.json, summary.json and result.txt."""
    for name in (run_folder.RECORD, run_folder.SUMMARY):
        path = test_dir / name
        data = json.loads(path.read_text())
        data["compliance"] = outcome
        if name == run_folder.RECORD:
            data["rerun"] = f"make compliance RUN={outcome['of']}"
        write_json(path, data)
    with (test_dir / run_folder.RESULT).open("a") as out:
        out.write("\n".join(lines(outcome)) + "\n")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", default="results", help="the folder holding the run folders")
    parser.add_argument("run", help="the performance run: a folder name under RESULTS or a path")
    parser.add_argument("--accuracy", help="the accuracy run (default: the newest that matches)")
    args = parser.parse_args()
    try:
        perf = resolve(args.results, args.run)
        if not perf.performance or "compliance" in perf.record:
            raise ComplianceError(f"{perf.path} is not a completed performance run")
        accuracy = accuracy_run_for(perf, args.results, args.accuracy)
        test_dir = run_test(perf)
        if (test_dir / TEST).exists():
            shutil.rmtree(test_dir / TEST)
        outcome = verify(test_dir, perf, accuracy)
        record(test_dir, outcome)
    except (RunError, ComplianceError) as error:
        sys.exit(f"compliance: error: {error}")
    print("\n".join(lines(outcome)))
    print(run_folder.line(test_dir))
    return 0 if outcome["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
