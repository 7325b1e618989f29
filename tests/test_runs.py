"""End to end through the real harness, real LoadGen and the real accuracy tool: the oracle
proves the coordinate pipeline, negative controls prove the test can fail, and the
real-architecture model runs both modes."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import DEMO_USER_CONF, run_into
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from retinanet import ANNOTATIONS, patch_series, run_folder
from retinanet.demo_models import oracle_detections


def harness_map(run_dir):
    """mAP in percent from the harness's own finalize, at full precision."""
    return json.loads((run_dir / "results.json").read_text())["TestScenario.Offline"]["mAP"]


def tool_map(run_dir):
    """mAP in percent as tools/accuracy-openimages.py prints it (3 decimals)."""
    return run_folder.accuracy_map(run_dir)


def accuracy_run(run, demo, model, *settings):
    proc, run_dir = run("eval", demo["data"], demo["models"][model], "BATCH_SIZE=2", *settings)
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"
    return proc, run_dir


def test_oracle_scores_100_in_harness_and_accuracy_tool(run, demo):
    proc, run_dir = accuracy_run(run, demo, "oracle")
    assert harness_map(run_dir) == pytest.approx(100.0, abs=1e-9)
    assert tool_map(run_dir) == 100.0
    assert (
        "mAP 100.000% on 12 images: meets the MLPerf target 37.1745% (99% of 37.55%)" in proc.stdout
    )
    assert run_dir.parent.name == "results" and run_dir.name.endswith("-accuracy-Offline-cpu")


@pytest.mark.parametrize("variant", ["oracle-label-plus-one", "oracle-xywh", "oracle-unscaled"])
def test_wrong_conventions_score_about_zero(run, demo, variant):
    # The contract check stops these before the run (test_models.py); here the accuracy
    # tool itself must score them about 0.
    proc, run_dir = accuracy_run(run, demo, variant, "CHECK_IMAGES=0")
    assert harness_map(run_dir) < 5.0
    assert tool_map(run_dir) < 5.0
    assert "is below the MLPerf target" in proc.stdout


def test_perturbed_oracle_matches_pycocotools_directly(run, demo):
    _, run_dir = accuracy_run(run, demo, "oracle-perturbed")

    coco = demo["coco"]
    detections = []
    for image, dets in zip(coco["images"], oracle_detections(coco, "oracle-perturbed")):
        sx, sy = image["width"] / 800, image["height"] / 800
        for box, score, label in dets:
            x0, y0, x1, y1 = np.float32(box)  # the model's output precision
            detections.append(
                {
                    "image_id": image["id"],
                    "category_id": label,
                    "score": float(np.float32(score)),
                    "bbox": [x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy],
                }
            )
    truth = COCO(str(demo["data"] / ANNOTATIONS))
    evaluation = COCOeval(truth, truth.loadRes(detections), iouType="bbox")
    evaluation.params.imgIds = [image["id"] for image in coco["images"]]
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    expected = 100.0 * evaluation.stats[0]

    assert 20.0 < expected < 90.0, "the perturbation should neither break nor spare the oracle"
    assert harness_map(run_dir) == pytest.approx(expected, abs=1e-6)
    assert tool_map(run_dir) == pytest.approx(expected, abs=5e-4)


def test_random_weights_model_runs_accuracy_with_detections_for_every_image(run, demo):
    # WARMUP=0: an accuracy run needs no warm-up, and it costs 5 inferences of seconds each here
    # PRECISION=fp32 on every CPU; bf16 runs in test_hardware_branches.py
    # no guard (the run fixture's default): this default's (native, NNPACK) is
    # test_native_model.py's
    proc, run_dir = accuracy_run(
        run,
        demo,
        "random-weights",
        "COUNT=2",
        "BATCH_SIZE=1",
        "THREADS=1",
        "WARMUP=0",
        "PRECISION=fp32",
    )
    assert "--warmup 0" in proc.stdout and "INFO:main:warmup:" not in proc.stdout
    log = json.loads((run_dir / "mlperf_log_accuracy.json").read_text())
    assert sorted(entry["qsl_idx"] for entry in log) == [0, 1]
    for entry in log:
        values = np.frombuffer(bytes.fromhex(entry["data"]), np.float32).reshape(-1, 7)
        assert len(values) > 0
        boxes = values[:, 1:5]  # ymin, xmin, ymax, xmax in [0, 1]
        assert (boxes >= -1e-3).all() and (boxes <= 1 + 1e-3).all()
        assert ((values[:, 6] >= 0) & (values[:, 6] < 264)).all()


