"""No run can hang: a model that raises, wherever it does, ends the run within seconds with
the exception on one line of the output and in the records; a model that stalls ends the
run at its stall limit; neither leaves a process behind. The models are tests/
misbehaving_models.py, through make eval/perf, the real harness and LoadGen."""

import json
import re
import time
from pathlib import Path

import pytest
from helpers import DEMO_USER_CONF, TESTS, processes_mentioning
from misbehaving_models import MESSAGE, SCRIPTED_MESSAGE, save_raises_in_torchscript

# the harness's own limit when nothing was measured: failfast.Watchdog.FIRST, FLOOR
FIRST_LIMIT, FLOOR = 600, 60


def failed_run(run, demo, weightless, target, factory, *settings):
    """Run a misbehaving model; returns the output, the run folder, and the seconds from the
    moment the model misbehaved to the moment make returned."""
    log = weightless.parent / f"misbehaviour-{time.time()}.log"
    proc, _ = run(
        target,
        demo["data"],
        weightless,
        f"MODEL_FACTORY=misbehaving_models:{factory}",
        f"PYTHONPATH={TESTS}",
        f"MISBEHAVIOUR_LOG={log}",
        f"USER_CONF={DEMO_USER_CONF}",
        "BATCH_SIZE=1",
        "THREADS=1",
        *settings,
        check=False,
    )
    ended = time.time()
    assert proc.returncode != 0, proc.stdout[-3000:]
    misbehaved = log.read_text().splitlines()
    assert len(misbehaved) == 1, misbehaved
    assert processes_mentioning(weightless) == [], "a process of the run outlived it"
    return proc.stdout, ended - float(misbehaved[0].split()[1])


def recorded_failure(output):
    """The reason in run.json, which summary.json and run_eval's last line repeat."""
    last = re.findall(r"^run_eval: run failed \((.*)\); its folder is (.+)$", output, re.M)
    assert len(last) == 1, output[-3000:]
    reason, run_dir = last[0]
    record = json.loads((Path(run_dir) / "run.json").read_text())
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    assert record["status"] == summary["status"] == "failed"
    assert record["reason"] == summary["reason"] == reason
    return reason


@pytest.mark.parametrize(
    "target, factory, settings, where",
    [
        # warm-up: before LoadGen starts
        ("perf", "raises_on_first_call", ("WARMUP=1",), "warm-up inference failed"),
        # Offline: a worker thread, in the middle of the run
        ("perf", "raises_on_third_call", ("WARMUP=1", "COUNT=4"), "inference failed on "),
        # SingleStream: LoadGen's own thread
        (
            "perf",
            "raises_on_third_call",
            ("WARMUP=1", "COUNT=4", "SCENARIO=SingleStream"),
            "inference failed on ",
        ),
    ],
)
def test_a_raise_ends_the_run_at_once(run, demo, weightless, target, factory, settings, where):
    output, took = failed_run(run, demo, weightless, target, factory, "CHECK_IMAGES=0", *settings)
    reason = recorded_failure(output)
    assert reason.startswith(where) and reason.endswith(
        f"RuntimeError: {MESSAGE} on call {factory_call(factory)}"
    )
    assert f"main.py: error: {reason}" in output.splitlines()
    assert took < 30, f"the run took {took:.0f} s to stop after the model raised"
    assert took < FLOOR / 2, "that is not the stall limit stopping it"
    print(
        f"\n{factory} ({target} {' '.join(settings)}): the run failed {took:.1f} s after the raise"
    )


def factory_call(factory):
    return {"first": 1, "second": 2, "third": 3}[factory.split("_")[2]]


def test_a_raise_in_post_processing_ends_the_run(run, demo, weightless):
    proc, _ = run(
        "eval",
        demo["data"],
        weightless,
        "MODEL_FACTORY=misbehaving_models:output_without_scores",
        f"PYTHONPATH={TESTS}",
        "CHECK_IMAGES=0",
        "WARMUP=0",
        "COUNT=2",
        check=False,
    )
    assert proc.returncode != 0
    reason = recorded_failure(proc.stdout)
    assert re.fullmatch(r"inference failed on .*\.jpg: KeyError: 'scores'", reason), reason
    assert processes_mentioning(weightless) == []
    # no warm-up: nothing was measured when LoadGen started
    assert (
        f"stall limit: {FIRST_LIMIT} s until an inference completes ({FIRST_LIMIT} s per image of "
        "batch 1)" in proc.stdout
    )


