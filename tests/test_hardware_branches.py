"""Every branch an `auto` setting can take, through the real harness on any machine: bf16
forced on a CPU (native where the CPU has it, emulated and slow where not: one image),
channels_last and a frozen graph, half-precision outputs reaching LoadGen as float32, and
the GPU where there is one. The CPU's own default branch runs in test_runs.py."""

import json
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from helpers import DEMO_USER_CONF, PYTHON, TESTS
from misbehaving_models import Bf16Detector

from retinanet import HARNESS, harness
from retinanet.accuracy_guard import agreement
from retinanet.demo_models import save_torchscript
from retinanet.machine import native_bf16

ONE_IMAGE = ("COUNT=1", "WARMUP=0", "BATCH_SIZE=1", "THREADS=1")


def detections_in(run_dir):
    """Per sample index, the float32 rows LoadGen logged.

    Each row is [id, ymin, xmin, ymax, xmax, score, label]."""
    log = json.loads((run_dir / "mlperf_log_accuracy.json").read_text())
    return {
        entry["qsl_idx"]: np.frombuffer(bytes.fromhex(entry["data"]), np.float32).reshape(-1, 7)
        for entry in log
    }


def completed(run_dir):
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed", record.get("reason")
    return record


def as_detections(rows):
    """(boxes, scores, labels) as the accuracy guard compares them, from accuracy-log rows."""
    return rows[:, 1:5] * np.float32(800), rows[:, 5], rows[:, 6].astype(np.int64)


def plausible(rows):
    assert len(rows) > 0
    assert np.isfinite(rows).all()
    assert (rows[:, 1:5] >= -1e-3).all() and (rows[:, 1:5] <= 1 + 1e-3).all()
    assert ((rows[:, 6] >= 0) & (rows[:, 6] < 264)).all()


def test_bf16_on_the_cpu_through_perf_with_its_outputs_logged(run, demo, tmp_path):
    """One bf16 + channels_last image through make perf: VALID, and LoadGen logs the response
    it got, as in a TEST01 audit, so that one emulated image proves both that the run works
    and that its outputs reach LoadGen and the accuracy tool as float32. The accuracy guard
    in bf16 + channels_last runs in test_performance.py, on the oracle."""
    native = native_bf16()
    print(f"\nbf16 on this CPU is {'native' if native else 'emulated (slow): one image'}")
    conf = tmp_path / "logged.conf"  # log every response: 1000 of the 1 expected
    conf.write_text(DEMO_USER_CONF.read_text() + "*.Offline.accuracy_log_sampling_target = 1000\n")
    proc, run_dir = run(
        "perf",
        demo["data"],
        demo["models"]["random-weights"],
        "PRECISION=bf16",
        "CHANNELS_LAST=1",
        f"USER_CONF={conf}",
        "CHECK_IMAGES=0",
        *ONE_IMAGE,
    )
    settings = completed(run_dir)["settings"]
    assert settings["precision"] == "bf16" and settings["channels_last"] == "1"
    assert "Result is : VALID" in proc.stdout
    rows = detections_in(run_dir)
    assert list(rows) == [0]
    plausible(rows[0])
    # upstream's accuracy tool reads them as it reads an accuracy run's
    tool = subprocess.run(
        [
            PYTHON,
            str(HARNESS / "tools" / "accuracy-openimages.py"),
            "--mlperf-accuracy-file",
            str(run_dir / "mlperf_log_accuracy.json"),
            "--openimages-dir",
            str(demo["data"]),
            "--output-file",
            str(tmp_path / "openimages-results.json"),
        ],
        capture_output=True,
        text=True,
    )
    assert tool.returncode == 0 and re.search(r"^mAP=[0-9.]+%$", tool.stdout, re.M), (
        tool.stdout[-2000:] + tool.stderr[-2000:]
    )


