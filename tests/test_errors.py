"""Bad input stops a run with one clear line before the harness starts, and nothing of the
user's is deleted or overwritten."""

import json
import shutil
import subprocess

import pytest
import torch
from helpers import DEMO_USER_CONF, make

from retinanet import ANNOTATIONS, IMAGE_DIR, patch_series

N = len(patch_series.series())  # patches in the series


@pytest.fixture
def earlier_results(tmp_path):
    """A run folder from before: it must come out of every failure untouched."""
    earlier = tmp_path / "results" / "20260101-000000-accuracy-Offline-cpu"
    earlier.mkdir(parents=True)
    (earlier / "run.json").write_text('{"status": "completed"}\n')
    yield earlier
    assert (earlier / "run.json").read_text() == '{"status": "completed"}\n'
    assert sorted(p.name for p in earlier.parent.iterdir()) == [earlier.name], (
        "a failed check made a run folder"
    )


def error_line(proc):
    lines = [line for line in proc.stdout.splitlines() if "error:" in line]
    assert len(lines) == 1, proc.stdout
    return lines[0]


def fails(run, *settings, data=None, model=None, demo=None, target="eval"):
    proc, run_dir = run(
        target, data or demo["data"], model or demo["models"]["oracle"], *settings, check=False
    )
    assert proc.returncode != 0 and run_dir is None
    return error_line(proc)


def test_missing_data_dir(run, demo, tmp_path, earlier_results):
    line = fails(run, data=tmp_path / "nowhere", demo=demo)
    assert line.endswith(
        f"DATA_DIR={tmp_path / 'nowhere'} does not exist: point it at the folder "
        "'make dataset DIR=...' wrote"
    )


def test_data_dir_at_the_image_folder_points_to_its_root(run, demo, earlier_results):
    line = fails(run, data=demo["data"] / "validation" / "data", demo=demo)
    assert (
        "has no annotations/openimages-mlperf.json: point DATA_DIR at its dataset root, "
        f"DATA_DIR={demo['data']}" in line
    )


def test_missing_image_is_named(run, demo, tmp_path, earlier_results):
    data = tmp_path / "data"
    shutil.copytree(demo["data"], data)
    victim = sorted((data / "validation" / "data").iterdir())[3]
    victim.unlink()
    line = fails(run, data=data, demo=demo)
    assert line.endswith(
        f"1 of 12 images are missing from {data / 'validation' / 'data'}, first {victim.name}: "
        "rerun 'make dataset' to fetch them"
    )


def test_an_image_that_does_not_decode_stops_the_model_check_in_one_line(
    run, demo, tmp_path, earlier_results
):
    data = tmp_path / "data"
    shutil.copytree(demo["data"], data)
    first = json.loads((data / ANNOTATIONS).read_text())["images"][0]["file_name"]
    image = data / IMAGE_DIR / first  # the one the model check (CHECK_IMAGES=1) runs on
    image.write_bytes(image.read_bytes()[:400])  # cut short: cv2 cannot decode it
    proc, run_dir = run("eval", data, demo["models"]["oracle"], "CHECK_IMAGES=1", check=False)
    assert proc.returncode != 0 and run_dir is None
    assert "Traceback" not in proc.stdout, proc.stdout
    assert error_line(proc) == (
        f"error: cannot decode {image}: the file is damaged, download it again"
    )


def test_missing_model(run, demo, tmp_path, earlier_results):
    line = fails(run, model=tmp_path / "models" / "resnext50_32x4d_fpn.pth", demo=demo)
    assert "resnext50_32x4d_fpn.pth not found: download it with 'make model DIR=...'" in line


def test_model_that_is_not_torchscript(run, demo, tmp_path, earlier_results):
    half = tmp_path / "resnext50_32x4d_fpn.pth"
    half.write_bytes(demo["models"]["oracle"].read_bytes()[:5000])
    line = fails(run, model=half, demo=demo)
    assert line.endswith(
        f"MODEL={half} is not a TorchScript archive (a .pth zip file): is the download complete?"
    )


@pytest.mark.parametrize(
    "setting, message",
    [
        (
            "SCENARIO=Batch",
            "SCENARIO=Batch is not one of: Offline, Server, SingleStream, MultiStream",
        ),
        ("DEVICE=tpu", "DEVICE=tpu is not one of: auto, cpu, gpu"),
        ("COUNT=ten", "COUNT=ten is not a whole number, 1 or more"),
        ("WARMUP=-1", "WARMUP=-1 is not a whole number, 0 or more"),
        ("IMAGE_CACHE=auto", "IMAGE_CACHE=auto is not one of: none, uint8, float32"),
        ("QPS=0", "QPS=0 is not a number above 0"),
        ("STALL_TIMEOUT=soon", "STALL_TIMEOUT=soon is not a number above 0"),
    ],
)
def test_unknown_settings(run, demo, setting, message, earlier_results):
    line = fails(run, setting, demo=demo, target="perf")
    assert line.endswith(message)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_asked_for_without_one(run, demo, earlier_results):
    proc, _ = run("eval", demo["data"], demo["models"]["oracle"], "DEVICE=gpu", check=False)
    assert proc.returncode != 0
    line = error_line(proc)
    assert (
        "DEVICE=gpu but torch" in line
        and "sees no CUDA GPU" in line
        and "or run with DEVICE=cpu" in line
    )


def test_half_applied_series_stops_the_run(project_copy, demo, tmp_path, earlier_results):
    upstream = project_copy / "vendor" / "inference"
    first = sorted((project_copy / "patches").glob("*.patch"))[0]
    subprocess.run(["git", "apply", "--index", str(first)], cwd=upstream, check=True)
    proc = make(
        "eval",
        f"DATA_DIR={demo['data']}",
        f"MODEL={demo['models']['oracle']}",
        f"RESULTS_DIR={tmp_path / 'results'}",
        check=False,
        cwd=project_copy,
    )
    assert proc.returncode != 0
    assert error_line(proc).endswith(
        f"holds 1 of the {N} patches (next: 0002-pandas3-factorize.patch); run 'make patch'"
    )


@pytest.mark.parametrize(
    "line, message",
    [
        (
            "this is = not *.a.conf",
            " is not 'model.scenario.key = value' with spaces around '=': LoadGen would ignore it",
        ),
        (
            "*.Offline.min_duration=0",
            " is not 'model.scenario.key = value' with spaces around '=': LoadGen would ignore it",
        ),
        ("*.Offline.min_duraton = 0", ": LoadGen has no setting 'min_duraton' and would ignore it"),
        (
            "retinanet.Batch.min_duration = 0",
            ": 'retinanet.Batch.min_duration' is not model.scenario.key with a scenario "
            "of Offline, Server, SingleStream, MultiStream or *",
        ),
        ("*.Offline.target_qps = fast", ": the value 'fast' is not a number"),
    ],
)
def test_a_user_conf_line_loadgen_would_not_take_is_refused_by_number(
    run, demo, tmp_path, earlier_results, line, message
):
    conf = tmp_path / "user.conf"
    conf.write_text(DEMO_USER_CONF.read_text() + "\n# below: a mistake\n" + line + "\n")
    number = len(conf.read_text().splitlines())
    error = fails(run, f"USER_CONF={conf}", demo=demo, target="perf")
    assert error == f"error: USER_CONF={conf} line {number} ({line!r}){message}"