def test_a_raise_in_the_accuracy_guard_fails_the_run(run, demo, weightless):
    # the harness calls the model once (COUNT=1); the guard's fp32 pass once, its bf16 pass raises
    output, took = failed_run(
        run,
        demo,
        weightless,
        "eval",
        "raises_on_second_call",
        "CHECK_IMAGES=0",
        "WARMUP=0",
        "COUNT=1",
        "PRECISION=bf16",
        "GUARD_IMAGES=1",
    )
    reason = recorded_failure(output)
    assert (
        reason == "the accuracy guard failed: the model raised in bf16 on image 1 of 1: "
        f"RuntimeError: {MESSAGE} on call 2"
    )
    assert took < 30


def test_a_raise_in_the_model_check_stops_before_the_run(run, demo, weightless, tmp_path):
    output, took = failed_run(
        run, demo, weightless, "eval", "raises_on_first_call", "CHECK_IMAGES=1"
    )
    assert "its folder is" not in output and not (tmp_path / "results").exists()
    assert f"the model failed on a [1,3,800,800] input: RuntimeError: {MESSAGE} on call 1" in output
    assert took < 30


def test_a_torchscript_model_that_raises_is_named_by_its_own_exception(run, demo, tmp_path):
    """The TorchScript interpreter wraps the model's exception in its own traceback; the one
    line gives the model's exception, in the model check and in the harness."""
    model = save_raises_in_torchscript(tmp_path / "raises.pth")
    proc, run_dir = run("eval", demo["data"], model, "CHECK_IMAGES=1", check=False)
    assert proc.returncode != 0 and run_dir is None
    assert (
        f"error: MODEL={model}: the model failed on a [1,3,800,800] input: ValueError: "
        f"{SCRIPTED_MESSAGE}" in proc.stdout.splitlines()
    ), proc.stdout[-3000:]
    proc, _ = run(
        "perf",
        demo["data"],
        model,
        "CHECK_IMAGES=0",
        "WARMUP=1",
        f"USER_CONF={DEMO_USER_CONF}",
        check=False,
    )
    assert proc.returncode != 0
    assert recorded_failure(proc.stdout) == (
        f"warm-up inference failed: ValueError: {SCRIPTED_MESSAGE}"
    )


def test_a_stalled_run_ends_at_its_stall_limit(run, demo, weightless):
    output, took = failed_run(
        run,
        demo,
        weightless,
        "perf",
        "stalls_on_third_call",
        "CHECK_IMAGES=0",
        "WARMUP=1",
        "COUNT=4",
        "STALL_TIMEOUT=5",
    )
    reason = recorded_failure(output)
    assert re.fullmatch(
        r"no inference completed in [56] s with [1-4] samples? waiting: stopped as stalled \(stall "
        r"limit 5 s \(set by STALL_TIMEOUT\)\); if an inference can take this long here, set "
        r"STALL_TIMEOUT higher",
        reason,
    ), reason
    assert 5 <= took < 25, f"stopped {took:.1f} s after the model stalled, with STALL_TIMEOUT=5"
    print(f"\nstalled run: stopped {took:.1f} s after the model stalled (STALL_TIMEOUT=5)")


def test_the_model_check_and_the_guard_stop_when_the_model_stalls(run, demo, weightless, tmp_path):
    output, took = failed_run(
        run, demo, weightless, "eval", "stalls_on_first_call", "CHECK_IMAGES=1", "STALL_TIMEOUT=3"
    )
    assert "its folder is" not in output and not (tmp_path / "results").exists()
    assert re.search(
        r"^run\.py: error: no inference completed in [34] s with 1 sample waiting: stopped "
        r"as stalled \(stall limit 3 s \(set by STALL_TIMEOUT\)\)",
        output,
        re.M,
    ), output[-2000:]
    assert 3 <= took < 20
    output, took = failed_run(
        run,
        demo,
        weightless,
        "eval",
        "stalls_on_second_call",
        "CHECK_IMAGES=0",
        "WARMUP=0",
        "COUNT=1",
        "PRECISION=bf16",
        "GUARD_IMAGES=1",
        "STALL_TIMEOUT=3",
    )
    assert recorded_failure(output).startswith(
        "the accuracy guard failed: no inference completed in "
    )
    assert 3 <= took < 20
