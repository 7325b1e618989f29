"""Run folders of real runs, saved in tests/data/runs (README there), read without running
anything: LoadGen's logs parsed and checked against each other, summaries, reruns of the
records, reports and comparisons. The same code reads a run folder right after a run in
test_records.py; here it takes a second, and a damaged copy is a file edit away."""

import json
import os
import re
import shutil
import subprocess

import pytest
from helpers import PYTHON, SAVED_RUNS

from retinanet import PROJECT_ROOT, compare, report, run_summary
from retinanet.loadgen_log import LogError, parse
from retinanet.runs import RunError, find, load, resolve

ALL = sorted(SAVED_RUNS.iterdir())
COMPLETED = [
    run for run in ALL if json.loads((run / "run.json").read_text())["status"] == "completed"
]
PERFORMANCE = [run for run in COMPLETED if "-performance-" in run.name]
ACCURACY = SAVED_RUNS / "20261130-055821-accuracy-Offline-cpu"
OFFLINE_VALID = SAVED_RUNS / "20261130-055847-performance-Offline-cpu"
OFFLINE_INVALID = SAVED_RUNS / "20261130-060208-performance-Offline-cpu"
SINGLESTREAM_VALID = SAVED_RUNS / "20261130-060240-performance-SingleStream-cpu"
INTERRUPTED = SAVED_RUNS / "20261130-060419-performance-SingleStream-cpu"


def names(runs):
    return [run.name for run in runs]


def read(run_dir, name):
    return json.loads((run_dir / name).read_text())


def copy(run_dir, tmp_path):
    return shutil.copytree(run_dir, tmp_path / run_dir.name)


def test_the_saved_runs_are_what_the_tests_expect():
    assert len(ALL) == 7 and len(PERFORMANCE) == 5
    assert {read(run, "summary.json").get("result") for run in PERFORMANCE} == {"VALID", "INVALID"}
    assert {read(run, "summary.json")["scenario"] for run in PERFORMANCE} == {
        "Offline",
        "Server",
        "SingleStream",
        "MultiStream",
    }


@pytest.mark.parametrize("run_dir", PERFORMANCE, ids=names(PERFORMANCE))
def test_parsed_figures_are_the_ones_loadgen_printed(run_dir):
    result = parse(run_dir)
    text = (run_dir / "mlperf_log_summary.txt").read_text()
    assert result["mode"] == "PerformanceOnly" and result["loadgen_version"].startswith("5.1.1 ")
    assert f"Scenario : {result['scenario']}\n" in text
    assert f"Result is : {result['result']}\n" in text
    metric = result["metric"]
    if metric["unit"] == "samples/s":
        printed = re.search(r"^(Completed samples|Samples) per second\s*: ([0-9.]+)$", text, re.M)
        assert metric["value"] == pytest.approx(float(printed.group(2)), abs=0.005)
    else:
        printed = re.search(r"^(\d+\.\d)th percentile latency \(ns\) : (\d+)$", text, re.M)
        assert metric["value"] == int(printed.group(2))
        assert metric["name"].startswith(f"p{float(printed.group(1)):g} latency")
    latency = result["query_latency_ns"] or result["latency_ns"]
    for percentile in ("p50", "p90", "p95", "p97", "p99", "p99.9"):
        assert re.search(
            rf"^{float(percentile[1:]):.2f} percentile latency \(ns\)\s+: {latency[percentile]}$",
            text,
            re.M,
        )
    if result["result"] == "VALID":
        assert result["reasons"] == [] and all(result["constraints"].values())
    else:
        assert result["reasons"], "an INVALID result says why"
        words = " ".join(text.split())  # LoadGen wraps long lines
        for reason in result["reasons"]:
            for part in reason.replace("Early stopping not satisfied: ", "").split(". "):
                assert " ".join(part.strip(". ").split()) in words


@pytest.mark.parametrize("run_dir", COMPLETED, ids=names(COMPLETED))
def test_summary_json_is_what_the_logs_say(run_dir):
    assert run_summary.summarize(run_dir) == read(run_dir, "summary.json")


def test_the_accuracy_summary_has_the_map_against_the_target(tmp_path):
    assert run_summary.summarize(ACCURACY)["accuracy"] == {
        "map": 100.0,
        "reference": 37.55,
        "target": 37.1745,
        "meets_target": True,
        "harness_map": pytest.approx(100.0),
    }
    run_dir = copy(ACCURACY, tmp_path)
    (run_dir / "accuracy.txt").write_text("Loading annotations...\n")  # the tool died early
    with pytest.raises(LogError, match=r"accuracy.txt has no 'mAP=...%' line"):
        run_summary.summarize(run_dir)
    failed = run_summary.summarize(run_dir, "failed", "exited with status 1")
    assert failed["mode"] == "AccuracyOnly" and "accuracy" not in failed
    assert failed["unreadable"] == [
        f"{run_dir / 'accuracy.txt'} has no 'mAP=...%' line: the accuracy tool did not finish"
    ]


