"""The v5.1 run rules, TEST01 and a submission tree, judged by upstream's own tools: the
verdict of a short run lists exactly what it misses, and of a run edited to meet every rule
that it meets them; TEST01 on the oracle passes upstream's run_verification.py; a tree from
short runs draws from upstream's checker only the errors a short run must draw, and a tree
without a required system field is caught with the field named.

One accuracy run, one short Offline run and its TEST01 run with the oracle, shared by the
file's tests (about a minute)."""

import json
import re
import shutil
import subprocess
import sys

import pytest
from helpers import (
    DEMO_USER_CONF,
    SAVED_RUNS,
    STEADY_SECONDS,
    make,
    offline_conf,
    offline_rate,
    oracle_settings,
    steady_samples,
)

from retinanet import OFFICIAL_MODELS, PROJECT_ROOT, rules, run_folder
from retinanet.loadgen_log import MLLOG

ORG, SYSTEM = "demo-org", "demo-system"
SHORT_RUN_MISSES = {
    "performance": [
        "minimum duration",
        "Offline samples per query",
        "closed division: the official model",
        "dataset: the OpenImages MLPerf validation set",
    ],
    "accuracy": [
        "accuracy run over the whole dataset",
        "closed division: the official model",
        "dataset: the OpenImages MLPerf validation set",
    ],
}


@pytest.fixture(scope="module")
def runs(demo, tmp_path_factory):
    """An accuracy run, a short Offline run and its TEST01 run, with the oracle (paced by
    TEST_PACE_MS where set: docs/testing.md). The Offline run is VALID at any rate and lasts
    STEADY_SECONDS at the rate measured here, so that TEST01 compares two steady figures."""
    root = tmp_path_factory.mktemp("submission")
    common = [
        f"RESULTS_DIR={root / 'results'}",
        f"CACHE_DIR={root / 'cache'}",
        "DEVICE=cpu",
        "CHECK_IMAGES=0",  # the oracle's contract is tested elsewhere
        *oracle_settings(demo, root),
    ]
    accuracy = make("eval", *common, f"USER_CONF={DEMO_USER_CONF}", "WARMUP=0")
    rate = offline_rate(*common)
    conf = offline_conf(root / "steady.conf", steady_samples(rate))
    perf = make("perf", *common, f"USER_CONF={conf}")
    # the rerun repeats the settings; a paced oracle's environment comes along
    environment = [word for word in common if word.startswith(("PACE", "PYTHONPATH="))]
    compliance = make(
        "compliance",
        f"RESULTS_DIR={root / 'results'}",
        f"RUN={run_folder.from_output(perf.stdout).name}",
        *environment,
        check=False,
    )
    return {
        "root": root,
        "rate": rate,
        "results": root / "results",
        "accuracy": run_folder.from_output(accuracy.stdout),
        "performance": run_folder.from_output(perf.stdout),
        "compliance": compliance,
        "test01": run_folder.from_output(compliance.stdout),
    }


def missed(run_dir):
    return [
        m["rule"] for m in json.loads((run_dir / "summary.json").read_text())["rules"]["missed"]
    ]


def test_verdict_of_demo_runs_lists_exactly_what_a_short_run_misses(runs):
    assert missed(runs["performance"]) == SHORT_RUN_MISSES["performance"]
    assert missed(runs["accuracy"]) == SHORT_RUN_MISSES["accuracy"]
    result = (runs["accuracy"] / "result.txt").read_text()
    assert "DEMO RUN (the demo's user.conf and the demo's generated dataset)" in result
    assert "MLPerf v5.1: does not meet the run rules, 3 missed" in result
    assert "  - accuracy run over the whole dataset: 12 images / 24781" in result
    # the demo's generated data makes a run a demo run whatever its user.conf
    summary = json.loads((runs["performance"] / "summary.json").read_text())
    assert summary["rules"]["demo"] == ["the demo's generated dataset"]