def test_random_weights_model_offline_performance_is_valid(run, demo):
    proc, run_dir = run(
        "perf",
        demo["data"],
        demo["models"]["random-weights"],
        "SCENARIO=Offline",
        "COUNT=2",
        "BATCH_SIZE=1",
        "THREADS=1",
        f"USER_CONF={DEMO_USER_CONF}",
        "WARMUP=1",
        "PRECISION=fp32",
    )
    assert re.search(r"^INFO:main:warmup: 1 inferences in [0-9.]+s$", proc.stdout, re.M)
    # the stall limit (failfast.Watchdog) derived from the warm-up: 10 x its time, at least 60 s
    limit = re.search(
        r"^INFO:main:stall limit: (\d+) s: 10 x the slowest inference so far \(([0-9.]+) s per "
        r"image\) x batch 1 x 1 threads, at least 60 s$",
        proc.stdout,
        re.M,
    )
    assert limit, proc.stdout[-3000:]
    assert (
        abs(int(limit.group(1)) - max(60, 10 * float(limit.group(2)))) <= 1
    )  # printed to 3 digits
    summary = (run_dir / "mlperf_log_summary.txt").read_text()
    assert "Scenario : Offline" in summary and "Mode     : PerformanceOnly" in summary
    assert "Result is : VALID" in summary
    assert re.search(r"^Samples per second: [0-9.]+$", proc.stdout, re.M)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed"
    assert record["settings"]["scenario"] == "Offline" and record["settings"]["warmup"] == "1"
    assert record["upstream"]["commit"] == patch_series.pinned_commit()
    assert (run_dir / "user.conf").read_text() == DEMO_USER_CONF.read_text()


# strace sees every execve of every process under it: none can start unseen
STRACE = ("strace", "-f", "-ff", "--seccomp-bpf", "-qq", "-e", "trace=execve", "-e", "signal=none")
EXECVE = re.compile(r'^execve\("([^"]+)", .* = 0$', re.M)


def is_python(path):
    """A Python interpreter starts when a python binary is executed, or a script whose #!
    names one (#!/usr/bin/env python3 runs env, which then executes python3: seen as such)."""
    path = Path(path)
    try:
        head = path.read_bytes()[:256]
    except OSError:
        return False
    if head.startswith(b"\x7fELF"):
        return re.fullmatch(r"python[0-9.]*", path.resolve().name) is not None
    interpreter = head[2:].split(b"\n")[0].split()[:1] if head.startswith(b"#!") else []
    return any(
        re.fullmatch(rb"python[0-9.]*", Path(word.decode()).name.encode()) for word in interpreter
    )


def interpreters(trace_dir):
    """The Python interpreters the traced processes started: the command lines' first words."""
    started = []
    for trace in sorted(trace_dir.iterdir()):
        started += [path for path in EXECVE.findall(trace.read_text()) if is_python(path)]
    return started


@pytest.mark.parametrize(
    "target, settings, most",
    [
        # make's read of the settings table, the run (run_eval.sh becomes it), main.py
        ("perf", (f"USER_CONF={DEMO_USER_CONF}", "COUNT=2"), 3),
        # and the accuracy guard (bf16 is not plain fp32); the accuracy tool runs in the run
        ("eval", ("COUNT=1", "WARMUP=0", "PRECISION=bf16", "GUARD_IMAGES=1"), 4),
    ],
)
def test_the_python_interpreters_a_run_starts(demo, tmp_path, target, settings, most):
    assert shutil.which("strace"), "strace not found: apt-get install strace (it counts them)"
    traces = tmp_path / "trace"
    traces.mkdir()
    proc, run_dir = run_into(
        tmp_path,
        target,
        demo["data"],
        demo["models"]["oracle"],
        *settings,
        prefix=(*STRACE, "-o", str(traces / "pid")),
    )
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"
    started = interpreters(traces)
    print(f"\nmake {target} started {len(started)} Python interpreters: {started}")
    assert len(started) == most, started
