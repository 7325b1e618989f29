"""Run records, summaries, reports and comparisons, from real runs through the real harness
and LoadGen: VALID and INVALID results in each scenario a few seconds can afford, an
accuracy run, truncated logs, and runs killed halfway."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import DEMO_USER_CONF, NO_GUARD, PYTHON, make, processes_mentioning

from retinanet import machine, patch_series, run_folder
from retinanet.loadgen_log import LogError, parse
from retinanet.runs import load

# LoadGen settings beside conf/demo-user.conf: each gives a result the tests need.
CONFS = {
    # Offline ends in well under 10 s: min duration not met, INVALID
    "offline-short": "*.Offline.target_qps = 1\n*.Offline.min_duration = 10000\n"
    "*.Offline.min_query_count = 1\n",
    # 100 queries: enough for SingleStream's early stopping, VALID
    "singlestream-100": "*.SingleStream.target_latency = 100\n*.SingleStream.min_duration = 0\n"
    "*.SingleStream.min_query_count = 100\n",
    # ten minutes, or 240,001 queries (two per target latency): a run to interrupt, however
    # fast the machine answers
    "singlestream-long": "*.SingleStream.target_latency = 5\n"
    "*.SingleStream.min_duration = 600000\n"
    "*.SingleStream.min_query_count = 1\n",
}
# name: (make target, scenario, user.conf, expected LoadGen result)
RUNS = {
    "accuracy": ("eval", "Offline", "demo", None),
    "offline-valid": ("perf", "Offline", "demo", "VALID"),
    "offline-invalid": ("perf", "Offline", "offline-short", "INVALID"),
    "singlestream-valid": ("perf", "SingleStream", "singlestream-100", "VALID"),
    "singlestream-invalid": ("perf", "SingleStream", "demo", "INVALID"),
    "server-invalid": ("perf", "Server", "demo", "INVALID"),
    "multistream-invalid": ("perf", "MultiStream", "demo", "INVALID"),
}


def conf_file(folder, name):
    if name == "demo":
        return DEMO_USER_CONF
    path = Path(folder) / f"{name}.conf"
    path.write_text(CONFS[name])
    return path


@pytest.fixture(scope="session")
def records(demo, tmp_path_factory):
    """The oracle through the real harness in every RUNS setting, into one results folder."""
    root = tmp_path_factory.mktemp("records")

    def one(target, scenario, conf, _):
        proc = make(
            target,
            f"DATA_DIR={demo['data']}",
            f"MODEL={demo['models']['oracle']}",
            f"RESULTS_DIR={root / 'results'}",
            f"CACHE_DIR={root / 'cache'}",
            "DEVICE=cpu",
            f"SCENARIO={scenario}",
            f"USER_CONF={conf_file(root, conf)}",
            "BATCH_SIZE=2",
            "PROGRESS=1",
            NO_GUARD,
        )
        run_dir = run_folder.from_output(proc.stdout)
        return {"dir": run_dir, "stdout": proc.stdout}

    # two at a time, one per core: a run of the oracle keeps at most about one busy (Python's
    # start, LoadGen), and each gets a folder of its own (run_eval.sh's mkdir)
    with ThreadPoolExecutor(2) as pool:
        started = {name: pool.submit(one, *run) for name, run in RUNS.items()}
        runs = {name: future.result() for name, future in started.items()}
    return {"root": root, "results": root / "results", "runs": runs}


def test_each_run_gets_a_folder_of_its_own(records):
    """The records' runs, two at a time into one RESULTS_DIR (two of them performance runs in
    Offline, whose folders take the same name but for a second): a folder each, with its own
    logs, never another run's."""
    folders = [run["dir"] for run in records["runs"].values()]
    assert len(set(folders)) == len(RUNS)
    assert {folder.parent for folder in folders} == {records["results"]}
    for folder in folders:
        record = json.loads((folder / "run.json").read_text())
        assert record["status"] == "completed"
        assert (folder / "mlperf_log_detail.txt").is_file()
        assert f"--output {folder}" in (folder / "harness.log").read_text()