def test_run_summary_prints_what_summary_json_holds():
    proc = subprocess.run(
        [PYTHON, "-m", "retinanet.run_summary", str(SINGLESTREAM_VALID)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == read(SINGLESTREAM_VALID, "summary.json")


def cut_detail_mid_line(run_dir):
    detail = run_dir / "mlperf_log_detail.txt"
    lines = detail.read_text().splitlines(keepends=True)
    detail.write_text("".join(lines[:-5]) + lines[-5][:70])
    return len(lines) - 4


@pytest.mark.parametrize(
    "damage, message",
    [
        (cut_detail_mid_line, "mlperf_log_detail.txt is truncated: line {} stops mid-entry"),
        (
            lambda run_dir: (run_dir / "mlperf_log_detail.txt").write_text(
                "".join(
                    line
                    for line in (run_dir / "mlperf_log_detail.txt").read_text().splitlines(True)
                    if '"power_end"' not in line
                )
            ),
            "mlperf_log_detail.txt is truncated: no power_end entry",
        ),
        (
            lambda run_dir: (run_dir / "mlperf_log_summary.txt").write_text(
                (run_dir / "mlperf_log_summary.txt").read_text()[:400]
            ),
            "mlperf_log_summary.txt is truncated: it does not end with LoadGen's",
        ),
        (
            lambda run_dir: (run_dir / "mlperf_log_detail.txt").write_text("Another program\n"),
            "mlperf_log_detail.txt:1 is not a LoadGen log line",
        ),
        (
            lambda run_dir: (run_dir / "mlperf_log_detail.txt").unlink(),
            "mlperf_log_detail.txt not found: LoadGen did not start",
        ),
        (
            lambda run_dir: shutil.copy(OFFLINE_VALID / "mlperf_log_summary.txt", run_dir),
            "says 'Result is : VALID', mlperf_log_detail.txt says INVALID: the two logs are not "
            "from the same run",
        ),
    ],
    ids=["detail-mid-line", "detail-no-end", "summary-cut", "not-loadgen", "no-detail", "mixed"],
)
def test_a_damaged_log_is_one_line_that_names_the_file(tmp_path, damage, message):
    run_dir = copy(OFFLINE_INVALID, tmp_path)
    message = message.format(damage(run_dir))
    with pytest.raises(LogError) as error:
        parse(run_dir)
    assert message in str(error.value) and str(run_dir) in str(error.value)
    proc = subprocess.run(
        [PYTHON, "-m", "retinanet.loadgen_log", str(run_dir)], capture_output=True, text=True
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and message in proc.stderr


def test_an_interrupted_run_keeps_what_could_be_read():
    run = load(INTERRUPTED)
    assert (run.status, run.reason) == ("failed", "interrupted by signal 2")
    summary = run_summary.summarize(INTERRUPTED, "failed", run.reason)
    assert summary["unreadable"] == [
        f"{INTERRUPTED / 'mlperf_log_summary.txt'} is truncated: it does not end with LoadGen's "
        "'... errors encountered' line (the run was interrupted or the file was cut)"
    ]
    saved = read(INTERRUPTED, "summary.json")
    assert {**saved, "unreadable": None} == {**summary, "unreadable": None}


def running_copy(tmp_path, **record):
    """A completed run's folder as a run that is still running, or was killed, says it."""
    run_dir = copy(OFFLINE_INVALID, tmp_path)
    (run_dir / "summary.json").unlink()  # finish never ran
    saved = read(run_dir, "run.json")
    saved.update(status="running", **record)
    (run_dir / "run.json").write_text(json.dumps(saved))
    return run_dir


def test_a_run_whose_process_is_gone_is_failed(tmp_path):
    host = read(OFFLINE_INVALID, "run.json")["host"]
    # this process is alive, and it is no run_eval.sh: the run it stands for is gone
    run_dir = running_copy(tmp_path, pid=os.getpid(), host={**host, "name": os.uname().nodename})
    run = load(run_dir)
    assert run.status == "failed"
    assert run.reason == (
        f"stopped without finishing: process {os.getpid()} is gone "
        "(killed, or the machine went down)"
    )
    assert run.summary["result"] == "INVALID", "what the logs hold is still read"
    assert read(run_dir, "run.json")["status"] == "running", "reading a run never writes it"
    assert not (run_dir / "summary.json").exists()


def test_a_run_on_another_host_is_taken_at_its_word(tmp_path):
    run_dir = running_copy(tmp_path, pid=os.getpid(), host={"name": "another-host"})
    run = load(run_dir)
    assert (run.status, run.summary) == ("running", {})


def test_runs_are_found_by_name_pattern_or_unique_part():
    assert names(find(SAVED_RUNS)) == names(ALL)
    assert names(find(SAVED_RUNS, ["*-SingleStream-*"])) == [
        SINGLESTREAM_VALID.name,
        INTERRUPTED.name,
    ]
    with pytest.raises(RunError, match=r"no run in .* matches \*-Batch-\*"):
        find(SAVED_RUNS, ["*-Server-*", "*-Batch-*"])
    assert resolve(SAVED_RUNS, "MultiStream").name == "20261130-060337-performance-MultiStream-cpu"
    assert resolve(SAVED_RUNS, str(ACCURACY)).name == ACCURACY.name
    with pytest.raises(RunError, match=r"'performance-Offline' matches 2 runs in .*: name one"):
        resolve(SAVED_RUNS, "performance-Offline")
    with pytest.raises(RunError, match=r"no run 'Batch': not a run folder"):
        resolve(SAVED_RUNS, "Batch")


def row(text, run_dir):
    rows = [line for line in text.splitlines() if line.startswith(f"| {run_dir.name} |")]
    assert rows, f"no row for {run_dir.name}"
    return rows[0]


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_report_renders_every_run_and_its_plots(tmp_path):
    text, path, plots = report.report(SAVED_RUNS, tmp_path / "report")
    assert path.read_text() == text
    performance, accuracy, failed, made = re.split(
        r"^## (?:Accuracy|Failed or still running|How each run was made)$", text, flags=re.M
    )
    assert row(performance, OFFLINE_VALID).startswith(
        f"| {OFFLINE_VALID.name} | Offline | cpu fp32 batch_size=1 threads=1 count=3 | 1 | VALID | "
        "0.03664 samples/s | 0.03664 |"
    )
    assert row(performance, SINGLESTREAM_VALID).startswith(
        f"| {SINGLESTREAM_VALID.name} | SingleStream | cpu fp32 batch_size=2 threads=1 | 100 | "
        "VALID | p90 latency 42.05 ms |"
    )
    for run_dir in PERFORMANCE:
        assert f"| {read(run_dir, 'summary.json')['result']} |" in row(performance, run_dir)
    invalid = re.findall(r"^- `(\S+)`: ", performance, re.M)
    assert sorted(invalid) == [
        "20261130-060208-performance-Offline-cpu",
        "20261130-060308-performance-Server-cpu",
        "20261130-060337-performance-MultiStream-cpu",
    ]
    assert f"- `{OFFLINE_INVALID.name}`: Increase expected QPS so the loadgen" in performance
    assert row(accuracy, ACCURACY).endswith("| 12 | 100.000 | yes |")
    assert row(failed, INTERRUPTED) == (
        f"| {INTERRUPTED.name} | performance | SingleStream | failed | interrupted by signal 2 |"
    )
    assert [line.split(" | ")[0][2:] for line in made.splitlines() if line.startswith("| 2")] == (
        names(ALL)
    )
    assert names(plots) == ["throughput.png", "latency.png", "accuracy.png"]
    for plot in plots:
        assert f"]({plot.name})" in text
        width, height = png_size(plot)
        assert width >= 600 and height >= 200


def test_report_command_names_a_pattern_that_matches_nothing(tmp_path):
    proc = subprocess.run(
        [
            PYTHON,
            "-m",
            "retinanet.report",
            "--results",
            str(SAVED_RUNS),
            "--out",
            str(tmp_path / "report"),
            "--runs",
            "*-Batch-*",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr == f"report: error: no run in {SAVED_RUNS} matches *-Batch-*\n"
    assert not (tmp_path / "report").exists()


def test_compare_gives_ratios_and_every_difference_that_makes_it_unfair():
    a, b = resolve(SAVED_RUNS, OFFLINE_VALID.name), resolve(SAVED_RUNS, OFFLINE_INVALID.name)
    text, warnings = compare.compare(a, b)
    rate = re.search(r"^\| samples/s \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \|$", text, re.M)
    assert float(rate.group(3)) == pytest.approx(
        b.summary["metric"]["value"] / a.summary["metric"]["value"], rel=1e-3
    )
    assert warnings[0].startswith("B is INVALID: Increase expected QPS")
    for difference in (
        "setting differs, BATCH_SIZE: A 1 / B 2",
        "setting differs, COUNT: A 3 / B ",
        "setting differs, images: A 3 / B 12",
    ):
        assert difference in warnings
    assert any(w.startswith("setting differs, user.conf: A ") for w in warnings)
    assert any(w.startswith("setting differs, model (md5): A ") for w in warnings)
    assert not any(w.startswith(("software", "hardware")) for w in warnings), warnings
    assert "WARNING: " in text and all(f"  - {w}" in text for w in warnings)


def test_a_run_compared_with_itself_is_fair():
    a = resolve(SAVED_RUNS, SINGLESTREAM_VALID.name)
    text, warnings = compare.compare(a, a)
    assert warnings == []
    assert "Same settings, software and hardware: the figures compare like for like." in text
    assert re.search(r"^\| p90 latency \(ms\) \| 42\.05 \| 42\.05 \| 1\.000 \|$", text, re.M)
