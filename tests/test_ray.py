"""WORKERS and RAY_ADDRESS: one LoadGen, many workers on Ray (retinanet/ray_sut.py), through
make eval/perf, the real harness and LoadGen.

Ray registers the machine's address and probes an outside one even when told 127.0.0.1, so
every Ray process here runs in a network namespace that has only loopback (`unshare -n`, as
root: tests and CI are). After each test no Ray process it started may be left running."""

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import DEMO_USER_CONF, PYTHON, TESTS, make, run_into

from retinanet import PROJECT_ROOT, run_folder, settings_auto, settings_outputs

# make under a network namespace with loopback only
LOOPBACK = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
SLEEPER = ["MODEL_FACTORY=sleeping_models:sleeper", f"PYTHONPATH={TESTS}"]

needs_namespace = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"),
    reason="Ray tests need root and unshare for a loopback-only network namespace",
)


def harness_args(**given):
    resolved, problems = settings_auto.resolve({"DATA_DIR": "data", **given})
    assert problems == []
    return settings_outputs.harness_args(resolved)


@pytest.mark.slow  # a Python that imports torch: seconds
def test_without_workers_the_harness_runs_alone():
    """Neither WORKERS nor RAY_ADDRESS: no --runner, and nothing a run imports imports Ray."""
    assert "--runner" not in harness_args()
    code = "import sys; from retinanet import run, report, compare; assert 'ray' not in sys.modules"
    subprocess.run([PYTHON, "-c", code], cwd=PROJECT_ROOT, check=True)


def test_workers_and_ray_address_become_the_runner():
    runner = ["--runner", settings_outputs.RAY_RUNNER]
    assert harness_args(WORKERS="2")[-4:] == ["--workers", "2", *runner]
    assert harness_args(WORKERS="auto")[-2:] == runner  # auto: the runner counts
    assert harness_args(RAY_ADDRESS="head-1:6379")[-4:] == ["--ray-address", "head-1:6379", *runner]
    for wrong in ({"WORKERS": "0"}, {"WORKERS": "two"}, {"RAY_ADDRESS": "head"}):
        _, problems = settings_auto.resolve({"DATA_DIR": "data", **wrong})
        assert len(problems) == 1 and problems[0].startswith(next(iter(wrong)))


def ray_processes():
    """pid -> command line of every Ray process on this machine."""
    found = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        line = " ".join(args)
        if args[0].startswith("ray::") or re.search(
            r"raylet|gcs_server|ray/_private|ray/dashb", line
        ):
            found[int(cmdline.parent.name)] = line
    return found


@pytest.fixture(autouse=True)
def no_ray_left():
    """Fails a test that leaves a Ray process running (and ends those it left)."""
    before = ray_processes()
    yield
    deadline = time.monotonic() + 10
    while (left := set(ray_processes()) - set(before)) and time.monotonic() < deadline:
        time.sleep(0.5)
    found = ray_processes()
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "Ray processes left running:\n" + "\n".join(found.get(p, "") for p in left)


def ray_run(tmp_path, target, data, model, *settings, check=True):
    return run_into(tmp_path, target, data, model, *settings, check=check, prefix=LOOPBACK)


def detections(run_dir):
    """The accuracy log as a set of (qsl_idx, data): what LoadGen got, whoever answered."""
    log = json.loads((run_dir / "mlperf_log_accuracy.json").read_text())
    return {(entry["qsl_idx"], entry["data"]) for entry in log}, len(log)


def conf(tmp_path, samples):
    """The demo's user.conf with an Offline run of this many samples."""
    path = tmp_path / f"offline-{samples}.conf"
    text = DEMO_USER_CONF.read_text().replace(
        "*.Offline.min_query_count = 1", f"*.Offline.min_query_count = {samples}"
    )
    path.write_text(text)
    return f"USER_CONF={path}"


def records(run_dir):
    return (
        json.loads((run_dir / "run.json").read_text()),
        json.loads((run_dir / "summary.json").read_text()),
    )


@needs_namespace
@pytest.mark.timeout(240)
def test_two_workers_answer_as_one(demo, tmp_path):
    """2 workers give exactly the per-sample detections of 1, and the oracle scores 100%."""
    oracle = demo["models"]["oracle"]
    settings = ("BATCH_SIZE=2", "WARMUP=0", "CHECK_IMAGES=1")
    runs = {}
    for workers in (1, 2):
        proc, run_dir = ray_run(
            tmp_path, "eval", demo["data"], oracle, *settings, f"WORKERS={workers}"
        )
        assert "mAP 100.000% on 12 images" in proc.stdout
        runs[workers] = run_dir
    one, two = detections(runs[1]), detections(runs[2])
    assert one == two and one[1] == 12
    record, summary = records(runs[2])
    assert record["settings"]["workers"] == "2" and len(record["workers"]) == 2
    assert {w["pid"] for w in record["workers"]} and all(
        w["versions"]["torch"] and w["device"].startswith("cpu") for w in record["workers"]
    )
    assert sum(w["answered"] for w in summary["workers"]) == 12
    assert all(w["answered"] for w in summary["workers"]), "one worker answered everything"
    # make report and make compare show the worker count
    results = f"RESULTS_DIR={tmp_path / 'results'}"
    shown = make("compare", results, f"A={runs[1].name}", f"B={runs[2].name}").stdout
    assert re.search(r"^\| workers \| 1 \| 2 \|", shown, re.M), shown
    assert " workers=2 " in make("report", results).stdout