def test_channels_last_and_freeze_give_the_plain_fp32_detections(run, demo):
    model = demo["models"]["random-weights"]

    def fp32(channels_last, freeze):
        # MODEL_IMPL=torchscript: auto takes the native model (NNPACK) in fp32 on a CPU
        settings = (f"CHANNELS_LAST={channels_last}", f"FREEZE={freeze}", "CHECK_IMAGES=0")
        settings += ("MODEL_IMPL=torchscript",)
        return run("eval", demo["data"], model, "PRECISION=fp32", *settings, *ONE_IMAGE)[1]

    # both at once, on two cores: run_eval.sh gives each run a folder of its own
    with ThreadPoolExecutor(2) as pool:
        plain, fast = pool.submit(fp32, 0, 0), pool.submit(fp32, 1, 1)
        plain, fast = plain.result(), fast.result()
    settings = completed(fast)["settings"]
    assert settings["channels_last"] == "1" and settings["freeze"] == "1"
    expected, found = detections_in(plain)[0], detections_in(fast)[0]
    plausible(expected)
    # the same model, with float operations in another order: the same detections, as the
    # accuracy guard matches them (same label, IoU >= 0.9), but for near-ties at the cut-off
    match = agreement([as_detections(expected)], [as_detections(found)])
    print(f"\nchannels_last + freeze against plain fp32, 1 image: {match}")
    assert match["agreement"] >= 0.9 and match["mean_abs_score_difference"] < 1e-3


@pytest.mark.parametrize("form", ["torchscript", "factory"])
def test_half_precision_outputs_reach_loadgen_as_their_float32_values(
    run, demo, weightless, tmp_path, form
):
    """A model that returns bfloat16 whatever the run's precision: the accuracy log holds
    exactly its outputs cast to float32, and the accuracy guard reads them too."""
    if form == "torchscript":
        model, settings = save_torchscript(Bf16Detector(), tmp_path / "bf16.pth"), ()
    else:
        model, settings = (
            weightless,
            ("MODEL_FACTORY=misbehaving_models:bf16_outputs", f"PYTHONPATH={TESTS}"),
        )
    # CHANNELS_LAST=0: the model's input then has the memory layout it has here
    proc, run_dir = run(
        "eval",
        demo["data"],
        model,
        "PRECISION=bf16",
        "CHANNELS_LAST=0",
        "GUARD_IMAGES=2",
        "COUNT=2",
        "WARMUP=0",
        *settings,
    )
    completed(run_dir)
    assert json.loads((run_dir / "guard.json").read_text())["agreement"] == 1.0

    images = harness.openimages(demo["data"], tmp_path / "cache", count=2)
    logged = detections_in(run_dir)
    for index in range(2):
        output = Bf16Detector()(torch.from_numpy(images.get_item(index)[0])[None])[0]
        assert output["boxes"].dtype == torch.bfloat16
        boxes, scores = output["boxes"].float().numpy(), output["scores"].float().numpy()
        size = np.float32(800)
        expected = np.column_stack(
            [
                np.full(10, index, np.float32),
                boxes[:, 1] / size,
                boxes[:, 0] / size,
                boxes[:, 3] / size,
                boxes[:, 2] / size,
                scores,
                output["labels"].numpy().astype(np.float32),
            ]
        )
        assert np.array_equal(logged[index], expected), (logged[index][:3], expected[:3])


def test_gpu_in_fp16(run, demo):
    if not torch.cuda.is_available():
        reason = (
            f"no CUDA GPU here (torch {torch.__version__}): the GPU branch runs where there is one"
        )
        print(f"\nSKIP: {reason}")
        pytest.skip(reason)
    model = demo["models"]["random-weights"]
    proc, run_dir = run(
        "eval", demo["data"], model, "PRECISION=fp16", "GUARD_IMAGES=1", "COUNT=2", device="gpu"
    )
    assert completed(run_dir)["settings"]["precision"] == "fp16"
    plausible(detections_in(run_dir)[0])
    proc, run_dir = run(
        "perf", demo["data"], model, f"USER_CONF={DEMO_USER_CONF}", "COUNT=2", device="gpu"
    )
    assert completed(run_dir)["settings"]["precision"] == "fp16"
    assert "Result is : VALID" in proc.stdout