def test_offline_runs_sized_by_the_rate_hold_on_a_slower_machine(demo, tmp_path):
    """The fixture's sizing on a machine several times slower (the oracle paced, a sleep per
    image): the run is VALID and lasts about STEADY_SECONDS, as it does here; a faster machine
    only shortens the probe."""
    common = [
        f"RESULTS_DIR={tmp_path / 'results'}",
        "DEVICE=cpu",
        "CHECK_IMAGES=0",
        *oracle_settings(demo, tmp_path, pace_ms=3),
    ]
    rate = offline_rate(*common)
    assert rate < 1000 / 3, "the pace slows the oracle"
    perf = make(
        "perf", *common, f"USER_CONF={offline_conf(tmp_path / 'steady.conf', steady_samples(rate))}"
    )
    summary = json.loads((run_folder.from_output(perf.stdout) / "summary.json").read_text())
    assert summary["result"] == "VALID"
    assert summary["scheduled"]["samples_per_query"] == steady_samples(rate)
    assert STEADY_SECONDS / 2 < summary["duration_s"] < STEADY_SECONDS * 2, summary["duration_s"]


def edit_detail(run_dir, values):
    path = run_dir / "mlperf_log_detail.txt"
    lines = []
    for line in path.read_text().splitlines():
        entry = json.loads(line[len(MLLOG) :])
        if entry["key"] in values:
            entry["value"] = values[entry["key"]]
            line = MLLOG + json.dumps(entry)
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")


def meets_every_rule(run_dir):
    """The facts of a run that follows the rules, written into a copy's logs and run.json."""
    record = json.loads((run_dir / "run.json").read_text())
    record["model"]["md5"] = OFFICIAL_MODELS["pytorch"]["md5"]
    record["dataset"].update(
        images_total=24781, generated=False, manifest={"images": 24781, "matches": True}
    )
    record["user_conf"]["text"] = "*.Offline.target_qps = 50\n"
    (run_dir / "run.json").write_text(json.dumps(record))
    return record


def test_verdict_of_runs_edited_to_meet_every_rule_says_they_meet_them(upstream, tmp_path):
    perf = shutil.copytree(SAVED_RUNS / "20261130-055847-performance-Offline-cpu", tmp_path / "p")
    record = meets_every_rule(perf)
    assert [m["rule"] for m in rules.verdict(perf, record)["missed"]] == [
        "minimum duration",
        "Offline samples per query",
    ]
    edit_detail(perf, {"effective_min_duration_ms": 600000, "effective_samples_per_query": 24576})
    verdict = rules.verdict(perf, record)
    assert verdict == {"rules": "v5.1", "meets": True, "demo": [], "missed": []}
    assert rules.lines(verdict) == ["MLPerf v5.1: meets the v5.1 run rules"]

    accuracy = shutil.copytree(SAVED_RUNS / "20261130-055821-accuracy-Offline-cpu", tmp_path / "a")
    record = meets_every_rule(accuracy)
    edit_detail(accuracy, {"qsl_reported_total_count": 24781})
    assert rules.verdict(accuracy, record, {"map": 37.55})["meets"]
    low = rules.verdict(accuracy, record, {"map": 37.0})["missed"]
    assert low == [{"rule": "mAP target", "had": "37.000", "needs": "37.1745 or more"}]


def test_rule_values_are_upstreams(upstream):
    values = rules.values()
    assert values["min_duration_ms"] == 600000 and values["offline_samples"] == 24576
    assert values["performance_sample_count"] == 64 and values["dataset_size"] == 24781
    assert round(values["accuracy_target"], 4) == 37.1745
    conf = (upstream / "mlperf.conf").read_text()
    for seed, value in values["seeds"].items():
        assert f"*.*.{seed} = {value}\n" in conf