def read(run_dir, name):
    # strict JSON: a NaN or Infinity in a record is a bug
    return json.loads(
        (run_dir / name).read_text(), parse_constant=lambda c: pytest.fail(f"{name} holds {c}")
    )


def test_run_json_says_how_each_run_was_made(records, demo):
    pin = patch_series.pinned_commit()
    patches = patch_series.series()
    for name, (target, scenario, _conf, _) in RUNS.items():
        run_dir = records["runs"][name]["dir"]
        record = read(run_dir, "run.json")
        assert record["status"] == "completed"
        settings = record["settings"]
        assert settings["mode"] == ("accuracy" if target == "eval" else "performance")
        assert (
            settings["scenario"] == scenario
            and settings["device"] == "cpu"
            and settings["batch_size"] == "2"
        )
        assert (
            record["rerun"].startswith(f"make {target} ")
            and f"SCENARIO={scenario}" in record["rerun"]
        )
        assert record["command"][0] == "./run_local.sh" and "--progress" in record["command"]
        assert record["user_conf"]["text"] == (run_dir / "user.conf").read_text()
        assert re.fullmatch(r"[0-9a-f]{40}", record["project"]["commit"])
        assert isinstance(record["project"]["dirty"], bool)
        upstream = record["upstream"]
        assert upstream["commit"] == pin and upstream["pinned"] == pin
        assert upstream["patches_applied"] == len(patches) and upstream["dirty"] is False
        assert upstream["patches"] == [
            {"name": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for p in patches
        ]
        assert record["environment"]["kind"] == "venv"  # make's default ENV_KIND
        assert record["environment"]["python"] == PYTHON
        assert {"python", "torch", "torchvision", "mlcommons-loadgen"} <= set(record["versions"])
        assert {"cuda", "cudnn", "gpus", "cpu", "name"} <= set(record["host"])
        model = demo["models"]["oracle"]
        assert record["model"] == {
            "path": str(model.resolve()),
            "bytes": model.stat().st_size,
            "md5": hashlib.md5(model.read_bytes()).hexdigest(),
        }
        assert record["dataset"]["path"] == str(demo["data"].resolve())
        assert record["dataset"]["images_total"] == record["dataset"]["images_used"] == 12


def test_machine_facts_are_run_json_s_host_and_what_tools_print():
    """machine.py: one place for the facts run.json records and the benchmark tools print."""
    host, facts = machine.host(), machine.facts()
    assert {"name", "platform", "cpu", "cpu_flags", "cpus", "cuda", "cudnn", "gpus"} == set(host)
    assert {key: facts[key] for key in host} == host
    assert set(facts["cpu_flags"]) | set(facts["missing_cpu_flags"]) == set(machine.CPU_FLAGS)
    assert not set(facts["cpu_flags"]) & set(facts["missing_cpu_flags"])
    assert facts["native_bf16"] in (True, False) and facts["nnpack"] in (True, False)
    assert facts["memory_bytes"] > facts["memory_available_bytes"] > 0
    assert {"python", "torch", "torchvision", "mlcommons-loadgen"} <= set(facts["versions"])


@pytest.mark.parametrize("name", [name for name, run in RUNS.items() if run[3]])
def test_summary_json_of_real_performance_runs(records, name):
    _, scenario, _, expected = RUNS[name]
    run_dir = records["runs"][name]["dir"]
    summary = read(run_dir, "summary.json")
    text = (run_dir / "mlperf_log_summary.txt").read_text()
    assert summary["status"] == "completed" and summary["mode"] == "PerformanceOnly"
    assert summary["scenario"] == scenario and summary["result"] == expected
    assert f"Result is : {expected}" in text
    assert summary["loadgen_version"].startswith("5.1.1 ")
    assert summary["warnings"] == 0 and summary["errors"] == 0
    assert list(summary["latency_ns"]) == [
        "min",
        "max",
        "mean",
        "p50",
        "p90",
        "p95",
        "p97",
        "p99",
        "p99.9",
    ]
    for percentile, value in summary["latency_ns"].items():
        if percentile.startswith("p") and scenario != "MultiStream":
            assert f"{percentile[1:] if '.' in percentile else percentile[1:] + '.00'}" in text
            assert re.search(rf"percentile latency \(ns\)\s+: {value}$", text, re.M)
    # the headline figure is the one the summary prints
    metric = summary["metric"]
    if metric["unit"] == "samples/s":
        printed = re.search(
            r"^(Samples|Completed samples) per second\s*: ([0-9.]+)$", text, re.M
        ).group(2)
        assert metric["value"] == pytest.approx(float(printed), rel=1e-3)
    else:
        printed = re.search(r"^(\d+\.\d)th percentile latency \(ns\) : (\d+)$", text, re.M)
        assert metric["value"] == int(printed.group(2))
        assert metric["name"].startswith(f"p{float(printed.group(1)):g} latency")
    if expected == "VALID":
        assert summary["reasons"] == [] and all(summary["constraints"].values())
    else:
        assert summary["reasons"], "an INVALID result must say why"
        for reason in summary["reasons"]:
            for line in reason.replace("Early stopping not satisfied: ", "").split(". "):
                assert line.split(",")[0].strip(". ") in text.replace("\n", " ")
    if scenario in ("SingleStream", "Server", "MultiStream"):
        assert summary["early_stopping"]["lines"], (
            "LoadGen prints an early stopping result for this scenario"
        )


def test_invalid_reasons_are_loadgens_own_words(records):
    offline = read(records["runs"]["offline-invalid"]["dir"], "summary.json")
    assert offline["constraints"]["min_duration"] is False
    assert offline["reasons"] == [
        "Increase expected QPS so the loadgen pre-generates a larger (coalesced) query."
    ]
    single = read(records["runs"]["singlestream-invalid"]["dir"], "summary.json")
    assert single["reasons"] == [
        "Early stopping not satisfied: Only processed 1 queries. "
        "Need to process at least 64 queries for early stopping."
    ]
    server = read(records["runs"]["server-invalid"]["dir"], "summary.json")
    assert server["constraints"]["performance"] is True
    # LoadGen writes -nan for a rate over a single query: null in summary.json, never NaN
    assert (
        "-nan" in (records["runs"]["server-invalid"]["dir"] / "mlperf_log_detail.txt").read_text()
    )
    assert server["throughput"]["scheduled_samples_per_second"] is None
    multi = read(records["runs"]["multistream-invalid"]["dir"], "summary.json")
    assert multi["query_latency_ns"]["p99"] == multi["metric"]["value"]


def test_accuracy_summary_has_the_map_against_the_target(records):
    run = records["runs"]["accuracy"]
    summary = read(run["dir"], "summary.json")
    assert summary["mode"] == "AccuracyOnly" and summary["result"] is None
    assert summary["accuracy"] == {
        "map": 100.0,
        "reference": 37.55,
        "target": 37.1745,
        "meets_target": True,
        "harness_map": pytest.approx(100.0),
    }
    assert summary["scheduled"] == {"queries": 1, "samples_per_query": 12}


def test_progress_lines_while_loadgen_runs(records):
    log = (records["runs"]["singlestream-valid"]["dir"] / "harness.log").read_text()
    lines = re.findall(r"^progress: .*$", log, re.M)
    assert lines, "PROGRESS=1 prints progress lines"
    assert re.fullmatch(
        r"progress: 100/100 samples \(100\.0%\), \d+s elapsed, [0-9.]+ samples/s", lines[-1]
    )
    accuracy = (records["runs"]["accuracy"]["dir"] / "harness.log").read_text()
    assert re.search(r"^progress: 12/12 samples \(100\.0%\)", accuracy, re.M)


def copy_run(records, name, tmp_path):
    copy = tmp_path / name
    shutil.copytree(records["runs"][name]["dir"], copy)
    return copy


@pytest.mark.parametrize(
    "cut, message",
    [
        ("detail-mid-line", "mlperf_log_detail.txt is truncated: line {n} stops mid-entry"),
        ("detail-before-results", "mlperf_log_detail.txt is truncated: no power_end entry"),
        ("summary", "mlperf_log_summary.txt is truncated: it does not end with LoadGen's"),
    ],
)
def test_truncated_log_is_a_clear_error(records, tmp_path, cut, message):
    run_dir = copy_run(records, "offline-valid", tmp_path)
    detail = run_dir / "mlperf_log_detail.txt"
    lines = detail.read_text().splitlines(keepends=True)
    n = 0
    if cut == "detail-mid-line":
        n = len(lines) - 5
        detail.write_text("".join(lines[: n - 1]) + lines[n - 1][:70])
    elif cut == "detail-before-results":
        detail.write_text("".join(line for line in lines[:-5] if '"power_end"' not in line))
    else:
        summary = run_dir / "mlperf_log_summary.txt"
        summary.write_text(summary.read_text()[:400])
    with pytest.raises(LogError) as error:
        parse(run_dir)
    assert message.format(n=n) in str(error.value) and str(run_dir) in str(error.value)
    # the command line says it in one line, and fails
    proc = subprocess.run(
        [PYTHON, "-m", "retinanet.loadgen_log", str(run_dir)], capture_output=True, text=True
    )
    assert (
        proc.returncode == 1 and proc.stderr.count("\n") == 1 and message.format(n=n) in proc.stderr
    )


def test_unknown_or_mismatched_logs_are_clear_errors(records, tmp_path):
    run_dir = copy_run(records, "offline-valid", tmp_path)
    (run_dir / "mlperf_log_detail.txt").write_text("Some other program's log\n")
    with pytest.raises(LogError, match=r"mlperf_log_detail.txt:1 is not a LoadGen log line"):
        parse(run_dir)
    (run_dir / "mlperf_log_detail.txt").unlink()
    with pytest.raises(LogError, match=r"mlperf_log_detail.txt not found: LoadGen did not start"):
        parse(run_dir)
    mixed = copy_run(records, "offline-invalid", tmp_path)
    shutil.copy(records["runs"]["offline-valid"]["dir"] / "mlperf_log_summary.txt", mixed)
    with pytest.raises(
        LogError, match=r"says 'Result is : VALID', mlperf_log_detail.txt says INVALID"
    ):
        parse(mixed)


def start_long_run(demo, results, cache, *settings):
    conf = results.parent / "long.conf"
    conf.write_text(CONFS["singlestream-long"])
    return subprocess.Popen(
        [
            "make",
            "perf",
            f"PYTHON={PYTHON}",
            f"DATA_DIR={demo['data']}",
            f"MODEL={demo['models']['oracle']}",
            f"RESULTS_DIR={results}",
            f"CACHE_DIR={cache}",
            "DEVICE=cpu",
            "SCENARIO=SingleStream",
            f"USER_CONF={conf}",
            "PROGRESS=1",
            *settings,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        # Ctrl-C as in a terminal, even when the tests run with SIGINT ignored (started
        # with '&' or nohup): bash cannot trap a signal that was ignored when it started
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for_samples(results, proc, timeout=180):
    """The run's folder, once LoadGen has completed some samples."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        logs = [log for log in results.glob("*/harness.log") if "run_eval" not in log.parent.name]
        if logs and re.search(r"^progress: [1-9]\d*/", logs[0].read_text(), re.M):
            return logs[0].parent
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("the run showed no progress")


@pytest.fixture
def earlier_run(tmp_path):
    """Another run's folder: a run killed beside it must leave it as it was."""
    earlier = tmp_path / "results" / "20260101-000000-performance-Offline-cpu"
    earlier.mkdir(parents=True)
    (earlier / "run.json").write_text('{"status": "completed"}\n')
    yield earlier
    assert (earlier / "run.json").read_text() == '{"status": "completed"}\n'
    assert [p.name for p in earlier.iterdir()] == ["run.json"]


def test_interrupted_run_is_marked_failed_at_once(demo, tmp_path, earlier_run):
    results = tmp_path / "results"
    proc = start_long_run(demo, results, tmp_path / "cache")
    run_dir = wait_for_samples(results, proc)
    assert read(run_dir, "run.json")["status"] == "running"
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
    started = time.time()
    out, _ = proc.communicate(timeout=60)
    assert time.time() - started < 30, "Ctrl-C must stop a run now, not when LoadGen is done"
    assert proc.returncode != 0
    assert f"run_eval: run failed (interrupted by signal 2); its folder is {run_dir}" in out
    record = read(run_dir, "run.json")
    assert record["status"] == "failed" and record["reason"] == "interrupted by signal 2"
    summary = read(run_dir, "summary.json")
    assert summary["status"] == "failed" and summary["reason"] == "interrupted by signal 2"
    assert any("is truncated" in problem for problem in summary["unreadable"])
    # SingleStream ends at its 10 minute minimum or its 240,001 scheduled queries, whichever
    # comes first at the rate reached; the total is marked ~ when it is the estimate
    progress = re.findall(r"^progress: .*$", (run_dir / "harness.log").read_text(), re.M)
    assert any(
        re.match(
            r"progress: \d+/~?\d+ samples \(\d+\.\d%\), \d+s elapsed, [0-9.]+ samples/s, about "
            r"\S+ left$",
            line,
        )
        for line in progress
    ), progress[-3:]
    # main.py has --output RUN_DIR: no process of the run may outlive it
    assert processes_mentioning(run_dir) == [], "the harness must not outlive its run"


def test_killed_run_is_reported_failed(demo, tmp_path, earlier_run):
    results = tmp_path / "results"
    proc = start_long_run(demo, results, tmp_path / "cache")
    run_dir = wait_for_samples(results, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # nothing of the run can react
    proc.communicate(timeout=60)
    assert read(run_dir, "run.json")["status"] == "running"
    run = load(run_dir)
    assert run.status == "failed" and run.reason.startswith("stopped without finishing: process ")
    assert any("truncated" in problem for problem in run.summary["unreadable"])
    report = make("report", f"RESULTS_DIR={results}", f"REPORT_DIR={tmp_path / 'report'}")
    assert re.search(
        rf"^\| {run_dir.name} \| performance \| SingleStream \| failed \| stopped without "
        r"finishing",
        report.stdout,
        re.M,
    )
    assert read(run_dir, "run.json")["status"] == "running", "reading a run never writes it"


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_make_report_renders_table_and_plots(records, tmp_path):
    proc = make("report", f"RESULTS_DIR={records['results']}", f"REPORT_DIR={tmp_path / 'report'}")
    text = (tmp_path / "report" / "report.md").read_text()
    assert text in proc.stdout
    for name, (_, scenario, _, expected) in RUNS.items():
        row = next(
            line
            for line in text.splitlines()
            if line.startswith(f"| {records['runs'][name]['dir'].name} |")
        )
        if expected:
            precision = read(records["runs"][name]["dir"], "run.json")["settings"]["precision"]
            assert f"| {scenario} | cpu {precision} batch_size=2 threads=1 |" in row, row
            assert f"| {expected} |" in row
        else:
            assert "| 100.000 | yes |" in row
    assert "INVALID, as LoadGen gives the reasons:" in text
    assert "Increase expected QPS so the loadgen pre-generates a larger (coalesced) query." in text
    for plot in ("throughput.png", "latency.png", "accuracy.png"):
        assert f"]({plot})" in text
        width, height = png_size(tmp_path / "report" / plot)
        assert width >= 600 and height >= 200


def test_report_lists_an_unreadable_run_and_reports_the_rest(records, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(records["results"], results, ignore=shutil.ignore_patterns("report"))
    broken = results / records["runs"]["offline-valid"]["dir"].name
    (broken / "run.json").write_text('{"status": "comp')  # a disk that filled up mid-write
    proc = make("report", f"RESULTS_DIR={results}", f"REPORT_DIR={tmp_path / 'report'}")
    assert re.search(
        rf"^\| {broken.name} \| \? \| \? \| unreadable \| {re.escape(str(broken / 'run.json'))} "
        r"cannot be read \(",
        proc.stdout,
        re.M,
    ), proc.stdout
    for name in RUNS:
        if name != "offline-valid":
            assert f"| {records['runs'][name]['dir'].name} |" in proc.stdout


def test_report_on_a_subset(records, tmp_path):
    proc = make(
        "report",
        f"RESULTS_DIR={records['results']}",
        f"REPORT_DIR={tmp_path / 'report'}",
        "RUNS=*-SingleStream-* *-Server-*",
    )
    rows = [line for line in proc.stdout.splitlines() if re.match(r"^\| \d{8}-", line)]
    names = {row.split(" | ")[0][2:] for row in rows}
    assert names == {
        records["runs"][name]["dir"].name
        for name in ("singlestream-valid", "singlestream-invalid", "server-invalid")
    }
    assert not (tmp_path / "report" / "accuracy.png").exists(), "no accuracy run, no accuracy plot"
    missing = make("report", f"RESULTS_DIR={records['results']}", "RUNS=*-Batch-*", check=False)
    assert missing.returncode != 0 and "report: error: no run in" in missing.stdout


def test_make_compare_gives_ratios_and_warns_when_unfair(records):
    valid, invalid = (
        records["runs"]["offline-valid"]["dir"],
        records["runs"]["offline-invalid"]["dir"],
    )
    proc = make("compare", f"RESULTS_DIR={records['results']}", f"A={valid.name}", f"B={invalid}")
    a, b = read(valid, "summary.json"), read(invalid, "summary.json")
    row = re.search(
        r"^\| samples/s \| ([0-9.,]+) \| ([0-9.,]+) \| ([0-9.]+) \|$", proc.stdout, re.M
    )
    assert float(row.group(3)) == pytest.approx(
        b["metric"]["value"] / a["metric"]["value"], rel=2e-3
    )
    assert re.search(
        r"^\| p99 latency \(ms, lower is better\) \| [0-9.,]+ \| [0-9.,]+ \| [0-9.]+ \|$",
        proc.stdout,
        re.M,
    )
    assert "differences make this comparison unfair:" in proc.stdout
    assert "  - B is INVALID: Increase expected QPS" in proc.stdout
    assert "  - setting differs, user.conf: A " in proc.stdout

    same = make(
        "compare", f"RESULTS_DIR={records['results']}", f"A={valid.name}", f"B={valid.name}"
    )
    assert "differs," not in same.stdout
    if read(valid, "run.json")["project"]["dirty"]:  # a checkout with uncommitted work
        assert "  - A's project tree was dirty: its code is not exactly its commit" in same.stdout
    else:
        assert (
            "Same settings, software and hardware: the figures compare like for like."
            in same.stdout
        )
    assert "| samples/s |" in same.stdout and "| 1.000 |" in same.stdout

    scenarios = make(
        "compare",
        f"RESULTS_DIR={records['results']}",
        f"A={valid.name}",
        f"B={records['runs']['singlestream-valid']['dir'].name}",
    )
    assert "  - setting differs, SCENARIO: A Offline / B SingleStream" in scenarios.stdout

    unknown = make(
        "compare",
        f"RESULTS_DIR={records['results']}",
        "A=nothing-like-this",
        f"B={valid.name}",
        check=False,
    )
    assert (
        unknown.returncode != 0 and "compare: error: no run 'nothing-like-this'" in unknown.stdout
    )