@needs_namespace
@pytest.mark.timeout(240)
def test_two_node_cluster(demo, tmp_path):
    """A head and a second node joining it on 127.0.0.1: an Offline perf run VALID and an
    accuracy run, with a worker on each node; the second reads its own copy of the dataset."""
    port = 26379
    copy = tmp_path / "second-node-data"
    shutil.copytree(demo["data"], copy)
    ray = Path(PYTHON).parent / "ray"
    start = f"{ray} start --node-ip-address=127.0.0.1 --num-cpus=1 --disable-usage-stats"
    common = [
        f"DATA_DIR={demo['data']}",
        f"RESULTS_DIR={tmp_path / 'results'}",
        f"CACHE_DIR={tmp_path / 'cache'}",
        "DEVICE=cpu",
        "WARMUP=0",
        f"USER_CONF={DEMO_USER_CONF}",
        f"RAY_ADDRESS=127.0.0.1:{port}",
    ]
    runs = [
        ["perf", f"MODEL={demo['models']['oracle']}", "SCENARIO=Offline", *common],
        ["eval", f"MODEL={demo['models']['oracle']}", "BATCH_SIZE=2", *common],
    ]
    makes = " && ".join(
        " ".join(["make", "-C", str(PROJECT_ROOT), f"PYTHON={PYTHON}", *run]) for run in runs
    )
    # the cluster is the test's: in a pid namespace of its own too, so that ray stop
    # stops only it
    script = (
        "ip link set lo up && "
        f"{start} --head --port={port} --node-name=head --include-dashboard=false && "
        f"RETINANET_NODE_DATA_DIR={copy} {start} --address=127.0.0.1:{port} --node-name=second && "
        f"({makes}); status=$?; {ray} stop --force >/dev/null; exit $status"
    )
    # Ray's token authentication, as across machines: the same token on every node
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    proc = subprocess.run(
        ["unshare", "-n", "-p", "-f", "--mount-proc", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=220,
        env={**os.environ, **token},
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    folders = run_folder.all_from_output(proc.stdout)
    assert len(folders) == 2
    perf, accuracy = (Path(f) for f in folders)
    assert "Result is : VALID" in (perf / "mlperf_log_summary.txt").read_text()
    assert "mAP 100.000% on 12 images" in proc.stdout
    for run_dir in (perf, accuracy):
        record, summary = records(run_dir)
        data_dirs = {w["node"]: w["data_dir"] for w in record["workers"]}
        assert data_dirs == {"head": str(demo["data"]), "second": str(copy)}
        assert record["ray"]["address"] == f"127.0.0.1:{port}"
        assert summary["workers"] and not summary["workers_lost"]


def started_workers(run_dir_parent, proc, timeout=60):
    """The run's workers.json, once ray_sut.py wrote it (the workers are ready)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(run_dir_parent.glob("*/workers.json"))
        if found and (found[0].parent / "mlperf_log_detail.txt").exists():
            return found[0].parent, json.loads(found[0].read_text())["workers"]
        time.sleep(0.1)
    raise AssertionError(f"no workers started: {proc.communicate()[0][-3000:]}")


def run_and_kill(tmp_path, demo, weightless, workers, samples):
    """make perf with the sleeper on this many workers; worker 1 killed once LoadGen runs."""
    tmp_path.mkdir(exist_ok=True)
    args = [
        *LOOPBACK,
        "make",
        "perf",
        f"PYTHON={PYTHON}",
        f"DATA_DIR={demo['data']}",
        f"MODEL={weightless}",
        f"RESULTS_DIR={tmp_path / 'results'}",
        f"CACHE_DIR={tmp_path / 'cache'}",
        "DEVICE=cpu",
        "WARMUP=0",
        "CHECK_IMAGES=0",
        f"WORKERS={workers}",
        conf(tmp_path, samples),
        *SLEEPER,
    ]
    with subprocess.Popen(
        args,
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            run_dir, started = started_workers(tmp_path / "results", proc)
            time.sleep(1)  # LoadGen runs: samples in flight
            os.kill(started[0]["pid"], signal.SIGKILL)
            killed = time.monotonic()
            stdout, _ = proc.communicate(timeout=120)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    return proc.returncode, stdout, run_dir, time.monotonic() - killed


@needs_namespace
@pytest.mark.timeout(180)
def test_killed_worker(demo, weightless, tmp_path):
    """A worker killed mid-run: its samples go to the other, and the run completes VALID
    with every sample answered once; with one worker only, the run fails within seconds."""
    status, stdout, run_dir, _ = run_and_kill(tmp_path, demo, weightless, workers=2, samples=60)
    assert status == 0, stdout[-4000:]
    assert "Result is : VALID" in stdout
    record, summary = records(run_dir)
    assert [lost["worker"] for lost in summary["workers_lost"]] == [1]
    assert record["ray"]["lost"] and record["workers"][0]["lost"]
    # LoadGen counted each of its 60 samples once, and the workers answered 60 in all
    assert summary["errors"] == 0
    assert sum(w["answered"] for w in summary["workers"]) == 60

    status, stdout, run_dir, after = run_and_kill(
        tmp_path / "one", demo, weightless, workers=1, samples=60
    )
    record = json.loads((run_dir / "run.json").read_text())
    assert status != 0 and record["status"] == "failed"
    assert record["reason"].startswith("no worker left: the last, worker 1 on node 127.0.0.1")
    assert after < 20, f"the run took {after:.0f} s to fail"


@needs_namespace
@pytest.mark.timeout(120)
def test_worker_cannot_start(demo, weightless, tmp_path):
    """A worker that cannot load the model stops the run before LoadGen starts, naming it."""
    proc, run_dir = ray_run(
        tmp_path,
        "perf",
        demo["data"],
        weightless,
        "WORKERS=2",
        "WARMUP=0",
        "MODEL_FACTORY=sleeping_models:missing_in_workers",
        f"PYTHONPATH={TESTS}",
        check=False,
    )
    assert proc.returncode != 0
    record = json.loads(next((tmp_path / "results").glob("*/run.json")).read_text())
    assert re.match(
        r"worker [12] on node 127\.0\.0\.1 cannot start: FileNotFoundError: "
        r"resnext50_32x4d_fpn\.pth: no such file on this node",
        record["reason"],
    ), record["reason"]
    assert not list((tmp_path / "results").glob("*/mlperf_log_summary.txt"))


@needs_namespace
@pytest.mark.timeout(120)
def test_a_raise_in_a_worker_ends_the_run(demo, weightless, tmp_path):
    """A model that raises in a worker ends the run as in one process: the image, the worker
    and its node, and the exception, on one line."""
    proc, _ = ray_run(
        tmp_path,
        "perf",
        demo["data"],
        weightless,
        "WORKERS=2",
        "WARMUP=0",
        "CHECK_IMAGES=0",
        conf(tmp_path, 24),
        "MODEL_FACTORY=misbehaving_models:raises_on_third_call",
        f"PYTHONPATH={TESTS}",
        f"MISBEHAVIOUR_LOG={tmp_path / 'misbehaviour.log'}",
        check=False,
    )
    assert proc.returncode != 0
    record = json.loads(next((tmp_path / "results").glob("*/run.json")).read_text())
    assert re.match(
        r"inference failed on \S+\.jpg in worker [12] on node 127\.0\.0\.1: RuntimeError: "
        r"misbehaving model: deliberate failure on call 3$",
        record["reason"],
    ), record["reason"]


@needs_namespace
@pytest.mark.timeout(180)
def test_dispatch_scaling(demo, weightless, tmp_path):
    """The dispatch scales: Offline samples/s of a model that sleeps 0.1 s per image, on 1 and
    2 workers, printed with the seconds Ray takes to start before LoadGen does (ray.init and
    the workers ready). 2 workers must reach 1.5 times the rate of 1 (2 when nothing else
    waits: the sleeper leaves the cores idle)."""
    rates, starts = {}, {}
    for workers in (1, 2):
        proc, run_dir = ray_run(
            tmp_path,
            "perf",
            demo["data"],
            weightless,
            "WARMUP=0",
            "CHECK_IMAGES=0",
            f"WORKERS={workers}",
            "INTRA_THREADS=1",  # every worker alike, whatever its share of the cores
            conf(tmp_path, 24),
            *SLEEPER,
        )
        rates[workers] = float(re.search(r"^Samples per second: ([0-9.]+)", proc.stdout, re.M)[1])
        starts[workers] = json.loads((run_dir / "run.json").read_text())["ray"]["start_seconds"]
    print(
        "\ndispatch scaling, Offline, 24 samples of 0.1 s: "
        + ", ".join(f"{w} workers {rates[w]:.2f}/s" for w in rates)
        + f"; ratio 2/1 {rates[2] / rates[1]:.2f}; Ray's start "
        + ", ".join(f"{w} workers {starts[w]:.1f} s" for w in starts)
    )
    assert rates[2] >= 1.5 * rates[1], rates