def test_test01_on_the_oracle_passes_upstreams_verification(runs):
    assert runs["compliance"].returncode == 0, runs["compliance"].stdout[-3000:]
    test01 = runs["test01"]
    # both runs as long as the rate measured first makes them, not as an assumed rate would
    samples = steady_samples(runs["rate"])
    for run_dir in (runs["performance"], test01):
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["scheduled"]["samples_per_query"] == samples
        print(f"\n{run_dir.name}: {samples} samples in {summary['duration_s']:.1f} s")
    assert "-performance-TEST01-Offline-cpu" in test01.name
    record = json.loads((test01 / "run.json").read_text())
    outcome = record["compliance"]
    assert outcome["accuracy"] and outcome["performance"] and outcome["passed"]
    assert outcome["of"] == runs["performance"].name
    assert outcome["accuracy_run"] == runs["accuracy"].name
    assert json.loads((test01 / "summary.json").read_text())["compliance"] == outcome
    assert record["rerun"] == f"make compliance RUN={runs['performance'].name}"
    assert "TEST PASS" in (test01 / "TEST01" / "verify_accuracy.txt").read_text()
    assert "TEST PASS" in (test01 / "TEST01" / "verify_performance.txt").read_text()
    assert "TEST01 PASSED" in (test01 / "result.txt").read_text()
    # LoadGen read the audit settings: the run logged a sample of its detections
    assert "Found Audit Config file" in (test01 / "mlperf_log_detail.txt").read_text()
    assert (test01 / "TEST01" / "accuracy" / "mlperf_log_accuracy.json").stat().st_size > 2


@pytest.fixture(scope="module")
def submission(runs):
    proc = make(
        "submission",
        f"RESULTS_DIR={runs['results']}",
        f"ORG={ORG}",
        f"SYSTEM={SYSTEM}",
        "DIVISION=open",
        f"RUNS={runs['performance'].name} {runs['accuracy'].name} {runs['test01'].name}",
        f"SUBMISSION_DIR={runs['root'] / 'submission'}",
        check=False,
    )
    out = next((runs["root"] / "submission").iterdir())
    return proc, out


def test_submission_of_short_runs_draws_only_the_errors_a_short_run_must(submission):
    proc, out = submission
    assert proc.returncode != 0
    record = json.loads((out / "submission.json").read_text())
    errors = record["checker"]["errors"]
    assert record["checker"]["summary"] == "SUMMARY: submission has errors"
    assert list(errors) == [
        "run length",
        "sample and query counts",
        "accuracy image count",
        "results the errors above void",
    ], errors
    assert (
        len(errors["run length"]) == 1 and "Test duration less than 600s" in errors["run length"][0]
    )
    assert "samples per query not met" in errors["sample and query counts"][0]
    assert "does not cover all dataset, accuracy samples: 12" in errors["accuracy image count"][0]
    assert "checker (upstream submission_checker.py --version v5.1): SUMMARY" in proc.stdout
    base = out / "submission" / "open" / ORG
    scenario = base / "results" / SYSTEM / "retinanet" / "Offline"
    # truncated and hashed by upstream's tool; the whole log kept beside the tree
    assert (scenario / "accuracy" / "mlperf_log_accuracy.json").stat().st_size < 10 * 1024
    assert re.search(r"^hash=\w+$", (scenario / "accuracy" / "accuracy.txt").read_text(), re.M)
    assert list((out / "accuracy-logs").rglob("mlperf_log_accuracy.json"))
    readme = (base / "measurements" / SYSTEM / "retinanet" / "Offline" / "README.md").read_text()
    assert "make perf DATA_DIR=" in readme and "make eval DATA_DIR=" in readme
    assert "COMPLIANCE_TEST=TEST01 make perf" not in readme  # its rerun: make compliance
    assert "make compliance RUN=" in readme
    assert (base / "compliance" / SYSTEM / "retinanet" / "Offline" / "TEST01").is_dir()
    assert record["to_fill"] and all(
        json.loads((base / "systems" / f"{SYSTEM}.json").read_text())[field] != ""
        for field in record["to_fill"]
    )


def test_tree_without_a_required_system_field_is_caught_by_name(submission):
    _, out = submission
    tree = out / "submission"
    system = tree / "open" / ORG / "systems" / f"{SYSTEM}.json"
    fields = json.loads(system.read_text())
    del fields["host_storage_type"]
    fields["cooling"] = ""
    system.write_text(json.dumps(fields))
    proc = subprocess.run(
        [sys.executable, "-m", "retinanet.submission", "--check", str(tree), "--org", ORG],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "  system fields: 2" in proc.stdout
    assert f"open/{ORG}/results/{SYSTEM}, field host_storage_type is missing" in proc.stdout
    assert "field cooling requires a meaningful response but is empty" in proc.stdout
